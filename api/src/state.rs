//! Shared state of one API process.

use crate::config::ApiSettings;
use crate::moderation::KeywordFilter;
use crate::waiters::Waiters;
use imagegen_shared::backends::Backends;
use imagegen_shared::config::ProviderSettings;
use imagegen_shared::db::Db;
use imagegen_shared::domain::Offer;
use imagegen_shared::limits::FleetLimits;
use imagegen_shared::queue::JobQueue;
use imagegen_shared::storage::ImageStorage;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// Group commit: a plain submission (no Idempotency-Key, active-jobs limit or edit inputs) has its budget row read
/// and its job inserted together with the other submissions of the moment, one statement each per flush, and
/// holds no pool connection of its own.
pub struct GroupCommit {
    pub insert: Arc<imagegen_shared::db::group_insert::GroupInsert>,
    pub budget_reads: imagegen_shared::db::budgets::GroupReads,
}

pub struct Inner {
    pub pool: Db,
    /// On Postgres with SUBMIT_GROUP_COMMIT on; else `None`.
    pub group_commit: Option<GroupCommit>,
    /// SUBMIT_CONCURRENCY: submissions past it wait their turn.
    pub submissions: crate::gate::Gate,
    /// Reads that answer a waiting client (`wait::wait_for_job`) or an event stream (its first reads, a job's end):
    /// at most one per pool connection at a time.
    pub answer_reads: crate::gate::Gate,
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
    /// TRUSTED_PROXIES: only their X-Forwarded-Proto and X-Forwarded-Host are believed.
    pub trusted_proxies: crate::config::TrustedProxies,
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
    pub owners: crate::owner_limits::OwnerLimits,
    /// RATE_LIMIT_PER_MINUTE, IMAGE_QUOTA_PER_DAY, MAX_ACTIVE_JOBS_PER_OWNER; 0 = none.
    pub rate_limit_per_minute: u64,
    pub image_quota_per_day: u64,
    pub max_active_jobs_per_owner: i64,
    /// Budget counters (reserved here at submission, settled by whoever ends a job).
    pub budgets: imagegen_shared::budget::BudgetLedger,
    /// BUDGET_USD_PER_DAY and BUDGET_USD_PER_MONTH in micro-dollars (`None`: no default limit).
    pub default_budget_per_day: Option<i64>,
    pub default_budget_per_month: Option<i64>,
    /// LIMITS_ON_REDIS_ERROR: the per-minute limit refuses (closed) or lets through (open) while Redis is down.
    pub limits_fail: imagegen_shared::limits::FailMode,
    /// CORS_ORIGINS as a layer (`None`: no cross-origin access).
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// API keys' verdicts, cached briefly and forgotten on revocation across the fleet.
    pub key_cache: Arc<crate::auth::keys::KeyCache>,
    /// Failed authentications per client address (AUTH_FAILURES_PER_MINUTE).
    pub auth_failures: crate::auth::failures::FailedAuth,
    /// Signs download links (authentication on only).
    pub link_signer: Option<Arc<crate::links::LinkSigner>>,
    /// WEBHOOK_*: where deliveries may go, their schedule and limits.
    pub webhooks: Arc<crate::webhooks::config::WebhookSettings>,
    /// EDIT_*: input limits and the policy for image URLs.
    pub edits: imagegen_shared::config::edits::EditSettings,
    /// Resolves the hosts of edit image URLs for the address check (the system's DNS; tests may inject their own).
    pub url_resolver: Arc<dyn imagegen_shared::net_guard::Resolver>,
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
    /// MAX_ACTIVE_JOBS_PER_OWNER, `None` when unlimited.
    pub fn max_active_jobs(&self) -> Option<i64> {
        (self.max_active_jobs_per_owner > 0).then_some(self.max_active_jobs_per_owner)
    }

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
        settings: &ApiSettings,
        backends: Backends,
        stopping: CancellationToken,
    ) -> anyhow::Result<Self> {
        let providers = settings.providers.clone();
        let storage =
            ImageStorage::from_settings(&settings.storage).map_err(|e| anyhow::anyhow!("{e}"))?;
        let keyword_filter = settings
            .blocked_words
            .as_deref()
            .map(KeywordFilter::from_csv);
        let today = imagegen_shared::domain::today();
        let offer = providers.offer_on(settings.max_images_per_request, today);
        for warning in providers.retirement_warnings(today) {
            tracing::warn!("{warning}");
        }
        let auth = &settings.auth;
        let link_signer = auth
            .link_signing
            .as_ref()
            .map(|(key, ttl)| Arc::new(crate::links::LinkSigner::new(key.clone(), *ttl)));
        let oidc = match &auth.oidc {
            Some(config) => Some(Arc::new(crate::auth::oidc::OidcVerifier::new(
                config.clone(),
            )?)),
            None => None,
        };
        let key_cache = Arc::new(match backends.redis_client_with_prefix() {
            Some((client, conn, prefix)) => crate::auth::keys::KeyCache::redis(
                auth.key_cache,
                auth.key_negative_cache,
                client,
                conn,
                prefix,
            ),
            None => crate::auth::keys::KeyCache::local(auth.key_cache, auth.key_negative_cache),
        });
        let owners = match backends.redis_with_prefix() {
            Some((conn, prefix)) => crate::owner_limits::OwnerLimits::new(conn, prefix),
            None => crate::owner_limits::OwnerLimits::local(),
        };
        let auth_failures =
            crate::auth::failures::FailedAuth::new(auth.failures_per_minute, owners.clone());
        Ok(Self(Arc::new(Inner {
            key_cache,
            auth_failures,
            group_commit: match &backends.db {
                Db::Postgres(pool) if settings.submit_group_commit => Some(GroupCommit {
                    insert: imagegen_shared::db::group_insert::GroupInsert::new(pool.clone()),
                    budget_reads: imagegen_shared::db::budgets::GroupReads::new(pool.clone()),
                }),
                _ => None,
            },
            submissions: crate::gate::Gate::new(
                settings.submit_concurrency,
                "imagegen_submissions_waiting",
            ),
            answer_reads: crate::gate::Gate::new(
                backends.db.max_connections(),
                "imagegen_answer_reads_waiting",
            ),
            pool: backends.db,
            queue: backends.queue,
            fleet: backends.limits,
            owners,
            rate_limit_per_minute: settings.limits.requests_per_minute,
            image_quota_per_day: settings.limits.images_per_day,
            max_active_jobs_per_owner: settings.limits.active_jobs,
            budgets: backends.budgets.clone(),
            default_budget_per_day: settings.limits.budget_per_day,
            default_budget_per_month: settings.limits.budget_per_month,
            limits_fail: settings.limits.on_redis_error,
            storage,
            offer: std::sync::RwLock::new((today, Arc::new(offer))),
            max_images_per_request: settings.max_images_per_request,
            providers,
            keyword_filter,
            batch_max_requests: settings.batch_max_requests,
            wait_default: settings.wait_default,
            wait_max: settings.wait_max,
            idempotency_ttl: settings.idempotency_ttl,
            public_base_url: settings.public_base_url.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            environment: settings.environment,
            authentication: auth.enabled,
            oidc,
            separate_metrics: settings.metrics_port.is_some(),
            generate_role: auth.generate_role.clone(),
            admin_role: auth.admin_role.clone(),
            link_signer,
            webhooks: Arc::new(settings.webhooks.clone()),
            edits: settings.edits.clone(),
            url_resolver: Arc::new(imagegen_shared::net_guard::SystemResolver),
            cors: settings.cors.clone(),
            waiters: Arc::new(Waiters::default()),
            metrics: metrics_handle(),
            stopping,
        })))
    }
}
