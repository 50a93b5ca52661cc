//! Accepting work: check the request against the model catalogue and its lifecycle (`accept`), moderate, record in
//! Postgres, then queue. A job that cannot be queued is removed again and the client gets 503, so nothing is left
//! half-accepted.

use crate::auth::Submitter;
use crate::error::ApiError;
use crate::state::AppState;
use crate::waiters::WaitGuard;
use axum::http::HeaderMap;
use imagegen_shared::db::group_insert::{Check, Commit, GroupInserted};
use imagegen_shared::db::idempotency::{Existing, KeyClaim, KeyError};
use imagegen_shared::db::jobs::Inserted;
use imagegen_shared::db::{self, BatchRecord, JobRecord, NewJob};
use imagegen_shared::domain::{
    BatchId, FailureCode, GenerateBody, GenerationRequest, JobId, JobStatus, LifecycleNotice,
    Moderation, ModerationSource, ModerationStage, ProviderId, ValidationErrors, resolve,
};
use imagegen_shared::queue::JobMessage;
use sha2::{Digest, Sha256};

const BLOCKED_MESSAGE: &str = "The prompt was blocked by content moderation";

/// A request checked, resolved to the model that serves it, with what the client should hear about the model it
/// named (see `lifecycle_headers`).
pub struct Accepted {
    pub request: GenerationRequest,
    pub notices: Vec<LifecycleNotice>,
}

/// Parses `body` against today's offer and resolves the model's lifecycle; `Cancel-After` fills a missing deadline.
pub fn accept(
    state: &AppState,
    body: GenerateBody,
    header_deadline: Option<u32>,
) -> Result<Accepted, ApiError> {
    accept_with(state, body, header_deadline, None)
}

/// `accept` for an edit: the request carries `edit` before it is resolved, so a retired model is replaced by one
/// that can take the inputs.
pub fn accept_with(
    state: &AppState,
    body: GenerateBody,
    header_deadline: Option<u32>,
    edit: Option<imagegen_shared::domain::EditParams>,
) -> Result<Accepted, ApiError> {
    let offer = state.offer();
    let mut request =
        GenerationRequest::parse(body, &offer, header_deadline).map_err(ApiError::Validation)?;
    if let Some(edit) = edit {
        request = request.with_edit(edit);
    }
    if let Some(hook) = request.webhook() {
        crate::webhooks::check_scheme(&hook.url, &state.webhooks, "webhook_url")?;
    }
    let resolved = resolve(request, &offer, imagegen_shared::domain::today())?;
    for notice in &resolved.notices {
        metrics::counter!("imagegen_deprecated_model_requests_total", "model" => notice.model.to_string(),
            "status" => if notice.served_by.is_some() { "replaced" } else { "deprecated" })
        .increment(1);
    }
    Ok(Accepted {
        request: resolved.request,
        notices: resolved.notices,
    })
}

/// When the client first hears that its job exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// At once: a 202, or a stream whose headers name the job. The job is on disk before that.
    AtOnce,
    /// With its outcome (wait mode): the plain path's INSERT then commits without waiting for the disk, since the
    /// outcome's own write flushes it (`group_insert::Commit::Unflushed`); a wait that ends first makes it durable
    /// before answering (`wait::wait_for_job`).
    WithOutcome,
}

/// Where a submission came in: the endpoint its `Idempotency-Key` is bound to, and when its client hears of the job.
#[derive(Debug, Clone, Copy)]
pub struct Via {
    pub endpoint: &'static str,
    pub heard: Heard,
}

/// One request, from the client's body to a queued job: checked against the model catalogue (`accept`, with the
/// `Cancel-After` header), bound to its `Idempotency-Key` for `via.endpoint`, recorded and queued. Generate and jobs both
/// submit through here; the notices are the caller's to put on its answer (`lifecycle_headers`).
#[tracing::instrument(skip_all, fields(endpoint, job_id))]
pub async fn submit_request(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    headers: &axum::http::HeaderMap,
    peer: std::net::SocketAddr,
    via: Via,
    body: GenerateBody,
) -> Result<(Submitted, Vec<LifecycleNotice>), ApiError> {
    let Via { endpoint, heard } = via;
    tracing::Span::current().record("endpoint", endpoint);
    // Checked before any turn: a bad request is answered at once, even under a burst.
    let Accepted {
        mut request,
        notices,
    } = accept(state, body, crate::extract::cancel_after(headers)?)?;
    let idempotency = Idempotency::from_headers(headers, endpoint, &request)?;
    // After the key's hash: where the client reached us is not part of what it asked.
    request.set_webhook_link_base(crate::routes::base_url(state, headers, peer).base);
    // Then its turn (SUBMIT_CONCURRENCY). Under a burst a submission waits for it as this small future, with the
    // request boxed; the record's whole state (key lookup, budget, insert, queue push) is built and boxed only
    // once it has a turn (a future's size is that of its largest state, allocated up front).
    let request = Box::new(request);
    let turn = state.submissions.turn().await?;
    let submitted = Box::pin(record_job(
        state,
        submitter,
        correlation_id,
        *request,
        idempotency.as_ref(),
        &crate::edits::StagedEdit::default(),
        heard,
    ))
    .await;
    drop(turn);
    let submitted = submitted?;
    tracing::Span::current().record("job_id", tracing::field::display(submitted.job.id));
    Ok((submitted, notices))
}

/// Every item of a batch accepted, or every problem named by its item.
pub fn accept_all(
    state: &AppState,
    items: Vec<GenerateBody>,
    header_deadline: Option<u32>,
) -> Result<Vec<Accepted>, ApiError> {
    let mut accepted = Vec::with_capacity(items.len());
    let mut errors = ValidationErrors::default();
    for (index, item) in items.into_iter().enumerate() {
        match accept(state, item, header_deadline) {
            Ok(a) => accepted.push(a),
            Err(e) => collect_item_error(&mut errors, index, e)?,
        }
    }
    if errors.0.is_empty() {
        Ok(accepted)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Keeps a batch item's refusal under its index (`[2].size`), so every problem of the batch is answered at once;
/// any other error (storage, database) ends the batch now.
pub fn collect_item_error(
    errors: &mut ValidationErrors,
    index: usize,
    e: ApiError,
) -> Result<(), ApiError> {
    match e {
        ApiError::Validation(e) => errors.0.extend(e.in_item(index).0),
        ApiError::ModelRetired(e) => errors.0.extend(
            ValidationErrors::one("model", e.to_string())
                .in_item(index)
                .0,
        ),
        other => return Err(other),
    }
    Ok(())
}

/// `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) for a model on its way out, and a `Warning` (299) saying what
/// happened: `model dall-e-3 is retired; served by gpt-image-2`.
pub fn lifecycle_headers(notices: &[LifecycleNotice], headers: &mut axum::http::HeaderMap) {
    use axum::http::HeaderValue;
    let midnight = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    for notice in notices {
        if let Some(at) = notice
            .deprecated_on
            .or(notice.retires_on)
            .and_then(midnight)
            && let Ok(v) = HeaderValue::from_str(&format!("@{}", at.timestamp()))
        {
            headers.append("deprecation", v);
        }
        if let Some(at) = notice.retires_on.and_then(midnight)
            && let Ok(v) =
                HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        {
            headers.append("sunset", v);
        }
        let text = match &notice.served_by {
            Some(by) => format!("model {} is retired; served by {by}", notice.model),
            None => match notice.retires_on {
                Some(d) => format!("model {} is deprecated and retires on {d}", notice.model),
                None => format!("model {} is deprecated", notice.model),
            },
        };
        // Quoted-string: the text is ours and ASCII, without quotes or backslashes.
        if let Ok(v) = HeaderValue::from_str(&format!("299 imagegen \"{text}\"")) {
            headers.append(axum::http::header::WARNING, v);
        }
    }
}

/// The provider first in line for `request` (recorded in the job's `provider` column).
fn first_provider(state: &AppState, request: &GenerationRequest) -> ProviderId {
    let offer = state.offer();
    request
        .provider()
        .or_else(|| {
            offer.catalogue.get(request.model().as_str()).and_then(|m| {
                offer
                    .routes_for(m, imagegen_shared::domain::today())
                    .first()
                    .copied()
            })
        })
        .unwrap_or(ProviderId::OpenAi)
}

fn new_job(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    request: GenerationRequest,
    reserved_usd_micros: i64,
) -> NewJob {
    let owner = submitter.0.as_str();
    let blocked = state
        .keyword_filter
        .as_ref()
        .and_then(|f| f.check(request.prompt().as_str()));
    if let Some(hit) = &blocked {
        // The term goes to the log for operators, never to the client.
        tracing::info!(term = %hit.term, "prompt blocked by keyword moderation");
        metrics::counter!("imagegen_jobs_finished_total", "status" => "moderated").increment(1);
    }
    NewJob {
        id: JobId::new(),
        provider: first_provider(state, &request),
        owner: owner.into(),
        correlation_id: correlation_id.into(),
        max_attempts: i32::try_from(state.providers.max_attempts).unwrap_or(i32::MAX),
        max_calls: i32::try_from(state.providers.max_calls_per_job).unwrap_or(i32::MAX),
        status: if blocked.is_some() {
            JobStatus::Moderated
        } else {
            JobStatus::Queued
        },
        moderation: blocked.as_ref().map(|_| Moderation {
            stage: ModerationStage::Input,
            source: ModerationSource::Keyword,
            categories: None,
        }),
        error: blocked
            .as_ref()
            .map(|_| (FailureCode::ContentBlocked, BLOCKED_MESSAGE.to_owned())),
        deadline_secs: request.deadline_secs(),
        api_key_id: submitter.1.as_ref().map(|k| k.id),
        // A blocked prompt is never run: nothing to reserve.
        reserved_usd_micros: if blocked.is_some() {
            0
        } else {
            reserved_usd_micros
        },
        request,
        inputs: Vec::new(),
    }
}

fn message(job: &JobRecord) -> JobMessage {
    JobMessage {
        job_id: job.id,
        correlation_id: job.correlation_id.to_string(),
    }
}

/// An `Idempotency-Key` with the hash of the request it was first used with.
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

impl Idempotency {
    /// The key from the headers (1 to 255 visible ASCII characters), bound to this endpoint and request.
    pub fn from_headers<T: serde::Serialize>(
        headers: &HeaderMap,
        endpoint: &str,
        request: &T,
    ) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::InvalidBody(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?;
        let body = serde_json::to_vec(request).map_err(|e| ApiError::Internal(e.into()))?;
        let request_hash = hex::encode(
            Sha256::new()
                .chain_update(endpoint)
                .chain_update(&body)
                .finalize(),
        );
        Ok(Some(Self {
            key: key.to_owned(),
            request_hash,
        }))
    }

    fn claim<'a>(&'a self, owner: &'a str, state: &AppState) -> KeyClaim<'a> {
        KeyClaim {
            owner,
            key: &self.key,
            request_hash: &self.request_hash,
            ttl: state.idempotency_ttl,
        }
    }
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Mismatch => ApiError::IdempotencyMismatch,
        KeyError::Db(e) => e.into(),
    }
}

/// A submitted job: newly queued, or the one its Idempotency-Key stands for. A new job comes with a watch on its
/// events registered before it was queued, so a client that waits for it has missed nothing and need not read it
/// first (it is queued); a replayed job has none (it may be anywhere in its life).
pub struct Submitted {
    pub job: JobRecord,
    pub watch: Option<WaitGuard>,
}

impl Submitted {
    fn replayed(job: JobRecord) -> Self {
        Self { job, watch: None }
    }
}

/// Records and queues one accepted request, in its turn (SUBMIT_CONCURRENCY), with an edit's checked inputs (none for
/// a generation): stored once the job's id is known, recorded in the job's own transaction, and removed again if the
/// job is not recorded or cannot be queued.
pub async fn submit_job(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    request: GenerationRequest,
    idempotency: Option<&Idempotency>,
    inputs: &crate::edits::StagedEdit,
) -> Result<Submitted, ApiError> {
    let _turn = state.submissions.turn().await?;
    Box::pin(record_job(
        state,
        submitter,
        correlation_id,
        request,
        idempotency,
        inputs,
        Heard::AtOnce,
    ))
    .await
}

/// How a submission reaches Postgres: on a connection of its own (one acquisition for the key lookup, the budget row
/// and the insert), or, on group commit's plain path, with the other submissions of the moment and no connection.
enum DbPath<'a> {
    Own(imagegen_shared::db::Session),
    Gathered(&'a crate::state::GroupCommit),
}

/// Group commit's plain path: nothing to claim (no Idempotency-Key), count (no active-jobs limit) or store beside
/// the row (no edit inputs).
fn plain_path<'a>(
    state: &'a AppState,
    idempotency: Option<&Idempotency>,
    inputs: &crate::edits::StagedEdit,
) -> Option<&'a crate::state::GroupCommit> {
    state
        .group_commit
        .as_ref()
        .filter(|_| idempotency.is_none() && state.max_active_jobs().is_none() && inputs.is_empty())
}

#[tracing::instrument(skip_all, fields(model = %request.model(), job_id))]
async fn record_job(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    request: GenerationRequest,
    idempotency: Option<&Idempotency>,
    inputs: &crate::edits::StagedEdit,
    heard: Heard,
) -> Result<Submitted, ApiError> {
    let owner = submitter.0.as_str();
    let model = request.model().clone();
    // One connection for the key lookup, the budget row and the insert: under a burst each acquisition waits behind
    // every other request, so a submission waits for the pool once. It is given back before anything else takes one
    // (a replay's read, a budget counter's rebuild, the undo), so no request holds one while waiting for another.
    let mut path = match plain_path(state, idempotency, inputs) {
        Some(group) => DbPath::Gathered(group),
        None => DbPath::Own(state.pool.session().await?),
    };
    // A replay returns its job and spends nothing: looked up before any limit or quota is touched.
    if let Some(key) = idempotency
        && let DbPath::Own(session) = &mut path
        && let Some(existing) =
            db::idempotency::lookup_in(session, owner, &key.key, &key.request_hash)
                .await
                .map_err(key_error)?
    {
        drop(path);
        return replay_job(state, owner, existing)
            .await
            .map(Submitted::replayed);
    }
    let estimate = crate::budgets::estimates(state, &[&request], &[inputs])[0];
    let key = submitter.1.as_ref();
    // On the plain path, when nothing but the owner's budget row could limit the job, the INSERT checks that row
    // itself instead of a read before it (one round trip less); an owner who has a budget is then read as usual.
    let mut check = match &path {
        DbPath::Gathered(_) if crate::budgets::only_owner_row_limits(state, key) => {
            Check::UnlessBudgeted
        }
        _ => Check::Read,
    };
    let limits = match &mut path {
        _ if check == Check::UnlessBudgeted => Vec::new(),
        DbPath::Own(session) => crate::budgets::limits_in(state, session, owner, key).await?,
        DbPath::Gathered(group) => {
            crate::budgets::limits_gathered(state, &group.budget_reads, owner, key).await?
        }
    };
    let reservation = if limits.is_empty() {
        None
    } else {
        match path {
            DbPath::Gathered(_) => crate::budgets::reserve_within(state, limits, estimate).await?,
            DbPath::Own(session) => {
                // Reserving may rebuild a counter from Postgres: not while holding the session.
                drop(session);
                let r = crate::budgets::reserve_within(state, limits, estimate).await?;
                path = match state.pool.session().await {
                    Ok(s) => DbPath::Own(s),
                    Err(e) => {
                        crate::budgets::release(state, r.as_ref()).await;
                        return Err(e.into());
                    }
                };
                r
            }
        }
    };
    let images = u64::from(request.num_images());
    if let Err(e) = crate::rate_limit::spend_image_quota(state, owner, images).await {
        crate::budgets::release(state, reservation.as_ref()).await;
        return Err(e);
    }
    let reserved = if reservation.is_some() { estimate } else { 0 };
    let mut job = new_job(state, submitter, correlation_id, request, reserved);
    // A blocked prompt is never run: nothing of it is stored.
    if !inputs.is_empty() && job.status != JobStatus::Moderated {
        match crate::edits::store(state, job.id, owner, inputs).await {
            Ok(rows) => job.inputs = rows,
            Err(e) => {
                crate::rate_limit::refund_image_quota(state, owner, images).await;
                crate::budgets::release(state, reservation.as_ref()).await;
                return Err(e);
            }
        }
    }
    let input_keys = crate::edits::keys(&job.inputs);
    // A blocked prompt is never run: its reservation goes back now.
    let mut reservation = if job.status == JobStatus::Moderated {
        crate::budgets::release(state, reservation.as_ref()).await;
        // Recorded whatever the owner's budget: it never runs.
        check = Check::Read;
        None
    } else {
        reservation
    };
    let claim = idempotency.map(|k| k.claim(owner, state));
    let max_active = state.max_active_jobs();
    // A blocked prompt is answered at once, naming its job: on disk first.
    let commit = if heard == Heard::WithOutcome && job.status != JobStatus::Moderated {
        Commit::Unflushed
    } else {
        Commit::Flushed
    };
    let inserted = match path {
        DbPath::Own(mut session) => {
            db::jobs::insert_admitted_in(&mut session, &job, claim.as_ref(), max_active).await
        }
        // Nothing to claim, count or record beside the row: recorded with the submissions arriving now.
        DbPath::Gathered(group) => match group.insert.insert_checked(job, check, commit).await {
            Ok(GroupInserted::New(record)) => Ok(Inserted::New(*record)),
            Ok(GroupInserted::Budgeted(mut job)) => {
                // The owner has a budget after all: read it, reserve within it, then record the job.
                let reserved = async {
                    let limits =
                        crate::budgets::limits_gathered(state, &group.budget_reads, owner, key)
                            .await?;
                    crate::budgets::reserve_within(state, limits, estimate).await
                };
                match reserved.await {
                    Ok(r) => {
                        job.reserved_usd_micros = if r.is_some() { estimate } else { 0 };
                        reservation = r;
                        group
                            .insert
                            .insert(*job)
                            .await
                            .map(Inserted::New)
                            .map_err(KeyError::Db)
                    }
                    Err(e) => {
                        crate::rate_limit::refund_image_quota(state, owner, images).await;
                        return Err(e);
                    }
                }
            }
            Err(e) => Err(KeyError::Db(e)),
        },
    };
    let record = match inserted {
        Ok(Inserted::New(record)) => record,
        other => {
            // Nothing new was recorded: the images, the budget and the stored inputs were not spent after all.
            crate::edits::discard(state, &input_keys).await;
            crate::rate_limit::refund_image_quota(state, owner, images).await;
            crate::budgets::release(state, reservation.as_ref()).await;
            return match other.map_err(key_error)? {
                Inserted::Existing(existing) => replay_job(state, owner, existing)
                    .await
                    .map(Submitted::replayed),
                Inserted::OverActiveLimit { active } => {
                    Err(crate::rate_limit::active_limit(state, active))
                }
                Inserted::New(_) => Err(ApiError::Internal(anyhow::anyhow!(
                    "unreachable insert outcome"
                ))),
            };
        }
    };
    if record.status == JobStatus::Moderated {
        return Err(ApiError::ContentBlocked { job_id: record.id });
    }
    // Registered before the job can run, so its end cannot slip past a client that waits for it.
    let watch = state.waiters.register(&[record.id]);
    if let Err(e) = state.queue.push(message(&record)).await {
        // Deleting the job also frees its Idempotency-Key (cascade), so the client's retry can succeed.
        match db::jobs::delete_unstarted(&state.pool, record.id).await {
            Ok(_) => {
                crate::edits::discard(state, &input_keys).await;
                crate::budgets::release(state, reservation.as_ref()).await
            }
            Err(undo) => {
                // The row stays (queued, reserved): the reconciler queues it and its budget settles when it ends.
                tracing::error!(job_id = %record.id, error = %undo, "could not undo a job that was never queued");
            }
        }
        return Err(e.into());
    }
    crate::edits::settle(state, &input_keys).await;
    metrics::counter!("imagegen_jobs_submitted_total", "model" => model.to_string()).increment(1);
    tracing::Span::current().record("job_id", tracing::field::display(record.id));
    tracing::info!(job_id = %record.id, %model, provider = %record.provider, "job queued");
    Ok(Submitted {
        job: record,
        watch: Some(watch),
    })
}

/// The job an Idempotency-Key already stands for, whatever state it is in (wait mode re-attaches to it).
async fn replay_job(
    state: &AppState,
    owner: &str,
    existing: Existing,
) -> Result<JobRecord, ApiError> {
    let Existing::Job(id) = existing else {
        return Err(ApiError::IdempotencyMismatch);
    };
    let job = db::jobs::get_job(&state.pool, owner, id)
        .await?
        .ok_or(ApiError::NotFound("Job"))?;
    tracing::info!(job_id = %id, "idempotent replay");
    if job.error_code == Some(FailureCode::ContentBlocked) {
        return Err(ApiError::ContentBlocked { job_id: job.id });
    }
    Ok(job)
}

/// The batch an Idempotency-Key already stands for.
async fn replay_batch(
    state: &AppState,
    owner: &str,
    existing: Existing,
) -> Result<(BatchRecord, Vec<JobRecord>), ApiError> {
    let Existing::Batch(id) = existing else {
        return Err(ApiError::IdempotencyMismatch);
    };
    let batch = db::batches::get_batch(&state.pool, owner, id)
        .await?
        .ok_or(ApiError::NotFound("Batch"))?;
    let jobs = db::jobs::jobs_in_batch(&state.pool, owner, id).await?;
    tracing::info!(batch_id = %id, "idempotent replay");
    Ok((batch, jobs))
}

/// Records the whole batch in one transaction, then queues its unblocked items.
pub async fn submit_batch(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    requests: Vec<GenerationRequest>,
    inputs: Vec<crate::edits::StagedEdit>,
    idempotency: Option<&Idempotency>,
) -> Result<(BatchRecord, Vec<JobRecord>), ApiError> {
    let _turn = state.submissions.turn().await?;
    Box::pin(record_batch(
        state,
        submitter,
        correlation_id,
        requests,
        inputs,
        idempotency,
    ))
    .await
}

#[tracing::instrument(skip_all, fields(items = requests.len(), batch_id))]
async fn record_batch(
    state: &AppState,
    submitter: &Submitter,
    correlation_id: &str,
    requests: Vec<GenerationRequest>,
    inputs: Vec<crate::edits::StagedEdit>,
    idempotency: Option<&Idempotency>,
) -> Result<(BatchRecord, Vec<JobRecord>), ApiError> {
    let owner = submitter.0.as_str();
    // A replay returns its batch and spends nothing.
    if let Some(key) = idempotency
        && let Some(existing) =
            db::idempotency::lookup(&state.pool, owner, &key.key, &key.request_hash)
                .await
                .map_err(key_error)?
    {
        return replay_batch(state, owner, existing).await;
    }
    let mut estimates = crate::budgets::estimates(
        state,
        &requests.iter().collect::<Vec<_>>(),
        &inputs.iter().collect::<Vec<_>>(),
    );
    let total = estimates.iter().sum();
    let reservation = crate::budgets::reserve(state, owner, submitter.1.as_ref(), total).await?;
    if reservation.is_none() {
        estimates.iter_mut().for_each(|e| *e = 0);
    }
    let images = requests.iter().map(|r| u64::from(r.num_images())).sum();
    if let Err(e) = crate::rate_limit::spend_image_quota(state, owner, images).await {
        crate::budgets::release(state, reservation.as_ref()).await;
        return Err(e);
    }
    let mut jobs: Vec<NewJob> = requests
        .into_iter()
        .zip(&estimates)
        .map(|(r, estimate)| new_job(state, submitter, correlation_id, r, *estimate))
        .collect();
    // An edit batch's inputs, stored per job before the batch is recorded (a blocked item's are never stored).
    for (job, staged) in jobs.iter_mut().zip(&inputs) {
        if staged.is_empty() || job.status == JobStatus::Moderated {
            continue;
        }
        match crate::edits::store(state, job.id, owner, staged).await {
            Ok(rows) => job.inputs = rows,
            Err(e) => {
                let stored: Vec<String> = jobs
                    .iter()
                    .flat_map(|j| crate::edits::keys(&j.inputs))
                    .collect();
                crate::edits::discard(state, &stored).await;
                crate::rate_limit::refund_image_quota(state, owner, images).await;
                crate::budgets::release(state, reservation.as_ref()).await;
                return Err(e);
            }
        }
    }
    let input_keys: Vec<String> = jobs
        .iter()
        .flat_map(|j| crate::edits::keys(&j.inputs))
        .collect();
    // Blocked items are never run: their part of the reservation goes back now.
    let blocked: i64 = jobs
        .iter()
        .zip(&estimates)
        .filter(|(j, _)| j.status == JobStatus::Moderated)
        .map(|(_, e)| *e)
        .sum();
    let reservation = crate::budgets::shrink(state, reservation, blocked).await;
    let batch_id = BatchId::new();
    let claim = idempotency.map(|k| k.claim(owner, state));
    let inserted = db::batches::insert_batch_with_key(
        &state.pool,
        batch_id,
        owner,
        correlation_id,
        &jobs,
        claim.as_ref(),
        state.max_active_jobs(),
    )
    .await;
    let (batch, records) = match inserted {
        Ok(Inserted::New(rows)) => rows,
        other => {
            crate::edits::discard(state, &input_keys).await;
            crate::rate_limit::refund_image_quota(state, owner, images).await;
            crate::budgets::release(state, reservation.as_ref()).await;
            return match other.map_err(key_error)? {
                Inserted::Existing(existing) => replay_batch(state, owner, existing).await,
                Inserted::OverActiveLimit { active } => {
                    Err(crate::rate_limit::active_limit(state, active))
                }
                Inserted::New(_) => Err(ApiError::Internal(anyhow::anyhow!(
                    "unreachable insert outcome"
                ))),
            };
        }
    };
    let queued = records.iter().filter(|r| r.status == JobStatus::Queued);
    for (pushed, record) in queued.enumerate() {
        if let Err(e) = state.queue.push(message(record)).await {
            if pushed > 0 {
                // Some items are queued and may be running (writing objects) already: deleting the batch would
                // pull their rows from under them. The rest are recorded as queued in Postgres, the truth, and the
                // reconciler queues them once Redis is back; the batch stands as accepted.
                tracing::warn!(%batch_id, pushed, error = %e, "batch partly queued; the reconciler queues the rest");
                break;
            }
            // Nothing queued, so nothing started: the batch is undone whole (its Idempotency-Key freed).
            match db::batches::delete_batch(&state.pool, batch_id).await {
                Ok(_) => {
                    crate::edits::discard(state, &input_keys).await;
                    crate::budgets::release(state, reservation.as_ref()).await
                }
                Err(undo) => {
                    tracing::error!(%batch_id, error = %undo, "could not undo a batch that was not queued")
                }
            }
            return Err(e.into());
        }
        metrics::counter!("imagegen_jobs_submitted_total", "model" => record.request.0.model().to_string())
            .increment(1);
    }
    crate::edits::settle(state, &input_keys).await;
    tracing::Span::current().record("batch_id", tracing::field::display(batch_id));
    tracing::info!(%batch_id, items = records.len(), "batch queued");
    Ok((batch, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegen_shared::catalogue::ModelStatus;
    use imagegen_shared::domain::ModelId;

    #[test]
    fn lifecycle_notices_become_deprecation_sunset_and_warning_headers() {
        let day = |s: &str| s.parse::<chrono::NaiveDate>().ok();
        let notices = [
            LifecycleNotice {
                model: ModelId::new("dall-e-3"),
                status: ModelStatus::Retired,
                deprecated_on: day("2025-11-14"),
                retires_on: day("2026-05-12"),
                served_by: Some(ModelId::new("gpt-image-2")),
            },
            LifecycleNotice {
                model: ModelId::new("gpt-image-1.5"),
                status: ModelStatus::Deprecated,
                deprecated_on: None,
                retires_on: day("2026-12-16"),
                served_by: None,
            },
        ];
        let mut headers = axum::http::HeaderMap::new();
        lifecycle_headers(&notices, &mut headers);
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        // 2025-11-14T00:00:00Z and, without a deprecation date, the retirement itself.
        assert_eq!(all("deprecation"), ["@1763078400", "@1797379200"]);
        assert_eq!(
            all("sunset"),
            [
                "Tue, 12 May 2026 00:00:00 GMT",
                "Wed, 16 Dec 2026 00:00:00 GMT"
            ]
        );
        assert_eq!(
            all("warning"),
            [
                r#"299 imagegen "model dall-e-3 is retired; served by gpt-image-2""#,
                r#"299 imagegen "model gpt-image-1.5 is deprecated and retires on 2026-12-16""#
            ]
        );
    }
}
