-- The commit-status reporter works from the database: every run creation and status
-- change raises `wanted_sequence` (in the statement that writes the run event), and
-- a reporter takes a short lease on the row, talks to the provider outside any
-- transaction, and records what it reported. Events only wake it up sooner; failed
-- reports wait for `next_attempt_at`.
ALTER TABLE commit_status_reports
    ADD COLUMN wanted_sequence  BIGINT NOT NULL DEFAULT 0,
    -- The check/status name and repository of the first report, kept for the run's
    -- later reports (a renamed or re-pointed workspace must not make a second one).
    ADD COLUMN check_name       TEXT,
    ADD COLUMN repo_url         TEXT,
    ADD COLUMN lease_until      TIMESTAMPTZ,
    ADD COLUMN failures         INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN first_failure_at TIMESTAMPTZ,
    ADD COLUMN next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX commit_status_reports_due ON commit_status_reports (next_attempt_at)
    WHERE wanted_sequence > reported_sequence;

-- Runs created before this migration are not reported (their events are gone).

-- The relay sleeps until an event is committed.
CREATE FUNCTION terrapod_notify_run_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('terrapod_run_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_outbox_notify AFTER INSERT ON run_events_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION terrapod_notify_run_events();
