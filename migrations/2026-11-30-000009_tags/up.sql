-- Tag-driven workspaces (SPEC section 8): a workspace with `vcs_tags_regex` follows
-- the repository's tags instead of its branch commits.
ALTER TABLE workspaces
    ADD COLUMN vcs_tags_regex TEXT,
    -- Set by the first poll that recorded the tags present as seen (with no runs).
    ADD COLUMN vcs_tags_baselined_at TIMESTAMPTZ;

-- The tags a workspace has seen, and at which commit: a tag that is new, or that
-- moved to another commit, is what gets a run.
CREATE TABLE workspace_seen_tags (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

ALTER TABLE runs ADD COLUMN vcs_tag TEXT;
ALTER TABLE runs DROP CONSTRAINT runs_trigger_reason_check;
ALTER TABLE runs ADD CONSTRAINT runs_trigger_reason_check
    CHECK (trigger_reason IN ('push', 'pull_request', 'tag'));
ALTER TABLE runs ADD CONSTRAINT runs_tag_matches_trigger
    CHECK ((trigger_reason = 'tag') = (vcs_tag IS NOT NULL));
-- As for pushes and pull requests: the database makes a duplicate impossible.
CREATE UNIQUE INDEX runs_one_tag_run_per_commit
    ON runs (workspace_id, vcs_tag, vcs_commit_sha) WHERE trigger_reason = 'tag';
