-- When a poller last claimed the workspace, whatever came of it: the schedule polls
-- only workspaces with no attempt within the interval, so replicas share the work.
ALTER TABLE workspaces ADD COLUMN vcs_last_attempt_at TIMESTAMPTZ;
CREATE INDEX workspaces_poll_due ON workspaces (vcs_last_attempt_at NULLS FIRST) WHERE vcs_repo_url <> '';
