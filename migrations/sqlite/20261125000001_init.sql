-- The embedded (standalone) schema: the same tables as the Postgres migrations one directory up, in SQLite's
-- types. Ids are 16-byte blobs, JSON is text, timestamps are RFC 3339 text with milliseconds and a +00:00 offset,
-- always written by SQL, so text order is time order. Keep it in step with the Postgres schema.
CREATE TABLE batches (
    id             BLOB    PRIMARY KEY,
    owner          TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    item_count     INTEGER NOT NULL CHECK (item_count > 0),
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX batches_owner ON batches (owner, id);

CREATE TABLE jobs (
    id                 BLOB    PRIMARY KEY,
    owner              TEXT    NOT NULL,
    batch_id           BLOB    REFERENCES batches (id) ON DELETE CASCADE,
    batch_index        INTEGER,
    correlation_id     TEXT    NOT NULL,
    status             TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'moderated', 'canceled')),
    provider           TEXT    NOT NULL,
    request            TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    max_attempts       INTEGER NOT NULL CHECK (max_attempts > 0),
    worker_id          TEXT,
    lease_until        TEXT,
    error_code         TEXT,
    error_message      TEXT,
    moderation         TEXT,
    provider_meta      TEXT,
    generation_time_ms INTEGER,
    served_by          TEXT,
    translations       TEXT,
    provider_attempts  TEXT    NOT NULL DEFAULT '{}',
    deadline_at        TEXT,
    created_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    started_at         TEXT,
    finished_at        TEXT,
    CHECK ((batch_id IS NULL) = (batch_index IS NULL))
);
CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX jobs_batch ON jobs (batch_id, batch_index) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_unfinished ON jobs (status, lease_until) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_queued_deadline ON jobs (deadline_at) WHERE status = 'queued' AND deadline_at IS NOT NULL;

CREATE TABLE images (
    id             BLOB    PRIMARY KEY,
    job_id         BLOB    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner          TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    storage_key    TEXT    NOT NULL,
    content_type   TEXT    NOT NULL,
    size_bytes     INTEGER NOT NULL,
    sha256         TEXT    NOT NULL,
    width          INTEGER NOT NULL,
    height         INTEGER NOT NULL,
    revised_prompt TEXT,
    seed           INTEGER,
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (job_id, position)
);
CREATE INDEX images_owner ON images (owner, id);

CREATE TABLE idempotency_keys (
    owner        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id       BLOB REFERENCES jobs (id) ON DELETE CASCADE,
    batch_id     BLOB REFERENCES batches (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    expires_at   TEXT NOT NULL,
    PRIMARY KEY (owner, key),
    CHECK ((job_id IS NULL) <> (batch_id IS NULL))
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TABLE pending_objects (
    storage_key TEXT PRIMARY KEY,
    job_id      BLOB NOT NULL,
    worker_id   TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX pending_objects_job ON pending_objects (job_id);
