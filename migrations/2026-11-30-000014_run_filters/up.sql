-- Run lists filtered by status (filter[status]) and searched by commit (search[commit],
-- a SHA prefix) stay index scans however many runs a workspace has.
CREATE INDEX runs_workspace_status_created ON runs (workspace_id, status, created_at DESC, id DESC);
CREATE INDEX runs_workspace_commit ON runs (workspace_id, vcs_commit_sha text_pattern_ops);
