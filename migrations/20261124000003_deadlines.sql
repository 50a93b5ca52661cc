-- A job not started by its deadline ends canceled (reason deadline) without calling a provider.
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
CREATE INDEX jobs_queued_deadline ON jobs (deadline_at) WHERE status = 'queued' AND deadline_at IS NOT NULL;
