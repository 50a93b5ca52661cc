-- What provider calls cost, and budgets.
--
-- One row per provider call that was charged (failover attempts on several providers each have theirs). Kept when
-- retention deletes the job, so usage reports over past months stay whole.
CREATE TABLE charges (
    job_id     uuid        NOT NULL,
    attempt    integer     NOT NULL,
    owner      text        NOT NULL,
    api_key_id uuid,
    provider   text        NOT NULL,
    model      text        NOT NULL,
    usd_micros bigint      NOT NULL CHECK (usd_micros >= 0),
    basis      text        NOT NULL,
    estimated  boolean     NOT NULL,
    images     integer     NOT NULL CHECK (images >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt)
);
-- Usage reports: one owner's (or every owner's) charges in a time range, summed by day, model or provider.
CREATE INDEX charges_owner_time ON charges (owner, created_at) INCLUDE (provider, model, usd_micros, images, job_id);
CREATE INDEX charges_time ON charges (created_at) INCLUDE (provider, model, usd_micros, images, job_id);
-- Rebuilding a key's spend when its budget counter is missing.
CREATE INDEX charges_key_time ON charges (api_key_id, created_at) INCLUDE (usd_micros, job_id) WHERE api_key_id IS NOT NULL;

-- A job's cost so far (the sum of its charges, with how they were priced), the API key it was submitted with, and
-- what its budget reserved at submission until the job ends and the reservation is settled to the cost.
ALTER TABLE jobs
    ADD COLUMN api_key_id          uuid,
    ADD COLUMN cost_usd_micros     bigint  NOT NULL DEFAULT 0,
    ADD COLUMN cost_basis          text    NOT NULL DEFAULT 'none',
    ADD COLUMN cost_estimated      boolean NOT NULL DEFAULT false,
    ADD COLUMN reserved_usd_micros bigint  NOT NULL DEFAULT 0,
    ADD COLUMN budget_settled      boolean NOT NULL DEFAULT true;
-- Jobs whose cost is not yet settled against their budget counters (running, or finished by a process that died
-- before settling, which the reconciler sweeps); a missing counter is rebuilt from charges and these.
CREATE INDEX jobs_unsettled ON jobs (owner, created_at) WHERE NOT budget_settled;
CREATE INDEX jobs_unsettled_key ON jobs (api_key_id, created_at) WHERE NOT budget_settled AND api_key_id IS NOT NULL;

-- Per-owner budgets set through the admin API; NULL means the default (BUDGET_USD_PER_DAY / _PER_MONTH).
CREATE TABLE budgets (
    owner                text        PRIMARY KEY,
    usd_micros_per_day   bigint      CHECK (usd_micros_per_day >= 0),
    usd_micros_per_month bigint      CHECK (usd_micros_per_month >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Per-key budgets: a key spends at most this much (and its owner's budget still applies).
ALTER TABLE api_keys
    ADD COLUMN budget_usd_micros_per_day   bigint CHECK (budget_usd_micros_per_day >= 0),
    ADD COLUMN budget_usd_micros_per_month bigint CHECK (budget_usd_micros_per_month >= 0);
