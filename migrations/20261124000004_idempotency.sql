-- Idempotency-Key: the same key from the same owner with the same body returns the same job (or batch).
CREATE TABLE idempotency_keys (
    owner        text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    job_id       uuid        REFERENCES jobs (id) ON DELETE CASCADE,
    batch_id     uuid        REFERENCES batches (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (owner, key),
    CHECK ((job_id IS NULL) <> (batch_id IS NULL))
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
