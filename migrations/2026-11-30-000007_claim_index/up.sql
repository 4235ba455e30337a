-- Claims order by the last attempt, then by a hash of the connection seeded per
-- replica (so replicas work on different installations at once). Only the first key
-- can come from an index: the rest is sorted within each group of equal attempt
-- times (PostgreSQL's incremental sort), which a batch shares. The extra columns of
-- the previous index were never used; this one is smaller to keep up to date.
DROP INDEX workspaces_poll_due;
CREATE INDEX workspaces_poll_due
    ON workspaces (vcs_last_attempt_at NULLS FIRST)
    WHERE vcs_repo_url <> '';
