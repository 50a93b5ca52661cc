//! Edit inputs named by URL (a `job_inputs` row with `source_url` and no `storage_key`): fetched once, before the
//! job's first provider call, checked as an upload is, and stored, so every later attempt, retry or failover reads
//! the stored bytes and never fetches again.
//!
//! The fetch goes through `net_guard` as webhooks do: the URL checked against EDIT_URL_* (scheme, every resolved
//! address), and again at connect time by the guarded client's resolver (DNS rebinding); no redirects, no proxy,
//! timeouts on connect and in all, the body streamed with a cap (EDIT_MAX_IMAGE_BYTES, and what is left of
//! EDIT_MAX_REQUEST_BYTES). A refused address, a 4xx, a body that is not a PNG/JPEG/WebP, too large, too many pixels
//! or a mask of the wrong size ends the job (`invalid_input`); timeouts, connection errors, 408, 429 and 5xx are
//! tried again, up to the job's attempts per route.
//!
//! Storing follows the intent log: the intent is recorded, the object written under a key with a short content hash,
//! then the row set only where `storage_key` is still NULL and the job still ours. Whoever loses a race deletes its
//! own object and uses the recorded one.

use super::context::JobContext;
use super::inputs::InputError;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use imagegen_shared::config::edits::EditSettings;
use imagegen_shared::db::job_inputs::{self, FetchedInput, InputRole, JobInput};
use imagegen_shared::db::{JobRecord, pending};
use imagegen_shared::domain::JobId;
use imagegen_shared::edit_inputs::{
    EditInputError, EditLimits, InputFormat, InputImage, Part, check_mask, inspect,
};
use imagegen_shared::net_guard::{self, Policy, Refused, Resolver, SendError, SystemResolver};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The longest one fetch may take, body included (the connection gets at most 10 s of it: see `guarded_client`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// A host's Retry-After is honoured up to this long; a longer one gets the usual backoff (the job holds its slot).
const MAX_FETCH_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Hex digits of the content hash in an input's key: enough that two different bodies never share a key.
const KEY_HASH_CHARS: usize = 16;

/// The client and rules for URL inputs, built once per worker process from EDIT_*.
pub struct InputFetcher {
    client: reqwest::Client,
    policy: Policy,
    resolver: Arc<dyn Resolver>,
    limits: EditLimits,
}

/// Why one fetch got no usable body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// It will fail the same way again: the job ends.
    #[error("{0}")]
    Final(String),
    /// The body is longer than the cap it was read with (not read further).
    #[error("the image is larger than the cap")]
    TooLarge,
    /// Worth another try (timeout, connection error, 408, 429, 5xx); `retry_after` is the host's hint.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
}

/// How [`read_capped`] stopped short.
#[derive(Debug)]
pub enum CapError<E> {
    /// The body is (or says it is) longer than the cap; the rest was not read.
    TooLarge,
    /// The body broke off.
    Body(E),
}

/// Reads a body of at most `cap` bytes: refused at once when its declared length is over the cap, and as soon as
/// the bytes read pass it (nothing more is read), so a huge or endless body costs at most `cap` bytes of memory.
pub async fn read_capped<S, E>(
    declared: Option<u64>,
    mut body: S,
    cap: u64,
) -> Result<Bytes, CapError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    if declared.is_some_and(|len| len > cap) {
        return Err(CapError::TooLarge);
    }
    let mut out = BytesMut::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(CapError::Body)?;
        if (out.len() + chunk.len()) as u64 > cap {
            return Err(CapError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

impl InputFetcher {
    /// With the system's DNS resolver.
    pub fn new(settings: &EditSettings) -> reqwest::Result<Self> {
        Self::with_resolver(settings, Arc::new(SystemResolver))
    }

    pub fn with_resolver(
        settings: &EditSettings,
        resolver: Arc<dyn Resolver>,
    ) -> reqwest::Result<Self> {
        let client =
            net_guard::guarded_client(&settings.url_policy, resolver.clone(), FETCH_TIMEOUT)?;
        Ok(Self {
            client,
            policy: settings.url_policy.clone(),
            resolver,
            limits: settings.limits,
        })
    }

    /// One GET of `url`, its body read up to `cap` bytes.
    pub async fn get(&self, url: &str, cap: u64) -> Result<Bytes, FetchError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| FetchError::Final(format!("the URL does not parse: {e}")))?;
        let request = self
            .client
            .get(parsed)
            // Some hosts refuse a blank User-Agent.
            .header(
                reqwest::header::USER_AGENT,
                concat!("imagegen/", env!("CARGO_PKG_VERSION")),
            )
            .header(reqwest::header::ACCEPT, "image/png, image/jpeg, image/webp")
            .build()
            .map_err(|e| FetchError::Final(format!("the URL cannot be requested: {e}")))?;
        let response = match net_guard::send_checked(
            &self.client,
            request,
            &self.policy,
            self.resolver.as_ref(),
        )
        .await
        {
            Ok(response) => response,
            // A name that does not resolve now may resolve later; every other refusal is the address itself.
            Err(SendError::Refused(refused @ Refused::Resolve { .. })) => {
                return Err(FetchError::Transient {
                    message: refused.to_string(),
                    retry_after: None,
                });
            }
            Err(SendError::Refused(refused)) => {
                return Err(FetchError::Final(format!("the URL is refused: {refused}")));
            }
            Err(SendError::Http(e)) => return Err(transport(&e)),
        };
        let status = response.status().as_u16();
        match status {
            200 => {}
            408 | 429 | 500..=599 => {
                return Err(FetchError::Transient {
                    message: format!("the image's host answered HTTP {status}"),
                    retry_after: crate::retry::parse_retry_after(response.headers()),
                });
            }
            300..=399 => {
                return Err(FetchError::Final(format!(
                    "the image's host answered a redirect (HTTP {status}); redirects are not followed, give the \
                     image's own URL"
                )));
            }
            _ => {
                return Err(FetchError::Final(format!(
                    "the image's host answered HTTP {status}"
                )));
            }
        }
        let declared = response.content_length();
        read_capped(declared, response.bytes_stream(), cap)
            .await
            .map_err(|e| match e {
                CapError::TooLarge => FetchError::TooLarge,
                CapError::Body(e) => transport(&e),
            })
    }
}

/// A transfer that failed on the way: worth another try.
fn transport(e: &reqwest::Error) -> FetchError {
    let message = if e.is_timeout() {
        format!(
            "fetching the image timed out (after at most {} s)",
            FETCH_TIMEOUT.as_secs()
        )
    } else if e.is_connect() {
        "could not connect to the image's host".to_owned()
    } else {
        format!("fetching the image failed: {e}")
    };
    FetchError::Transient {
        message,
        retry_after: None,
    }
}

fn part_of(row: &JobInput) -> Part {
    match row.role {
        InputRole::Image => Part::Image(usize::try_from(row.position).unwrap_or(0)),
        InputRole::Mask => Part::Mask,
    }
}

/// What a stored row says of its image, for the mask check (`alpha` as the mask was checked when it was stored).
fn recorded_image(row: &JobInput) -> Option<InputImage> {
    Some(InputImage {
        format: InputFormat::from_content_type(row.content_type.as_deref()?)?,
        width: u32::try_from(row.width?).ok()?,
        height: u32::try_from(row.height?).ok()?,
        alpha: row.role == InputRole::Mask,
        bytes: u64::try_from(row.size_bytes?).ok()?,
    })
}

/// Fetches and stores every row of `rows` that has a URL and no object yet, in order (the images, then the mask),
/// and answers the rows as now recorded. The mask is checked against the first image however each arrived.
pub async fn fetch_missing(
    ctx: &JobContext,
    job: &JobRecord,
    mut rows: Vec<JobInput>,
) -> Result<Vec<JobInput>, InputError> {
    let limits = ctx.inputs.limits;
    let stored: u64 = rows
        .iter()
        .filter(|r| r.storage_key.is_some())
        .filter_map(|r| u64::try_from(r.size_bytes?).ok())
        .sum();
    let mut left = limits.max_request_bytes.saturating_sub(stored);
    let mut first: Option<InputImage> = None;
    let mut mask_to_check: Option<InputImage> = None;
    for row in rows.iter_mut() {
        let part = part_of(row);
        if row.storage_key.is_none() {
            let Some(url) = row.source_url.clone() else {
                return Err(InputError::Unusable(format!(
                    "{part} was never stored and has no URL"
                )));
            };
            let cap = limits.max_image_bytes.min(left);
            let limit = if cap < limits.max_image_bytes {
                format!(
                    "the {cap} bytes left of the edit's EDIT_MAX_REQUEST_BYTES ({})",
                    limits.max_request_bytes
                )
            } else {
                format!("EDIT_MAX_IMAGE_BYTES ({cap} bytes)")
            };
            let bytes = fetch_retrying(ctx, job, part, &url, cap, &limit).await?;
            let image = inspect(part, &bytes, &limits).map_err(unusable)?;
            if part == Part::Mask {
                // The first image comes before the mask (`job_inputs::load` orders them so).
                if let Some(first) = &first {
                    check_mask(&image, first).map_err(unusable)?;
                }
            }
            left = left.saturating_sub(image.bytes);
            *row = store_fetched(ctx, job, row, bytes, &image).await?;
            if part == Part::Image(0) {
                first = recorded_image(row);
            }
        } else {
            match part {
                Part::Image(0) => first = recorded_image(row),
                Part::Mask => mask_to_check = recorded_image(row),
                Part::Image(_) => {}
            }
        }
    }
    // A stored mask against a first image fetched just now.
    if let (Some(mask), Some(first)) = (&mask_to_check, &first) {
        check_mask(mask, first).map_err(unusable)?;
    }
    Ok(rows)
}

fn unusable(e: EditInputError) -> InputError {
    InputError::Unusable(e.to_string())
}

/// Fetches `url` for `part` (at most `cap` bytes, which `limit` names), trying a transient failure again after a
/// backoff, up to the job's attempts per route.
async fn fetch_retrying(
    ctx: &JobContext,
    job: &JobRecord,
    part: Part,
    url: &str,
    cap: u64,
    limit: &str,
) -> Result<Bytes, InputError> {
    let tries = job.max_attempts.max(1);
    let mut tried = 0;
    loop {
        tried += 1;
        match ctx.inputs.get(url, cap).await {
            Ok(bytes) => {
                tracing::info!(%part, bytes = bytes.len(), tries = tried, "fetched an edit input");
                return Ok(bytes);
            }
            Err(FetchError::Final(message)) => {
                return Err(InputError::Unusable(format!("{part}: {message}")));
            }
            Err(FetchError::TooLarge) => {
                return Err(InputError::Unusable(format!(
                    "{part} is larger than {limit}"
                )));
            }
            Err(FetchError::Transient {
                message,
                retry_after,
            }) => {
                if tried >= tries {
                    return Err(InputError::Unusable(format!(
                        "{part} could not be fetched in {tried} tries: {message}"
                    )));
                }
                let delay = ctx.backoff.delay(
                    u32::try_from(tried).unwrap_or(1),
                    retry_after.filter(|d| *d <= MAX_FETCH_RETRY_AFTER),
                );
                tracing::warn!(%part, tries = tried, error = %message, delay_ms = delay.as_millis() as u64,
                    "fetching an edit input failed; trying again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `inputs/<job>/image-<n>-<hash>.<ext>` or `inputs/<job>/mask-<hash>.<ext>`: the hash keeps two fetches of
/// different bytes apart; the same bytes may share the key (they are the same object).
fn fetched_key(job: JobId, row: &JobInput, sha256: &str, format: InputFormat) -> String {
    let hash = &sha256[..KEY_HASH_CHARS.min(sha256.len())];
    let ext = format.extension();
    match row.role {
        InputRole::Image => format!("inputs/{job}/image-{}-{hash}.{ext}", row.position),
        InputRole::Mask => format!("inputs/{job}/mask-{hash}.{ext}"),
    }
}

/// Stores a fetched input and records it on its row (see the module's notes on races); answers the row as recorded.
async fn store_fetched(
    ctx: &JobContext,
    job: &JobRecord,
    row: &JobInput,
    bytes: Bytes,
    image: &InputImage,
) -> Result<JobInput, InputError> {
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let key = fetched_key(job.id, row, &sha256, image.format);
    let content_type = image.format.content_type();
    // The intent first: should this worker die before the row names the object, the reconciler deletes it.
    pending::record(&ctx.pool, &key, job.id, &ctx.worker_id).await?;
    if let Err(e) = ctx.storage.put_input(&key, bytes, content_type).await {
        let _ = pending::forget(&ctx.pool, std::slice::from_ref(&key)).await;
        return Err(InputError::Storage(format!("{}: {e}", part_of(row))));
    }
    let fetched = FetchedInput {
        storage_key: key.clone(),
        content_type: content_type.to_owned(),
        size_bytes: i64::try_from(image.bytes).unwrap_or(i64::MAX),
        sha256,
        width: i32::try_from(image.width).unwrap_or(i32::MAX),
        height: i32::try_from(image.height).unwrap_or(i32::MAX),
    };
    // A database error leaves the object and its intent: the reconciler removes it once the job is not ours.
    let won = job_inputs::record_fetched(
        &ctx.pool,
        job.id,
        row.role,
        row.position,
        &ctx.worker_id,
        &fetched,
    )
    .await?;
    if won {
        forget_intent(ctx, &key).await;
        return Ok(JobInput {
            storage_key: Some(fetched.storage_key),
            content_type: Some(fetched.content_type),
            size_bytes: Some(fetched.size_bytes),
            sha256: Some(fetched.sha256),
            width: Some(fetched.width),
            height: Some(fetched.height),
            ..row.clone()
        });
    }
    // Another attempt recorded this input first, or the job is no longer ours.
    let current = job_inputs::load(&ctx.pool, job.id)
        .await?
        .into_iter()
        .find(|r| r.role == row.role && r.position == row.position);
    let recorded = current.as_ref().and_then(|r| r.storage_key.as_deref());
    if recorded != Some(key.as_str()) {
        match ctx.storage.delete_image(&key).await {
            Ok(()) => forget_intent(ctx, &key).await,
            // The intent stays: the reconciler deletes the object once the job is not ours.
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not remove a fetched input that lost its race")
            }
        }
    } else {
        forget_intent(ctx, &key).await;
    }
    match current {
        Some(current) if current.storage_key.is_some() => {
            tracing::info!(part = %part_of(row), "another attempt stored this input first; using its object");
            Ok(current)
        }
        _ => Err(InputError::NotOurs),
    }
}

async fn forget_intent(ctx: &JobContext, key: &str) {
    if let Err(e) = pending::forget(&ctx.pool, &[key.to_owned()]).await {
        // Harmless: an object a job's input names is never taken for an orphan.
        tracing::warn!(%key, error = %e, "could not clear the intent of a stored input");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A body of `chunks` chunks of `size` bytes that counts how many were pulled.
    fn body(
        chunks: usize,
        size: usize,
        pulled: Arc<AtomicUsize>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter((0..chunks).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Ok(Bytes::from(vec![i as u8; size]))
        }))
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_read_whole() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let bytes = read_capped(None, body(4, 10, pulled.clone()), 40)
            .await
            .map_err(|_| "refused")
            .expect("exactly the cap fits");
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[30..], &[3u8; 10]);
        assert_eq!(pulled.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn reading_stops_at_the_chunk_that_passes_the_cap() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let result = read_capped(None, body(1000, 10, pulled.clone()), 39).await;
        assert!(matches!(result, Err(CapError::TooLarge)));
        // The fourth chunk passes 39 bytes; none after it is pulled.
        assert_eq!(pulled.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let result = read_capped(Some(41), body(4, 10, pulled.clone()), 40).await;
        assert!(matches!(result, Err(CapError::TooLarge)));
        assert_eq!(pulled.load(Ordering::SeqCst), 0);
        // A declared length is not trusted either way: a short declaration does not let more through.
        let result = read_capped(Some(10), body(5, 10, pulled.clone()), 40).await;
        assert!(matches!(result, Err(CapError::TooLarge)));
    }

    #[tokio::test]
    async fn a_broken_body_is_passed_on() {
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("reset")),
        ]);
        match read_capped(None, broken, 100).await {
            Err(CapError::Body(e)) => assert_eq!(e.to_string(), "reset"),
            Err(CapError::TooLarge) => panic!("not too large"),
            Ok(_) => panic!("a broken body is no body"),
        }
    }

    #[test]
    fn keys_carry_the_role_position_and_a_short_hash() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let job = JobId::new();
        let mut row = JobInput {
            job_id: job,
            owner: "o".into(),
            role: InputRole::Image,
            position: 2,
            storage_key: None,
            source_url: Some("https://images.example/a.png".into()),
            source_image: None,
            content_type: None,
            size_bytes: None,
            sha256: None,
            width: None,
            height: None,
        };
        assert_eq!(
            fetched_key(job, &row, sha, InputFormat::Png),
            format!("inputs/{job}/image-2-0123456789abcdef.png")
        );
        row.role = InputRole::Mask;
        row.position = 0;
        assert_eq!(
            fetched_key(job, &row, &sha.replace('0', "f"), InputFormat::Webp),
            format!("inputs/{job}/mask-f123456789abcdef.webp")
        );
    }
}
