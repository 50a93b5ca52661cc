-- API keys for machines (ENABLE_AUTHENTICATION): only a SHA-256 of each key is kept; the key is shown once.
CREATE TABLE api_keys (
    id         BLOB PRIMARY KEY,
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    prefix     TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX api_keys_owner ON api_keys (owner);
