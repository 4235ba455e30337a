-- How many runs a workspace has, kept by the transaction that records a run (runs
-- are never deleted on their own), so a page of runs needs no count over all of them.
ALTER TABLE workspaces ADD COLUMN run_count BIGINT NOT NULL DEFAULT 0 CHECK (run_count >= 0);
UPDATE workspaces SET run_count = (SELECT count(*) FROM runs WHERE runs.workspace_id = workspaces.id);
