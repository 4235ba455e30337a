-- The run an event is about (`run-created`), for the event log's `run` relationship.
ALTER TABLE vcs_events ADD COLUMN run_id TEXT REFERENCES runs (id) ON DELETE SET NULL;
-- Deleting runs (a workspace's, by cascade) finds their events without a scan.
CREATE INDEX vcs_events_by_run ON vcs_events (run_id) WHERE run_id IS NOT NULL;
