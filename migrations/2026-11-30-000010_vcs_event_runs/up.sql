-- The run an event is about (`run-created`), for the event log's `run` relationship.
ALTER TABLE vcs_events ADD COLUMN run_id TEXT REFERENCES runs (id) ON DELETE SET NULL;
