-- Edit inputs (issue 21); see the Postgres migration 20261128000010_job_inputs.sql.
CREATE TABLE job_inputs (
    job_id       BLOB    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner        TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('image', 'mask')),
    position     INTEGER NOT NULL CHECK (position >= 0 AND position < 16),
    storage_key  TEXT,
    source_url   TEXT,
    source_image BLOB,
    content_type TEXT,
    size_bytes   INTEGER CHECK (size_bytes IS NULL OR size_bytes > 0),
    sha256       TEXT,
    width        INTEGER,
    height       INTEGER,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (job_id, role, position),
    CHECK (storage_key IS NOT NULL OR source_url IS NOT NULL)
);
CREATE INDEX job_inputs_storage_key ON job_inputs (storage_key) WHERE storage_key IS NOT NULL;
