-- The outbox trigger skips webhook_enqueue when neither the job has a webhook nor its owner an enabled endpoint.
-- pg_stat_statements on the wait-mode bench (docs/performance.md) put that call first among Postgres's costs:
-- 0.4 ms, twice per job (started, then ended), a quarter of all statement time, for jobs with nowhere to deliver.
-- Same deliveries as before: webhook_enqueue inserts nothing in exactly those cases.

CREATE OR REPLACE FUNCTION jobs_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text;
    hook jsonb;
BEGIN
    ev := CASE
        WHEN NEW.status = 'running' AND OLD.started_at IS NULL THEN 'job.started'
        WHEN NEW.status IN ('succeeded', 'failed', 'canceled', 'moderated') THEN 'job.' || NEW.status
    END;
    -- Most jobs have no webhook of their own and their owner no endpoint: then there is nothing to enqueue, and
    -- the call (0.4 ms: the SQL function and the row it is handed) is skipped for an index probe.
    IF ev IS NOT NULL
       AND ((NEW.request -> 'webhook' ->> 'url') IS NOT NULL
            OR EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.owner = NEW.owner AND e.disabled_at IS NULL)) THEN
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
