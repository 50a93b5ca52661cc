-- A job's budget of provider calls across all its routes (PROVIDER_MAX_ATTEMPTS bounds each route within it). The
-- worker stops at it and the reconciler fails a dead worker's job only once it is used up. NULL (jobs recorded
-- before this column): `max_attempts`, the old rule.
ALTER TABLE jobs ADD COLUMN max_calls integer CHECK (max_calls > 0);
