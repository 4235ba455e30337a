-- File triggers (SPEC section 8). Rows that exist now keep today's behaviour (every
-- commit runs); workspaces created from now on filter by changed files.
ALTER TABLE workspaces
    ADD COLUMN file_triggers_enabled BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN trigger_prefixes TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN trigger_patterns TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN speculative_enabled BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE workspaces ALTER COLUMN file_triggers_enabled SET DEFAULT true;

-- What the poller decided and why, for the workspace's event log (SPEC section 9):
-- decisions not to create a run first. `dedup_key` makes a decision about one head
-- recorded once, however many polls see it.
CREATE TABLE vcs_events (
    id                  BIGSERIAL PRIMARY KEY,
    workspace_id        TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind                TEXT NOT NULL,
    commit_sha          TEXT,
    pull_request_number BIGINT,
    message             TEXT NOT NULL,
    dedup_key           TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX vcs_events_by_workspace ON vcs_events (workspace_id, id DESC);
CREATE UNIQUE INDEX vcs_events_once ON vcs_events (workspace_id, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX vcs_events_by_age ON vcs_events (created_at);
