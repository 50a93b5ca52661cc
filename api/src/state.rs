//! Shared state of one API process.

use crate::ApiArgs;
use crate::waiters::Waiters;
use imagegen_shared::backends::Backends;
use imagegen_shared::config::ProviderSettings;
use imagegen_shared::db::Db;
use imagegen_shared::domain::Offer;
use imagegen_shared::limits::FleetLimits;
use imagegen_shared::moderation::KeywordFilter;
use imagegen_shared::queue::JobQueue;
use imagegen_shared::storage::ImageStorage;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: Db,
    pub queue: JobQueue,
    pub fleet: FleetLimits,
    pub storage: ImageStorage,
    pub providers: ProviderSettings,
    /// What the service offers, remade when the date turns (lifecycles change at midnight UTC).
    offer: std::sync::RwLock<(chrono::NaiveDate, Arc<Offer>)>,
    pub max_images_per_request: u8,
    /// `None` when ENABLE_CONTENT_MODERATION is off.
    pub keyword_filter: Option<KeywordFilter>,
    pub batch_max_requests: usize,
    pub wait_default: Duration,
    pub wait_max: Duration,
    pub public_base_url: Option<String>,
    pub idempotency_ttl: Duration,
    pub environment: imagegen_shared::config::Environment,
    pub waiters: Arc<Waiters>,
    pub metrics: PrometheusHandle,
    /// Callers must present an API key or a token (ENABLE_AUTHENTICATION).
    pub authentication: bool,
    /// Checks bearer JWTs (AZURE_AD_* / OIDC_*); `None`: API keys only.
    pub oidc: Option<Arc<crate::auth::oidc::OidcVerifier>>,
    /// /metrics is served on API_METRICS_PORT, not with the API.
    pub separate_metrics: bool,
    /// AUTH_GENERATE_ROLE and AUTH_ADMIN_ROLE, named in 403 answers.
    pub generate_role: String,
    pub admin_role: String,
    /// Per-owner counters (rate limit, image quota), shared by the fleet.
    pub owners: imagegen_shared::owner_limits::OwnerLimits,
    /// RATE_LIMIT_PER_MINUTE, IMAGE_QUOTA_PER_DAY, MAX_ACTIVE_JOBS_PER_OWNER; 0 = none.
    pub rate_limit_per_minute: u64,
    pub image_quota_per_day: u64,
    pub max_active_jobs_per_owner: i64,
    /// CORS_ORIGINS as a layer (`None`: no cross-origin access).
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// Signs download links (authentication on only).
    pub link_signer: Option<Arc<crate::links::LinkSigner>>,
    /// Cancelled at shutdown: waiting requests answer 202 at once.
    pub stopping: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The process-wide Prometheus recorder (a second install would fail; tests build several states).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        120.0, 300.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Someone else installed a recorder: render our own (empty) one rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

impl AppState {
    /// Today's offer.
    pub fn offer(&self) -> Arc<Offer> {
        let today = imagegen_shared::domain::today();
        {
            let current = self.offer.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == today {
                return current.1.clone();
            }
        }
        let fresh = Arc::new(self.providers.offer_on(self.max_images_per_request, today));
        *self.offer.write().unwrap_or_else(|e| e.into_inner()) = (today, fresh.clone());
        fresh
    }

    pub fn new(
        args: &ApiArgs,
        backends: Backends,
        stopping: CancellationToken,
    ) -> anyhow::Result<Self> {
        let providers = args.providers.settings()?;
        let storage = ImageStorage::from_settings(&args.storage.settings()?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let keyword_filter = args
            .enable_content_moderation
            .then(|| KeywordFilter::from_csv(&args.blocked_words));
        let today = imagegen_shared::domain::today();
        let offer = providers.offer_on(args.max_images_per_request, today);
        for warning in providers.retirement_warnings(today) {
            tracing::warn!("{warning}");
        }
        let link_signer = if args.enable_authentication {
            use secrecy::ExposeSecret;
            let key = args
                .download_signing_key
                .clone()
                .filter(|k| k.expose_secret().len() >= 32)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "DOWNLOAD_SIGNING_KEY: required with ENABLE_AUTHENTICATION, at least 32 characters \
                         (the same on every API replica)"
                    )
                })?;
            Some(Arc::new(crate::links::LinkSigner::new(
                key,
                Duration::from_secs(args.download_link_ttl_secs),
            )))
        } else {
            None
        };
        let oidc = match crate::auth::oidc::OidcConfig::from_args(&args.oidc)? {
            Some(config) if args.enable_authentication => {
                Some(Arc::new(crate::auth::oidc::OidcVerifier::new(config)?))
            }
            Some(_) => {
                tracing::warn!(
                    "a token issuer is configured but ENABLE_AUTHENTICATION is off: every caller is anonymous"
                );
                None
            }
            None => None,
        };
        Ok(Self(Arc::new(Inner {
            pool: backends.db,
            queue: backends.queue,
            fleet: backends.limits,
            owners: backends.owners,
            rate_limit_per_minute: u64::from(args.rate_limit_per_minute),
            image_quota_per_day: u64::from(args.image_quota_per_day),
            max_active_jobs_per_owner: i64::from(args.max_active_jobs_per_owner),
            storage,
            offer: std::sync::RwLock::new((today, Arc::new(offer))),
            max_images_per_request: args.max_images_per_request,
            providers,
            keyword_filter,
            batch_max_requests: usize::from(args.batch_max_requests),
            wait_default: Duration::from_secs(args.wait_default_secs),
            wait_max: Duration::from_secs(args.wait_max_secs),
            idempotency_ttl: Duration::from_secs(args.idempotency_ttl_secs),
            public_base_url: args
                .public_base_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            environment: args.core.environment,
            authentication: args.enable_authentication,
            oidc,
            separate_metrics: args.api_metrics_port.is_some(),
            generate_role: args.oidc.auth_generate_role.clone(),
            admin_role: args.oidc.auth_admin_role.clone(),
            link_signer,
            cors: crate::security::cors(&args.cors_origins, args.enable_authentication)?,
            waiters: Arc::new(Waiters::default()),
            metrics: metrics_handle(),
            stopping,
        })))
    }
}
