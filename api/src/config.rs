//! The API role's configuration: `ApiArgs` as read from the environment (every variable is also a `--flag`), and
//! `ApiSettings`, the same validated once at start-up (`ApiArgs::settings`), which is all the rest of the API reads.
//! A bad value stops start-up with one line naming the variable.

use crate::auth::oidc::{OidcArgs, OidcConfig};
use clap::Args;
use imagegen_shared::config::{
    ConfigError, CoreArgs, DatabaseArgs, Environment, ProviderArgs, ProviderSettings, RedisArgs,
    StorageArgs, StorageSettings,
};
use secrecy::SecretString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    #[command(flatten)]
    pub core: CoreArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub webhooks: crate::webhooks::config::WebhookArgs,
    #[command(flatten)]
    pub edits: imagegen_shared::config::edits::EditArgs,
    /// Address to listen on.
    #[arg(
        long,
        env = "API_HOST",
        value_name = "API_HOST",
        default_value = "0.0.0.0"
    )]
    pub api_host: String,
    /// Port to listen on.
    #[arg(
        long,
        env = "API_PORT",
        value_name = "API_PORT",
        default_value_t = 8003
    )]
    pub api_port: u16,
    /// Most images one request may ask for (a provider's own maximum still applies).
    #[arg(long, env = "MAX_IMAGES_PER_REQUEST", value_name = "MAX_IMAGES_PER_REQUEST", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=16))]
    pub max_images_per_request: u8,
    /// Check prompts against BLOCKED_WORDS.
    #[arg(long, env = "ENABLE_CONTENT_MODERATION", value_name = "ENABLE_CONTENT_MODERATION", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enable_content_moderation: bool,
    /// Comma-separated words or phrases that block a prompt.
    #[arg(
        long,
        env = "BLOCKED_WORDS",
        value_name = "BLOCKED_WORDS",
        default_value = "",
        hide_env_values = true
    )]
    pub blocked_words: String,
    /// Most requests in one batch.
    #[arg(long, env = "BATCH_MAX_REQUESTS", value_name = "BATCH_MAX_REQUESTS", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub batch_max_requests: u16,
    /// Record plain submissions that arrive together in one INSERT (group commit, Postgres only). On by default;
    /// off records each with its own statement (for comparing the two).
    #[arg(long, env = "SUBMIT_GROUP_COMMIT", value_name = "SUBMIT_GROUP_COMMIT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub submit_group_commit: bool,
    /// Most submissions recorded at once; under a burst the rest wait their turn, first come, first served, at a
    /// few hundred bytes each (see docs/performance.md).
    #[arg(long, env = "SUBMIT_CONCURRENCY", value_name = "SUBMIT_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub submit_concurrency: u16,
    /// How long wait mode holds a request when the client does not say (`Prefer: wait=N`).
    #[arg(
        long,
        env = "WAIT_DEFAULT_SECS",
        value_name = "WAIT_DEFAULT_SECS",
        default_value_t = 60
    )]
    pub wait_default_secs: u64,
    /// The longest any request is held.
    #[arg(long, env = "WAIT_MAX_SECS", value_name = "WAIT_MAX_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub wait_max_secs: u64,
    /// How long an Idempotency-Key is remembered.
    #[arg(long, env = "IDEMPOTENCY_TTL", value_name = "IDEMPOTENCY_TTL", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub idempotency_ttl_secs: u64,
    /// After SIGTERM, keep serving this many seconds with /health/ready answering 503, so load balancers stop
    /// sending before connections are refused (Kubernetes: a few seconds; 0 stops accepting at once).
    #[arg(long, env = "API_SHUTDOWN_DELAY_SECS", value_name = "API_SHUTDOWN_DELAY_SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub api_shutdown_delay_secs: u64,
    /// Require credentials on the API (an API key from `imagegen keys create`, or a token from AZURE_AD_* /
    /// OIDC_*); false serves everyone as `anonymous`. Health, metrics, docs and the provider list stay open.
    #[arg(long, env = "ENABLE_AUTHENTICATION", value_name = "ENABLE_AUTHENTICATION", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enable_authentication: bool,
    #[command(flatten)]
    pub oidc: OidcArgs,
    /// Failed authentications (no credentials, an unknown key, a bad token) one client address may make per
    /// minute across the API fleet; over it, 429 before any credential is looked up (0: no limit). The address
    /// comes from X-Forwarded-For only behind TRUSTED_PROXIES.
    #[arg(
        long,
        env = "AUTH_FAILURES_PER_MINUTE",
        value_name = "AUTH_FAILURES_PER_MINUTE",
        default_value_t = 60
    )]
    pub auth_failures_per_minute: u32,
    /// Seconds a valid API key is remembered without a database lookup (0: looked up every time). A revocation
    /// through the admin API applies at once on every replica; `imagegen keys revoke` and expiry within this.
    #[arg(long, env = "API_KEY_CACHE_SECS", value_name = "API_KEY_CACHE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=60))]
    pub api_key_cache_secs: u64,
    /// Seconds an unknown, revoked or expired API key is remembered as such (0: looked up every time).
    #[arg(long, env = "API_KEY_NEGATIVE_CACHE_SECS", value_name = "API_KEY_NEGATIVE_CACHE_SECS",
          default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub api_key_negative_cache_secs: u64,
    /// Key of the signed download links handed out while authentication is on (32 characters or more; the same on
    /// every API replica).
    #[arg(
        long,
        env = "DOWNLOAD_SIGNING_KEY",
        value_name = "DOWNLOAD_SIGNING_KEY",
        hide_env_values = true
    )]
    pub download_signing_key: Option<secrecy::SecretString>,
    /// How long a signed download link works, in seconds.
    #[arg(long, env = "DOWNLOAD_LINK_TTL_SECS", value_name = "DOWNLOAD_LINK_TTL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(60..=604_800))]
    pub download_link_ttl_secs: u64,
    /// Requests per minute one owner may make to /api/v1 across the API fleet (0: no limit).
    #[arg(
        long,
        env = "RATE_LIMIT_PER_MINUTE",
        value_name = "RATE_LIMIT_PER_MINUTE",
        default_value_t = 0
    )]
    pub rate_limit_per_minute: u32,
    /// Images one owner may request per day, UTC (0: no limit).
    #[arg(
        long,
        env = "IMAGE_QUOTA_PER_DAY",
        value_name = "IMAGE_QUOTA_PER_DAY",
        default_value_t = 0
    )]
    pub image_quota_per_day: u32,
    /// Jobs one owner may have queued or running at once (0: no limit).
    #[arg(
        long,
        env = "MAX_ACTIVE_JOBS_PER_OWNER",
        value_name = "MAX_ACTIVE_JOBS_PER_OWNER",
        default_value_t = 0
    )]
    pub max_active_jobs_per_owner: u32,
    /// USD one owner may spend per UTC day, by default (per-owner and per-key budgets through the admin API);
    /// unset: no limit. Over it, submissions get 402 `budget_exceeded`.
    #[arg(long, env = "BUDGET_USD_PER_DAY", value_name = "USD")]
    pub budget_usd_per_day: Option<f64>,
    /// USD one owner may spend per UTC calendar month, by default; unset: no limit.
    #[arg(long, env = "BUDGET_USD_PER_MONTH", value_name = "USD")]
    pub budget_usd_per_month: Option<f64>,
    /// Browser origins allowed to call the API (CORS), comma-separated exact origins such as
    /// https://app.example.com; `*` only while authentication is off; empty: no cross-origin access.
    #[arg(
        long,
        env = "CORS_ORIGINS",
        value_name = "CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: String,
    /// Serve /metrics on this port of API_HOST instead of API_PORT (keeps metrics off the public listener);
    /// unset: /metrics is on API_PORT.
    #[arg(long, env = "API_METRICS_PORT", value_name = "API_METRICS_PORT")]
    pub api_metrics_port: Option<u16>,
    /// Base of the download URLs handed to clients, e.g. https://images.example.com (default: from the Host header).
    #[arg(long, env = "PUBLIC_BASE_URL", value_name = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<url::Url>,
    /// Proxies believed about the client's scheme and host (X-Forwarded-Proto, X-Forwarded-Host) when
    /// PUBLIC_BASE_URL is unset: comma-separated IP addresses or CIDR ranges, e.g. 10.0.0.0/8,127.0.0.1; empty:
    /// forwarded headers are ignored.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_name = "TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: String,
}

/// The API's settings, validated.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub environment: Environment,
    pub host: String,
    pub port: u16,
    /// Serve /metrics on its own port (on `host`) instead of with the API.
    pub metrics_port: Option<u16>,
    pub providers: ProviderSettings,
    pub storage: StorageSettings,
    pub max_images_per_request: u8,
    /// BLOCKED_WORDS, when ENABLE_CONTENT_MODERATION is on.
    pub blocked_words: Option<String>,
    pub batch_max_requests: usize,
    pub submit_group_commit: bool,
    pub submit_concurrency: usize,
    pub wait_default: Duration,
    pub wait_max: Duration,
    pub idempotency_ttl: Duration,
    pub shutdown_delay: Duration,
    pub auth: AuthSettings,
    pub limits: OwnerLimitSettings,
    /// CORS_ORIGINS, checked (exact origins; `*` only without authentication).
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// Without a trailing slash.
    pub public_base_url: Option<String>,
    /// TRUSTED_PROXIES: the peers whose X-Forwarded-Proto and X-Forwarded-Host are believed.
    pub trusted_proxies: TrustedProxies,
    pub webhooks: crate::webhooks::config::WebhookSettings,
    /// EDIT_*: input limits and the policy for image URLs.
    pub edits: imagegen_shared::config::edits::EditSettings,
}

/// Who may call, and how.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// ENABLE_AUTHENTICATION.
    pub enabled: bool,
    /// The token issuer, when one is configured and authentication is on.
    pub oidc: Option<OidcConfig>,
    pub generate_role: String,
    pub admin_role: String,
    /// DOWNLOAD_SIGNING_KEY and the links' lifetime (authentication on only).
    pub link_signing: Option<(SecretString, Duration)>,
    /// AUTH_FAILURES_PER_MINUTE per client address (0: none).
    pub failures_per_minute: u64,
    /// API_KEY_CACHE_SECS and API_KEY_NEGATIVE_CACHE_SECS.
    pub key_cache: Duration,
    pub key_negative_cache: Duration,
}

/// Per-owner limits; 0 is none.
#[derive(Debug, Clone, Copy)]
pub struct OwnerLimitSettings {
    pub requests_per_minute: u64,
    pub images_per_day: u64,
    pub active_jobs: i64,
    /// Default budgets in micro-dollars (`None`: no limit).
    pub budget_per_day: Option<i64>,
    pub budget_per_month: Option<i64>,
    /// LIMITS_ON_REDIS_ERROR for the per-minute limit.
    pub on_redis_error: imagegen_shared::limits::FailMode,
}

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The shortest DOWNLOAD_SIGNING_KEY accepted.
const MIN_SIGNING_KEY_CHARS: usize = 32;

/// A budget in dollars as micro-dollars: finite, not negative, at most a billion dollars.
pub fn budget(name: &str, usd: Option<f64>) -> anyhow::Result<Option<i64>> {
    match usd {
        None => Ok(None),
        Some(v) if v.is_finite() && (0.0..=1e9).contains(&v) => {
            Ok(Some(imagegen_shared::cost::micros(v)))
        }
        Some(v) => anyhow::bail!("{name}: {v} is not an amount of USD from 0 to 1000000000"),
    }
}

/// TRUSTED_PROXIES: IP addresses and CIDR ranges, IPv4 or IPv6. Empty trusts no one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpRange>);

/// One address range: `network` with its host bits cleared, and the prefix length (32 or 128 for one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// `10.1.2.3`, `10.0.0.0/8`, `::1`, `fd00::/8`. Host bits set under the prefix are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`).
    fn parse(entry: &str) -> Option<Self> {
        let (address, prefix) = match entry.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (entry, None),
        };
        let address: IpAddr = address.parse().ok()?;
        let prefix = match prefix {
            // One address: an IPv4-mapped IPv6 one (`::ffff:10.0.0.1`) stands for its IPv4 address.
            None => return Some(Self::single(address.to_canonical())),
            Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok()?
            }
            Some(_) => return None,
        };
        (prefix <= Self::bits(address)).then(|| Self {
            network: Self::mask(address, prefix),
            prefix,
        })
    }

    fn single(address: IpAddr) -> Self {
        Self {
            network: address,
            prefix: Self::bits(address),
        }
    }

    fn bits(address: IpAddr) -> u8 {
        if address.is_ipv4() { 32 } else { 128 }
    }

    /// `address` with every bit after the first `prefix` cleared (`prefix` is at most `bits(address)`).
    fn mask(address: IpAddr, prefix: u8) -> IpAddr {
        match address {
            IpAddr::V4(v4) => {
                let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
            }
            IpAddr::V6(v6) => {
                let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
            }
        }
    }

    fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.network.is_ipv4()
            && Self::mask(address, self.prefix) == self.network
    }
}

impl TrustedProxies {
    /// A comma-separated list of addresses and ranges; the error names the first bad entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                IpRange::parse(entry).ok_or_else(|| {
                    format!(
                        "`{entry}` is not an IP address or CIDR range (e.g. 10.0.0.0/8,127.0.0.1)"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether a connection from `peer` comes from a trusted proxy (an IPv4-mapped IPv6 peer counts as IPv4).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|range| range.contains(peer))
    }
}

impl ApiArgs {
    /// Every setting checked, each error naming its variable.
    pub fn settings(&self) -> anyhow::Result<ApiSettings> {
        use secrecy::ExposeSecret;
        let providers = self.providers.settings()?;
        let storage = self.storage.settings()?;
        if self.api_metrics_port.is_some_and(|p| p == self.api_port) {
            return Err(ConfigError::new("API_METRICS_PORT", "must differ from API_PORT").into());
        }
        let link_signing = if self.enable_authentication {
            let key = self
                .download_signing_key
                .clone()
                .filter(|k| k.expose_secret().chars().count() >= MIN_SIGNING_KEY_CHARS)
                .ok_or_else(|| {
                    ConfigError::new(
                        "DOWNLOAD_SIGNING_KEY",
                        format!(
                            "required with ENABLE_AUTHENTICATION, at least {MIN_SIGNING_KEY_CHARS} characters \
                             (the same on every API replica)"
                        ),
                    )
                })?;
            Some((key, Duration::from_secs(self.download_link_ttl_secs)))
        } else {
            None
        };
        let oidc = match OidcConfig::from_args(&self.oidc)? {
            Some(config) if self.enable_authentication => Some(config),
            Some(_) => {
                tracing::warn!(
                    "a token issuer is configured but ENABLE_AUTHENTICATION is off: every caller is anonymous"
                );
                None
            }
            None => None,
        };
        let cors = crate::security::cors(&self.cors_origins, self.enable_authentication)
            .map_err(|e| ConfigError::new("CORS_ORIGINS", e.to_string()))?;
        Ok(ApiSettings {
            environment: self.core.environment,
            host: self.api_host.clone(),
            port: self.api_port,
            metrics_port: self.api_metrics_port,
            providers,
            storage,
            max_images_per_request: self.max_images_per_request,
            blocked_words: self
                .enable_content_moderation
                .then(|| self.blocked_words.clone()),
            batch_max_requests: usize::from(self.batch_max_requests),
            submit_group_commit: self.submit_group_commit,
            submit_concurrency: usize::from(self.submit_concurrency),
            // A default above the cap is held to the cap (as every wait is).
            wait_default: Duration::from_secs(self.wait_default_secs.min(self.wait_max_secs)),
            wait_max: Duration::from_secs(self.wait_max_secs),
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs),
            shutdown_delay: Duration::from_secs(self.api_shutdown_delay_secs),
            auth: AuthSettings {
                enabled: self.enable_authentication,
                oidc,
                generate_role: self.oidc.auth_generate_role.clone(),
                admin_role: self.oidc.auth_admin_role.clone(),
                link_signing,
                failures_per_minute: u64::from(self.auth_failures_per_minute),
                key_cache: Duration::from_secs(self.api_key_cache_secs),
                key_negative_cache: Duration::from_secs(self.api_key_negative_cache_secs),
            },
            limits: OwnerLimitSettings {
                requests_per_minute: u64::from(self.rate_limit_per_minute),
                images_per_day: u64::from(self.image_quota_per_day),
                active_jobs: i64::from(self.max_active_jobs_per_owner),
                budget_per_day: budget("BUDGET_USD_PER_DAY", self.budget_usd_per_day)?,
                budget_per_month: budget("BUDGET_USD_PER_MONTH", self.budget_usd_per_month)?,
                on_redis_error: self.redis.limits_on_redis_error,
            },
            cors,
            public_base_url: self
                .public_base_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            trusted_proxies: TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|e| ConfigError::new("TRUSTED_PROXIES", e))?,
            webhooks: self.webhooks.settings()?,
            edits: self.edits.settings()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ApiArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiArgs,
    }

    /// Settings end up in panics, logs and error reports through `Debug`: no secret may show there.
    #[test]
    fn debug_output_holds_no_secret() {
        let secrets = [
            "sk-openai-SECRET1",
            "azure-key-SECRET2",
            "aad-token-SECRET3",
            "flux-key-SECRET4",
            "signing-key-SECRET5-of-at-least-32-chars",
            "dbpass-SECRET6",
            "redispass-SECRET7",
            "aws-SECRET8",
            "azure-storage-SECRET9",
        ];
        let cli = Cli::try_parse_from([
            "imagegen",
            "--database-url",
            &format!("postgres://app:{}@db:5432/imagegen", secrets[5]),
            "--redis-url",
            &format!("redis://:{}@redis:6379", secrets[6]),
            "--openai-api-key",
            secrets[0],
            "--azure-openai-api-key",
            secrets[1],
            "--azure-openai-ad-token",
            secrets[2],
            "--flux-api-key",
            secrets[3],
            "--download-signing-key",
            secrets[4],
            "--aws-secret-access-key",
            secrets[7],
            "--azure-storage-access-key",
            secrets[8],
        ])
        .expect("arguments parse");
        let debug = format!("{:?}", cli.api);
        for secret in secrets {
            assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
        }
        assert!(debug.contains("postgres://app:REDACTED@db:5432/imagegen"));
    }

    fn settings_error(extra: &[&str]) -> String {
        let mut args = vec![
            "imagegen",
            "--database-url",
            "postgres://db/x",
            "--redis-url",
            "redis://r",
            "--openai-api-key",
            "k",
        ];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).expect("arguments parse");
        cli.api.settings().expect_err("refused").to_string()
    }

    /// Each cross-field rule stops start-up with a line naming the variable.
    #[test]
    fn bad_settings_name_their_variable() {
        let cases: [(&[&str], &str); 6] = [
            (&["--enable-authentication", "true"], "DOWNLOAD_SIGNING_KEY"),
            (
                &[
                    "--enable-authentication",
                    "true",
                    "--download-signing-key",
                    "short",
                ],
                "DOWNLOAD_SIGNING_KEY",
            ),
            (&["--api-metrics-port", "8003"], "API_METRICS_PORT"),
            (
                &[
                    "--cors-origins",
                    "*",
                    "--enable-authentication",
                    "true",
                    "--download-signing-key",
                    &"k".repeat(40),
                ],
                "CORS_ORIGINS",
            ),
            (&["--default-model", "nope"], "DEFAULT_MODEL"),
            (&["--storage-backend", "s3"], "S3_BUCKET"),
        ];
        for (extra, variable) in cases {
            let message = settings_error(extra);
            assert!(message.contains(variable), "{extra:?}: {message}");
        }
        let cli = Cli::try_parse_from([
            "imagegen",
            "--database-url",
            "postgres://db/x",
            "--redis-url",
            "redis://r",
            "--openai-api-key",
            "k",
            "--public-base-url",
            "https://images.example.com/",
        ])
        .expect("arguments parse");
        let settings = cli.api.settings().expect("valid");
        assert_eq!(
            settings.public_base_url.as_deref(),
            Some("https://images.example.com")
        );
        assert!(settings.auth.link_signing.is_none() && settings.blocked_words.is_some());
        // A default wait above the cap is held to the cap, not refused (schemathesis runs with WAIT_MAX_SECS=10).
        let cli = Cli::try_parse_from([
            "imagegen",
            "--database-url",
            "postgres://db/x",
            "--redis-url",
            "redis://r",
            "--openai-api-key",
            "k",
            "--wait-max-secs",
            "10",
        ])
        .expect("arguments parse");
        assert_eq!(
            cli.api.settings().expect("valid").wait_default,
            std::time::Duration::from_secs(10)
        );
    }

    /// TRUSTED_PROXIES: addresses and CIDR ranges of both families, matched by prefix; a bad entry is named.
    #[test]
    fn trusted_proxies_are_addresses_and_ranges() {
        use super::TrustedProxies;
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let none = TrustedProxies::parse("").expect("empty");
        assert!(!none.trusts(ip("127.0.0.1")) && none == TrustedProxies::default());
        let list = TrustedProxies::parse(" 10.0.0.0/8, 127.0.0.1 ,192.168.1.77/30,fd00::/8,::1,")
            .expect("valid");
        for trusted in [
            "10.0.0.0",
            "10.255.255.255",
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "192.168.1.76",
            "192.168.1.79",
            "fd12:3456::1",
            "::1",
        ] {
            assert!(list.trusts(ip(trusted)), "{trusted}");
        }
        for untrusted in [
            "11.0.0.1",
            "9.255.255.255",
            "127.0.0.2",
            "192.168.1.75",
            "192.168.1.80",
            "fe80::1",
            "::2",
            "::ffff:127.0.0.2",
        ] {
            assert!(!list.trusts(ip(untrusted)), "{untrusted}");
        }
        // Everyone, if asked for; and a mapped address given alone stands for its IPv4 address.
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .expect("valid")
                .trusts(ip("203.0.113.9"))
        );
        assert!(
            !TrustedProxies::parse("0.0.0.0/0")
                .expect("valid")
                .trusts(ip("2001:db8::1"))
        );
        assert!(
            TrustedProxies::parse("::/0")
                .expect("valid")
                .trusts(ip("2001:db8::1"))
        );
        assert!(
            TrustedProxies::parse("::ffff:10.0.0.1")
                .expect("valid")
                .trusts(ip("10.0.0.1"))
        );
        assert!(
            TrustedProxies::parse("10.0.0.1/32")
                .expect("valid")
                .trusts(ip("10.0.0.1"))
        );
        for bad in [
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0",
            "10.0.0.0/8 10.0.0.1",
            "/8",
            "10.0.0.0/0008",
        ] {
            let message = TrustedProxies::parse(&format!("127.0.0.1,{bad}")).expect_err(bad);
            assert!(message.contains(bad.trim()), "{bad}: {message}");
        }
        let message = settings_error(&["--trusted-proxies", "10.0.0.0/8,proxy.internal"]);
        assert!(
            message.starts_with("TRUSTED_PROXIES:")
                && message.contains("proxy.internal")
                && !message.contains('\n'),
            "{message}"
        );
    }
}
