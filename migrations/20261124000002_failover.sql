-- Failover: which route served a job, what was changed to suit it, and attempts per route.
ALTER TABLE jobs
    ADD COLUMN served_by         text,
    ADD COLUMN translations      jsonb,
    ADD COLUMN provider_attempts jsonb NOT NULL DEFAULT '{}'::jsonb;
