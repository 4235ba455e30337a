ALTER TABLE workspaces DROP COLUMN run_count;
