DROP TRIGGER run_events_outbox_notify ON run_events_outbox;
DROP FUNCTION terrapod_notify_run_events();
DROP INDEX commit_status_reports_due;
ALTER TABLE commit_status_reports
    DROP COLUMN wanted_sequence, DROP COLUMN check_name, DROP COLUMN repo_url,
    DROP COLUMN lease_until, DROP COLUMN failures, DROP COLUMN first_failure_at,
    DROP COLUMN next_attempt_at;
