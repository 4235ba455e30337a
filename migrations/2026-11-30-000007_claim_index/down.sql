DROP INDEX workspaces_poll_due;
CREATE INDEX workspaces_poll_due
    ON workspaces (vcs_last_attempt_at NULLS FIRST, vcs_connection_id, vcs_repo_path)
    WHERE vcs_repo_url <> '';
