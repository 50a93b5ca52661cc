-- Objects written to storage before their job's success is recorded. The success transaction deletes its rows;
-- a row left behind by a worker that died in between names an orphan, which the reconciler deletes.
CREATE TABLE pending_objects (
    storage_key text        PRIMARY KEY,
    job_id      uuid        NOT NULL,
    worker_id   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_objects_job ON pending_objects (job_id);
