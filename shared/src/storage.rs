//! Image storage behind one type, whatever the backend: local disk, S3 (or an S3-compatible store), Azure Blob, or
//! memory for tests, all through object_store.
//!
//! Layout: `YYYY/MM/DD/{image_id}.{ext}` (under S3_PREFIX on S3). Metadata travels with the object: a
//! `{image_id}.json` sidecar on local disk and memory, object metadata on S3 and Azure (ASCII, percent-encoded, the
//! prompt truncated to fit their size limits; the database keeps the full record, so storage is never scanned).
//! Large images go up as multipart uploads cut from the one buffer the worker holds; a failed upload is aborted, so
//! nothing half-written stays behind.
//!
//! Longer than ~500 lines on purpose: one type over four backends (keys, metadata, multipart uploads, signed
//! URLs, the start-up check); its unit tests are here too.

use crate::config::storage::{S3Sse, StorageSettings, StorageTarget};
use crate::config::{PublicUrls, StorageBackend};
use crate::domain::{ImageId, JobId};
use bytes::Bytes;
use chrono::{DateTime, Datelike, Utc};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, GetResult,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use secrecy::ExposeSecret;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Objects above this go up in parts of this size (S3's smallest part is 5 MiB).
const MULTIPART_PART: usize = 8 * 1024 * 1024;
/// Bound on one storage request, and on connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The prompt kept in object metadata, percent-encoded (S3 allows 2 KB of user metadata in all).
const PROMPT_METADATA_BYTES: usize = 1024;
/// Bound on the start-up check, so a black-holed endpoint fails start-up instead of hanging it.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("image not found in storage")]
    NotFound,
    #[error("storage backend error: {0}")]
    Backend(#[from] object_store::Error),
    #[error("storage configuration: {0}")]
    Config(String),
}

fn classify(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        other => StorageError::Backend(other),
    }
}

/// The metadata written beside each image (and kept in the database).
#[derive(Debug, Clone, Serialize)]
pub struct ImageMetadata {
    pub image_id: ImageId,
    pub job_id: JobId,
    pub owner: String,
    pub prompt: String,
    pub revised_prompt: Option<String>,
    pub provider: String,
    pub width: u32,
    pub height: u32,
    pub seed: Option<i64>,
    pub sha256: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
}

impl ImageMetadata {
    /// As object metadata: lowercase names with `separator` between words (S3 takes hyphens, and HTTP proxies may
    /// drop headers with underscores; Azure needs identifiers, so underscores), ASCII values.
    fn object_attributes(&self, separator: char) -> Attributes {
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from(self.content_type.clone()),
        );
        let (prompt, truncated) = encode_truncated(&self.prompt, PROMPT_METADATA_BYTES);
        let mut put = |name: &'static str, value: String| {
            let name = name.replace('_', &separator.to_string());
            attributes.insert(
                Attribute::Metadata(name.into()),
                AttributeValue::from(value),
            );
        };
        put("image_id", self.image_id.to_string());
        put("job_id", self.job_id.to_string());
        put("owner", encode_truncated(&self.owner, 256).0);
        put("prompt", prompt);
        if truncated {
            put("prompt_truncated", "true".into());
        }
        put("provider", self.provider.clone());
        put("size", format!("{}x{}", self.width, self.height));
        if let Some(seed) = self.seed {
            put("seed", seed.to_string());
        }
        put("sha256", self.sha256.clone());
        put("created_at", self.created_at.to_rfc3339());
        attributes
    }
}

/// Percent-encodes `text` (UTF-8) into at most `limit` bytes, cutting on a character boundary; `true` when cut.
pub fn encode_truncated(text: &str, limit: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(limit));
    for ch in text.chars() {
        let mut buf = [0u8; 4];
        let encoded: String =
            percent_encoding::utf8_percent_encode(ch.encode_utf8(&mut buf), METADATA_ESCAPES)
                .collect();
        if out.len() + encoded.len() > limit {
            return (out, true);
        }
        out.push_str(&encoded);
    }
    (out, false)
}

/// Everything but unreserved URL characters and the space-free ASCII punctuation that headers carry safely.
const METADATA_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The file extension and content type of an image, told by its first bytes rather than by what a provider claims.
pub fn sniff_image(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("png", "image/png"))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("jpg", "image/jpeg"))
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("webp", "image/webp"))
    } else {
        None
    }
}

#[derive(Clone)]
pub struct ImageStorage {
    store: Arc<dyn ObjectStore>,
    /// Pre-signs download URLs (S3 and Azure), when STORAGE_PUBLIC_URLS=signed.
    signer: Option<Arc<dyn Signer>>,
    signed_ttl: Duration,
    backend: StorageBackend,
    /// Prepended to every key (S3_PREFIX), always empty or ending in `/`.
    prefix: String,
    /// A human name of where the images go, for logs and errors.
    location: String,
}

impl std::fmt::Debug for ImageStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStorage")
            .field("location", &self.location)
            .field("signed_urls", &self.signer.is_some())
            .finish()
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

impl ImageStorage {
    /// Builds the backend from its settings; nothing touches the network yet (see [`ImageStorage::verify`]).
    pub fn from_settings(settings: &StorageSettings) -> Result<Self, StorageError> {
        let signed_ttl = settings.signed_url_ttl;
        let wants_signer = settings.public_urls == PublicUrls::Signed;
        let storage =
            match &settings.target {
                StorageTarget::Local { root } => {
                    std::fs::create_dir_all(root).map_err(|e| {
                        StorageError::Config(format!(
                            "LOCAL_STORAGE_PATH: cannot create {}: {e}",
                            root.display()
                        ))
                    })?;
                    let fs = LocalFileSystem::new_with_prefix(root)
                        .map_err(|e| StorageError::Config(format!("LOCAL_STORAGE_PATH: {e}")))?;
                    // The resolved directory, so the start-up log says where the pictures really go.
                    let shown = std::path::absolute(root).unwrap_or_else(|_| root.clone());
                    Self::plain(
                        Arc::new(fs),
                        StorageBackend::Local,
                        format!("local:{}", shown.display()),
                    )
                }
                StorageTarget::Memory => Self::memory(),
                StorageTarget::S3(s3) => {
                    let mut builder = AmazonS3Builder::from_env()
                        .with_bucket_name(&s3.bucket)
                        .with_client_options(client_options())
                        .with_retry(retry_config());
                    if let Some(region) = &s3.region {
                        builder = builder.with_region(region);
                    }
                    if let Some(credentials) = &s3.credentials {
                        builder = builder
                            .with_access_key_id(&credentials.access_key_id)
                            .with_secret_access_key(credentials.secret_access_key.expose_secret());
                        if let Some(token) = &credentials.session_token {
                            builder = builder.with_token(token.expose_secret());
                        }
                    }
                    if let Some(endpoint) = &s3.endpoint {
                        builder = builder
                            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                            .with_allow_http(endpoint.scheme() == "http")
                            .with_virtual_hosted_style_request(false);
                    }
                    builder = match &s3.encryption {
                        S3Sse::None => builder,
                        S3Sse::SseS3 => {
                            let key: AmazonS3ConfigKey = "aws_server_side_encryption"
                                .parse()
                                .map_err(|e| StorageError::Config(format!("S3_SSE: {e}")))?;
                            builder.with_config(key, "AES256")
                        }
                        S3Sse::SseKms(key_id) => {
                            builder.with_sse_kms_encryption(key_id.clone().unwrap_or_default())
                        }
                    };
                    let store =
                        Arc::new(builder.build().map_err(|e| {
                            StorageError::Config(format!("STORAGE_BACKEND=s3: {e}"))
                        })?);
                    Self {
                        store: store.clone(),
                        signer: wants_signer.then_some(store as Arc<dyn Signer>),
                        signed_ttl,
                        backend: StorageBackend::S3,
                        prefix: if s3.prefix.is_empty() {
                            String::new()
                        } else {
                            format!("{}/", s3.prefix)
                        },
                        location: format!("s3://{}/{}", s3.bucket, s3.prefix),
                    }
                }
                StorageTarget::Azure(azure) => {
                    let mut builder = MicrosoftAzureBuilder::from_env()
                        .with_container_name(&azure.container)
                        .with_client_options(client_options())
                        .with_retry(retry_config());
                    if azure.use_emulator {
                        builder = builder.with_use_emulator(true);
                    }
                    if let Some(account) = &azure.account {
                        builder = builder.with_account(account);
                    }
                    if let Some(key) = &azure.access_key {
                        builder = builder.with_access_key(key.expose_secret());
                    }
                    if let Some(endpoint) = &azure.blob_endpoint {
                        builder = builder
                            .with_allow_http(endpoint.starts_with("http://"))
                            .with_endpoint(endpoint.clone());
                    }
                    let store = Arc::new(builder.build().map_err(|e| {
                        StorageError::Config(format!("STORAGE_BACKEND=azure: {e}"))
                    })?);
                    Self {
                        store: store.clone(),
                        signer: wants_signer.then_some(store as Arc<dyn Signer>),
                        signed_ttl,
                        backend: StorageBackend::Azure,
                        prefix: String::new(),
                        location: format!("azure container {}", azure.container),
                    }
                }
            };
        Ok(storage)
    }

    fn plain(store: Arc<dyn ObjectStore>, backend: StorageBackend, location: String) -> Self {
        Self {
            store,
            signer: None,
            signed_ttl: Duration::from_secs(300),
            backend,
            prefix: String::new(),
            location,
        }
    }

    pub fn memory() -> Self {
        Self::plain(
            Arc::new(InMemory::new()),
            StorageBackend::Memory,
            "memory".into(),
        )
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            StorageBackend::Local => "local",
            StorageBackend::Memory => "memory",
            StorageBackend::S3 => "s3",
            StorageBackend::Azure => "azure",
        }
    }

    /// Where the images go (`s3://bucket/prefix`, `local:/path`, ...).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// `YYYY/MM/DD/{image_id}.{ext}`.
    pub fn key_for(image_id: ImageId, created: DateTime<Utc>, ext: &str) -> String {
        format!(
            "{:04}/{:02}/{:02}/{image_id}.{ext}",
            created.year(),
            created.month(),
            created.day()
        )
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    fn sidecar_key(key: &str) -> Option<String> {
        key.rsplit_once('.').map(|(stem, _)| format!("{stem}.json"))
    }

    fn writes_sidecar(&self) -> bool {
        matches!(self.backend, StorageBackend::Local | StorageBackend::Memory)
    }

    /// Writes the image with its metadata. Large images go up in parts sliced from `bytes` (no copy); a failed
    /// upload is aborted and a failed sidecar removes the image again, so a failed call leaves nothing behind.
    pub async fn put_image(
        &self,
        key: &str,
        bytes: Bytes,
        metadata: &ImageMetadata,
    ) -> Result<(), StorageError> {
        let path = self.path(key);
        let attributes = match self.backend {
            StorageBackend::Local | StorageBackend::Memory => Attributes::new(),
            StorageBackend::S3 => metadata.object_attributes('-'),
            StorageBackend::Azure => metadata.object_attributes('_'),
        };
        if bytes.len() > MULTIPART_PART {
            self.put_multipart(&path, bytes, attributes).await?;
        } else {
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.store
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
                .map_err(classify)?;
        }
        if self.writes_sidecar()
            && let Some(sidecar) = Self::sidecar_key(key)
        {
            let json = serde_json::to_vec_pretty(metadata)
                .map_err(|e| StorageError::Config(e.to_string()))?;
            if let Err(e) = self
                .store
                .put(&self.path(&sidecar), PutPayload::from(json))
                .await
            {
                let _ = self.store.delete(&path).await;
                return Err(classify(e));
            }
        }
        Ok(())
    }

    /// Writes an edit's input object (no sidecar: its facts are the job's `job_inputs` row). `delete_image` removes
    /// it again.
    pub async fn put_input(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let mut attributes = Attributes::new();
        if !matches!(self.backend, StorageBackend::Local | StorageBackend::Memory) {
            attributes.insert(
                Attribute::ContentType,
                AttributeValue::from(content_type.to_owned()),
            );
        }
        let path = self.path(key);
        if bytes.len() > MULTIPART_PART {
            return self.put_multipart(&path, bytes, attributes).await;
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_bytes(bytes), options)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        path: &Path,
        bytes: Bytes,
        attributes: Attributes,
    ) -> Result<(), StorageError> {
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self
            .store
            .put_multipart_opts(path, options)
            .await
            .map_err(classify)?;
        let mut offset = 0;
        let result = async {
            while offset < bytes.len() {
                let end = (offset + MULTIPART_PART).min(bytes.len());
                upload
                    .put_part(PutPayload::from_bytes(bytes.slice(offset..end)))
                    .await?;
                offset = end;
            }
            upload.complete().await
        }
        .await;
        if let Err(e) = result {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(error = %abort, "could not abort a failed multipart upload");
            }
            return Err(classify(e));
        }
        Ok(())
    }

    /// Opens an image for streaming: all of it, or `range` (end exclusive).
    pub async fn get(&self, key: &str) -> Result<GetResult, StorageError> {
        self.get_range(key, None).await
    }

    pub async fn get_range(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<GetResult, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        self.store
            .get_opts(&self.path(key), options)
            .await
            .map_err(classify)
    }

    /// The metadata stored with an image: the sidecar's fields, or the object's metadata (as stored, encoded).
    pub async fn metadata(&self, key: &str) -> Result<BTreeMap<String, String>, StorageError> {
        if self.writes_sidecar() {
            let sidecar = Self::sidecar_key(key).ok_or(StorageError::NotFound)?;
            let bytes = self
                .store
                .get(&self.path(&sidecar))
                .await
                .map_err(classify)?
                .bytes()
                .await?;
            let json: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes)
                .map_err(|e| StorageError::Config(format!("unreadable sidecar: {e}")))?;
            return Ok(json
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect());
        }
        let head = self
            .store
            .get_opts(
                &self.path(key),
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(classify)?;
        Ok(head
            .attributes
            .iter()
            .filter_map(|(attribute, value)| match attribute {
                Attribute::Metadata(name) => Some((name.replace('-', "_"), value.to_string())),
                Attribute::ContentType => Some(("content_type".to_owned(), value.to_string())),
                _ => None,
            })
            .collect())
    }

    /// A short-lived URL the client can fetch the image from directly, when STORAGE_PUBLIC_URLS=signed.
    pub async fn signed_url(&self, key: &str) -> Result<Option<url::Url>, StorageError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(http::Method::GET, &self.path(key), self.signed_ttl)
            .await
            .map_err(classify)?;
        Ok(Some(url))
    }

    /// Deletes an image and its sidecar; already-missing objects count as deleted.
    pub async fn delete_image(&self, key: &str) -> Result<(), StorageError> {
        let mut keys = vec![key.to_owned()];
        if self.writes_sidecar() {
            keys.extend(Self::sidecar_key(key));
        }
        for k in keys {
            match self.store.delete(&self.path(&k)).await.map_err(classify) {
                Ok(()) | Err(StorageError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Proves the backend answers: listing a prefix works (a missing bucket or container, or refused credentials,
    /// fail; a HEAD cannot tell a missing bucket from a missing key).
    pub async fn check(&self) -> Result<(), StorageError> {
        let probe = self.path(".imagegen-health-probe/");
        self.store
            .list_with_delimiter(Some(&probe))
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Writes and deletes a small probe object: the backend exists and we may write to it.
    async fn probe_write(&self) -> Result<(), StorageError> {
        self.check().await?;
        let probe = self.path(&format!(
            ".imagegen-start-probe-{}",
            uuid::Uuid::new_v4().simple()
        ));
        self.store
            .put(&probe, PutPayload::from_static(b"ok"))
            .await
            .map_err(classify)?;
        match self.store.delete(&probe).await.map_err(classify) {
            Ok(()) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The start-up check (a write and a delete): a misconfigured backend stops the process with a clear message
    /// rather than failing the first upload.
    pub async fn verify(&self) -> Result<(), StorageError> {
        match tokio::time::timeout(VERIFY_TIMEOUT, self.probe_write()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Config(format!(
                "STORAGE_BACKEND={}: {} is not usable: {e}",
                self.backend_name(),
                self.location
            ))),
            Err(_) => Err(StorageError::Config(format!(
                "STORAGE_BACKEND={}: {} did not answer within {} s",
                self.backend_name(),
                self.location,
                VERIFY_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn metadata(id: ImageId) -> ImageMetadata {
        ImageMetadata {
            image_id: id,
            job_id: JobId::new(),
            owner: "anonymous".into(),
            prompt: "a cat".into(),
            revised_prompt: None,
            provider: "openai:gpt-image-2".into(),
            width: 1,
            height: 1,
            seed: None,
            sha256: "00".into(),
            content_type: "image/png".into(),
            size_bytes: 3,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn keys_follow_the_date_layout() {
        let id = ImageId::new();
        let t = Utc
            .with_ymd_and_hms(2026, 3, 7, 12, 0, 0)
            .single()
            .expect("valid date");
        assert_eq!(
            ImageStorage::key_for(id, t, "png"),
            format!("2026/03/07/{id}.png")
        );
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(
            sniff_image(b"\x89PNG\r\n\x1a\nrest"),
            Some(("png", "image/png"))
        );
        assert_eq!(
            sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(("jpg", "image/jpeg"))
        );
        assert_eq!(
            sniff_image(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(("webp", "image/webp"))
        );
        assert_eq!(sniff_image(b"<html>"), None);
    }

    #[tokio::test]
    async fn local_backend_writes_image_and_sidecar_and_deletes_both() {
        let dir = std::env::temp_dir().join(format!("imagegen-storage-{}", uuid::Uuid::new_v4()));
        let mut args = crate::config::StorageArgs::for_backend(StorageBackend::Local);
        args.local_storage_path = dir.clone();
        let storage =
            ImageStorage::from_settings(&args.settings().expect("valid")).expect("local storage");
        storage.check().await.expect("healthy");
        let id = ImageId::new();
        let key = ImageStorage::key_for(id, Utc::now(), "png");
        storage
            .put_image(&key, Bytes::from_static(b"abc"), &metadata(id))
            .await
            .expect("put");
        let image_path = dir.join(&key);
        let sidecar_path = image_path.with_extension("json");
        assert_eq!(std::fs::read(&image_path).expect("image file"), b"abc");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sidecar_path).expect("sidecar")).expect("json");
        assert_eq!(sidecar["image_id"], id.to_string());
        let got = storage
            .get(&key)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(&got[..], b"abc");
        storage.delete_image(&key).await.expect("delete");
        assert!(!image_path.exists() && !sidecar_path.exists());
        assert!(matches!(
            storage.get(&key).await,
            Err(StorageError::NotFound)
        ));
        storage
            .delete_image(&key)
            .await
            .expect("deleting twice is fine");
        let _ = std::fs::remove_dir_all(dir);
    }
}
