-- API keys for machines (ENABLE_AUTHENTICATION): only a SHA-256 of each key is kept; the key is shown once.
CREATE TABLE api_keys (
    id         uuid        PRIMARY KEY,
    owner      text        NOT NULL,
    name       text        NOT NULL DEFAULT '',
    -- The key's first characters, to recognise it in lists without storing it.
    prefix     text        NOT NULL,
    key_hash   text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_owner ON api_keys (owner);
