DROP INDEX runs_workspace_commit;
DROP INDEX runs_workspace_status_created;
