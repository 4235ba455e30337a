DROP INDEX workspaces_vcs_repo_path;
ALTER TABLE workspaces DROP COLUMN vcs_repo_path;
DROP TABLE webhook_deliveries;
