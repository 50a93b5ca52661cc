//! Outbound requests to URLs that clients give us (webhooks, issue 17; image URLs, issue 21) must not reach our own
//! private networks: no loopback, private, link-local (cloud metadata), unique-local, CGNAT, multicast, documentation
//! or reserved address, nor an IPv6 form that embeds one (IPv4-mapped, IPv4-compatible, NAT64, 6to4).
//!
//! Two checks, both needed:
//! - [`check_destination`] before sending: scheme (https; http only to loopback when insecure is allowed), no user
//!   info, and every address the host resolves to (IP literals are checked as they are, without DNS). It gives the
//!   clear [`Refused`] for the delivery record.
//! - [`guarded_client`] when connecting: its DNS resolver ([`GuardedResolve`]) checks the addresses again and gives
//!   reqwest only checked ones, so DNS rebinding between the check and the connect cannot swap in a private
//!   address. reqwest does not resolve IP literals, which is why the first check is needed too; [`send_checked`]
//!   does both.
//!
//! The resolver is injectable ([`Resolver`]): tests map names with [`StaticResolver`] and never touch DNS.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use url::{Host, Url};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// 0.0.0.0, `::`.
    Unspecified,
    /// 0.0.0.0/8 ("this network").
    ThisNetwork,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10.
    SharedAddressSpace,
    /// 169.254.169.254 and fd00:ec2::254: the instance metadata services.
    CloudMetadata,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10 (deprecated).
    SiteLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15.
    Benchmarking,
    /// Everything else that is not globally routable unicast: 240/4, 192.0.0/24, 192.88.99/24, 2001::/23,
    /// 64:ff9b:1::/48, 100::/64, and any IPv6 outside 2000::/3.
    Reserved,
}

impl Forbidden {
    fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified address",
            Self::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            Self::Loopback => "a loopback address",
            Self::Private => "a private-network address",
            Self::SharedAddressSpace => "a carrier-grade NAT address (100.64.0.0/10)",
            Self::CloudMetadata => "a cloud metadata service address",
            Self::LinkLocal => "a link-local address",
            Self::UniqueLocal => "a unique-local IPv6 address (fc00::/7)",
            Self::SiteLocal => "a site-local IPv6 address (fec0::/10)",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "a broadcast address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address (198.18.0.0/15)",
            Self::Reserved => "a reserved, non-global address",
        }
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network in an allow list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an IP network (expected a CIDR such as 127.0.0.0/8 or fd00::/8, or one address)"
)]
pub struct CidrError(pub String);

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_match(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| err())?;
                let prefix: u8 = prefix.parse().map_err(|_| err())?;
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = s.trim().parse().map_err(|_| err())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Self::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Exceptions to the refusals: networks from configuration (`WEBHOOK_ALLOWED_NETWORKS`), and loopback for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub networks: Vec<Cidr>,
    /// Allow loopback addresses (127.0.0.0/8, `::1` and their IPv6 forms): `WEBHOOK_ALLOW_INSECURE=true`.
    pub loopback: bool,
}

impl AllowList {
    /// Nothing allowed that [`forbidden_reason`] refuses.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses a comma- or space-separated list of CIDRs (or single addresses); empty means none.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        let networks = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            networks,
            loopback: false,
        })
    }

    pub fn with_loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.networks
            .iter()
            .any(|net| net.contains(ip) || embedded.is_some_and(|v4| net.contains(v4)))
    }
}

/// The IPv4 address inside an IPv6 form that carries one: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, deprecated; not `::` or `::1`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::/48`).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d (the first 96 bits zero), but `::` and `::1` are IPv6's own.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low32);
    }
    // 64:ff9b::/96, the well-known NAT64 prefix.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32);
    }
    // 2002::/16: 6to4, the IPv4 address in bits 16..48.
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

/// Whether `ip` is refused, and why, ignoring any allow list.
pub fn classify(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    prefix_match(
        u32::from(Ipv4Addr::from(net)).into(),
        u32::from(ip).into(),
        32,
        prefix,
    )
}

fn in6(ip: Ipv6Addr, net: u128, prefix: u8) -> bool {
    prefix_match(net, u128::from(ip), 128, prefix)
}

fn classify_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    use Forbidden::*;
    let reason = if ip.is_unspecified() {
        Unspecified
    } else if in4(ip, [0, 0, 0, 0], 8) {
        ThisNetwork
    } else if ip.is_loopback() {
        Loopback
    } else if in4(ip, [10, 0, 0, 0], 8)
        || in4(ip, [172, 16, 0, 0], 12)
        || in4(ip, [192, 168, 0, 0], 16)
    {
        Private
    } else if in4(ip, [100, 64, 0, 0], 10) {
        SharedAddressSpace
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        CloudMetadata
    } else if in4(ip, [169, 254, 0, 0], 16) {
        LinkLocal
    } else if ip.is_broadcast() {
        Broadcast
    } else if in4(ip, [224, 0, 0, 0], 4) {
        Multicast
    } else if in4(ip, [192, 0, 2, 0], 24)
        || in4(ip, [198, 51, 100, 0], 24)
        || in4(ip, [203, 0, 113, 0], 24)
    {
        Documentation
    } else if in4(ip, [198, 18, 0, 0], 15) {
        Benchmarking
    } else if in4(ip, [240, 0, 0, 0], 4)
        || in4(ip, [192, 0, 0, 0], 24)
        || in4(ip, [192, 88, 99, 0], 24)
    {
        Reserved
    } else {
        return None;
    };
    Some(reason)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    use Forbidden::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if let Some(v4) = embedded_ipv4(ip) {
        if let Some(reason) = classify_v4(v4) {
            return Some(reason);
        }
        // 6to4 of a public address is global unicast; the other forms of one are allowed as that address.
        return None;
    }
    let reason = if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        CloudMetadata
    } else if in6(ip, 0xfe80 << 112, 10) {
        LinkLocal
    } else if in6(ip, 0xfec0 << 112, 10) {
        SiteLocal
    } else if in6(ip, 0xfc00 << 112, 7) {
        UniqueLocal
    } else if in6(ip, 0xff00 << 112, 8) {
        Multicast
    } else if in6(ip, 0x2001_0db8 << 96, 32) || in6(ip, 0x3fff << 112, 20) {
        Documentation
    } else if !in6(ip, 0x2000 << 112, 3) || in6(ip, 0x2001 << 112, 23) {
        // Outside global unicast (incl. 64:ff9b:1::/48, 100::/64), or IETF protocol assignments (incl. Teredo).
        Reserved
    } else {
        return None;
    };
    Some(reason)
}

/// Whether `ip` is refused under `allow`, and why. The allow list's networks and its loopback flag are matched
/// against the address and against the IPv4 address an IPv6 form embeds.
pub fn forbidden_reason(ip: IpAddr, allow: &AllowList) -> Option<Forbidden> {
    let reason = classify(ip)?;
    if allow.contains(ip) || (allow.loopback && reason == Forbidden::Loopback) {
        return None;
    }
    Some(reason)
}

/// Whether `ip` is refused under `allow`.
pub fn is_forbidden(ip: IpAddr, allow: &AllowList) -> bool {
    forbidden_reason(ip, allow).is_some()
}

/// Loopback, directly or in an IPv6 form that embeds 127.0.0.0/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    classify(ip) == Some(Forbidden::Loopback)
}

/// Who is asking and which settings change the answer, for the messages of [`Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purpose {
    /// Plural noun: "webhooks".
    pub what: &'static str,
    /// The setting that allows http and loopback: "WEBHOOK_ALLOW_INSECURE".
    pub insecure_setting: &'static str,
    /// The setting with allowed networks: "WEBHOOK_ALLOWED_NETWORKS".
    pub networks_setting: &'static str,
}

impl Purpose {
    pub const WEBHOOKS: Purpose = Purpose {
        what: "webhooks",
        insecure_setting: "WEBHOOK_ALLOW_INSECURE",
        networks_setting: "WEBHOOK_ALLOWED_NETWORKS",
    };
    /// Input images named by URL in an edit request, fetched by the worker.
    pub const EDIT_IMAGES: Purpose = Purpose {
        what: "edit image URLs",
        insecure_setting: "EDIT_URL_ALLOW_INSECURE",
        networks_setting: "EDIT_URL_ALLOWED_NETWORKS",
    };
}

/// What may be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// http (not only https), to loopback addresses only; tests.
    pub allow_insecure: bool,
    pub allow: AllowList,
    pub purpose: Purpose,
}

impl Policy {
    /// `allow_insecure` (e.g. `WEBHOOK_ALLOW_INSECURE=true`) allows http and loopback; `allowed_networks` (e.g.
    /// `WEBHOOK_ALLOWED_NETWORKS`) exempts networks from the refusals.
    pub fn new(purpose: Purpose, allow_insecure: bool, allowed_networks: Vec<Cidr>) -> Self {
        Self {
            allow_insecure,
            allow: AllowList {
                networks: allowed_networks,
                loopback: allow_insecure,
            },
            purpose,
        }
    }

    /// https to public addresses only.
    pub fn strict(purpose: Purpose) -> Self {
        Self::new(purpose, false, Vec::new())
    }
}

/// Why a destination is refused. The messages are meant for a delivery record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("destination {ip} is {reason}{}; {} may not target private networks ({} / {})",
        embedded_note(*.ip), .purpose.what, .purpose.insecure_setting, .purpose.networks_setting)]
    Forbidden {
        ip: IpAddr,
        reason: Forbidden,
        purpose: Purpose,
    },
    #[error("the URL scheme {scheme:?} is not allowed; {} must use https", .purpose.what)]
    Scheme { scheme: String, purpose: Purpose },
    #[error("http is not allowed; {} must use https (http to loopback only with {}=true)",
        .purpose.what, .purpose.insecure_setting)]
    InsecureHttp { purpose: Purpose },
    #[error("http is allowed only to loopback, and {host} resolves to {ip}; {} must use https", .purpose.what)]
    HttpNotLoopback {
        host: String,
        ip: IpAddr,
        purpose: Purpose,
    },
    #[error("URLs with a user name or password are not allowed")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("could not resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
}

fn embedded_note(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6)
            .map(|v4| format!(" (it embeds IPv4 {v4})"))
            .unwrap_or_default(),
        IpAddr::V4(_) => String::new(),
    }
}

/// A refusal somewhere in an error's source chain (e.g. a `reqwest::Error` from [`guarded_client`]'s resolver).
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = err.source();
    }
    None
}

/// Host name resolution, injectable so tests never touch DNS.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// Every address of `host` (a domain name, not an IP literal).
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The system's resolver (`getaddrinfo` via tokio), bounded by [`RESOLVE_TIMEOUT`]: a submission checking an image
/// URL, or a delivery, does not wait on a slow DNS server for longer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

/// The longest a name lookup may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0)))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "resolving {host} took more than {} s",
                        RESOLVE_TIMEOUT.as_secs()
                    ),
                )
            })??;
        let mut ips: Vec<IpAddr> = found.map(|addr| addr.ip()).collect();
        ips.dedup();
        Ok(ips)
    }
}

/// Fixed answers, for tests: a name not in the map does not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    hosts: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `host` resolving to `ips` (matched case-insensitively, without a trailing dot).
    pub fn with(mut self, host: &str, ips: &[IpAddr]) -> Self {
        self.hosts.insert(normalise_host(host), ips.to_vec());
        self
    }
}

fn normalise_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        self.hosts
            .get(&normalise_host(host))
            .cloned()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} is not a known test host"),
                )
            })
    }
}

/// Resolves `host` and refuses it if ANY of its addresses is refused.
async fn resolve_checked(
    host: &str,
    allow: &AllowList,
    purpose: Purpose,
    resolver: &dyn Resolver,
) -> Result<Vec<IpAddr>, Refused> {
    let ips = resolver
        .resolve(host)
        .await
        .map_err(|err| Refused::Resolve {
            host: host.to_owned(),
            message: err.to_string(),
        })?;
    if ips.is_empty() {
        return Err(Refused::NoAddress {
            host: host.to_owned(),
        });
    }
    for &ip in &ips {
        if let Some(reason) = forbidden_reason(ip, allow) {
            return Err(Refused::Forbidden {
                ip,
                reason,
                purpose,
            });
        }
    }
    Ok(ips)
}

/// Checks a destination URL before anything is sent: the scheme (https; http only when `policy.allow_insecure` and
/// every address is loopback), no user info, a host, and every address it resolves to (IP literals as they are).
/// Returns the addresses with the URL's port.
pub async fn check_destination(
    url: &Url,
    policy: &Policy,
    resolver: &dyn Resolver,
) -> Result<Vec<SocketAddr>, Refused> {
    let purpose = policy.purpose;
    let http = match url.scheme() {
        "https" => false,
        "http" if policy.allow_insecure => true,
        "http" => return Err(Refused::InsecureHttp { purpose }),
        other => {
            return Err(Refused::Scheme {
                scheme: other.to_owned(),
                purpose,
            });
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::UserInfo);
    }
    let port = url
        .port_or_known_default()
        .unwrap_or(if http { 80 } else { 443 });
    let (host, ips) = match url.host() {
        None => return Err(Refused::NoHost),
        Some(Host::Ipv4(v4)) => (v4.to_string(), vec![IpAddr::V4(v4)]),
        Some(Host::Ipv6(v6)) => (v6.to_string(), vec![IpAddr::V6(v6)]),
        // http(s) hosts that look like addresses are parsed by `url` already; this is a second line.
        Some(Host::Domain(domain)) => match domain.trim_end_matches('.').parse::<IpAddr>() {
            Ok(ip) => (domain.to_owned(), vec![ip]),
            Err(_) if domain.is_empty() => return Err(Refused::NoHost),
            Err(_) => (
                domain.to_owned(),
                resolve_checked(domain, &policy.allow, purpose, resolver).await?,
            ),
        },
    };
    for &ip in &ips {
        if let Some(reason) = forbidden_reason(ip, &policy.allow) {
            return Err(Refused::Forbidden {
                ip,
                reason,
                purpose,
            });
        }
        if http && !is_loopback(ip) {
            return Err(Refused::HttpNotLoopback { host, ip, purpose });
        }
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// reqwest's DNS resolver for [`guarded_client`]: resolves through a [`Resolver`] and refuses the name (so the
/// request fails before connecting) if any address is refused by the policy's allow list. reqwest connects only to
/// the addresses this returns. It does not know the URL's scheme, so "http only to loopback" is
/// [`check_destination`]'s alone.
#[derive(Clone)]
pub struct GuardedResolve {
    resolver: Arc<dyn Resolver>,
    allow: AllowList,
    purpose: Purpose,
}

impl GuardedResolve {
    pub fn new(policy: &Policy, resolver: Arc<dyn Resolver>) -> Self {
        Self {
            resolver,
            allow: policy.allow.clone(),
            purpose: policy.purpose,
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips =
                resolve_checked(&host, &this.allow, this.purpose, this.resolver.as_ref()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// An HTTP client that connects only to addresses the policy allows (resolved through `resolver` at connect time),
/// follows no redirect, uses no proxy (none from the environment either), and gives up after `timeout` in all (the
/// connection within at most 10 s of it). https only unless `policy.allow_insecure`.
///
/// IP-literal URLs are not resolved, so they pass no resolver: check each URL with [`check_destination`] first, or
/// send with [`send_checked`].
pub fn guarded_client(
    policy: &Policy,
    resolver: Arc<dyn Resolver>,
    timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(GuardedResolve::new(policy, resolver))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(!policy.allow_insecure)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .build()
}

/// Why [`send_checked`] got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Http(reqwest::Error),
}

impl From<reqwest::Error> for SendError {
    /// A refusal at connect time (the resolver's) is reported as such.
    fn from(err: reqwest::Error) -> Self {
        match refusal(&err) {
            Some(refused) => Self::Refused(refused.clone()),
            None => Self::Http(err),
        }
    }
}

/// Checks the request's URL ([`check_destination`]), then sends it with `client` (made by [`guarded_client`] with
/// the same policy and resolver, which checks the addresses again at connect time).
pub async fn send_checked(
    client: &reqwest::Client,
    request: reqwest::Request,
    policy: &Policy,
    resolver: &dyn Resolver,
) -> Result<reqwest::Response, SendError> {
    check_destination(request.url(), policy, resolver).await?;
    Ok(client.execute(request).await?)
}

/// A response body read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// At most the cap's bytes.
    pub body: Bytes,
    /// The body went on past the cap (the rest was not read).
    pub truncated: bool,
}

/// Reads at most `max_bytes` of a response body, and stops there (dropping the rest of the response).
pub async fn read_capped(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> reqwest::Result<Capped> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max_bytes - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(Capped {
                body: body.freeze(),
                truncated: true,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped {
        body: body.freeze(),
        truncated: false,
    })
}

#[cfg(test)]
#[path = "net_guard_tests.rs"]
mod tests;
