-- API tokens get a public id (`at-…`, what `token list` shows and `token revoke`
-- takes), can be revoked, remember when they were last used, and the bootstrap token
-- is marked so that a new one revokes the old.
ALTER TABLE api_tokens ADD COLUMN public_id TEXT;
UPDATE api_tokens SET public_id = 'at-' || translate(substr(md5(random()::text || id::text), 1, 16), '0', 'z');
ALTER TABLE api_tokens ALTER COLUMN public_id SET NOT NULL;
-- Binaries from before this migration insert tokens without one (a rolling update).
ALTER TABLE api_tokens ALTER COLUMN public_id
    SET DEFAULT 'at-' || translate(substr(md5(random()::text || clock_timestamp()::text), 1, 16), '0', 'z');
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_public_id_unique UNIQUE (public_id);
ALTER TABLE api_tokens ADD COLUMN revoked_at TIMESTAMPTZ;
ALTER TABLE api_tokens ADD COLUMN last_used_at TIMESTAMPTZ;
ALTER TABLE api_tokens ADD COLUMN bootstrap BOOLEAN NOT NULL DEFAULT false;
UPDATE api_tokens SET bootstrap = true WHERE description = 'bootstrap token (TERRAPOD_AUTH__BOOTSTRAP_TOKEN)';
