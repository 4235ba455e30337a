DROP INDEX workspaces_poll_due;
ALTER TABLE workspaces DROP COLUMN vcs_last_attempt_at;
