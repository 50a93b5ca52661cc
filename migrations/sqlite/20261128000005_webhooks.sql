-- As the Postgres migration of the same name: webhook endpoints, owners' secrets, and the outbox of deliveries
-- written by triggers in the same transaction as the job's state change.

CREATE TABLE webhook_endpoints (
    id                    BLOB    PRIMARY KEY,
    owner                 TEXT    NOT NULL,
    url                   TEXT    NOT NULL,
    events                TEXT    NOT NULL,
    description           TEXT,
    secret                TEXT    NOT NULL,
    previous_secret       TEXT,
    previous_secret_until TEXT,
    link_base             TEXT,
    disabled_at           TEXT,
    disabled_reason       TEXT,
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner);

CREATE TABLE webhook_secrets (
    owner                 TEXT    PRIMARY KEY,
    secret                TEXT    NOT NULL,
    previous_secret       TEXT,
    previous_secret_until TEXT,
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE webhook_deliveries (
    id              TEXT    PRIMARY KEY,
    message_id      TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    job_id          BLOB,
    batch_id        BLOB,
    endpoint_id     BLOB    REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    url             TEXT    NOT NULL,
    link_base       TEXT,
    status          TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed', 'disabled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    lease_until     TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    delivered_at    TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_owner ON webhook_deliveries (owner, created_at DESC);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);

CREATE TABLE webhook_attempts (
    delivery_id TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

ALTER TABLE batches ADD COLUMN completed_at TEXT;

-- A job's event: its own webhook (the request's `webhook`) and the owner's endpoints that take the event.
CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs
WHEN OLD.status IS NOT NEW.status
 AND ((NEW.status = 'running' AND OLD.started_at IS NULL)
      OR NEW.status IN ('succeeded', 'failed', 'canceled', 'moderated'))
BEGIN
    INSERT OR IGNORE INTO webhook_deliveries
        (id, message_id, owner, event_type, job_id, batch_id, endpoint_id, url, link_base)
    SELECT m.msg || ':' || t.target, m.msg, NEW.owner, m.ev, NEW.id, NEW.batch_id, t.endpoint_id, t.url, t.link_base
      FROM (SELECT CASE WHEN NEW.status = 'running' THEN 'job.started' ELSE 'job.' || NEW.status END AS ev,
                   'msg_' || lower(hex(NEW.id)) || '_'
                       || CASE WHEN NEW.status = 'running' THEN 'started' ELSE NEW.status END AS msg) AS m
      JOIN (SELECT 'u' || lower(hex(json_extract(NEW.request, '$.webhook.url'))) AS target, NULL AS endpoint_id,
                   json_extract(NEW.request, '$.webhook.url') AS url,
                   json_extract(NEW.request, '$.webhook.events') AS events,
                   json_extract(NEW.request, '$.webhook.link_base') AS link_base
             WHERE json_extract(NEW.request, '$.webhook.url') IS NOT NULL
            UNION ALL
            SELECT lower(hex(e.id)), e.id, e.url, e.events, e.link_base
              FROM webhook_endpoints e WHERE e.owner = NEW.owner AND e.disabled_at IS NULL) AS t
     WHERE EXISTS (SELECT 1 FROM json_each(t.events) WHERE value = m.ev);
END;

-- The last item of a batch to end completes it (SQLite has one writer: no two items end at once).
CREATE TRIGGER jobs_batch_completed AFTER UPDATE OF status ON jobs
WHEN NEW.batch_id IS NOT NULL AND OLD.status IS NOT NEW.status AND NEW.status NOT IN ('queued', 'running')
BEGIN
    UPDATE batches SET completed_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')
     WHERE id = NEW.batch_id AND completed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = NEW.batch_id AND status IN ('queued', 'running'));
END;

CREATE TRIGGER batches_webhook_outbox AFTER UPDATE OF completed_at ON batches
WHEN OLD.completed_at IS NULL AND NEW.completed_at IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO webhook_deliveries
        (id, message_id, owner, event_type, job_id, batch_id, endpoint_id, url, link_base)
    SELECT 'msg_' || lower(hex(NEW.id)) || '_batch_completed:' || t.target, 'msg_' || lower(hex(NEW.id)) || '_batch_completed',
           NEW.owner, 'batch.completed', NULL, NEW.id, t.endpoint_id, t.url, t.link_base
      FROM (SELECT DISTINCT 'u' || lower(hex(json_extract(j.request, '$.webhook.url'))) AS target, NULL AS endpoint_id,
                   json_extract(j.request, '$.webhook.url') AS url,
                   json_extract(j.request, '$.webhook.events') AS events,
                   json_extract(j.request, '$.webhook.link_base') AS link_base
              FROM jobs j WHERE j.batch_id = NEW.id AND json_extract(j.request, '$.webhook.url') IS NOT NULL
            UNION ALL
            SELECT lower(hex(e.id)), e.id, e.url, e.events, e.link_base
              FROM webhook_endpoints e WHERE e.owner = NEW.owner AND e.disabled_at IS NULL) AS t
     WHERE EXISTS (SELECT 1 FROM json_each(t.events) WHERE value = 'batch.completed');
END;
