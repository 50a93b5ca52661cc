//! Copying a provider's pictures into our storage: decode or download (allow-listed hosts only), check the bytes
//! are an image, read its real dimensions, hash it, store it with its metadata. All or nothing per answer.
//!
//! Callers hand over what it needs as a [`StoreContext`] (the job context has `store()` for that).

use crate::download::{DownloadError, Downloader};
use crate::providers::inline_b64::InlineImage;
use crate::providers::{GeneratedImage, ImageSource, ProviderOutput};
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use imagegen_shared::db::{self, Db, JobRecord, NewImage};
use imagegen_shared::domain::{GenerationRequest, ImageId};
use imagegen_shared::storage::{ImageMetadata, ImageStorage, StorageError, sniff_image};
use sha2::{Digest, Sha256};

/// What storing needs: where the bytes go, the intent log, the downloader for result URLs, and who writes.
#[derive(Clone, Copy)]
pub struct StoreContext<'a> {
    pub pool: &'a Db,
    pub storage: &'a ImageStorage,
    pub downloader: &'a Downloader,
    pub worker_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    BadImage(String),
    /// An inline picture larger than MAX_IMAGE_BYTES, refused before decoding.
    #[error("the provider's picture is {bytes} bytes, larger than MAX_IMAGE_BYTES ({max} bytes)")]
    TooLarge { bytes: u64, max: u64 },
    #[error(transparent)]
    Db(imagegen_shared::db::DbError),
}

impl StoreError {
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Download(e) => e.is_retryable(),
            StoreError::Storage(_) => true,
            // A picture that does not decode is a provider glitch (charged, but another attempt or route may
            // give a good one); one too large would be as large again.
            StoreError::BadImage(_) => true,
            StoreError::TooLarge { .. } => false,
            StoreError::Db(_) => true,
        }
    }
}

/// Copies every picture of one provider answer into storage; on any failure removes what it stored.
/// `request` is what the serving route was asked (after any translation); `route` names it in the metadata.
/// Errors are the caller's to log (they are a failed attempt).
///
/// Pictures already in memory (base64 answers, every GPT image model's) are stored together: checked first
/// ([`check_inline`]), their intents recorded in one statement, their objects written at once ([`write_all`]), so an
/// answer of n pictures costs one commit and the slowest write, not n of each. A picture behind a URL is downloaded
/// and stored one at a time, so a job holds one download in memory at once (and never waits on picture memory it
/// holds itself).
#[tracing::instrument(skip_all, fields(images = output.images.len()))]
pub async fn store_all(
    ctx: StoreContext<'_>,
    job: &JobRecord,
    request: &GenerationRequest,
    route: &str,
    output: &ProviderOutput,
) -> Result<Vec<NewImage>, StoreError> {
    let of = Of {
        job,
        request,
        route,
    };
    if let Some(checked) = check(ctx, of, &output.images).await {
        let checked = checked?;
        db::pending::record_all(ctx.pool, &checked.keys(), job.id, ctx.worker_id)
            .await
            .map_err(StoreError::Db)?;
        return write_all(ctx, checked).await;
    }
    let mut stored = Vec::with_capacity(output.images.len());
    for (position, image) in (0i32..).zip(&output.images) {
        let one = async {
            let picture = prepare(ctx, of, position, image).await?;
            db::pending::record(ctx.pool, &picture.image.storage_key, job.id, ctx.worker_id)
                .await
                .map_err(StoreError::Db)?;
            put(ctx, picture).await
        };
        match one.await {
            Ok(img) => stored.push(img),
            Err(e) => {
                remove_objects(ctx, &stored).await;
                return Err(e);
            }
        }
    }
    Ok(stored)
}

/// An answer's in-memory pictures, checked and named, nothing written yet: their intents are to be recorded (under
/// [`Checked::keys`]) before [`write_all`] writes them.
pub struct Checked {
    pictures: Vec<Prepared>,
}

impl Checked {
    /// The storage keys the pictures will be written under, in position order.
    pub fn keys(&self) -> Vec<String> {
        self.pictures
            .iter()
            .map(|p| p.image.storage_key.clone())
            .collect()
    }
}

/// Checks every picture of an answer held in memory (a bad one stores nothing): `None` when a picture is behind a
/// URL (`store_all` downloads those one at a time).
pub async fn check_inline(
    ctx: StoreContext<'_>,
    job: &JobRecord,
    request: &GenerationRequest,
    route: &str,
    output: &ProviderOutput,
) -> Option<Result<Checked, StoreError>> {
    let of = Of {
        job,
        request,
        route,
    };
    check(ctx, of, &output.images).await
}

async fn check(
    ctx: StoreContext<'_>,
    of: Of<'_>,
    images: &[GeneratedImage],
) -> Option<Result<Checked, StoreError>> {
    if images
        .iter()
        .any(|i| matches!(i.source, ImageSource::Url(_)))
    {
        return None;
    }
    let mut pictures = Vec::with_capacity(images.len());
    for (position, image) in (0i32..).zip(images) {
        match prepare(ctx, of, position, image).await {
            Ok(picture) => pictures.push(picture),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(Checked { pictures }))
}

/// Writes checked pictures whose intents are recorded, all at once; on any failure removes what it wrote.
pub async fn write_all(
    ctx: StoreContext<'_>,
    checked: Checked,
) -> Result<Vec<NewImage>, StoreError> {
    let written =
        futures::future::join_all(checked.pictures.into_iter().map(|p| put(ctx, p))).await;
    let (mut stored, mut first_error) = (Vec::with_capacity(written.len()), None);
    for result in written {
        match result {
            Ok(image) => stored.push(image),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(stored),
        Some(e) => {
            // What was written is deleted; the failed writes' intents were forgotten by `put`.
            remove_objects(ctx, &stored).await;
            Err(e)
        }
    }
}

/// Whose pictures these are: the job, what the serving route was asked, and the route.
#[derive(Clone, Copy)]
struct Of<'a> {
    job: &'a JobRecord,
    request: &'a GenerationRequest,
    route: &'a str,
}

/// A picture checked and described, ready to be written under its key.
struct Prepared {
    bytes: Bytes,
    metadata: ImageMetadata,
    image: NewImage,
    /// Keeps the picture's memory reserved until it is stored.
    _hold: Option<crate::picture_memory::PictureHold>,
}

/// Decodes or downloads one picture, checks it is an image, reads its real size and names its object.
#[tracing::instrument(skip_all, fields(position))]
async fn prepare(
    ctx: StoreContext<'_>,
    Of {
        job,
        request,
        route,
    }: Of<'_>,
    position: i32,
    image: &GeneratedImage,
) -> Result<Prepared, StoreError> {
    // Decoded (or downloaded) and hashed on the way in wherever the answer allowed it: never a second pass.
    let InlineImage {
        bytes,
        sha256,
        hold,
    } = match &image.source {
        ImageSource::Decoded(inline) => inline.clone(),
        ImageSource::Base64(b64) => decode_inline(b64, ctx.downloader.max_bytes())?,
        ImageSource::Url(url) => ctx
            .downloader
            .fetch(url)
            .await
            .map_err(StoreError::Download)?,
    };
    let (ext, content_type) = sniff_image(&bytes).ok_or_else(|| {
        StoreError::BadImage("provider sent something that is not an image".into())
    })?;
    let dims = imagesize::blob_size(&bytes)
        .map_err(|e| StoreError::BadImage(format!("unreadable image: {e}")))?;
    let (width, height) = (
        u32::try_from(dims.width).map_err(|_| StoreError::BadImage("image too wide".into()))?,
        u32::try_from(dims.height).map_err(|_| StoreError::BadImage("image too tall".into()))?,
    );
    let sha256 = hex::encode(sha256);
    let id = ImageId::new();
    let created_at = Utc::now();
    let key = ImageStorage::key_for(id, created_at, ext);
    let seed = image.seed.or(request.seed().map(i64::from));
    let size_bytes = bytes.len() as u64;
    let metadata = ImageMetadata {
        image_id: id,
        job_id: job.id,
        owner: job.owner.to_string(),
        prompt: request.prompt().as_str().to_owned(),
        revised_prompt: image.revised_prompt.clone(),
        provider: route.to_owned(),
        width,
        height,
        seed,
        sha256: sha256.clone(),
        content_type: content_type.to_owned(),
        size_bytes,
        created_at,
    };
    Ok(Prepared {
        bytes,
        metadata,
        image: NewImage {
            id,
            position,
            storage_key: key,
            content_type: content_type.to_owned(),
            size_bytes: i64::try_from(size_bytes).unwrap_or(i64::MAX),
            sha256,
            width: i32::try_from(width).unwrap_or(i32::MAX),
            height: i32::try_from(height).unwrap_or(i32::MAX),
            revised_prompt: image.revised_prompt.clone(),
            seed,
        },
        _hold: hold,
    })
}

/// Writes a prepared picture whose intent is recorded (should this worker die before the job's success is
/// recorded, the reconciler finds the object); a failed write forgets its intent again.
async fn put(ctx: StoreContext<'_>, picture: Prepared) -> Result<NewImage, StoreError> {
    let key = &picture.image.storage_key;
    if let Err(e) = ctx
        .storage
        .put_image(key, picture.bytes, &picture.metadata)
        .await
    {
        let _ = db::pending::forget(ctx.pool, std::slice::from_ref(key)).await;
        return Err(StoreError::Storage(e));
    }
    Ok(picture.image)
}

/// The bytes of an inline (base64) picture, hashed; one whose decoded size would pass `max_bytes` (MAX_IMAGE_BYTES)
/// is refused from its length, before anything is decoded.
pub fn decode_inline(b64: &str, max_bytes: u64) -> Result<InlineImage, StoreError> {
    let bytes = decoded_len(b64);
    if bytes > max_bytes {
        return Err(StoreError::TooLarge {
            bytes,
            max: max_bytes,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map(Bytes::from)
        .map_err(|e| StoreError::BadImage(format!("provider sent invalid base64: {e}")))?;
    let sha256 = Sha256::digest(&bytes).into();
    Ok(InlineImage {
        bytes,
        sha256,
        hold: None,
    })
}

/// How many bytes `b64` decodes to (exact for valid padded base64: 3 bytes per 4 characters, less the padding).
fn decoded_len(b64: &str) -> u64 {
    let chars = b64.trim_end_matches('=').len() as u64;
    chars / 4 * 3 + (chars % 4).saturating_sub(1)
}

/// Deletes objects this worker stored but will not record; an object that cannot be deleted stays in the intent
/// log, and the reconciler tries again.
#[tracing::instrument(skip_all, fields(images = images.len()))]
pub async fn remove_objects(ctx: StoreContext<'_>, images: &[NewImage]) {
    let mut removed = Vec::with_capacity(images.len());
    for image in images {
        match ctx.storage.delete_image(&image.storage_key).await {
            Ok(()) => removed.push(image.storage_key.clone()),
            Err(e) => {
                tracing::warn!(key = %image.storage_key, error = %e, "could not remove a stored object yet")
            }
        }
    }
    if let Err(e) = db::pending::forget(ctx.pool, &removed).await {
        tracing::warn!(error = %e, "could not clear the intent log; the reconciler will");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_pictures_past_max_image_bytes_are_refused_before_decoding() {
        let encode = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        for n in 0..40 {
            assert_eq!(decoded_len(&encode(n)), n as u64, "{n}");
        }
        assert_eq!(
            decode_inline(&encode(1024), 1024)
                .expect("fits")
                .bytes
                .len(),
            1024
        );
        let err = decode_inline(&encode(1025), 1024).expect_err("too large");
        assert!(
            matches!(
                err,
                StoreError::TooLarge {
                    bytes: 1025,
                    max: 1024
                }
            ),
            "{err:?}"
        );
        assert!(!err.retryable());
        assert!(err.to_string().contains("MAX_IMAGE_BYTES"), "{err}");
        // Refused from its length alone: this is not even base64, and decoding it would say so.
        let junk = "!".repeat(64 * 1024);
        assert!(matches!(
            decode_inline(&junk, 1024),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_inline("!!!!", 1024),
            Err(StoreError::BadImage(_))
        ));
    }
}
