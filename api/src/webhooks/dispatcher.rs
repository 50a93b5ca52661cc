//! Sends the outbox's deliveries. Every API process runs one: it claims due deliveries under a lease (so the
//! replicas share the work and no attempt is made twice), sends each in its own task, and records how the attempt
//! ended. A receiver gets at most [`PER_OWNER`] deliveries in flight from one process, so one owner's slow or dead
//! receiver holds a few slots, never everyone's. The payload is built when it is sent: the job as `GET
//! /api/v1/jobs/{id}` shows it then, with fresh signed links.

use super::config::WebhookSettings;
use crate::links::Links;
use crate::routes::load_job_view;
use crate::state::AppState;
use crate::views::batch_view;
use imagegen_shared::db::webhooks::{AttemptEnd, DeliveryRecord};
use imagegen_shared::db::{self, DbError};
use imagegen_shared::domain::JobId;
use imagegen_shared::net_guard::{self, Resolver, SendError, SystemResolver};
use imagegen_shared::webhooks::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret, signature_header,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often an idle dispatcher looks for due deliveries (retries falling due); a job's start or end, heard on the
/// job-event channel, has it look sooner.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The shortest time between two looks the bell asks for. Under load every job's start and end rings it, and for the
/// common job (no webhook, an owner without endpoints) the look finds nothing: at 360 jobs/s one look per ring was
/// about two Postgres statements per job (issue 19). A delivery waits this much longer at most.
const BELL_GAP: Duration = Duration::from_millis(50);
/// Deliveries in flight at once from one process to one owner's receivers.
const PER_OWNER: usize = 4;
/// Bytes of a receiver's answer kept (for the delivery record); the rest is not read.
const ANSWER_CAP: usize = 4096;
/// A Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Api(#[from] crate::error::ApiError),
    #[error("the signing secret is unusable: {0}")]
    Secret(String),
    #[error("cannot serialise the payload: {0}")]
    Payload(#[from] serde_json::Error),
}

struct Dispatcher {
    state: AppState,
    settings: Arc<WebhookSettings>,
    client: reqwest::Client,
    resolver: Arc<dyn Resolver>,
    slots: Arc<Semaphore>,
    per_owner: Mutex<HashMap<String, usize>>,
}

/// Runs until `stop`; deliveries in flight then finish (each within the timeout) or are taken up again when their
/// lease runs out.
pub async fn run(state: AppState, stop: CancellationToken) {
    let settings = state.webhooks.clone();
    let resolver: Arc<dyn Resolver> = Arc::new(SystemResolver);
    let client = match net_guard::guarded_client(
        &settings.policy,
        resolver.clone(),
        settings.timeout,
    ) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; no webhooks are sent");
            return;
        }
    };
    let dispatcher = Arc::new(Dispatcher {
        slots: Arc::new(Semaphore::new(settings.concurrency)),
        state,
        settings,
        client,
        resolver,
        per_owner: Mutex::new(HashMap::new()),
    });
    let bell = dispatcher.state.waiters.webhook_bell.clone();
    loop {
        let looked = tokio::time::Instant::now();
        let claimed = dispatcher.claim().await;
        let full = claimed.as_ref().is_ok_and(|n| *n > 0);
        if let Err(e) = claimed {
            tracing::warn!(error = %e, "cannot claim webhook deliveries");
        }
        if !full {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = bell.notified() => tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(looked + BELL_GAP) => {}
                },
            }
        } else if stop.is_cancelled() {
            return;
        }
    }
}

impl Dispatcher {
    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.per_owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims what the free slots can take and starts sending it; returns how many.
    async fn claim(self: &Arc<Self>) -> Result<usize, DbError> {
        let free = self.slots.available_permits();
        if free == 0 {
            tokio::time::sleep(IDLE_POLL).await;
            return Ok(0);
        }
        let busy: Vec<String> = self
            .owners()
            .iter()
            .filter(|(_, n)| **n >= PER_OWNER)
            .map(|(o, _)| o.clone())
            .collect();
        // Longer than one attempt can take, so a live dispatcher never loses a delivery it is sending.
        let lease = (self.settings.timeout + Duration::from_secs(30)).as_secs_f64();
        let claimed = db::webhooks::claim_due(
            &self.state.pool,
            i64::try_from(free).unwrap_or(1),
            i64::try_from(PER_OWNER).unwrap_or(1),
            lease,
            &busy,
        )
        .await?;
        let count = claimed.len();
        for delivery in claimed {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                break;
            };
            *self.owners().entry(delivery.owner.clone()).or_default() += 1;
            let this = self.clone();
            tokio::spawn(async move {
                let owner = delivery.owner.clone();
                this.deliver(delivery).await;
                let mut owners = this.owners();
                if let Some(n) = owners.get_mut(&owner) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        owners.remove(&owner);
                    }
                }
                drop(permit);
            });
        }
        Ok(count)
    }

    async fn deliver(&self, delivery: DeliveryRecord) {
        let started = Instant::now();
        let (status, error, end) = match self.attempt(&delivery).await {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(error = %e, delivery = %delivery.id, "cannot prepare a webhook delivery");
                (
                    None,
                    Some(e.to_string()),
                    self.retry_or_fail(&delivery, None),
                )
            }
        };
        let outcome = match &end {
            AttemptEnd::Delivered => "delivered",
            AttemptEnd::Retry { .. } => "retrying",
            AttemptEnd::Failed => "failed",
            AttemptEnd::Gone => "endpoint_disabled",
        };
        metrics::counter!("imagegen_webhook_deliveries_total", "outcome" => outcome).increment(1);
        if end == AttemptEnd::Delivered {
            let since_event = (chrono::Utc::now() - delivery.created_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!("imagegen_webhook_delivery_latency_seconds")
                .record(since_event.as_secs_f64());
        }
        if end == AttemptEnd::Gone && delivery.endpoint_id.is_some() {
            metrics::counter!("imagegen_webhook_endpoints_disabled_total").increment(1);
        }
        let took = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        tracing::info!(delivery = %delivery.id, event = %delivery.event_type, attempt = delivery.attempts,
            status, outcome, "webhook attempt");
        match db::webhooks::record_attempt(
            &self.state.pool,
            &delivery,
            status,
            error.as_deref(),
            took,
            &end,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery = %delivery.id, "webhook delivery was taken over meanwhile")
            }
            // The lease runs out and the delivery is tried again: at least once, never lost.
            Err(e) => {
                tracing::warn!(error = %e, delivery = %delivery.id, "cannot record a webhook attempt")
            }
        }
    }

    /// One attempt: (HTTP status, error, what next).
    async fn attempt(
        &self,
        delivery: &DeliveryRecord,
    ) -> Result<(Option<i32>, Option<String>, AttemptEnd), DeliveryError> {
        let body = self.payload(delivery).await?;
        let secrets = self.secrets(delivery).await?;
        let refs: Vec<&WebhookSecret> = secrets.iter().collect();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature_header(&refs, &delivery.message_id, timestamp, &body);
        let request = self
            .client
            .post(&delivery.url)
            .header(HEADER_ID, &delivery.message_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("imagegen-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .body(body)
            .build();
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                return Ok((
                    None,
                    Some(format!("invalid request: {e}")),
                    AttemptEnd::Failed,
                ));
            }
        };
        let sent = net_guard::send_checked(
            &self.client,
            request,
            &self.settings.policy,
            self.resolver.as_ref(),
        )
        .await;
        let response = match sent {
            Ok(response) => response,
            // A destination that is not allowed stays not allowed: no retry.
            Err(SendError::Refused(refused)) => {
                return Ok((None, Some(refused.to_string()), AttemptEnd::Failed));
            }
            Err(SendError::Http(e)) => {
                let error = if e.is_timeout() {
                    format!("no answer within {} s", self.settings.timeout.as_secs())
                } else {
                    format!("cannot reach the receiver: {e}")
                };
                return Ok((None, Some(error), self.retry_or_fail(delivery, None)));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let answer = net_guard::read_capped(response, ANSWER_CAP).await.ok();
        let code = Some(i32::from(status.as_u16()));
        if status.is_success() {
            return Ok((code, None, AttemptEnd::Delivered));
        }
        let said = answer
            .map(|a| {
                String::from_utf8_lossy(&a.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            })
            .filter(|s| !s.trim().is_empty());
        let error = match said {
            Some(said) => format!("the receiver answered {status}: {said}"),
            None => format!("the receiver answered {status}"),
        };
        if status == reqwest::StatusCode::GONE {
            return Ok((code, Some(error), AttemptEnd::Gone));
        }
        Ok((code, Some(error), self.retry_or_fail(delivery, retry_after)))
    }

    /// The next attempt by the schedule (or the receiver's Retry-After, if later), with a little jitter; failed once
    /// the schedule is used up.
    fn retry_or_fail(
        &self,
        delivery: &DeliveryRecord,
        retry_after: Option<Duration>,
    ) -> AttemptEnd {
        let next = usize::try_from(delivery.attempts).unwrap_or(usize::MAX);
        let Some(delay) = self.settings.schedule.get(next) else {
            return AttemptEnd::Failed;
        };
        let delay = retry_after.map_or(*delay, |r| r.max(*delay));
        // Up to a tenth later, so receivers coming back are not hit by every retry at once.
        let jitter = delay.mul_f64(rand::random::<f64>() * 0.1);
        AttemptEnd::Retry {
            secs: (delay + jitter).as_secs_f64(),
        }
    }

    /// The secrets that sign: the current one, and the one before it during the overlap after a rotation.
    async fn secrets(
        &self,
        delivery: &DeliveryRecord,
    ) -> Result<Vec<WebhookSecret>, DeliveryError> {
        let now = chrono::Utc::now();
        let (current, previous, until) = match delivery.endpoint_id {
            Some(id) => {
                let endpoint = db::webhooks::get_endpoint(&self.state.pool, id)
                    .await?
                    .ok_or_else(|| DeliveryError::Secret("the endpoint is gone".into()))?;
                (
                    endpoint.secret,
                    endpoint.previous_secret,
                    endpoint.previous_secret_until,
                )
            }
            None => {
                let fresh = WebhookSecret::generate();
                let record =
                    db::webhooks::owner_secret(&self.state.pool, &delivery.owner, fresh.as_str())
                        .await?;
                (
                    record.secret,
                    record.previous_secret,
                    record.previous_secret_until,
                )
            }
        };
        let parse =
            |s: &str| WebhookSecret::parse(s).map_err(|e| DeliveryError::Secret(e.to_string()));
        let mut secrets = vec![parse(&current)?];
        if let (Some(previous), Some(until)) = (previous, until)
            && until > now
        {
            secrets.push(parse(&previous)?);
        }
        Ok(secrets)
    }

    /// `{type, timestamp, data}`: data is the job (or batch) as its GET shows it now.
    async fn payload(&self, delivery: &DeliveryRecord) -> Result<Vec<u8>, DeliveryError> {
        let links = Links {
            base: self
                .state
                .public_base_url
                .clone()
                .or_else(|| delivery.link_base.clone())
                .unwrap_or_else(|| "http://localhost".to_owned()),
            signer: self.state.link_signer.clone(),
        };
        let pool = &self.state.pool;
        let data = match (
            delivery.event_type.as_str(),
            delivery.batch_id,
            delivery.job_id,
        ) {
            ("batch.completed", Some(batch_id), _) => {
                match db::batches::get_batch(pool, &delivery.owner, batch_id).await? {
                    Some(batch) => {
                        let jobs = db::jobs::jobs_in_batch(pool, &delivery.owner, batch_id).await?;
                        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
                        let images =
                            db::images::images_for_jobs(pool, &delivery.owner, &ids).await?;
                        serde_json::to_value(batch_view(
                            &links,
                            &batch,
                            &jobs,
                            &images,
                            &self.state.providers.sandbox,
                        ))
                    }
                    None => Ok(serde_json::json!({"batch_id": batch_id, "deleted": true})),
                }
            }
            (_, _, Some(job_id)) => match db::jobs::get_job(pool, &delivery.owner, job_id).await? {
                Some(job) => serde_json::to_value(load_job_view(&self.state, &links, &job).await?),
                None => Ok(serde_json::json!({"job_id": job_id, "deleted": true})),
            },
            _ => Ok(serde_json::Value::Null),
        }?;
        let body = serde_json::json!({
            "type": delivery.event_type,
            "timestamp": delivery.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        });
        Ok(serde_json::to_vec(&body)?)
    }
}
