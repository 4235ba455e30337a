ALTER TABLE vcs_events DROP COLUMN run_id;
