//! Where images are stored: local disk, memory (tests), S3 or Azure Blob, and how clients download them.
//!
//! Just over ~500 lines: the clap declarations of twenty storage variables, their validation, the typed settings
//! and their tests.

use super::ConfigError;
use clap::Args;
use clap::builder::BoolishValueParser;
use secrecy::SecretString;
use std::path::PathBuf;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageBackend {
    /// Files under LOCAL_STORAGE_PATH.
    Local,
    /// In this process's memory; for tests (a separate API process cannot read it).
    Memory,
    /// AWS S3 or an S3-compatible store (S3_ENDPOINT: MinIO, R2, moto).
    S3,
    /// Azure Blob Storage (or Azurite with AZURE_STORAGE_USE_EMULATOR).
    Azure,
}

/// Server-side encryption of S3 objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum S3Encryption {
    /// The bucket's default.
    None,
    /// SSE-S3 (AES256, keys managed by S3).
    #[value(name = "sse-s3", alias = "aes256")]
    SseS3,
    /// SSE-KMS with S3_SSE_KMS_KEY_ID (or the account's default KMS key).
    #[value(name = "sse-kms", alias = "aws:kms")]
    SseKms,
}

/// How image downloads reach clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublicUrls {
    /// The API streams the bytes from storage.
    Proxy,
    /// The API answers 307 to a short-lived pre-signed S3 or SAS URL (s3 and azure only).
    Signed,
}

#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Images are always stored before a job succeeds (clients only get our URLs), so `false` is refused.
    #[arg(long, env = "ENABLE_IMAGE_STORAGE", value_name = "ENABLE_IMAGE_STORAGE", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enable_image_storage: bool,
    /// local, memory, s3 or azure.
    #[arg(
        long,
        env = "STORAGE_BACKEND",
        value_name = "STORAGE_BACKEND",
        default_value = "local",
        ignore_case = true
    )]
    pub storage_backend: StorageBackend,
    /// Root directory of the local backend.
    #[arg(
        long,
        env = "LOCAL_STORAGE_PATH",
        value_name = "LOCAL_STORAGE_PATH",
        default_value = "./generated_images"
    )]
    pub local_storage_path: PathBuf,
    /// S3 bucket (STORAGE_BACKEND=s3).
    #[arg(long, env = "S3_BUCKET", value_name = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. `images/`.
    #[arg(long, env = "S3_PREFIX", value_name = "S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
    /// AWS region of the bucket.
    #[arg(long, env = "AWS_REGION", value_name = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Static credentials; without them the usual AWS chain applies (web identity, ECS, instance metadata).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", value_name = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        value_name = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub aws_secret_access_key: Option<SecretString>,
    #[arg(
        long,
        env = "AWS_SESSION_TOKEN",
        value_name = "AWS_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub aws_session_token: Option<SecretString>,
    /// An S3-compatible endpoint (MinIO, R2, moto): path-style requests, http allowed.
    #[arg(long, env = "S3_ENDPOINT", value_name = "S3_ENDPOINT")]
    pub s3_endpoint: Option<Url>,
    /// Server-side encryption: none, sse-s3 or sse-kms.
    #[arg(
        long,
        env = "S3_SSE",
        value_name = "S3_SSE",
        default_value = "none",
        ignore_case = true
    )]
    pub s3_sse: S3Encryption,
    /// KMS key id or ARN for S3_SSE=sse-kms (default: the account's S3 KMS key).
    #[arg(long, env = "S3_SSE_KMS_KEY_ID", value_name = "S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,
    /// Storage account (STORAGE_BACKEND=azure).
    #[arg(
        long,
        env = "AZURE_STORAGE_ACCOUNT",
        value_name = "AZURE_STORAGE_ACCOUNT"
    )]
    pub azure_storage_account: Option<String>,
    /// Shared key; without it (and without a connection string) managed identity / workload identity applies.
    #[arg(
        long,
        env = "AZURE_STORAGE_ACCESS_KEY",
        value_name = "AZURE_STORAGE_ACCESS_KEY",
        hide_env_values = true
    )]
    pub azure_storage_access_key: Option<SecretString>,
    /// `AccountName=...;AccountKey=...;BlobEndpoint=...` (or `UseDevelopmentStorage=true`).
    #[arg(
        long,
        env = "AZURE_STORAGE_CONNECTION_STRING",
        value_name = "AZURE_STORAGE_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub azure_storage_connection_string: Option<SecretString>,
    /// Blob container.
    #[arg(
        long,
        env = "AZURE_STORAGE_CONTAINER",
        value_name = "AZURE_STORAGE_CONTAINER",
        default_value = "generated-images"
    )]
    pub azure_storage_container: String,
    /// Talk to Azurite (devstoreaccount1 on 127.0.0.1:10000 unless the connection string says otherwise).
    #[arg(long, env = "AZURE_STORAGE_USE_EMULATOR", value_name = "AZURE_STORAGE_USE_EMULATOR",
          default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub azure_storage_use_emulator: bool,
    /// proxy (the API streams the bytes) or signed (307 to a short-lived pre-signed URL; s3 and azure only).
    #[arg(
        long,
        env = "STORAGE_PUBLIC_URLS",
        value_name = "STORAGE_PUBLIC_URLS",
        default_value = "proxy",
        ignore_case = true
    )]
    pub storage_public_urls: PublicUrls,
    /// Lifetime of a pre-signed download URL, in seconds.
    #[arg(long, env = "STORAGE_SIGNED_URL_TTL_SECS", value_name = "STORAGE_SIGNED_URL_TTL_SECS",
          default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=604_800))]
    pub storage_signed_url_ttl_secs: u64,
    /// Delete images (objects and rows) older than this many days; unset keeps them forever.
    #[arg(long, env = "IMAGE_RETENTION_DAYS", value_name = "IMAGE_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub image_retention_days: Option<u32>,
}

impl StorageArgs {
    /// The defaults for `backend` (tests fill in the rest).
    pub fn for_backend(backend: StorageBackend) -> Self {
        Self {
            enable_image_storage: true,
            storage_backend: backend,
            local_storage_path: PathBuf::from("./generated_images"),
            s3_bucket: None,
            s3_prefix: String::new(),
            aws_region: None,
            aws_access_key_id: None,
            aws_secret_access_key: None,
            aws_session_token: None,
            s3_endpoint: None,
            s3_sse: S3Encryption::None,
            s3_sse_kms_key_id: None,
            azure_storage_account: None,
            azure_storage_access_key: None,
            azure_storage_connection_string: None,
            azure_storage_container: "generated-images".into(),
            azure_storage_use_emulator: false,
            storage_public_urls: PublicUrls::Proxy,
            storage_signed_url_ttl_secs: 300,
            image_retention_days: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enable_image_storage {
            return Err(ConfigError::new(
                "ENABLE_IMAGE_STORAGE",
                "false is not supported: images are stored before a job succeeds and clients never get provider URLs",
            ));
        }
        match self.storage_backend {
            StorageBackend::Local | StorageBackend::Memory => {
                if self.storage_public_urls == PublicUrls::Signed {
                    return Err(ConfigError::new(
                        "STORAGE_PUBLIC_URLS",
                        "signed needs STORAGE_BACKEND=s3 or azure",
                    ));
                }
            }
            StorageBackend::S3 => {
                if self
                    .s3_bucket
                    .as_deref()
                    .is_none_or(|b| b.trim().is_empty())
                {
                    return Err(ConfigError::new(
                        "S3_BUCKET",
                        "required with STORAGE_BACKEND=s3",
                    ));
                }
                if self.aws_access_key_id.is_some() != self.aws_secret_access_key.is_some() {
                    return Err(ConfigError::new(
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together",
                    ));
                }
                if self.s3_sse_kms_key_id.is_some() && self.s3_sse != S3Encryption::SseKms {
                    return Err(ConfigError::new(
                        "S3_SSE_KMS_KEY_ID",
                        "needs S3_SSE=sse-kms",
                    ));
                }
            }
            StorageBackend::Azure => {
                let has_connection_string = self.azure_storage_connection_string.is_some();
                if !has_connection_string
                    && !self.azure_storage_use_emulator
                    && self
                        .azure_storage_account
                        .as_deref()
                        .is_none_or(|a| a.trim().is_empty())
                {
                    return Err(ConfigError::new(
                        "AZURE_STORAGE_ACCOUNT",
                        "required with STORAGE_BACKEND=azure (or AZURE_STORAGE_CONNECTION_STRING)",
                    ));
                }
                if self.azure_storage_container.trim().is_empty() {
                    return Err(ConfigError::new(
                        "AZURE_STORAGE_CONTAINER",
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where the images go, validated: what `ImageStorage::from_settings` builds from. Built once at start-up by
/// `StorageArgs::settings`.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub target: StorageTarget,
    pub public_urls: PublicUrls,
    pub signed_url_ttl: std::time::Duration,
    /// IMAGE_RETENTION_DAYS as a duration.
    pub retention: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub enum StorageTarget {
    Local { root: PathBuf },
    Memory,
    S3(S3Settings),
    Azure(AzureBlobSettings),
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Empty, or without leading and trailing slashes.
    pub prefix: String,
    pub region: Option<String>,
    pub credentials: Option<S3Credentials>,
    pub endpoint: Option<Url>,
    pub encryption: S3Sse,
}

#[derive(Debug, Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Sse {
    None,
    SseS3,
    /// With a key id, or the account's default KMS key.
    SseKms(Option<String>),
}

/// Azure Blob settings, the connection string (if any) already read into its parts.
#[derive(Debug, Clone)]
pub struct AzureBlobSettings {
    pub container: String,
    pub account: Option<String>,
    pub access_key: Option<SecretString>,
    pub blob_endpoint: Option<String>,
    pub use_emulator: bool,
}

/// The parts of an Azure connection string we use.
#[derive(Debug, Default)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    blob_endpoint: Option<String>,
    development: bool,
}

fn parse_connection_string(raw: &str) -> ConnectionString {
    let mut parsed = ConnectionString::default();
    for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        match name.trim() {
            "AccountName" => parsed.account = Some(value.trim().to_owned()),
            "AccountKey" => parsed.key = Some(value.trim().to_owned()),
            "BlobEndpoint" => {
                parsed.blob_endpoint = Some(value.trim().trim_end_matches('/').to_owned())
            }
            "UseDevelopmentStorage" => {
                parsed.development = value.trim().eq_ignore_ascii_case("true")
            }
            _ => {}
        }
    }
    parsed
}

impl StorageArgs {
    /// The settings, once every rule holds (see `validate`).
    pub fn settings(&self) -> Result<StorageSettings, ConfigError> {
        use secrecy::ExposeSecret;
        self.validate()?;
        let target = match self.storage_backend {
            StorageBackend::Local => StorageTarget::Local {
                root: self.local_storage_path.clone(),
            },
            StorageBackend::Memory => StorageTarget::Memory,
            StorageBackend::S3 => StorageTarget::S3(S3Settings {
                bucket: self.s3_bucket.clone().unwrap_or_default().trim().to_owned(),
                prefix: self.s3_prefix.trim_matches('/').to_owned(),
                region: self.aws_region.clone(),
                credentials: match (&self.aws_access_key_id, &self.aws_secret_access_key) {
                    (Some(id), Some(secret)) => Some(S3Credentials {
                        access_key_id: id.clone(),
                        secret_access_key: secret.clone(),
                        session_token: self.aws_session_token.clone(),
                    }),
                    _ => None,
                },
                endpoint: self.s3_endpoint.clone(),
                encryption: match self.s3_sse {
                    S3Encryption::None => S3Sse::None,
                    S3Encryption::SseS3 => S3Sse::SseS3,
                    S3Encryption::SseKms => S3Sse::SseKms(self.s3_sse_kms_key_id.clone()),
                },
            }),
            StorageBackend::Azure => {
                let connection = self
                    .azure_storage_connection_string
                    .as_ref()
                    .map(|c| parse_connection_string(c.expose_secret()))
                    .unwrap_or_default();
                StorageTarget::Azure(AzureBlobSettings {
                    container: self.azure_storage_container.trim().to_owned(),
                    account: connection
                        .account
                        .or_else(|| self.azure_storage_account.clone()),
                    access_key: connection
                        .key
                        .map(SecretString::from)
                        .or_else(|| self.azure_storage_access_key.clone()),
                    blob_endpoint: connection.blob_endpoint,
                    use_emulator: self.azure_storage_use_emulator || connection.development,
                })
            }
        };
        Ok(StorageSettings {
            target,
            public_urls: self.storage_public_urls,
            signed_url_ttl: std::time::Duration::from_secs(self.storage_signed_url_ttl_secs),
            retention: self
                .image_retention_days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        storage: StorageArgs,
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn settings_read_connection_strings_and_encryption() {
        use secrecy::ExposeSecret;
        let s = parse(&[
            "--storage-backend",
            "azure",
            "--azure-storage-connection-string",
            "AccountName=acct;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/acct/",
        ])
        .storage
        .settings()
        .expect("valid");
        let StorageTarget::Azure(azure) = s.target else {
            panic!("azure")
        };
        assert_eq!(azure.account.as_deref(), Some("acct"));
        assert_eq!(
            azure
                .access_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned())
                .as_deref(),
            Some("a2V5")
        );
        assert_eq!(
            azure.blob_endpoint.as_deref(),
            Some("http://127.0.0.1:10000/acct")
        );
        let s = parse(&[
            "--storage-backend",
            "s3",
            "--s3-bucket",
            "b",
            "--s3-prefix",
            "/img/",
            "--s3-sse",
            "sse-kms",
            "--image-retention-days",
            "2",
        ])
        .storage
        .settings()
        .expect("valid");
        let StorageTarget::S3(s3) = s.target else {
            panic!("s3")
        };
        assert_eq!(
            (s3.prefix.as_str(), s3.encryption),
            ("img", S3Sse::SseKms(None))
        );
        assert_eq!(
            s.retention,
            Some(std::time::Duration::from_secs(2 * 86_400))
        );
        assert!(
            parse(&["--storage-backend", "s3"])
                .storage
                .settings()
                .is_err()
        );
    }

    #[test]
    fn storage_must_be_enabled_and_completely_configured() {
        assert!(parse(&[]).storage.validate().is_ok());
        let err = parse(&["--enable-image-storage", "false"])
            .storage
            .validate()
            .expect_err("disabled");
        assert_eq!(err.variable, "ENABLE_IMAGE_STORAGE");
        let err = parse(&["--storage-backend", "S3"])
            .storage
            .validate()
            .expect_err("no bucket");
        assert_eq!(err.variable, "S3_BUCKET");
        assert!(
            parse(&["--storage-backend", "s3", "--s3-bucket", "b"])
                .storage
                .validate()
                .is_ok()
        );
        let err = parse(&[
            "--storage-backend",
            "s3",
            "--s3-bucket",
            "b",
            "--s3-sse-kms-key-id",
            "k",
        ])
        .storage
        .validate()
        .expect_err("key id without sse-kms");
        assert_eq!(err.variable, "S3_SSE_KMS_KEY_ID");
        let err = parse(&["--storage-backend", "azure"])
            .storage
            .validate()
            .expect_err("no account");
        assert_eq!(err.variable, "AZURE_STORAGE_ACCOUNT");
        let err = parse(&["--storage-public-urls", "signed"])
            .storage
            .validate()
            .expect_err("signed needs a cloud backend");
        assert_eq!(err.variable, "STORAGE_PUBLIC_URLS");
    }
}
