-- Webhook deliveries already handled, so a redelivery queues nothing. Rows older
-- than a day and a bit are purged by the API.
CREATE TABLE webhook_deliveries (
    provider    TEXT NOT NULL CHECK (provider IN ('github', 'gitlab')),
    delivery_id TEXT NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 200),
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, delivery_id)
);
CREATE INDEX webhook_deliveries_received_at ON webhook_deliveries (received_at);

-- The repository path of the workspace's URL, lowercased (`owner/repo`,
-- `group/sub/project`), so a webhook finds its workspaces through an index.
ALTER TABLE workspaces ADD COLUMN vcs_repo_path TEXT NOT NULL DEFAULT '';
UPDATE workspaces SET vcs_repo_path = lower(
    regexp_replace(
        regexp_replace(vcs_repo_url, '^(https?://[^/]+/|ssh://(git@)?[^/]+/|git@[^:]+:)', ''),
        '(\.git)?/*$', ''))
WHERE vcs_repo_url <> '';
CREATE INDEX workspaces_vcs_repo_path ON workspaces (vcs_repo_path) WHERE vcs_repo_path <> '';
