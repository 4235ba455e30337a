-- Run lifecycle (SPEC section 9): TFE's statuses, their timestamps, and a per-run
-- sequence that orders a run's events.
ALTER TABLE runs
    -- A new run is plan-queueable from its creation (the same now() as created_at).
    ADD COLUMN status_timestamps JSONB NOT NULL DEFAULT jsonb_build_object('plan-queueable-at',
        to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
    ADD COLUMN status_sequence BIGINT NOT NULL DEFAULT 1,
    -- What the executor said with its last transition (shown on the commit).
    ADD COLUMN status_message TEXT;
UPDATE runs SET status_timestamps = jsonb_build_object(
    'plan-queueable-at', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
ALTER TABLE runs ADD CONSTRAINT runs_known_status CHECK (status IN (
    'pending', 'plan_queued', 'planning', 'planned', 'confirmed', 'apply_queued',
    'applying', 'applied', 'planned_and_finished', 'discarded', 'canceled', 'errored'));

-- Run events waiting for the relay: written in the transaction that creates or moves
-- the run, deleted only after RabbitMQ confirmed them.
CREATE TABLE run_events_outbox (
    id                BIGSERIAL PRIMARY KEY,
    run_id            TEXT NOT NULL,
    workspace_id      TEXT NOT NULL,
    organization_name TEXT NOT NULL,
    status            TEXT NOT NULL,
    previous_status   TEXT,
    sequence          BIGINT NOT NULL,
    at                TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What the commit-status reporter last told the provider about a run.
CREATE TABLE commit_status_reports (
    run_id            TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    -- GitHub's check run, once created; later states update it.
    check_run_id      BIGINT,
    reported_sequence BIGINT NOT NULL DEFAULT 0,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Executor tokens move runs (section 3).
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('admin', 'member', 'executor'));
