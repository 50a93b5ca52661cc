//! What clients see (`*View`): built from the job store's records, with our download URLs only.

use crate::links::Links;
use chrono::{DateTime, Utc};
use imagegen_shared::cost::{Charge, Cost, CostView};
use imagegen_shared::db::{BatchRecord, ImageRecord, JobRecord};
use imagegen_shared::domain::{
    BatchId, ImageId, JobId, JobStatus, ModelId, Moderation, ProviderId,
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageView {
    pub id: ImageId,
    pub job_id: JobId,
    /// Our download URL; provider URLs are never handed out.
    pub url: String,
    pub width: i32,
    pub height: i32,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub revised_prompt: Option<String>,
    pub seed: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// This picture's share of its job's cost (the job's cost split evenly over its pictures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobErrorView {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"success": true, "job_id": "0193a5b0-7c1e-7f00-9a3e-5d1c2b3a4f50", "status": "succeeded",
    "model": "gpt-image-2", "provider": "openai", "prompt": "A futuristic city skyline at sunset", "size": "1024x1024",
    "num_images": 1, "quality": "high", "images": [{"id": "0193a5b0-8a2d-7c11-8f00-1b2c3d4e5f60",
    "job_id": "0193a5b0-7c1e-7f00-9a3e-5d1c2b3a4f50",
    "url": "http://localhost:8003/api/v1/images/0193a5b0-8a2d-7c11-8f00-1b2c3d4e5f60/download", "width": 1024,
    "height": 1024, "content_type": "image/png", "size_bytes": 1234567, "sha256": "9f86d0...",
    "revised_prompt": null, "seed": null,
    "created_at": "2026-11-24T12:00:10Z"}], "attempts": 1, "generation_time_ms": 8123, "served_by": "openai:gpt-image-2",
    "usage": {"input_tokens": 9, "output_tokens": 4160, "total_tokens": 4169},
    "cost": {"usd": 0.16645, "usd_micros": 166450, "basis": "tokens", "estimated": false},
    "created_at": "2026-11-24T12:00:00Z", "correlation_id": "abc123-def456-ghi789"}))]
pub struct JobView {
    pub success: bool,
    pub job_id: JobId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<BatchId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<i32>,
    pub status: JobStatus,
    /// The model that serves the job (`GET /api/v1/models`); after a retired model's replacement, that one.
    #[schema(value_type = String)]
    pub model: ModelId,
    /// The model the client named, when another serves it (see `translations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub requested_model: Option<ModelId>,
    /// The provider first in line at submission (`openai`, `azure_openai`, `flux`, `bfl`); `served_by` names the
    /// route that made the images.
    pub provider: ProviderId,
    pub prompt: String,
    /// WIDTHxHEIGHT, or `auto`
    pub size: String,
    pub num_images: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation_level: Option<String>,
    pub allow_failover: bool,
    /// Present (and `true`) when the built-in emulator answers for this job's provider: its pictures are
    /// deterministic patterns, not the real model's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    pub images: Vec<ImageView>,
    /// Provider calls made so far.
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Moderation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_time_ms: Option<i64>,
    /// The route that produced the images, `provider:model` (`openai:gpt-image-2`, `bfl:flux-2-pro`); another
    /// provider or model after a failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Every change made to the request: for a retired model's replacement at submission, then for the route that
    /// served it (size, quality, dropped options, split calls).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<String>,
    /// Token usage as the provider reported it (GPT image models): `input_tokens`, `output_tokens`,
    /// `total_tokens` and their details, summed over the job's calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<serde_json::Value>,
    /// What the job has cost so far: every charged provider call, failover attempts on other providers included.
    pub cost: CostView,
    /// Each charged provider call (on the single-job answers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<Charge>,
    /// What the provider told us and what we changed to suit it (request ids, model, sizes sent, retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub provider_details: Option<serde_json::Value>,
    /// `client` or `deadline` for a canceled job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub correlation_id: String,
}

/// An image, with its share of `job`'s cost when given: split evenly over `pictures`, the remainder on the first.
pub fn image_view(
    links: &Links,
    image: &ImageRecord,
    job: Option<(&JobRecord, usize)>,
) -> ImageView {
    let cost = job.map(|(job, pictures)| {
        let total = job.cost();
        let n = i64::try_from(pictures.max(1)).unwrap_or(1);
        let mut share = total.usd_micros / n;
        if image.position == 0 {
            share += total.usd_micros % n;
        }
        Cost {
            usd_micros: share,
            ..total
        }
        .view()
    });
    ImageView {
        cost,
        id: image.id,
        job_id: image.job_id,
        url: links.download(image.id, &image.owner),
        width: image.width,
        height: image.height,
        content_type: image.content_type.clone(),
        size_bytes: image.size_bytes,
        sha256: image.sha256.clone(),
        revised_prompt: image.revised_prompt.clone(),
        seed: image.seed,
        created_at: image.created_at,
    }
}

/// The provider that served the job, else the one first in line.
fn served_provider(job: &JobRecord) -> Option<ProviderId> {
    match job.served_by.as_deref().and_then(|r| r.split(':').next()) {
        Some(served) => ProviderId::from_stored(served).ok(),
        None => Some(job.provider),
    }
}

/// `images` may hold other jobs' images too (a page fetched at once); only this job's are taken.
/// `sandbox`: the providers the built-in emulator answers (standalone mode without their keys).
pub fn job_view(
    base: &Links,
    job: &JobRecord,
    images: &[ImageRecord],
    sandbox: &[ProviderId],
) -> JobView {
    let req = &job.request.0;
    let error = match (&job.error_code, &job.error_message) {
        (Some(code), message) => Some(JobErrorView {
            code: code.to_string(),
            message: message.clone().unwrap_or_default(),
        }),
        _ => None,
    };
    JobView {
        success: !matches!(
            job.status,
            JobStatus::Failed | JobStatus::Moderated | JobStatus::Canceled
        ),
        job_id: job.id,
        batch_id: job.batch_id,
        batch_index: job.batch_index,
        status: job.status,
        model: req.model().clone(),
        requested_model: req.requested_model().cloned(),
        provider: job.provider,
        prompt: req.prompt().as_str().to_owned(),
        size: req.size().to_string(),
        num_images: req.num_images(),
        quality: req.quality().map(|q| q.as_str().to_owned()),
        style: req.style().map(|s| s.as_str().to_owned()),
        seed: req.seed(),
        background: req.background().map(|b| b.as_str().to_owned()),
        output_format: req.output_format().map(|f| f.as_str().to_owned()),
        output_compression: req.output_compression(),
        moderation_level: req.moderation().map(|m| m.as_str().to_owned()),
        allow_failover: req.allow_failover(),
        sandbox: served_provider(job).is_some_and(|p| sandbox.contains(&p)),
        images: {
            let own: Vec<&ImageRecord> = images.iter().filter(|i| i.job_id == job.id).collect();
            own.iter()
                .map(|i| image_view(base, i, Some((job, own.len()))))
                .collect()
        },
        attempts: job.attempts,
        error,
        moderation: job.moderation.as_ref().map(|m| m.0.clone()),
        generation_time_ms: job.generation_time_ms,
        provider_details: job.provider_meta.as_ref().map(|m| m.0.clone()),
        served_by: job.served_by.clone(),
        translations: req
            .translations()
            .iter()
            .chain(job.translations.iter().flat_map(|t| t.0.iter()))
            .cloned()
            .collect(),
        usage: job
            .provider_meta
            .as_ref()
            .and_then(|m| m.0.get("usage"))
            .filter(|u| !u.is_null())
            .cloned(),
        cost: job.cost().view(),
        charges: Vec::new(),
        cancel_reason: (job.status == JobStatus::Canceled).then(|| {
            if job.error_code == Some(imagegen_shared::domain::FailureCode::DeadlineExceeded) {
                "deadline"
            } else {
                "client"
            }
            .to_owned()
        }),
        deadline_at: job.deadline_at,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        correlation_id: job.correlation_id.to_string(),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchView {
    /// True when at least one item succeeded (partial success is a success for the batch).
    pub success: bool,
    pub batch_id: BatchId,
    /// `completed` once every item is terminal, else `running`.
    pub status: String,
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub pending: usize,
    pub items: Vec<JobView>,
    /// What the batch's jobs have cost so far, together.
    pub cost: CostView,
    pub created_at: DateTime<Utc>,
    pub correlation_id: String,
}

pub fn batch_view(
    base: &Links,
    batch: &BatchRecord,
    jobs: &[JobRecord],
    images: &[ImageRecord],
    sandbox: &[ProviderId],
) -> BatchView {
    let items: Vec<JobView> = jobs
        .iter()
        .map(|j| job_view(base, j, images, sandbox))
        .collect();
    let succeeded = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Succeeded)
        .count();
    let pending = jobs.iter().filter(|j| !j.status.is_terminal()).count();
    let failed = jobs.len() - succeeded - pending;
    BatchView {
        success: succeeded > 0 || (pending > 0 && failed == 0),
        batch_id: batch.id,
        status: if pending == 0 { "completed" } else { "running" }.to_owned(),
        total: jobs.len(),
        succeeded,
        failed,
        pending,
        items,
        cost: Cost::sum(jobs.iter().map(JobRecord::cost).collect::<Vec<_>>().iter()).view(),
        created_at: batch.created_at,
        correlation_id: batch.correlation_id.to_string(),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobListView {
    pub success: bool,
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
