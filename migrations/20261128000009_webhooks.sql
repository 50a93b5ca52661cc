-- Webhooks (Standard Webhooks): registered endpoints, each owner's secret for the webhook_url of single requests,
-- and the outbox of deliveries, written by triggers in the same transaction as the job's state change (so an event
-- that happened is never lost, whoever made the change: worker, API or reconciler), then sent by the dispatchers.

CREATE TABLE webhook_endpoints (
    id                    uuid        PRIMARY KEY,
    owner                 text        NOT NULL,
    url                   text        NOT NULL,
    -- The event types it receives, a JSON array of strings.
    events                jsonb       NOT NULL,
    description           text,
    secret                text        NOT NULL,
    -- The secret before the last rotation, still signed with until previous_secret_until.
    previous_secret       text,
    previous_secret_until timestamptz,
    -- Where the payload's image links point when PUBLIC_BASE_URL is unset (the host it was registered through).
    link_base             text,
    disabled_at           timestamptz,
    disabled_reason       text,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner) WHERE disabled_at IS NULL;

CREATE TABLE webhook_secrets (
    owner                 text        PRIMARY KEY,
    secret                text        NOT NULL,
    previous_secret       text,
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    -- message_id ':' target (the endpoint's id, or 'u' and the hex of a request's own webhook URL): one delivery per
    -- message and receiver, so a trigger that fires again cannot queue it twice.
    id              text        PRIMARY KEY,
    -- webhook-id: the same on every attempt and replay, so receivers can deduplicate.
    message_id      text        NOT NULL,
    owner           text        NOT NULL,
    event_type      text        NOT NULL,
    job_id          uuid,
    batch_id        uuid,
    endpoint_id     uuid        REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    url             text        NOT NULL,
    link_base       text,
    -- pending (due at next_attempt_at), succeeded, failed (attempts used up or refused), disabled (endpoint gone)
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed', 'disabled')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A dispatcher holds the delivery while it sends it; after this, another may take it.
    lease_until     timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_owner ON webhook_deliveries (owner, created_at DESC);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);

CREATE TABLE webhook_attempts (
    delivery_id text        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code integer,
    error       text,
    duration_ms integer     NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

ALTER TABLE batches ADD COLUMN completed_at timestamptz;

-- Queues the deliveries of one event to the job's own webhook (its request's `webhook`) and the owner's endpoints.
CREATE FUNCTION webhook_enqueue(ev text, msg text, j jobs, hook jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO webhook_deliveries (id, message_id, owner, event_type, job_id, batch_id, endpoint_id, url, link_base)
    SELECT msg || ':u' || encode(convert_to(hook ->> 'url', 'UTF8'), 'hex'), msg, j.owner, ev, j.id, j.batch_id, NULL, hook ->> 'url', hook ->> 'link_base'
     WHERE hook ->> 'url' IS NOT NULL AND (hook -> 'events') ? ev
    UNION ALL
    SELECT msg || ':' || replace(e.id::text, '-', ''), msg, j.owner, ev, j.id, j.batch_id, e.id, e.url, e.link_base
      FROM webhook_endpoints e
     WHERE e.owner = j.owner AND e.disabled_at IS NULL AND e.events ? ev
    ON CONFLICT (id) DO NOTHING
$$;

CREATE FUNCTION jobs_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text;
    hook jsonb;
BEGIN
    ev := CASE
        WHEN NEW.status = 'running' AND OLD.started_at IS NULL THEN 'job.started'
        WHEN NEW.status IN ('succeeded', 'failed', 'canceled', 'moderated') THEN 'job.' || NEW.status
    END;
    IF ev IS NOT NULL THEN
        PERFORM webhook_enqueue(ev, 'msg_' || replace(NEW.id::text, '-', '') || '_' || split_part(ev, '.', 2),
                                NEW, NEW.request -> 'webhook');
    END IF;
    -- The last item of a batch to end completes it. The batch row's lock makes items ending at once take turns, so
    -- exactly one sees no item left running.
    IF NEW.batch_id IS NOT NULL AND NEW.status NOT IN ('queued', 'running') THEN
        PERFORM 1 FROM batches WHERE id = NEW.batch_id FOR UPDATE;
        IF NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = NEW.batch_id AND status IN ('queued', 'running')) THEN
            UPDATE batches SET completed_at = now() WHERE id = NEW.batch_id AND completed_at IS NULL;
            IF FOUND THEN
                -- Each distinct webhook of the batch's items hears it once.
                FOR hook IN
                    SELECT DISTINCT ON (request -> 'webhook' ->> 'url') request -> 'webhook'
                      FROM jobs WHERE batch_id = NEW.batch_id AND request -> 'webhook' ->> 'url' IS NOT NULL
                LOOP
                    PERFORM webhook_enqueue('batch.completed',
                        'msg_' || replace(NEW.batch_id::text, '-', '') || '_batch_completed', NEW, hook);
                END LOOP;
                PERFORM webhook_enqueue('batch.completed',
                    'msg_' || replace(NEW.batch_id::text, '-', '') || '_batch_completed', NEW, NULL);
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION jobs_webhook_outbox();
