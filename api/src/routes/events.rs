//! `GET /api/v1/jobs/{id}/events` and `GET /api/v1/batches/{id}/events`: a job's (or batch's) life as server-sent
//! events, from what happened before the client connected to its end.
//!
//! Each event that a worker or the API publishes is kept in the job's event history and broadcast (see
//! `queue::history`); a stream sends the history first, then what the process's subscription hands it
//! (`event_streams`), skipping by id what it already sent. `Last-Event-ID` resumes after that event; a client that
//! resumes after the end gets 204, which tells an `EventSource` to stop reconnecting. The database is read on
//! connect (who may see the job, its state), at the end (the job as `GET /api/v1/jobs/{id}` shows it) and after the
//! subscription is re-established; never polled.

use super::{base_url, load_job_view};
use crate::auth::Owner;
use crate::error::{ApiError, ErrorBody};
use crate::event_streams::Subscription;
use crate::extract::PathId;
use crate::links::Links;
use crate::state::AppState;
use crate::views::batch_view;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use imagegen_shared::db::{self, JobRecord};
use imagegen_shared::domain::{BatchId, JobId, JobStatus, ValidationErrors};
use imagegen_shared::queue::history::{Stream, compare_ids};
use imagegen_shared::queue::partials::PartialFrame;
use imagegen_shared::queue::signals::{JobEvent, Progress};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use utoipa::ToSchema;

/// How often an idle stream sends a comment, so proxies keep it open and clients know it lives.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs/{id}/events", get(job_events))
        .route("/api/v1/batches/{id}/events", get(batch_events))
}

/// The `data` of any event of a stream: a `status`, `retrying` or `failover` event's fields are those of
/// [`ProgressEventView`]; a job's end carries the job (as `GET /api/v1/jobs/{id}`), `completed` the batch (as `GET
/// /api/v1/batches/{id}`), `partial_image` the picture so far (`index`, `partial_image_index`, `b64_json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamEventData {
    /// The job the event is about (every event but `completed`).
    pub job_id: Option<JobId>,
    /// The batch (`completed`, and the jobs of a batch).
    pub batch_id: Option<BatchId>,
    /// The job's status (or the batch's, `completed`).
    pub status: Option<String>,
}

/// The `data` of a `status`, `retrying` or `failover` event (the end of a job carries the job itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgressEventView {
    pub job_id: JobId,
    /// `queued` or `running`.
    pub status: JobStatus,
    /// `provider:model` being called (`status`, `retrying`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The job's provider call count, this call included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Why the call is retried (`retrying`), as `{code, message}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::views::JobErrorView>,
    /// When the job is tried again (`retrying`, or `status` queued after a hand-back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The route given up (`failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The route tried next (`failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Follow a job as server-sent events.
///
/// Events (each with `id:` unless noted, `data:` one line of JSON): `status` (queued, or running with the route and
/// attempt), `retrying`, `failover`, `partial_image` (no id; only when `partial_images` was asked and the provider
/// streams them), then one of `succeeded`, `failed`, `moderated`, `canceled` carrying the job as `GET
/// /api/v1/jobs/{id}` shows it, and the stream ends. A `: heartbeat` comment every 15 s. Reconnect with
/// `Last-Event-ID` to resume after that event.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^[0-9]{1,20}(-[0-9]{1,20})?$",
            description = "Resume after this event (an `id:` this stream sent)")),
    responses(
        (status = 200, description = "The job's events", content_type = "text/event-stream", body = StreamEventData),
        (status = 204, description = "Resumed after the job's last event: nothing more will come"),
        (status = 400, description = "A malformed `Last-Event-ID`", body = ErrorBody),
        (status = 404, description = "No such job (for this caller)", body = ErrorBody),
    ))]
pub async fn job_events(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<JobId>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers)?;
    // Subscribed before anything is read, so nothing published from here on is missed.
    let subscription = state.waiters.streams.subscribe(Stream::Job(id));
    let links = base_url(&state, &headers, peer);
    // The first reads take turns: when thousands of streams open at once, each read waiting for the pool holds
    // ~13 KiB of query state, and only as many as the pool has connections can run anyway. What runs in the turn is
    // boxed, so a stream waiting for one holds only this small future.
    let reads = state.clone();
    let _turn = reads.answer_reads.turn().await?;
    Box::pin(open_job_feed(state, owner, id, links, subscription, last)).await
}

/// `job_events` in its turn: the job read, the partial pictures listened to, the first events.
async fn open_job_feed(
    state: AppState,
    owner: String,
    id: JobId,
    links: Links,
    subscription: Subscription,
    last: Option<String>,
) -> Result<Response, ApiError> {
    let job = db::jobs::get_job(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Job"))?;
    let stop = CancellationToken::new();
    let partials = if job.request.0.partial_images() > 0 && !job.status.is_terminal() {
        state.queue.partials(id, stop.clone()).await.ok()
    } else {
        None
    };
    let mut feed = Feed::new(state, owner, links, Stream::Job(id), subscription, last);
    feed.partials = partials;
    feed._stop = Some(stop.drop_guard());
    feed.remaining.insert(id);
    feed.start(vec![job]).await?;
    Ok(feed.into_response())
}

/// Follow every job of a batch as server-sent events.
///
/// The events of each job as `GET /api/v1/jobs/{id}/events` sends them (their `data` names the job), then
/// `completed` with the batch as `GET /api/v1/batches/{id}` shows it, and the stream ends.
#[utoipa::path(get, path = "/api/v1/batches/{id}/events", tag = "generation",
    params(("id" = String, Path, format = Uuid, description = "Batch id"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^[0-9]{1,20}(-[0-9]{1,20})?$",
            description = "Resume after this event (an `id:` this stream sent)")),
    responses(
        (status = 200, description = "The batch's events", content_type = "text/event-stream", body = StreamEventData),
        (status = 204, description = "Resumed after the batch's last event: nothing more will come"),
        (status = 400, description = "A malformed `Last-Event-ID`", body = ErrorBody),
        (status = 404, description = "No such batch (for this caller)", body = ErrorBody),
    ))]
pub async fn batch_events(
    State(state): State<AppState>,
    Owner(owner): Owner,
    PathId(id): PathId<BatchId>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers)?;
    let subscription = state.waiters.streams.subscribe(Stream::Batch(id));
    let links = base_url(&state, &headers, peer);
    // The first reads take turns, as a job's stream's do, and what runs in the turn is boxed.
    let reads = state.clone();
    let _turn = reads.answer_reads.turn().await?;
    Box::pin(open_batch_feed(state, owner, id, links, subscription, last)).await
}

/// `batch_events` in its turn: the batch and its jobs read, the first events.
async fn open_batch_feed(
    state: AppState,
    owner: String,
    id: BatchId,
    links: Links,
    subscription: Subscription,
    last: Option<String>,
) -> Result<Response, ApiError> {
    db::batches::get_batch(&state.pool, &owner, id)
        .await?
        .ok_or(ApiError::NotFound("Batch"))?;
    let jobs = db::jobs::jobs_in_batch(&state.pool, &owner, id).await?;
    let mut feed = Feed::new(state, owner, links, Stream::Batch(id), subscription, last);
    feed.remaining = jobs.iter().map(|j| j.id).collect();
    feed.batch = Some(id);
    feed.start(jobs).await?;
    Ok(feed.into_response())
}

/// `Last-Event-ID`, when sent: an id this service gave (`<ms>-<seq>`).
fn last_event_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let number = |n: &str| !n.is_empty() && n.len() <= 20 && n.bytes().all(|c| c.is_ascii_digit());
    let well_formed = value.to_str().ok().and_then(|v| match v.split_once('-') {
        Some((a, b)) if number(a) && number(b) => Some(v.to_owned()),
        // A bare number is the first part of an id: the events after it.
        None if number(v) => Some(format!("{v}-0")),
        _ => None,
    });
    match well_formed {
        Some(v) => Ok(Some(v)),
        None => Err(ApiError::Validation(ValidationErrors::one(
            "Last-Event-ID",
            "must be an event id this stream sent (digits, or digits-digits)",
        ))),
    }
}

/// One open stream: what it has sent, what it still waits for, and where its events come from.
struct Feed {
    state: AppState,
    owner: String,
    links: Links,
    stream: Stream,
    subscription: Subscription,
    partials: Option<mpsc::Receiver<PartialFrame>>,
    /// Stops the partials' listener with the stream.
    _stop: Option<DropGuard>,
    /// The id of the last event sent (or given as `Last-Event-ID`).
    last: Option<String>,
    /// Whether the client resumed (then the end it already had is not sent again).
    resumed: bool,
    /// Jobs whose end has not been sent.
    remaining: HashSet<JobId>,
    batch: Option<BatchId>,
    ready: VecDeque<Event>,
    done: bool,
}

impl Feed {
    fn new(
        state: AppState,
        owner: String,
        links: Links,
        stream: Stream,
        subscription: Subscription,
        last: Option<String>,
    ) -> Self {
        Self {
            state,
            owner,
            links,
            stream,
            subscription,
            partials: None,
            _stop: None,
            resumed: last.is_some(),
            last,
            remaining: HashSet::new(),
            batch: None,
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// The first events: the history after `last`, then the end of any job whose end the history does not hold (it
    /// expired, or a publish was lost), else the state of a job that has no history at all.
    async fn start(&mut self, jobs: Vec<JobRecord>) -> Result<(), ApiError> {
        let history = self.history().await;
        let fresh = history.is_empty();
        if self.resumed && fresh {
            self.forget_ends_already_sent().await;
        }
        for event in history {
            self.accept(event).await?;
        }
        for job in &jobs {
            if !self.remaining.contains(&job.id) {
                continue;
            }
            if job.status.is_terminal() {
                // Ended, and the history does not say the client had the end: send it.
                self.end_of(job).await?;
            } else if fresh && !self.resumed {
                self.ready.push_back(progress_event(
                    None,
                    &JobEvent::status(job.id, job.batch_id, job.status),
                ));
            }
        }
        self.finish_batch().await?;
        Ok(())
    }

    /// A client resuming with nothing new in the history may have had the ends already: those at or before its
    /// Last-Event-ID are not sent again.
    async fn forget_ends_already_sent(&mut self) {
        let Some(last) = self.last.clone() else {
            return;
        };
        let all = match self.state.queue.history(self.stream, None).await {
            Ok(all) => all,
            Err(_) => return,
        };
        for event in all.iter().filter(|e| e.is_terminal()) {
            if self
                .stream
                .id_of(event)
                .is_some_and(|id| compare_ids(id, &last) != std::cmp::Ordering::Greater)
            {
                self.remaining.remove(&event.job_id);
            }
        }
    }

    /// The kept events after the last one sent; none when the history cannot be read (the live ones still come).
    async fn history(&self) -> Vec<JobEvent> {
        match self
            .state
            .queue
            .history(self.stream, self.last.as_deref())
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job's event history");
                Vec::new()
            }
        }
    }

    /// Sends `event` unless it was sent already (by id).
    async fn accept(&mut self, event: JobEvent) -> Result<(), ApiError> {
        let id = self.stream.id_of(&event).map(str::to_owned);
        if let (Some(id), Some(last)) = (&id, &self.last)
            && compare_ids(id, last) != std::cmp::Ordering::Greater
        {
            return Ok(());
        }
        if id.is_some() {
            self.last.clone_from(&id);
        }
        if !self.remaining.contains(&event.job_id) {
            return Ok(());
        }
        if event.is_terminal() {
            let job = db::jobs::get_job(&self.state.pool, &self.owner, event.job_id).await?;
            match job {
                Some(job) if job.status.is_terminal() => {
                    let view = load_job_view(&self.state, &self.links, &job).await?;
                    self.remaining.remove(&job.id);
                    self.ready
                        .push_back(json_event(job.status.as_str(), id, &view));
                }
                // Deleted meanwhile: its end is all there is to say.
                None => {
                    self.remaining.remove(&event.job_id);
                    self.ready.push_back(progress_event(id, &event));
                }
                Some(_) => {}
            }
            self.finish_batch().await?;
        } else {
            self.ready.push_back(progress_event(id, &event));
        }
        Ok(())
    }

    /// The end of a job known from the database.
    async fn end_of(&mut self, job: &JobRecord) -> Result<(), ApiError> {
        let view = load_job_view(&self.state, &self.links, job).await?;
        self.remaining.remove(&job.id);
        self.ready
            .push_back(json_event(job.status.as_str(), None, &view));
        Ok(())
    }

    /// Once every job of a batch has ended: `completed` with the batch, and the end of the stream.
    async fn finish_batch(&mut self) -> Result<(), ApiError> {
        if !self.remaining.is_empty() {
            return Ok(());
        }
        if let Some(batch_id) = self.batch {
            let pool = &self.state.pool;
            if let Some(batch) = db::batches::get_batch(pool, &self.owner, batch_id).await? {
                let jobs = db::jobs::jobs_in_batch(pool, &self.owner, batch_id).await?;
                let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
                let images = db::images::images_for_jobs(pool, &self.owner, &ids).await?;
                let view = batch_view(
                    &self.links,
                    &batch,
                    &jobs,
                    &images,
                    &self.state.providers.sandbox,
                );
                self.ready.push_back(json_event("completed", None, &view));
            }
        }
        self.done = true;
        Ok(())
    }

    /// After a lost subscription or a full buffer: the history since the last event sent, and the state of any job
    /// whose end was missed entirely.
    async fn catch_up(&mut self) -> Result<(), ApiError> {
        for event in self.history().await {
            self.accept(event).await?;
        }
        let ended: Vec<JobRecord> = match self.stream {
            Stream::Job(id) => db::jobs::get_job(&self.state.pool, &self.owner, id)
                .await?
                .into_iter()
                .collect(),
            Stream::Batch(id) => db::jobs::jobs_in_batch(&self.state.pool, &self.owner, id).await?,
        };
        for job in &ended {
            if job.status.is_terminal() && self.remaining.contains(&job.id) {
                self.end_of(job).await?;
            }
        }
        self.finish_batch().await
    }

    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            // The catch-up and the handling of an event are boxed: an idle stream then holds only this small
            // select, not their (much larger) state machines.
            let step = if self.subscription.behind.take() {
                Box::pin(self.catch_up()).await
            } else {
                let partial = async {
                    match self.partials.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = self.subscription.events.recv() => {
                        // A job's end is answered with reads of the job and its images. When a thousand jobs end
                        // together, their streams take turns for them (as wait mode's answers do) rather than each
                        // building its reads and queueing for the pool.
                        if event.is_terminal() {
                            let state = self.state.clone();
                            match state.answer_reads.turn().await {
                                Ok(_turn) => Box::pin(self.accept(event)).await,
                                Err(e) => Err(e),
                            }
                        } else {
                            Box::pin(self.accept(event)).await
                        }
                    }
                    () = self.subscription.behind.asked() => Ok(()),
                    frame = partial => {
                        match frame {
                            Some(frame) => self.ready.push_back(partial_event(&frame)),
                            None => self.partials = None,
                        }
                        Ok(())
                    }
                }
            };
            if let Err(e) = step {
                tracing::warn!(error = %e, "event stream ended early");
                return None;
            }
        }
    }

    fn into_response(self) -> Response {
        // Resumed after the end: nothing more will come, and 204 tells an EventSource not to reconnect.
        if self.done && self.ready.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let events = futures::stream::unfold(self, |mut feed| async move {
            let event = feed.next().await?;
            Some((Ok::<_, Infallible>(event), feed))
        });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
            .into_response()
    }
}

fn json_event(name: &str, id: Option<String>, data: &impl Serialize) -> Event {
    let event = Event::default().event(name);
    let event = match id {
        Some(id) => event.id(id),
        None => event,
    };
    event
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

/// A `status`, `retrying` or `failover` event (or the bare end of a job deleted meanwhile).
fn progress_event(id: Option<String>, event: &JobEvent) -> Event {
    let mut view = ProgressEventView {
        job_id: event.job_id,
        status: event.status,
        route: None,
        provider: None,
        model: None,
        attempt: None,
        error: None,
        retry_in_ms: None,
        reason: None,
        from: None,
        to: None,
    };
    let with_route = |view: &mut ProgressEventView, route: &str| {
        if let Some((provider, model)) = route.split_once(':') {
            view.provider = Some(provider.to_owned());
            view.model = Some(model.to_owned());
        }
        view.route = Some(route.to_owned());
    };
    let name = match &event.progress {
        None if event.status.is_terminal() => event.status.as_str(),
        None => "status",
        Some(Progress::Attempt { route, attempt }) => {
            with_route(&mut view, route);
            view.attempt = Some(*attempt);
            "status"
        }
        Some(Progress::Retrying {
            route,
            attempt,
            code,
            message,
            retry_in_ms,
        }) => {
            with_route(&mut view, route);
            view.attempt = Some(*attempt);
            view.error = Some(crate::views::JobErrorView {
                code: code.clone(),
                message: message.clone(),
            });
            view.retry_in_ms = Some(*retry_in_ms);
            "retrying"
        }
        Some(Progress::Failover { from, to }) => {
            view.from = Some(from.clone());
            view.to = Some(to.clone());
            "failover"
        }
        Some(Progress::Requeued {
            reason,
            retry_in_ms,
        }) => {
            view.reason = Some(reason.clone());
            view.retry_in_ms = Some(*retry_in_ms);
            "status"
        }
    };
    json_event(name, id, &view)
}

fn partial_event(frame: &PartialFrame) -> Event {
    json_event(
        "partial_image",
        None,
        &serde_json::json!({
            "job_id": frame.job_id,
            "index": frame.image_index,
            "partial_image_index": frame.partial_image_index,
            "b64_json": frame.b64_json,
        }),
    )
}
