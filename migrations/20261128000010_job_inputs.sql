-- Edit inputs (issue 21): the images and mask an edit job was submitted with, stored (ImageStorage) before the job
-- is queued, so every attempt, retry or failover sends the same bytes. They go with their job (ON DELETE CASCADE; the
-- retention/deletion path deletes the objects named by storage_key, as for images). `source_url` records where a
-- worker-fetched input came from (https, checked by net_guard); its bytes are stored on first fetch (storage_key set).
CREATE TABLE job_inputs (
    job_id       uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner        text        NOT NULL,
    -- 0.. for images in the order given; the mask has role 'mask' and position 0.
    role         text        NOT NULL CHECK (role IN ('image', 'mask')),
    position     integer     NOT NULL CHECK (position >= 0 AND position < 16),
    storage_key  text,
    source_url   text,
    -- The service's own image, named by id in the JSON form (owner-scoped when submitted).
    source_image uuid,
    content_type text,
    size_bytes   bigint      CHECK (size_bytes IS NULL OR size_bytes > 0),
    sha256       text,
    width        integer,
    height       integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, role, position),
    CHECK (storage_key IS NOT NULL OR source_url IS NOT NULL)
);
CREATE INDEX job_inputs_storage_key ON job_inputs (storage_key) WHERE storage_key IS NOT NULL;
