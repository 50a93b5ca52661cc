//! Image storage behind one type, whatever the backend (object_store: local disk today, S3 and Azure later).
//! Layout: `YYYY/MM/DD/{image_id}.{ext}`; the local and memory backends also write `{image_id}.json` metadata beside
//! the image (the seed's layout). Postgres keeps the same metadata, so storage never has to be scanned.

use crate::config::{StorageArgs, StorageBackend};
use crate::domain::{ImageId, JobId};
use bytes::Bytes;
use chrono::{DateTime, Datelike, Utc};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetResult, ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;
use std::sync::Arc;

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

/// The metadata written beside each image (and kept in Postgres).
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

#[derive(Debug, Clone)]
pub struct ImageStorage {
    store: Arc<dyn ObjectStore>,
    backend: StorageBackend,
}

impl ImageStorage {
    pub fn from_args(args: &StorageArgs) -> Result<Self, StorageError> {
        args.validate()
            .map_err(|e| StorageError::Config(e.to_string()))?;
        match args.storage_backend {
            StorageBackend::Local => {
                std::fs::create_dir_all(&args.local_storage_path).map_err(|e| {
                    StorageError::Config(format!(
                        "LOCAL_STORAGE_PATH: cannot create {}: {e}",
                        args.local_storage_path.display()
                    ))
                })?;
                let fs = LocalFileSystem::new_with_prefix(&args.local_storage_path)
                    .map_err(|e| StorageError::Config(format!("LOCAL_STORAGE_PATH: {e}")))?;
                Ok(Self {
                    store: Arc::new(fs),
                    backend: StorageBackend::Local,
                })
            }
            StorageBackend::Memory => Ok(Self::memory()),
            StorageBackend::S3 | StorageBackend::Azure => Err(StorageError::Config(
                "STORAGE_BACKEND: only local and memory are available".into(),
            )),
        }
    }

    pub fn memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            backend: StorageBackend::Memory,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            StorageBackend::Local => "local",
            StorageBackend::Memory => "memory",
            StorageBackend::S3 => "s3",
            StorageBackend::Azure => "azure",
        }
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

    fn sidecar_key(key: &str) -> Option<String> {
        key.rsplit_once('.').map(|(stem, _)| format!("{stem}.json"))
    }

    fn writes_sidecar(&self) -> bool {
        matches!(self.backend, StorageBackend::Local | StorageBackend::Memory)
    }

    /// Writes the image, then its metadata sidecar; on a failed sidecar the image is removed again, so a failed
    /// call leaves nothing behind.
    pub async fn put_image(
        &self,
        key: &str,
        bytes: Bytes,
        metadata: &ImageMetadata,
    ) -> Result<(), StorageError> {
        let path = Path::from(key);
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(classify)?;
        if self.writes_sidecar()
            && let Some(sidecar) = Self::sidecar_key(key)
        {
            let json = serde_json::to_vec_pretty(metadata)
                .map_err(|e| StorageError::Config(e.to_string()))?;
            if let Err(e) = self
                .store
                .put(&Path::from(sidecar), PutPayload::from(json))
                .await
            {
                let _ = self.store.delete(&path).await;
                return Err(classify(e));
            }
        }
        Ok(())
    }

    /// Opens an image for streaming.
    pub async fn get(&self, key: &str) -> Result<GetResult, StorageError> {
        self.store.get(&Path::from(key)).await.map_err(classify)
    }

    /// Deletes an image and its sidecar; already-missing objects count as deleted.
    pub async fn delete_image(&self, key: &str) -> Result<(), StorageError> {
        let mut keys = vec![key.to_owned()];
        if self.writes_sidecar() {
            keys.extend(Self::sidecar_key(key));
        }
        for k in keys {
            match self.store.delete(&Path::from(k)).await.map_err(classify) {
                Ok(()) | Err(StorageError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Proves the backend answers: a read of a key that does not exist must come back as "not found".
    pub async fn check(&self) -> Result<(), StorageError> {
        match self
            .store
            .head(&Path::from(".imagegen-health-probe"))
            .await
            .map_err(classify)
        {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
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
            provider: "dalle3".into(),
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
        let args = StorageArgs {
            enable_image_storage: true,
            storage_backend: StorageBackend::Local,
            local_storage_path: dir.clone(),
        };
        let storage = ImageStorage::from_args(&args).expect("local storage");
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
