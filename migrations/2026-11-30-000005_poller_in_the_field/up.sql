-- Archives are stored in chunks of at most 1 MiB, so neither the poller storing one
-- nor the API serving one ever holds a whole archive in memory.
CREATE TABLE configuration_archive_chunks (
    archive_sha256 TEXT NOT NULL REFERENCES configuration_archives (sha256) ON DELETE CASCADE,
    seq            INTEGER NOT NULL CHECK (seq >= 0),
    data           BYTEA NOT NULL,
    PRIMARY KEY (archive_sha256, seq)
);
-- Existing archives are cut into chunks of 1 MiB too (an empty one is one empty chunk).
INSERT INTO configuration_archive_chunks (archive_sha256, seq, data)
    SELECT a.sha256, c.seq, substring(a.data FROM c.seq * 1048576 + 1 FOR 1048576)
    FROM configuration_archives a,
         generate_series(0, greatest((octet_length(a.data) - 1) / 1048576, 0)) AS c(seq);
ALTER TABLE configuration_archives DROP COLUMN data;

-- What the archive of a commit turned out to be, per connection and repository:
-- stored (every workspace on the repository reuses it, on every replica), or refused
-- (too large or unsafe: not downloaded again while the limits stay as they were).
CREATE TABLE commit_archives (
    connection_id              TEXT NOT NULL REFERENCES vcs_connections (id) ON DELETE CASCADE,
    repo_path                  TEXT NOT NULL,
    commit_sha                 TEXT NOT NULL,
    archive_sha256             TEXT REFERENCES configuration_archives (sha256),
    refusal                    TEXT,
    refused_max_archive_bytes  BIGINT,
    refused_max_unpacked_bytes BIGINT,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, repo_path, commit_sha),
    CONSTRAINT commit_archives_stored_or_refused CHECK ((archive_sha256 IS NULL) <> (refusal IS NULL))
);

-- Claims take the oldest due workspaces, a repository's together: an index in that
-- order lets a claim read just the rows it takes, however many are due.
DROP INDEX workspaces_poll_due;
CREATE INDEX workspaces_poll_due
    ON workspaces (vcs_last_attempt_at NULLS FIRST, vcs_connection_id, vcs_repo_path)
    WHERE vcs_repo_url <> '';

-- Bumped by every change of a workspace's VCS settings; a poll records its result
-- only if the generation it read is still current, so a poll of the old repository
-- that is in flight during a PATCH records nothing.
ALTER TABLE workspaces ADD COLUMN vcs_settings_generation BIGINT NOT NULL DEFAULT 0;
-- Set when a poll message is published for the workspace and cleared when a poller
-- takes it: while set, more requests (a burst of poll-vcs, webhooks) publish nothing.
ALTER TABLE workspaces ADD COLUMN vcs_poll_queued_at TIMESTAMPTZ;
-- When a poll was last asked for (queued or not): a message poll may reuse provider
-- answers only if they were asked for after this, so a request that was folded into
-- an already queued message is still seen.
ALTER TABLE workspaces ADD COLUMN vcs_poll_requested_at TIMESTAMPTZ;

-- Provider request budgets shared by every poller replica: requests granted per
-- bucket (a second, in production) over the last 62 buckets, in a ring indexed by
-- bucket % 62 (`seconds` says which bucket each count belongs to).
CREATE TABLE provider_budgets (
    budget_key    TEXT PRIMARY KEY,
    counts        INTEGER[] NOT NULL,
    seconds       BIGINT[] NOT NULL,
    -- The provider answered "rate limited, come back then": no replica asks before.
    blocked_until TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (cardinality(counts) = 62 AND cardinality(seconds) = 62)
);
-- Concurrent requests per budget: one row per slot, leased for the length of a request.
CREATE TABLE provider_request_leases (
    budget_key TEXT NOT NULL,
    slot       SMALLINT NOT NULL,
    holder     TEXT,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (budget_key, slot)
);
