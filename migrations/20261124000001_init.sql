-- Jobs are the source of truth: a job exists once its row commits, and only then is its id queued.
CREATE TYPE job_status AS ENUM ('queued', 'running', 'succeeded', 'failed', 'moderated', 'canceled');

CREATE TABLE batches (
    id             uuid PRIMARY KEY,
    owner          text        NOT NULL,
    correlation_id text        NOT NULL,
    item_count     integer     NOT NULL CHECK (item_count > 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_owner ON batches (owner, id);

CREATE TABLE jobs (
    id                 uuid PRIMARY KEY,
    owner              text        NOT NULL,
    batch_id           uuid        REFERENCES batches (id) ON DELETE CASCADE,
    batch_index        integer,
    correlation_id     text        NOT NULL,
    status             job_status  NOT NULL,
    provider           text        NOT NULL,
    -- The validated request (prompt, size, options) as the worker will run it.
    request            jsonb       NOT NULL,
    -- Provider calls made so far; bounded by max_attempts (apalis-redis does not count for us).
    attempts           integer     NOT NULL DEFAULT 0,
    max_attempts       integer     NOT NULL CHECK (max_attempts > 0),
    worker_id          text,
    lease_until        timestamptz,
    error_code         text,
    error_message      text,
    -- {stage: input|output, source: keyword|provider, ...} for moderated jobs.
    moderation         jsonb,
    -- What the provider told us: request ids, revised prompt, processing time.
    provider_meta      jsonb,
    generation_time_ms bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    CHECK ((batch_id IS NULL) = (batch_index IS NULL))
);
-- Listing a caller's jobs newest first (cursor = created_at, id).
CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX jobs_batch ON jobs (batch_id, batch_index) WHERE batch_id IS NOT NULL;
-- The reconciler scans only unfinished jobs.
CREATE INDEX jobs_unfinished ON jobs (status, lease_until) WHERE status IN ('queued', 'running');

CREATE TABLE images (
    id             uuid PRIMARY KEY,
    job_id         uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner          text        NOT NULL,
    position       integer     NOT NULL,
    storage_key    text        NOT NULL,
    content_type   text        NOT NULL,
    size_bytes     bigint      NOT NULL,
    sha256         text        NOT NULL,
    width          integer     NOT NULL,
    height         integer     NOT NULL,
    revised_prompt text,
    seed           bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, position)
);
CREATE INDEX images_owner ON images (owner, id);
