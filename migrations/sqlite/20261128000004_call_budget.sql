-- As the Postgres migration of the same name: a job's budget of provider calls across all its routes.
ALTER TABLE jobs ADD COLUMN max_calls INTEGER CHECK (max_calls > 0);
