//! One storage suite, four backends: local disk, memory, S3 (moto's server) and Azure Blob (Azurite), the last
//! two on loopback as `scripts/services.sh` starts them (TEST_S3_ENDPOINT / TEST_AZURITE_BLOB_ENDPOINT override).

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use imagegen_shared::config::{PublicUrls, StorageArgs, StorageBackend};
use imagegen_shared::domain::{ImageId, JobId};
use imagegen_shared::storage::{ImageMetadata, ImageStorage, StorageError};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const BUCKET: &str = "imagegen-test";
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn s3_endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

fn azurite_endpoint() -> String {
    std::env::var("TEST_AZURITE_BLOB_ENDPOINT")
        .unwrap_or_else(|_| format!("http://127.0.0.1:10000/{AZURITE_ACCOUNT}"))
}

/// Storage settings for `backend` as the tests run it (a fresh directory for local disk).
pub fn args(backend: StorageBackend) -> (StorageArgs, Option<TempDir>) {
    let mut args = StorageArgs::for_backend(backend);
    let mut dir = None;
    match backend {
        StorageBackend::Local => {
            let d = TempDir::new();
            args.local_storage_path = d.0.clone();
            dir = Some(d);
        }
        StorageBackend::Memory => {}
        StorageBackend::S3 => {
            args.s3_bucket = Some(BUCKET.into());
            args.s3_prefix = format!("suite-{}/", uuid::Uuid::new_v4().simple());
            args.aws_region = Some("us-east-1".into());
            args.aws_access_key_id = Some("testing".into());
            args.aws_secret_access_key = Some("testing".to_owned().into());
            args.s3_endpoint = Some(s3_endpoint().parse().expect("TEST_S3_ENDPOINT"));
        }
        StorageBackend::Azure => {
            args.azure_storage_connection_string = Some(
                format!(
                    "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};\
                     BlobEndpoint={};",
                    azurite_endpoint()
                )
                .into(),
            );
            args.azure_storage_container = BUCKET.into();
        }
    }
    (args, dir)
}

pub struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("imagegen-storage-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn storage(backend: StorageBackend) -> (ImageStorage, Option<TempDir>) {
    let (args, dir) = args(backend);
    let storage =
        ImageStorage::from_settings(&args.settings().expect("settings")).expect("storage config");
    if let Err(e) = storage.verify().await {
        panic!(
            "{backend:?} storage is not reachable ({e}); scripts/services.sh starts moto and Azurite for the tests"
        );
    }
    (storage, dir)
}

fn metadata(id: ImageId, prompt: &str, bytes: &[u8]) -> ImageMetadata {
    ImageMetadata {
        image_id: id,
        job_id: JobId::new(),
        owner: "anonymous".into(),
        prompt: prompt.into(),
        revised_prompt: None,
        provider: "flux_schnell".into(),
        width: 64,
        height: 32,
        seed: Some(42),
        sha256: hex::encode(Sha256::digest(bytes)),
        content_type: "image/png".into(),
        size_bytes: bytes.len() as u64,
        created_at: Utc::now(),
    }
}

/// Bytes that differ everywhere, so a wrong range or a missing part shows.
fn pattern(len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..len {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        v.push((x >> 24) as u8);
    }
    Bytes::from(v)
}

async fn put_get_stream_range_delete(backend: StorageBackend) {
    let (storage, _dir) = storage(backend).await;
    let id = ImageId::new();
    let key = ImageStorage::key_for(id, Utc::now(), "png");
    let bytes = pattern(300_000);
    storage
        .put_image(&key, bytes.clone(), &metadata(id, "a cat", &bytes))
        .await
        .expect("put");

    // Streamed in chunks, whole.
    let mut stream = storage.get(&key).await.expect("get").into_stream();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(got, bytes);

    // A range.
    let part = storage
        .get_range(&key, Some(1000..2000))
        .await
        .expect("range");
    assert_eq!(part.range, 1000..2000);
    assert_eq!(part.bytes().await.expect("bytes"), bytes.slice(1000..2000));

    storage.delete_image(&key).await.expect("delete");
    assert!(matches!(
        storage.get(&key).await,
        Err(StorageError::NotFound)
    ));
    storage
        .delete_image(&key)
        .await
        .expect("deleting twice is fine");
}

async fn metadata_round_trip_with_a_long_non_ascii_prompt(backend: StorageBackend) {
    let (storage, _dir) = storage(backend).await;
    let id = ImageId::new();
    let key = ImageStorage::key_for(id, Utc::now(), "png");
    let bytes = pattern(1000);
    let prompt = "Ein Leuchtturm bei Dämmerung, 灯台, «phare» 🌅 ".repeat(80);
    let meta = metadata(id, &prompt, &bytes);
    storage.put_image(&key, bytes, &meta).await.expect("put");
    let stored = storage.metadata(&key).await.expect("metadata");
    assert_eq!(stored["image_id"], id.to_string());
    assert_eq!(stored["job_id"], meta.job_id.to_string());
    assert_eq!(stored["sha256"], meta.sha256);
    assert_eq!(stored["content_type"], "image/png");
    let kept_prompt = percent_decode(&stored["prompt"]);
    if matches!(backend, StorageBackend::Local | StorageBackend::Memory) {
        // The sidecar keeps everything.
        assert_eq!(stored["prompt"], prompt);
        assert_eq!(stored["width"], "64");
    } else {
        // Object metadata: ASCII, percent-encoded, cut to fit (the database keeps the whole prompt).
        assert!(stored["prompt"].is_ascii());
        assert!(prompt.starts_with(&kept_prompt), "{kept_prompt}");
        assert!(kept_prompt.len() > 100);
        assert_eq!(stored["prompt_truncated"], "true");
        assert_eq!(stored["size"], "64x32");
        assert_eq!(stored["seed"], "42");
        assert_eq!(stored["provider"], "flux_schnell");
    }
    storage.delete_image(&key).await.expect("delete");
}

async fn a_large_image_goes_up_in_parts_and_comes_back_whole(backend: StorageBackend) {
    let (storage, _dir) = storage(backend).await;
    let id = ImageId::new();
    let key = ImageStorage::key_for(id, Utc::now(), "png");
    let bytes = pattern(20 * 1024 * 1024 + 123);
    storage
        .put_image(&key, bytes.clone(), &metadata(id, "big", &bytes))
        .await
        .expect("multipart put");
    let got = storage
        .get(&key)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(got.len(), bytes.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&bytes));
    let stored = storage.metadata(&key).await.expect("metadata");
    assert_eq!(stored["image_id"], id.to_string());
    storage.delete_image(&key).await.expect("delete");
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .expect("utf-8")
        .into_owned()
}

macro_rules! suite {
    ($($backend:ident => $name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn put_get_stream_range_delete() {
                    super::put_get_stream_range_delete(StorageBackend::$backend).await;
                }

                #[tokio::test]
                async fn metadata_round_trip_with_a_long_non_ascii_prompt() {
                    super::metadata_round_trip_with_a_long_non_ascii_prompt(StorageBackend::$backend).await;
                }

                #[tokio::test]
                async fn a_large_image_goes_up_in_parts_and_comes_back_whole() {
                    super::a_large_image_goes_up_in_parts_and_comes_back_whole(StorageBackend::$backend).await;
                }
            }
        )*
    };
}

suite!(Local => local, Memory => memory, S3 => s3, Azure => azure);

/// Pre-signed download URLs work without any credentials of the client's own.
async fn signed_urls_fetch_the_object(backend: StorageBackend) {
    let (mut args, _dir) = args(backend);
    args.storage_public_urls = PublicUrls::Signed;
    args.storage_signed_url_ttl_secs = 60;
    let storage =
        ImageStorage::from_settings(&args.settings().expect("settings")).expect("storage");
    let id = ImageId::new();
    let key = ImageStorage::key_for(id, Utc::now(), "png");
    let bytes = pattern(5000);
    storage
        .put_image(&key, bytes.clone(), &metadata(id, "signed", &bytes))
        .await
        .expect("put");
    let url = storage
        .signed_url(&key)
        .await
        .expect("sign")
        .expect("a URL");
    let r = reqwest::get(url.clone()).await.expect("fetch signed URL");
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(r.bytes().await.expect("bytes"), bytes);
    storage.delete_image(&key).await.expect("delete");
}

#[tokio::test]
async fn s3_signed_urls_fetch_the_object() {
    signed_urls_fetch_the_object(StorageBackend::S3).await;
}

#[tokio::test]
async fn azure_signed_urls_fetch_the_object() {
    signed_urls_fetch_the_object(StorageBackend::Azure).await;
}

#[tokio::test]
async fn signed_urls_need_a_cloud_backend() {
    let (mut args, _dir) = args(StorageBackend::Local);
    args.storage_public_urls = PublicUrls::Signed;
    let err = args.settings().expect_err("refused");
    assert!(err.to_string().contains("STORAGE_PUBLIC_URLS"), "{err}");
}

/// A missing bucket or container fails the start-up check with a message naming the backend, not the first upload.
#[tokio::test]
async fn a_missing_bucket_or_container_fails_start_up_clearly() {
    // Both emulators are up and their test bucket and container answer: otherwise the failures below would prove
    // nothing (an unreachable endpoint fails start-up too).
    for backend in [StorageBackend::S3, StorageBackend::Azure] {
        let (present, _) = args(backend);
        ImageStorage::from_settings(&present.settings().expect("settings"))
            .expect("config")
            .verify()
            .await
            .unwrap_or_else(|e| {
                panic!("{backend:?} emulator must be up with its test bucket: {e}")
            });
    }
    let (mut s3, _) = args(StorageBackend::S3);
    s3.s3_bucket = Some(format!("missing-{}", uuid::Uuid::new_v4().simple()));
    let err = ImageStorage::from_settings(&s3.settings().expect("settings"))
        .expect("config")
        .verify()
        .await
        .expect_err("missing bucket");
    assert!(err.to_string().contains("STORAGE_BACKEND=s3"), "{err}");

    let (mut azure, _) = args(StorageBackend::Azure);
    azure.azure_storage_container = format!("missing-{}", uuid::Uuid::new_v4().simple());
    let err = ImageStorage::from_settings(&azure.settings().expect("settings"))
        .expect("config")
        .verify()
        .await
        .expect_err("missing container");
    assert!(err.to_string().contains("STORAGE_BACKEND=azure"), "{err}");

    let mut incomplete = StorageArgs::for_backend(StorageBackend::S3);
    incomplete.s3_bucket = None;
    let err = incomplete.settings().expect_err("no bucket");
    assert!(err.to_string().contains("S3_BUCKET"), "{err}");
}
