ALTER TABLE api_tokens DROP COLUMN bootstrap;
ALTER TABLE api_tokens DROP COLUMN last_used_at;
ALTER TABLE api_tokens DROP COLUMN revoked_at;
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_public_id_unique;
ALTER TABLE api_tokens DROP COLUMN public_id;
