DELETE FROM api_tokens WHERE role = 'executor';
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check CHECK (role IN ('admin', 'member'));
DROP TABLE commit_status_reports;
DROP TABLE run_events_outbox;
ALTER TABLE runs DROP CONSTRAINT runs_known_status;
UPDATE runs SET status = 'apply_queued' WHERE status = 'confirmed';
UPDATE runs SET status = 'pending' WHERE status = 'plan_queued';
ALTER TABLE runs DROP COLUMN status_sequence, DROP COLUMN status_timestamps, DROP COLUMN status_message;
