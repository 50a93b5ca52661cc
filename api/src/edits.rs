//! An edit's inputs on the API side: checked against the model that serves the edit before anything is stored
//! (`stage`, `stage_sources`), written under `inputs/<job_id>/` with an intent record first (`store`), and removed
//! again when their job is not recorded or queued (`discard`). Recorded before queued, removed if it cannot be
//! queued; a request that dies between the write and the insert leaves an intent the reconciler's orphan sweep
//! reclaims. Inputs named by https URL (the JSON form) are recorded as URLs: the worker fetches, checks and stores
//! them before the first provider call (`worker/src/job/input_fetch.rs`); here only their address and count are
//! checked.

use crate::error::ApiError;
use crate::state::AppState;
use bytes::Bytes;
use imagegen_shared::catalogue::ModelSpec;
use imagegen_shared::db::job_inputs::{InputRole, JobInput};
use imagegen_shared::db::{self, pending};
use imagegen_shared::domain::{GenerateBody, JobId};
use imagegen_shared::edit_inputs::{
    EditInputError, EditLimits, InputImage, Part, check_count, check_inputs, check_mask,
    check_mask_format, inspect,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One uploaded (or copied) input, checked, not yet stored.
#[derive(Debug, Clone)]
pub struct StagedInput {
    pub role: InputRole,
    pub position: i32,
    pub bytes: Bytes,
    pub image: InputImage,
    pub sha256: String,
    /// The service's own image it was copied from.
    pub source_image: Option<uuid::Uuid>,
}

/// Where one input of an edit comes from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// Uploaded, or copied from the caller's own image (`source_image`).
    Bytes {
        bytes: Bytes,
        source_image: Option<uuid::Uuid>,
    },
    /// An https URL, already checked against EDIT_URL_* (`check_image_url`); the worker fetches it.
    Url(url::Url),
}

/// One input named by URL, to be recorded for the worker to fetch.
#[derive(Debug, Clone)]
pub struct UrlInput {
    pub role: InputRole,
    pub position: i32,
    pub url: url::Url,
}

/// An edit's checked inputs: the bytes to store with the job, and the URLs the worker is to fetch.
#[derive(Debug, Clone, Default)]
pub struct StagedEdit {
    pub stored: Vec<StagedInput>,
    pub urls: Vec<UrlInput>,
}

impl StagedEdit {
    pub fn is_empty(&self) -> bool {
        self.stored.is_empty() && self.urls.is_empty()
    }

    /// Each input's (width, height), `None` for one the worker has yet to fetch.
    pub fn sizes(&self) -> Vec<Option<(u32, u32)>> {
        self.stored
            .iter()
            .map(|s| Some((s.image.width, s.image.height)))
            .chain(self.urls.iter().map(|_| None))
            .collect()
    }

    /// What identifies the inputs for an Idempotency-Key: each stored one's sha256, each URL as written.
    pub fn identity(&self) -> Vec<String> {
        self.stored
            .iter()
            .map(|s| format!("{}:{}:{}", s.role.as_str(), s.position, s.sha256))
            .chain(
                self.urls
                    .iter()
                    .map(|u| format!("{}:{}:{}", u.role.as_str(), u.position, u.url)),
            )
            .collect()
    }
}

/// Checks inputs from any source against `model` and stages them: bytes as an upload is checked (format, size,
/// pixels, the mask against the first image), URLs by count only (their bytes are the worker's to check). With no
/// URL among them this is exactly [`stage`].
pub fn stage_sources(
    model: &ModelSpec,
    images: Vec<InputSource>,
    mask: Option<InputSource>,
    limits: &EditLimits,
) -> Result<StagedEdit, ApiError> {
    let has_url = images
        .iter()
        .chain(mask.iter())
        .any(|s| matches!(s, InputSource::Url(_)));
    if !has_url {
        let bytes = |s: InputSource| match s {
            InputSource::Bytes {
                bytes,
                source_image,
            } => Some((bytes, source_image)),
            InputSource::Url(_) => None,
        };
        let (images, sources): (Vec<Bytes>, Vec<Option<uuid::Uuid>>) =
            images.into_iter().filter_map(bytes).unzip();
        let (mask, mask_source) = mask.and_then(bytes).unzip();
        let mut stored = stage(model, images, mask, limits)?;
        for input in &mut stored {
            input.source_image = match input.role {
                InputRole::Image => usize::try_from(input.position)
                    .ok()
                    .and_then(|i| sources.get(i).copied().flatten()),
                InputRole::Mask => mask_source.flatten(),
            };
        }
        return Ok(StagedEdit {
            stored,
            urls: Vec::new(),
        });
    }
    check_count(model, images.len(), mask.is_some())?;
    let total: u64 = images
        .iter()
        .chain(mask.iter())
        .map(|s| match s {
            InputSource::Bytes { bytes, .. } => bytes.len() as u64,
            InputSource::Url(_) => 0,
        })
        .sum();
    if total > limits.max_request_bytes {
        return Err(EditInputError::RequestTooLarge {
            bytes: total,
            limit: limits.max_request_bytes,
        }
        .into());
    }
    let mut staged = StagedEdit::default();
    let mut first: Option<InputImage> = None;
    let parts = images
        .into_iter()
        .enumerate()
        .map(|(i, s)| (Part::Image(i), InputRole::Image, i, s))
        .chain(mask.map(|s| (Part::Mask, InputRole::Mask, 0, s)));
    for (part, role, index, source) in parts {
        let position = i32::try_from(index).unwrap_or(i32::MAX);
        match source {
            InputSource::Url(url) => staged.urls.push(UrlInput {
                role,
                position,
                url,
            }),
            InputSource::Bytes {
                bytes,
                source_image,
            } => {
                let image = inspect(part, &bytes, limits)?;
                if role == InputRole::Mask {
                    // The size against a first image given by URL is the worker's to check, once it has it.
                    match &first {
                        Some(first) => check_mask(&image, first)?,
                        None => check_mask_format(&image)?,
                    }
                } else if index == 0 {
                    first = Some(image);
                }
                staged.stored.push(StagedInput {
                    role,
                    position,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    bytes,
                    image,
                    source_image,
                });
            }
        }
    }
    Ok(staged)
}

/// Checks the images and mask against `model` (count, format, size, mask) and stages them in order.
pub fn stage(
    model: &ModelSpec,
    images: Vec<Bytes>,
    mask: Option<Bytes>,
    limits: &EditLimits,
) -> Result<Vec<StagedInput>, ApiError> {
    let refs: Vec<&[u8]> = images.iter().map(|b| b.as_ref()).collect();
    let (checked, mask_checked) = check_inputs(model, &refs, mask.as_deref(), limits)?;
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let mut staged: Vec<StagedInput> = images
        .into_iter()
        .zip(checked)
        .enumerate()
        .map(|(i, (bytes, image))| StagedInput {
            role: InputRole::Image,
            position: i32::try_from(i).unwrap_or(i32::MAX),
            sha256: sha(&bytes),
            bytes,
            image,
            source_image: None,
        })
        .collect();
    if let (Some(bytes), Some(image)) = (mask, mask_checked) {
        staged.push(StagedInput {
            role: InputRole::Mask,
            position: 0,
            sha256: sha(&bytes),
            bytes,
            image,
            source_image: None,
        });
    }
    Ok(staged)
}

/// `inputs/<job_id>/image-<n>.<ext>` or `inputs/<job_id>/mask.<ext>`.
pub fn input_key(job: JobId, input: &StagedInput) -> String {
    let ext = input.image.format.extension();
    match input.role {
        InputRole::Image => format!("inputs/{job}/image-{}.{ext}", input.position),
        InputRole::Mask => format!("inputs/{job}/mask.{ext}"),
    }
}

/// Writes each input (its intent recorded first) and answers the rows to insert with the job. On a failure the
/// objects already written are removed again.
pub async fn store(
    state: &AppState,
    job: JobId,
    owner: &str,
    staged: &StagedEdit,
) -> Result<Vec<JobInput>, ApiError> {
    let mut rows = Vec::with_capacity(staged.stored.len() + staged.urls.len());
    let mut written = Vec::with_capacity(staged.stored.len());
    for input in &staged.stored {
        let key = input_key(job, input);
        let result = async {
            pending::record(&state.pool, &key, job, pending::API_WRITER).await?;
            written.push(key.clone());
            state
                .storage
                .put_input(&key, input.bytes.clone(), input.image.format.content_type())
                .await
                .map_err(|e| {
                    ApiError::Unavailable(format!("Image storage cannot store an edit input: {e}"))
                })
        }
        .await;
        if let Err(e) = result {
            discard(state, &written).await;
            return Err(e);
        }
        rows.push(JobInput {
            job_id: job,
            owner: owner.to_owned(),
            role: input.role,
            position: input.position,
            storage_key: Some(key),
            source_url: None,
            source_image: input.source_image,
            content_type: Some(input.image.format.content_type().to_owned()),
            size_bytes: i64::try_from(input.image.bytes).ok(),
            sha256: Some(input.sha256.clone()),
            width: i32::try_from(input.image.width).ok(),
            height: i32::try_from(input.image.height).ok(),
        });
    }
    rows.extend(staged.urls.iter().map(|input| JobInput {
        job_id: job,
        owner: owner.to_owned(),
        role: input.role,
        position: input.position,
        storage_key: None,
        source_url: Some(input.url.to_string()),
        source_image: None,
        content_type: None,
        size_bytes: None,
        sha256: None,
        width: None,
        height: None,
    }));
    Ok(rows)
}

/// The stored inputs of `rows` (URL inputs have none yet).
pub fn keys(rows: &[JobInput]) -> Vec<String> {
    rows.iter().filter_map(|r| r.storage_key.clone()).collect()
}

/// Removes objects whose job was not recorded or queued. An object that cannot be deleted keeps its intent record,
/// so the orphan sweep retries it.
pub async fn discard(state: &AppState, keys: &[String]) {
    let mut gone = Vec::with_capacity(keys.len());
    for key in keys {
        match state.storage.delete_image(key).await {
            Ok(()) => gone.push(key.clone()),
            Err(e) => {
                tracing::warn!(key, error = %e, "could not remove an edit input; the orphan sweep will")
            }
        }
    }
    if let Err(e) = pending::forget(&state.pool, &gone).await {
        tracing::warn!(error = %e, "could not forget removed edit inputs");
    }
}

/// The intents of inputs now named by their recorded job (the job's rows keep them from the sweep already).
pub async fn settle(state: &AppState, keys: &[String]) {
    if let Err(e) = db::pending::forget(&state.pool, keys).await {
        tracing::warn!(error = %e, "could not forget the intents of recorded edit inputs");
    }
}

/// The text fields of a multipart edit as generate's body: numbers and booleans parsed, `webhook_events` comma
/// separated, an unknown field refused naming it.
pub fn body_from_fields(mut fields: BTreeMap<String, String>) -> Result<GenerateBody, ApiError> {
    const NUMBERS: [&str; 4] = [
        "num_images",
        "seed",
        "output_compression",
        "deadline_seconds",
    ];
    let mut map = serde_json::Map::new();
    if let Some(events) = fields.remove("webhook_events") {
        let list: Vec<serde_json::Value> = events
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::Value::String(e.to_owned()))
            .collect();
        map.insert("webhook_events".into(), serde_json::Value::Array(list));
    }
    for (name, value) in fields {
        let json = if NUMBERS.contains(&name.as_str()) {
            let n: i64 = value.trim().parse().map_err(|_| {
                ApiError::InvalidBody(format!("{name} must be an integer, got '{value}'"))
            })?;
            serde_json::Value::from(n)
        } else if name == "allow_failover" {
            let b: bool = value.trim().parse().map_err(|_| {
                ApiError::InvalidBody(format!("{name} must be true or false, got '{value}'"))
            })?;
            serde_json::Value::Bool(b)
        } else {
            serde_json::Value::String(value)
        };
        map.insert(name, json);
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::InvalidBody(format!("Invalid edit fields: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_generate_body_and_unknown_ones_are_refused() {
        let fields: BTreeMap<String, String> = [
            ("prompt", "a red door"),
            ("num_images", "2"),
            ("allow_failover", "false"),
            ("webhook_events", "job.succeeded, job.failed"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let body = body_from_fields(fields).expect("body");
        assert_eq!(body.prompt, "a red door");
        assert_eq!(body.num_images, Some(2));
        assert_eq!(body.allow_failover, Some(false));
        assert_eq!(
            body.webhook_events.as_deref(),
            Some(&["job.succeeded".to_owned(), "job.failed".to_owned()][..])
        );
        let bad = BTreeMap::from([
            ("prompt".to_owned(), "x".to_owned()),
            ("colour".to_owned(), "red".to_owned()),
        ]);
        let e = body_from_fields(bad).expect_err("unknown");
        assert!(e.to_string().contains("colour"), "{e}");
        let bad = BTreeMap::from([
            ("prompt".to_owned(), "x".to_owned()),
            ("num_images".to_owned(), "two".to_owned()),
        ]);
        assert!(body_from_fields(bad).is_err());
    }

    fn picture(width: u32, height: u32, alpha: bool) -> Bytes {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, width, height);
            let (color, channels) = if alpha {
                (png::ColorType::Rgba, 4)
            } else {
                (png::ColorType::Rgb, 3)
            };
            encoder.set_color(color);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().expect("header");
            writer
                .write_image_data(&vec![90u8; (width * height) as usize * channels])
                .expect("data");
        }
        Bytes::from(out)
    }

    fn gpt() -> ModelSpec {
        imagegen_shared::catalogue::Catalogue::builtin()
            .get("gpt-image-2")
            .expect("gpt-image-2")
            .as_ref()
            .clone()
    }

    fn url(text: &str) -> InputSource {
        InputSource::Url(url::Url::parse(text).expect("url"))
    }

    fn field(e: &ApiError) -> String {
        match e {
            ApiError::Validation(v) => v.0.iter().map(|d| d.field.clone()).collect(),
            ApiError::InputTooLarge { part, .. } => part.clone().unwrap_or_default(),
            other => panic!("not an input refusal: {other}"),
        }
    }

    #[test]
    fn mixed_inputs_store_the_bytes_and_leave_the_urls_to_the_worker() {
        let source = uuid::Uuid::now_v7();
        let first = picture(64, 48, false);
        let staged = stage_sources(
            &gpt(),
            vec![
                InputSource::Bytes {
                    bytes: first.clone(),
                    source_image: Some(source),
                },
                url("https://images.example/b.png"),
            ],
            Some(InputSource::Bytes {
                bytes: picture(64, 48, true),
                source_image: None,
            }),
            &EditLimits::default(),
        )
        .expect("staged");
        let stored: Vec<_> = staged
            .stored
            .iter()
            .map(|s| (s.role, s.position, s.source_image))
            .collect();
        assert_eq!(
            stored,
            [
                (InputRole::Image, 0, Some(source)),
                (InputRole::Mask, 0, None)
            ]
        );
        assert_eq!(staged.stored[0].sha256, hex::encode(Sha256::digest(&first)));
        assert_eq!(staged.urls.len(), 1);
        assert_eq!(
            (staged.urls[0].role, staged.urls[0].position),
            (InputRole::Image, 1)
        );
        assert_eq!(
            staged.sizes(),
            [Some((64, 48)), Some((64, 48)), None],
            "a URL input's size is not known before the worker fetches it"
        );
        // The Idempotency-Key covers a URL as written and a copied input by its bytes.
        let identity = staged.identity();
        assert!(
            identity.contains(&"image:1:https://images.example/b.png".to_owned()),
            "{identity:?}"
        );
        assert!(
            identity.contains(&format!("image:0:{}", staged.stored[0].sha256)),
            "{identity:?}"
        );
    }

    #[test]
    fn beside_urls_the_bytes_are_still_checked_and_the_count_is_the_models() {
        let limits = EditLimits::default();
        let bytes = |b: Bytes| InputSource::Bytes {
            bytes: b,
            source_image: None,
        };
        // A mask the first image's size, the first image given as bytes: checked now.
        let e = stage_sources(
            &gpt(),
            vec![
                bytes(picture(64, 48, false)),
                url("https://a.example/b.png"),
            ],
            Some(bytes(picture(32, 24, true))),
            &limits,
        )
        .expect_err("mask size");
        assert_eq!(field(&e), "mask");
        // The first image by URL: the mask's size waits for the worker, its format does not.
        stage_sources(
            &gpt(),
            vec![url("https://a.example/a.png")],
            Some(bytes(picture(32, 24, true))),
            &limits,
        )
        .expect("size checked by the worker");
        let e = stage_sources(
            &gpt(),
            vec![url("https://a.example/a.png")],
            Some(bytes(picture(32, 24, false))),
            &limits,
        )
        .expect_err("mask without alpha");
        assert_eq!(field(&e), "mask");
        // Not an image at all, beside a URL.
        let e = stage_sources(
            &gpt(),
            vec![
                url("https://a.example/a.png"),
                bytes(Bytes::from_static(b"just text")),
            ],
            None,
            &limits,
        )
        .expect_err("text");
        assert_eq!(field(&e), "image[1]");
        // One input more than the model takes, all URLs.
        let max = gpt().edits.expect("edits").max_input_images;
        let many = (0..=max)
            .map(|i| url(&format!("https://a.example/{i}.png")))
            .collect();
        assert!(stage_sources(&gpt(), many, None, &limits).is_err());
        // The request's byte allowance counts the bytes given, whatever else is a URL.
        let small = EditLimits {
            max_request_bytes: 100,
            ..limits
        };
        let e = stage_sources(
            &gpt(),
            vec![
                url("https://a.example/a.png"),
                bytes(picture(64, 48, false)),
            ],
            None,
            &small,
        )
        .expect_err("request too large");
        assert!(matches!(e, ApiError::InputTooLarge { .. }), "{e}");
    }
}
