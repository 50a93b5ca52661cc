-- Costs and budgets: the same as the Postgres migration of the same name, in SQLite's types.
CREATE TABLE charges (
    job_id     BLOB    NOT NULL,
    attempt    INTEGER NOT NULL,
    owner      TEXT    NOT NULL,
    api_key_id BLOB,
    provider   TEXT    NOT NULL,
    model      TEXT    NOT NULL,
    usd_micros INTEGER NOT NULL CHECK (usd_micros >= 0),
    basis      TEXT    NOT NULL,
    estimated  INTEGER NOT NULL,
    images     INTEGER NOT NULL CHECK (images >= 0),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX charges_owner_time ON charges (owner, created_at, provider, model, usd_micros, images, job_id);
CREATE INDEX charges_time ON charges (created_at, provider, model, usd_micros, images, job_id);
CREATE INDEX charges_key_time ON charges (api_key_id, created_at) WHERE api_key_id IS NOT NULL;

ALTER TABLE jobs ADD COLUMN api_key_id BLOB;
ALTER TABLE jobs ADD COLUMN cost_usd_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cost_basis TEXT NOT NULL DEFAULT 'none';
ALTER TABLE jobs ADD COLUMN cost_estimated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reserved_usd_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN budget_settled INTEGER NOT NULL DEFAULT 1;
CREATE INDEX jobs_unsettled ON jobs (owner, created_at) WHERE NOT budget_settled;
CREATE INDEX jobs_unsettled_key ON jobs (api_key_id, created_at) WHERE NOT budget_settled AND api_key_id IS NOT NULL;

CREATE TABLE budgets (
    owner                TEXT    PRIMARY KEY,
    usd_micros_per_day   INTEGER CHECK (usd_micros_per_day >= 0),
    usd_micros_per_month INTEGER CHECK (usd_micros_per_month >= 0),
    updated_at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

ALTER TABLE api_keys ADD COLUMN budget_usd_micros_per_day INTEGER CHECK (budget_usd_micros_per_day >= 0);
ALTER TABLE api_keys ADD COLUMN budget_usd_micros_per_month INTEGER CHECK (budget_usd_micros_per_month >= 0);
