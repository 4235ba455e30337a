-- Organizations are addressed by name; `default` always exists.
CREATE TABLE organizations (
    name        TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_-]{1,90}$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO organizations (name) VALUES ('default');

-- API tokens are stored as SHA-256 digests: the clear token is shown once, at creation.
CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    token_sha256 BYTEA NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    description  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE vcs_connections (
    id                     TEXT PRIMARY KEY,
    organization_name      TEXT NOT NULL REFERENCES organizations (name) ON DELETE CASCADE,
    name                   TEXT NOT NULL,
    provider               TEXT NOT NULL CHECK (provider IN ('github', 'gitlab')),
    server_url             TEXT NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    github_app_id          BIGINT,
    github_installation_id BIGINT,
    github_account_login   TEXT,
    github_account_type    TEXT,
    -- Fernet token (base64url text) of the GitHub App private key or the GitLab token.
    -- Never the clear credential.
    encrypted_credential   TEXT,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT vcs_connections_name_unique UNIQUE (organization_name, name),
    CONSTRAINT vcs_connections_credential_is_fernet CHECK (encrypted_credential IS NULL OR encrypted_credential LIKE 'gAAAAA%')
);
CREATE UNIQUE INDEX vcs_connections_github_installation_unique
    ON vcs_connections (server_url, github_installation_id)
    WHERE provider = 'github' AND github_installation_id IS NOT NULL;

CREATE TABLE workspaces (
    id                    TEXT PRIMARY KEY,
    organization_name     TEXT NOT NULL REFERENCES organizations (name) ON DELETE CASCADE,
    name                  TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9_-]{1,90}$'),
    execution_mode        TEXT NOT NULL DEFAULT 'remote' CHECK (execution_mode IN ('remote', 'local', 'agent')),
    auto_apply            BOOLEAN NOT NULL DEFAULT false,
    vcs_connection_id     TEXT REFERENCES vcs_connections (id) ON DELETE SET NULL,
    vcs_repo_url          TEXT NOT NULL DEFAULT '',
    vcs_branch            TEXT NOT NULL DEFAULT '',
    working_directory     TEXT NOT NULL DEFAULT '',
    vcs_last_commit_sha   TEXT,
    vcs_last_polled_at    TIMESTAMPTZ,
    vcs_last_error        TEXT,
    vcs_last_error_at     TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT workspaces_name_unique UNIQUE (organization_name, name)
);
CREATE INDEX workspaces_vcs_connection_id ON workspaces (vcs_connection_id);

-- Repository snapshots, content-addressed: one commit shared by many workspaces is stored once.
CREATE TABLE configuration_archives (
    sha256     TEXT PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size       BIGINT NOT NULL CHECK (size >= 0),
    data       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE configuration_versions (
    id                      TEXT PRIMARY KEY,
    workspace_id            TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    source                  TEXT NOT NULL DEFAULT 'vcs',
    status                  TEXT NOT NULL DEFAULT 'uploaded',
    speculative             BOOLEAN NOT NULL,
    vcs_commit_sha          TEXT NOT NULL,
    vcs_branch              TEXT NOT NULL,
    vcs_pull_request_number BIGINT,
    working_directory       TEXT NOT NULL DEFAULT '',
    archive_sha256          TEXT NOT NULL REFERENCES configuration_archives (sha256),
    size                    BIGINT NOT NULL,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX configuration_versions_workspace_id ON configuration_versions (workspace_id);

CREATE TABLE runs (
    id                       TEXT PRIMARY KEY,
    workspace_id             TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    configuration_version_id TEXT NOT NULL REFERENCES configuration_versions (id) ON DELETE CASCADE,
    status                   TEXT NOT NULL DEFAULT 'pending',
    source                   TEXT NOT NULL DEFAULT 'vcs',
    plan_only                BOOLEAN NOT NULL,
    auto_apply               BOOLEAN NOT NULL,
    message                  TEXT NOT NULL,
    trigger_reason           TEXT NOT NULL CHECK (trigger_reason IN ('push', 'pull_request')),
    vcs_commit_sha           TEXT NOT NULL,
    vcs_branch               TEXT NOT NULL,
    vcs_pull_request_number  BIGINT,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A pull-request run always names its PR; a push run never does.
    CONSTRAINT runs_pull_request_number_matches_trigger CHECK (
        (trigger_reason = 'pull_request') = (vcs_pull_request_number IS NOT NULL)
    ),
    -- Speculative plans can never be applied.
    CONSTRAINT runs_pull_request_is_plan_only CHECK (trigger_reason <> 'pull_request' OR (plan_only AND NOT auto_apply))
);
-- Invariants 1 and 2: the database, not the code path, makes a duplicate VCS run impossible.
CREATE UNIQUE INDEX runs_one_push_run_per_commit
    ON runs (workspace_id, vcs_commit_sha) WHERE trigger_reason = 'push';
CREATE UNIQUE INDEX runs_one_pull_request_run_per_head
    ON runs (workspace_id, vcs_pull_request_number, vcs_commit_sha) WHERE trigger_reason = 'pull_request';
-- Newest-first listing per workspace.
CREATE INDEX runs_workspace_created ON runs (workspace_id, created_at DESC, id DESC);
