DROP TABLE provider_request_leases;
DROP TABLE provider_budgets;
ALTER TABLE workspaces DROP COLUMN vcs_poll_requested_at;
ALTER TABLE workspaces DROP COLUMN vcs_poll_queued_at;
ALTER TABLE workspaces DROP COLUMN vcs_settings_generation;
DROP INDEX workspaces_poll_due;
CREATE INDEX workspaces_poll_due ON workspaces (vcs_last_attempt_at NULLS FIRST) WHERE vcs_repo_url <> '';
DROP TABLE commit_archives;
ALTER TABLE configuration_archives ADD COLUMN data BYTEA;
UPDATE configuration_archives a SET data = (
    SELECT string_agg(c.data, ''::bytea ORDER BY c.seq)
    FROM configuration_archive_chunks c WHERE c.archive_sha256 = a.sha256);
UPDATE configuration_archives SET data = ''::bytea WHERE data IS NULL;
ALTER TABLE configuration_archives ALTER COLUMN data SET NOT NULL;
DROP TABLE configuration_archive_chunks;
