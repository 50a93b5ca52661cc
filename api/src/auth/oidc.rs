//! Bearer JWTs from Microsoft Entra ID or any OpenID Connect issuer.
//!
//! Keys come from the issuer's discovery document and JWKS and are cached; an unknown `kid` (the issuer rotated its
//! keys) refreshes them at most once a minute, and every fetch is bounded in time and size. Only RS256 and ES256 are
//! accepted, and only with a key of that family that the JWKS publishes (so `alg: none` and HS256 signed with the
//! public key are refused). `iss`, `aud`, `exp` and `nbf` are checked with a one-minute leeway.
//!
//! Longer than ~500 lines on purpose: discovery, the key cache with its rotation rules and every token check are
//! one security boundary, kept in one file so a reviewer reads it whole; its tests are most of the rest.

use clap::Args;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use url::Url;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// An unknown `kid` refreshes the keys at most this often (a flood of forged kids must not flood the issuer).
const UNKNOWN_KID_REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Keys are re-read this often even when nothing asks for a new one.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// After a failed fetch, the next attempt waits this long (requests meanwhile use the cached keys or fail fast).
const RETRY_FAILED_FETCH_AFTER: Duration = Duration::from_secs(5);
/// Bounds on each discovery or JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const FETCH_MAX_BYTES: usize = 512 * 1024;
/// Tokens already checked are remembered (by SHA-256) until they expire: a client sends the same token many times,
/// and a signature check costs more than the rest of a cheap request. Bounded; emptied when full.
const VERIFIED_CACHE_MAX: usize = 10_000;
/// Entra's multi-tenant aliases: their tokens' issuer depends on the caller's tenant.
const ENTRA_MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

/// Who may issue tokens: Entra ID by tenant and client id, or any OIDC issuer and audience.
#[derive(Args, Debug, Clone, Default)]
pub struct OidcArgs {
    /// Microsoft Entra ID tenant (directory) id whose access tokens are accepted (with ENABLE_AUTHENTICATION).
    #[arg(long, env = "AZURE_AD_TENANT_ID", value_name = "AZURE_AD_TENANT_ID")]
    pub azure_ad_tenant_id: Option<String>,
    /// With AZURE_AD_TENANT_ID=common or organizations (a multi-tenant app): the tenant ids (GUIDs),
    /// comma-separated, whose tokens are accepted; each token's issuer must be its own tenant's (`tid`).
    #[arg(
        long,
        env = "AZURE_AD_ALLOWED_TENANTS",
        value_name = "AZURE_AD_ALLOWED_TENANTS"
    )]
    pub azure_ad_allowed_tenants: Option<String>,
    /// Entra's authority host (another cloud, e.g. https://login.microsoftonline.us; http on loopback for tests).
    #[arg(
        long,
        env = "AZURE_AD_AUTHORITY_HOST",
        value_name = "AZURE_AD_AUTHORITY_HOST"
    )]
    pub azure_ad_authority_host: Option<String>,
    /// Client (application) id of the API's Entra app registration: the audience its tokens carry.
    #[arg(long, env = "AZURE_AD_CLIENT_ID", value_name = "AZURE_AD_CLIENT_ID")]
    pub azure_ad_client_id: Option<String>,
    /// Any OpenID Connect issuer URL (overrides the Entra issuer); https, or http on a loopback host for tests.
    #[arg(long, env = "OIDC_ISSUER", value_name = "OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Audiences a token must name, comma-separated (default with Entra: the client id and api://<client id>).
    #[arg(long, env = "OIDC_AUDIENCE", value_name = "OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// App role or scope that allows generating images.
    #[arg(
        long,
        env = "AUTH_GENERATE_ROLE",
        value_name = "AUTH_GENERATE_ROLE",
        default_value = "Images.Generate"
    )]
    pub auth_generate_role: String,
    /// App role or scope that allows the admin endpoints (and generating).
    #[arg(
        long,
        env = "AUTH_ADMIN_ROLE",
        value_name = "AUTH_ADMIN_ROLE",
        default_value = "Images.Admin"
    )]
    pub auth_admin_role: String,
}

/// The checked configuration of one issuer.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer the discovery document must name; tokens may carry it or one of `extra_issuers`.
    pub issuer: String,
    /// Entra's v1 access tokens (an app registration's default) carry `https://sts.windows.net/<tenant>/`.
    pub extra_issuers: Vec<String>,
    /// A multi-tenant Entra app: the tenants accepted (lowercase GUIDs) and the authority host; `issuer` is then
    /// the alias's (`<host>/common/v2.0`), and each token must carry the issuer of its own `tid`.
    pub tenants: Option<MultiTenant>,
    pub audiences: Vec<String>,
    pub generate_role: String,
    pub admin_role: String,
}

/// The tenants a multi-tenant Entra app accepts.
#[derive(Debug, Clone)]
pub struct MultiTenant {
    pub authority: String,
    pub allowed: Vec<String>,
}

impl MultiTenant {
    /// The issuers a token of tenant `tid` carries: v2.0 (`<host>/<tid>/v2.0`) and v1 (`sts.windows.net`).
    fn issuers_of(&self, tid: &str) -> [String; 2] {
        [
            format!("{}/{tid}/v2.0", self.authority),
            format!("https://sts.windows.net/{tid}/"),
        ]
    }
}

/// Entra's authority host: AZURE_AD_AUTHORITY_HOST or the public cloud's, without a trailing slash.
const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl OidcConfig {
    /// `None` when no issuer is configured (API keys only).
    pub fn from_args(args: &OidcArgs) -> anyhow::Result<Option<Self>> {
        let tenant = non_empty(&args.azure_ad_tenant_id);
        let client = non_empty(&args.azure_ad_client_id);
        let authority = match non_empty(&args.azure_ad_authority_host) {
            Some(host) => {
                check_fetchable(host)
                    .map_err(|e| anyhow::anyhow!("AZURE_AD_AUTHORITY_HOST: {e}"))?;
                host.trim_end_matches('/').to_owned()
            }
            None => ENTRA_AUTHORITY.to_owned(),
        };
        let allowed = non_empty(&args.azure_ad_allowed_tenants);
        let multi_tenant =
            tenant.is_some_and(|t| ENTRA_MULTI_TENANT.contains(&t.to_ascii_lowercase().as_str()));
        if allowed.is_some() && (!multi_tenant || non_empty(&args.oidc_issuer).is_some()) {
            anyhow::bail!(
                "AZURE_AD_ALLOWED_TENANTS: only for a multi-tenant app (AZURE_AD_TENANT_ID=common or organizations, \
                 without OIDC_ISSUER)"
            );
        }
        let mut tenants = None;
        let (issuer, extra_issuers) = match (non_empty(&args.oidc_issuer), tenant) {
            (Some(issuer), _) => (issuer.to_owned(), Vec::new()),
            (None, Some(alias)) if multi_tenant => {
                let Some(allowed) = allowed else {
                    anyhow::bail!(
                        "AZURE_AD_TENANT_ID={alias} (a multi-tenant app) needs AZURE_AD_ALLOWED_TENANTS: the tenant ids \
                         whose tokens are accepted"
                    );
                };
                let allowed = allowed
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        uuid::Uuid::parse_str(t)
                            .map(|u| u.hyphenated().to_string())
                            .map_err(|_| {
                                anyhow::anyhow!(
                                    "AZURE_AD_ALLOWED_TENANTS: `{t}` is not a tenant id (a GUID, as tokens' tid)"
                                )
                            })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                if allowed.is_empty() {
                    anyhow::bail!("AZURE_AD_ALLOWED_TENANTS: no tenant id given");
                }
                tenants = Some(MultiTenant {
                    authority: authority.clone(),
                    allowed,
                });
                (
                    format!("{authority}/{}/v2.0", alias.to_ascii_lowercase()),
                    Vec::new(),
                )
            }
            (None, Some(tenant)) => {
                if !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    anyhow::bail!(
                        "AZURE_AD_TENANT_ID: give your tenant's id (a GUID) or primary domain, or `common` / \
                         `organizations` with AZURE_AD_ALLOWED_TENANTS"
                    );
                }
                (
                    format!("{authority}/{tenant}/v2.0"),
                    vec![format!("https://sts.windows.net/{tenant}/")],
                )
            }
            (None, None) => {
                if client.is_some() || non_empty(&args.oidc_audience).is_some() {
                    anyhow::bail!(
                        "AZURE_AD_CLIENT_ID / OIDC_AUDIENCE are set but no issuer: set AZURE_AD_TENANT_ID or OIDC_ISSUER"
                    );
                }
                return Ok(None);
            }
        };
        check_fetchable(&issuer).map_err(|e| anyhow::anyhow!("OIDC_ISSUER: {e}"))?;
        let audiences: Vec<String> = match (non_empty(&args.oidc_audience), client) {
            (Some(list), _) => list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
            // v2 tokens name the client id; v1 tokens the application id URI, by default api://<client id>.
            (None, Some(client)) => vec![client.to_owned(), format!("api://{client}")],
            (None, None) => Vec::new(),
        };
        if audiences.is_empty() {
            anyhow::bail!("tokens need an audience: set AZURE_AD_CLIENT_ID or OIDC_AUDIENCE");
        }
        let role = |name: &str, v: &str| {
            let v = v.trim();
            if v.is_empty() {
                anyhow::bail!("{name} must not be empty");
            }
            Ok(v.to_owned())
        };
        Ok(Some(Self {
            issuer,
            extra_issuers,
            tenants,
            audiences,
            generate_role: role("AUTH_GENERATE_ROLE", &args.auth_generate_role)?,
            admin_role: role("AUTH_ADMIN_ROLE", &args.auth_admin_role)?,
        }))
    }

    fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// https anywhere; http only on a loopback host (a test identity provider).
fn check_fetchable(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "`{raw}` is plain http; only https is accepted (http only on a loopback host, for tests)"
        )),
        other => Err(format!("`{raw}`: scheme {other} is not https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Why a token was refused. The message is safe to show the client; it never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("The token is malformed")]
    Malformed,
    #[error("The token's algorithm is not accepted (RS256 or ES256 only)")]
    Algorithm,
    #[error("The token was signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("The token's signature is invalid")]
    Signature,
    #[error("The token has expired")]
    Expired,
    #[error("The token is not valid yet")]
    NotYetValid,
    #[error("The token was not issued by the configured issuer")]
    Issuer,
    #[error("The token's tenant is not one this API accepts")]
    Tenant,
    #[error("The token is not meant for this API (audience)")]
    Audience,
    #[error("The token lacks the claim {0}")]
    MissingClaim(String),
    /// Not the caller's fault: the issuer's keys could not be read and none are cached (503).
    #[error("The identity provider's signing keys cannot be fetched")]
    KeysUnavailable,
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidIssuer => TokenError::Issuer,
            K::InvalidAudience => TokenError::Audience,
            K::InvalidSignature => TokenError::Signature,
            K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
                TokenError::Algorithm
            }
            K::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
            _ => TokenError::Malformed,
        }
    }
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// `<tid>/<oid>` for Entra (oid, else sub, scoped by tenant); `sub` for other issuers.
    pub owner: String,
    pub can_generate: bool,
    pub is_admin: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Checked by jsonwebtoken; kept to know how long the verdict may be cached.
    #[serde(default)]
    exp: Option<u64>,
    /// Checked by jsonwebtoken against every accepted issuer; a multi-tenant app checks it against `tid`'s.
    #[serde(default)]
    iss: Option<String>,
    sub: Option<String>,
    oid: Option<String>,
    tid: Option<String>,
    /// App roles (Entra: a JSON array).
    #[serde(default)]
    roles: Option<serde_json::Value>,
    /// Delegated scopes (Entra: space-separated).
    #[serde(default)]
    scp: Option<String>,
    /// Scopes of other issuers (RFC 8693 style, space-separated).
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

struct VerifyingKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, std::sync::Arc<VerifyingKey>>,
    loaded_at: Option<Instant>,
    /// Bumped by every successful load, so a request that waited for a refresh can tell one happened.
    generation: u64,
    last_kid_refresh: Option<Instant>,
    last_failure: Option<Instant>,
}

/// Checks bearer JWTs against one issuer's published keys.
pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// One fetch at a time; others wait for its result instead of fetching too.
    fetching: tokio::sync::Mutex<()>,
    /// SHA-256 of a token already checked -> who it stands for, and until when (its `exp` plus the leeway).
    verified: std::sync::Mutex<HashMap<[u8; 32], (TokenIdentity, u64)>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    pub fn new(config: OidcConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("imagegen/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            config,
            http,
            cache: RwLock::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(()),
            verified: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Loads the keys once at start, so the first caller does not wait; failures are logged and retried later.
    pub async fn warm_up(&self) {
        match self.refresh(None).await {
            Ok(n) => {
                tracing::info!(issuer = %self.config.issuer, keys = n, "identity provider keys loaded")
            }
            Err(e) => tracing::warn!(
                issuer = %self.config.issuer,
                error = %e,
                "identity provider keys not loaded yet; retried when a token arrives"
            ),
        }
    }

    /// Who a token stands for if it was checked before and has not expired (no signature check, no fetch).
    pub fn cached(&self, token: &str) -> Option<TokenIdentity> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        match self.verified_cache().get(&digest) {
            Some((identity, until)) if now <= *until => Some(identity.clone()),
            _ => None,
        }
    }

    /// Checks a token's algorithm, signature and claims; returns who it stands for.
    pub async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        use sha2::Digest;
        if let Some(identity) = self.cached(token) {
            return Ok(identity);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        let (identity, exp) = self.check(token).await?;
        let mut cache = self.verified_cache();
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.retain(|_, (_, until)| now <= *until);
            if cache.len() >= VERIFIED_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (identity.clone(), exp.saturating_add(LEEWAY_SECS)));
        Ok(identity)
    }

    fn verified_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (TokenIdentity, u64)>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The full check: header, key, signature, claims. Returns the identity and the token's `exp`.
    async fn check(&self, token: &str) -> Result<(TokenIdentity, u64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none`, HS256 and the rest are not even parsed as algorithms we know... or are, and refused below.
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(TokenError::Algorithm);
        }
        let key = self.key_for(header.kid.as_deref()).await?;
        // The key's own algorithm decides, never the token's claim alone (no HS256 with an RSA key, no downgrade).
        if key.alg != header.alg {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let issuers: Vec<String> = match &self.config.tenants {
            // Any allowed tenant's issuer here; below, the one of the token's own tenant.
            Some(m) => m.allowed.iter().flat_map(|t| m.issuers_of(t)).collect(),
            None => {
                let mut issuers = vec![self.config.issuer.clone()];
                issuers.extend(self.config.extra_issuers.iter().cloned());
                issuers
            }
        };
        validation.set_issuer(&issuers);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)?;
        if let Some(m) = &self.config.tenants {
            let tid = data
                .claims
                .tid
                .as_deref()
                .ok_or_else(|| TokenError::MissingClaim("tid".into()))?
                .to_ascii_lowercase();
            if !m.allowed.contains(&tid) {
                return Err(TokenError::Tenant);
            }
            let iss = data.claims.iss.as_deref().unwrap_or_default();
            if !m.issuers_of(&tid).iter().any(|i| i == iss) {
                return Err(TokenError::Issuer);
            }
        }
        let exp = data.claims.exp.unwrap_or(0);
        Ok((self.identity(data.claims)?, exp))
    }

    fn identity(&self, claims: Claims) -> Result<TokenIdentity, TokenError> {
        let subject = claims
            .oid
            .or(claims.sub)
            .filter(|s| !s.is_empty() && s.len() <= 200)
            .ok_or_else(|| TokenError::MissingClaim("oid or sub".into()))?;
        let owner = match claims.tid.filter(|t| !t.is_empty() && t.len() <= 100) {
            Some(tid) => format!("{tid}/{subject}"),
            None => subject,
        };
        let mut granted: Vec<String> = Vec::new();
        match claims.roles {
            Some(serde_json::Value::Array(roles)) => granted.extend(
                roles
                    .into_iter()
                    .filter_map(|r| r.as_str().map(str::to_owned)),
            ),
            Some(serde_json::Value::String(roles)) => {
                granted.extend(roles.split_whitespace().map(str::to_owned))
            }
            _ => {}
        }
        for scopes in [claims.scp, claims.scope].into_iter().flatten() {
            granted.extend(scopes.split_whitespace().map(str::to_owned));
        }
        let has = |role: &str| granted.iter().any(|g| g == role);
        let is_admin = has(&self.config.admin_role);
        Ok(TokenIdentity {
            owner,
            can_generate: is_admin || has(&self.config.generate_role),
            is_admin,
        })
    }

    /// The published key for `kid`, refreshing the cache when it is stale or the kid is new (rate-limited).
    async fn key_for(&self, kid: Option<&str>) -> Result<std::sync::Arc<VerifyingKey>, TokenError> {
        let (stale, failed_recently) = {
            let cache = self.read_cache();
            (
                cache.loaded_at.is_none_or(|t| t.elapsed() >= KEYS_MAX_AGE),
                cache
                    .last_failure
                    .is_some_and(|t| t.elapsed() < RETRY_FAILED_FETCH_AFTER),
            )
        };
        if stale && !failed_recently {
            let generation = self.read_cache().generation;
            if let Err(e) = self.refresh(Some(generation)).await {
                tracing::warn!(error = %e, "identity provider keys not refreshed; using the cached ones");
            }
        }
        if let Some(key) = self.lookup(kid)? {
            return Ok(key);
        }
        // An unknown kid: perhaps the issuer rotated its keys. Re-read them, at most once a minute.
        let generation = {
            let mut cache = self.write_cache();
            if cache
                .last_kid_refresh
                .is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFRESH_EVERY)
            {
                return Err(TokenError::UnknownKey);
            }
            cache.last_kid_refresh = Some(Instant::now());
            cache.generation
        };
        if let Err(e) = self.refresh(Some(generation)).await {
            tracing::warn!(error = %e, "identity provider keys not refreshed for an unknown kid");
        }
        self.lookup(kid)?.ok_or(TokenError::UnknownKey)
    }

    fn lookup(
        &self,
        kid: Option<&str>,
    ) -> Result<Option<std::sync::Arc<VerifyingKey>>, TokenError> {
        let cache = self.read_cache();
        if cache.loaded_at.is_none() {
            return Err(TokenError::KeysUnavailable);
        }
        Ok(match kid {
            Some(kid) => cache.keys.get(kid).cloned(),
            // No kid: acceptable only when the issuer publishes exactly one key.
            None if cache.keys.len() == 1 => cache.keys.values().next().cloned(),
            None => None,
        })
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, KeyCache> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, KeyCache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches discovery + JWKS and replaces the cached keys. With `seen_generation`, a caller that waited while
    /// another request refreshed takes that result instead of fetching again.
    async fn refresh(&self, seen_generation: Option<u64>) -> Result<usize, String> {
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(seen) = seen_generation {
            let cache = self.read_cache();
            if cache.generation != seen {
                return Ok(cache.keys.len());
            }
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let n = keys.len();
                let mut cache = self.write_cache();
                cache.keys = keys;
                cache.loaded_at = Some(Instant::now());
                cache.generation += 1;
                cache.last_failure = None;
                metrics::counter!("imagegen_auth_jwks_fetches_total", "outcome" => "ok")
                    .increment(1);
                Ok(n)
            }
            Err(e) => {
                self.write_cache().last_failure = Some(Instant::now());
                metrics::counter!("imagegen_auth_jwks_fetches_total", "outcome" => "error")
                    .increment(1);
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, std::sync::Arc<VerifyingKey>>, String> {
        let discovery_url = self.config.discovery_url();
        let discovery: Discovery = self.fetch_json(&discovery_url).await?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it was fetched for. Entra's
        // multi-tenant document names a template, `<host>/{tenantid}/v2.0`.
        let expected = match &self.config.tenants {
            Some(m) => format!("{}/{{tenantid}}/v2.0", m.authority),
            None => self.config.issuer.clone(),
        };
        if discovery.issuer.trim_end_matches('/') != expected.trim_end_matches('/') {
            return Err(format!(
                "the discovery document names issuer {} instead of {expected}",
                discovery.issuer
            ));
        }
        let jwks_uri =
            check_fetchable(&discovery.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
        let jwks: JwksDocument = self.fetch_json(jwks_uri.as_str()).await?;
        let mut keys = HashMap::new();
        for raw in jwks.keys {
            // One odd key (another key type, an encryption key) must not hide the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if let Some((kid, key)) = verifying_key(&jwk) {
                keys.insert(kid, std::sync::Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err("the JWKS holds no RS256 or ES256 signing key with a kid".into());
        }
        Ok(keys)
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        {
            if body.len() + chunk.len() > FETCH_MAX_BYTES {
                return Err(format!("GET {url}: larger than {FETCH_MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not the expected JSON ({e})"))
    }
}

/// A JWKS entry we can verify with: a signing key (no `use` or `use: sig`) with a kid, RSA for RS256 or P-256 for
/// ES256, and if the entry names an algorithm, that one.
fn verifying_key(jwk: &Jwk) -> Option<(String, VerifyingKey)> {
    use jsonwebtoken::jwk::PublicKeyUse;
    let kid = jwk.common.key_id.clone()?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let named_matches = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !named_matches {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, VerifyingKey { alg, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut OidcArgs)) -> OidcArgs {
        let mut a = OidcArgs {
            auth_generate_role: "Images.Generate".into(),
            auth_admin_role: "Images.Admin".into(),
            ..OidcArgs::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn entra_defaults_accept_v1_and_v2_tokens() {
        let c = OidcConfig::from_args(&args(|a| {
            a.azure_ad_tenant_id = Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into());
            a.azure_ad_client_id = Some("11111111-2222-3333-4444-555555555555".into());
        }))
        .expect("valid")
        .expect("configured");
        assert_eq!(
            c.issuer,
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
        );
        assert_eq!(
            c.extra_issuers,
            vec!["https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"]
        );
        assert_eq!(
            c.audiences,
            vec![
                "11111111-2222-3333-4444-555555555555",
                "api://11111111-2222-3333-4444-555555555555"
            ]
        );
        assert_eq!(
            c.discovery_url(),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0/.well-known/openid-configuration"
        );
    }

    #[test]
    fn refuses_unsafe_or_incomplete_configuration() {
        let err = |f: fn(&mut OidcArgs)| {
            OidcConfig::from_args(&args(f))
                .expect_err("refused")
                .to_string()
        };
        assert!(
            err(|a| {
                a.oidc_issuer = Some("http://idp.example.com".into());
                a.oidc_audience = Some("x".into());
            })
            .contains("plain http")
        );
        assert!(
            err(|a| a.oidc_issuer = Some("https://idp.example.com".into())).contains("audience")
        );
        assert!(
            err(|a| {
                a.azure_ad_tenant_id = Some("common".into());
                a.azure_ad_client_id = Some("x".into());
            })
            .contains("multi-tenant")
        );
        assert!(err(|a| a.azure_ad_client_id = Some("x".into())).contains("no issuer"));
        // Loopback http is fine (test identity providers); nothing configured means API keys only.
        assert!(
            OidcConfig::from_args(&args(|a| {
                a.oidc_issuer = Some("http://127.0.0.1:9/".into());
                a.oidc_audience = Some("api://imagegen, other".into());
            }))
            .expect("valid")
            .is_some_and(|c| c.audiences == vec!["api://imagegen", "other"])
        );
        assert!(
            OidcConfig::from_args(&args(|_| {}))
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn multi_tenant_apps_need_an_allow_list_of_tenant_ids() {
        let t1 = "72F988BF-86F1-41AF-91AB-2D7CD011DB47";
        let c = OidcConfig::from_args(&args(|a| {
            a.azure_ad_tenant_id = Some("organizations".into());
            a.azure_ad_client_id = Some("client".into());
            a.azure_ad_allowed_tenants = Some(format!(" {t1} ,")); // GUIDs as Entra writes `tid`: lowercase
        }))
        .expect("valid")
        .expect("configured");
        assert_eq!(
            c.issuer,
            "https://login.microsoftonline.com/organizations/v2.0"
        );
        let m = c.tenants.expect("multi-tenant");
        assert_eq!(m.allowed, vec![t1.to_ascii_lowercase()]);
        assert_eq!(
            m.issuers_of(&m.allowed[0]),
            [
                "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
                    .to_owned(),
                "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/".to_owned()
            ]
        );
        let err = |tenant: &str, allowed: Option<&str>| {
            OidcConfig::from_args(&args(|a| {
                a.azure_ad_tenant_id = Some(tenant.into());
                a.azure_ad_client_id = Some("client".into());
                a.azure_ad_allowed_tenants = allowed.map(str::to_owned);
            }))
            .expect_err("refused")
            .to_string()
        };
        assert!(err("common", None).contains("AZURE_AD_ALLOWED_TENANTS"));
        assert!(err("common", Some("contoso.com")).contains("contoso.com"));
        assert!(err("common", Some(" , ")).contains("no tenant"));
        assert!(err(t1, Some(t1)).contains("only for a multi-tenant app"));
        let sovereign = OidcConfig::from_args(&args(|a| {
            a.azure_ad_tenant_id = Some(t1.into());
            a.azure_ad_client_id = Some("client".into());
            a.azure_ad_authority_host = Some("https://login.microsoftonline.us/".into());
        }))
        .expect("valid")
        .expect("configured");
        assert_eq!(
            sovereign.issuer,
            format!("https://login.microsoftonline.us/{t1}/v2.0")
        );
        assert!(
            OidcConfig::from_args(&args(|a| {
                a.azure_ad_tenant_id = Some(t1.into());
                a.azure_ad_client_id = Some("client".into());
                a.azure_ad_authority_host = Some("http://login.example.com".into());
            }))
            .expect_err("plain http")
            .to_string()
            .contains("AZURE_AD_AUTHORITY_HOST")
        );
    }

    #[test]
    fn owner_and_roles_from_claims() {
        let config = OidcConfig::from_args(&args(|a| {
            a.oidc_issuer = Some("https://idp.example.com".into());
            a.oidc_audience = Some("api".into());
        }))
        .expect("valid")
        .expect("configured");
        let v = OidcVerifier::new(config).expect("client");
        let claims =
            |json: serde_json::Value| -> Claims { serde_json::from_value(json).expect("claims") };
        let entra = v
            .identity(claims(
                serde_json::json!({"sub": "s", "oid": "o", "tid": "t",
                "roles": ["Images.Generate"]}),
            ))
            .expect("identity");
        assert_eq!(
            entra,
            TokenIdentity {
                owner: "t/o".into(),
                can_generate: true,
                is_admin: false
            }
        );
        let delegated = v
            .identity(claims(
                serde_json::json!({"sub": "s", "scp": "User.Read Images.Admin"}),
            ))
            .expect("identity");
        assert_eq!(
            delegated,
            TokenIdentity {
                owner: "s".into(),
                can_generate: true,
                is_admin: true
            }
        );
        let none = v
            .identity(claims(
                serde_json::json!({"sub": "s", "scope": "openid profile"}),
            ))
            .expect("identity");
        assert!(!none.can_generate && !none.is_admin);
        assert!(matches!(
            v.identity(claims(serde_json::json!({"tid": "t"}))),
            Err(TokenError::MissingClaim(_))
        ));
    }
}
