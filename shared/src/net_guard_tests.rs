//! Unit tests of [`super`]. Names resolve only through [`StaticResolver`] (or a resolver written here); the only
//! connections any test opens are to a loopback listener it starts itself.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

fn strict() -> Policy {
    Policy::strict(Purpose::WEBHOOKS)
}

fn insecure() -> Policy {
    Policy::new(Purpose::WEBHOOKS, true, Vec::new())
}

#[test]
fn net_guard_refuses_every_special_ipv4_range() {
    use Forbidden::*;
    let cases = [
        ("0.0.0.0", Unspecified),
        ("0.1.2.3", ThisNetwork),
        ("127.0.0.1", Loopback),
        ("127.255.255.254", Loopback),
        ("10.0.0.1", Private),
        ("10.255.255.255", Private),
        ("172.16.0.1", Private),
        ("172.31.255.255", Private),
        ("192.168.0.1", Private),
        ("192.168.255.255", Private),
        ("100.64.0.1", SharedAddressSpace),
        ("100.127.255.255", SharedAddressSpace),
        ("100.100.100.200", SharedAddressSpace),
        ("169.254.169.254", CloudMetadata),
        ("169.254.0.1", LinkLocal),
        ("169.254.255.255", LinkLocal),
        ("224.0.0.1", Multicast),
        ("239.255.255.250", Multicast),
        ("255.255.255.255", Broadcast),
        ("192.0.2.1", Documentation),
        ("198.51.100.7", Documentation),
        ("203.0.113.9", Documentation),
        ("198.18.0.1", Benchmarking),
        ("198.19.255.255", Benchmarking),
        ("240.0.0.1", Reserved),
        ("192.0.0.8", Reserved),
        ("192.88.99.1", Reserved),
    ];
    for (addr, reason) in cases {
        assert_eq!(classify(ip(addr)), Some(reason), "{addr}");
        assert!(is_forbidden(ip(addr), &AllowList::none()), "{addr}");
    }
    // The edges just outside the ranges are public.
    for addr in [
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "11.0.0.0",
        "9.255.255.255",
    ] {
        assert_eq!(classify(ip(addr)), None, "{addr}");
    }
}

#[test]
fn net_guard_refuses_special_ipv6_ranges_and_embedded_ipv4_forms() {
    use Forbidden::*;
    let cases = [
        ("::", Unspecified),
        ("::1", Loopback),
        ("fe80::1", LinkLocal),
        ("febf:ffff::1", LinkLocal),
        ("fc00::1", UniqueLocal),
        ("fd12:3456::1", UniqueLocal),
        ("fd00:ec2::254", CloudMetadata),
        ("fec0::1", SiteLocal),
        ("ff02::1", Multicast),
        ("ff0e::1", Multicast),
        ("2001:db8::1", Documentation),
        ("3fff::1", Documentation),
        ("2001::1", Reserved),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Reserved),
        ("64:ff9b:1::1", Reserved),
        ("100::1", Reserved),
        ("4000::1", Reserved),
        // IPv4-mapped.
        ("::ffff:127.0.0.1", Loopback),
        ("::ffff:10.1.2.3", Private),
        ("::ffff:169.254.169.254", CloudMetadata),
        ("::ffff:192.168.1.1", Private),
        ("::ffff:0.0.0.0", Unspecified),
        // IPv4-compatible (deprecated).
        ("::127.0.0.1", Loopback),
        ("::10.0.0.1", Private),
        // NAT64.
        ("64:ff9b::127.0.0.1", Loopback),
        ("64:ff9b::a9fe:a9fe", CloudMetadata),
        ("64:ff9b::172.16.0.1", Private),
        // 6to4 embedding 127.0.0.1, 10.0.0.1, 169.254.169.254, 192.168.0.1.
        ("2002:7f00:1::1", Loopback),
        ("2002:a00:1::", Private),
        ("2002:a9fe:a9fe::1", CloudMetadata),
        ("2002:c0a8:1::1", Private),
    ];
    for (addr, reason) in cases {
        assert_eq!(classify(ip(addr)), Some(reason), "{addr}");
        assert!(is_forbidden(ip(addr), &AllowList::none()), "{addr}");
    }
}

#[test]
fn net_guard_allows_public_addresses_in_every_form() {
    for addr in [
        "93.184.216.34",
        "1.1.1.1",
        "8.8.8.8",
        "2606:4700::1",
        "2a00:1450:4001:80e::200e",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",
        "2002:5db8:d822::1",
    ] {
        assert_eq!(
            forbidden_reason(ip(addr), &AllowList::none()),
            None,
            "{addr}"
        );
    }
}

#[test]
fn net_guard_allow_list_and_loopback_flag() {
    let allow = AllowList::parse("127.0.0.0/8, 10.1.0.0/16 fd00::/8").unwrap();
    assert_eq!(allow.networks.len(), 3);
    assert!(!is_forbidden(ip("127.0.0.1"), &allow));
    assert!(!is_forbidden(ip("::ffff:127.0.0.1"), &allow));
    assert!(!is_forbidden(ip("10.1.200.3"), &allow));
    assert!(!is_forbidden(ip("fd12::1"), &allow));
    assert_eq!(
        forbidden_reason(ip("10.2.0.1"), &allow),
        Some(Forbidden::Private)
    );
    assert_eq!(
        forbidden_reason(ip("::1"), &allow),
        Some(Forbidden::Loopback)
    );
    assert_eq!(
        forbidden_reason(ip("169.254.169.254"), &allow),
        Some(Forbidden::CloudMetadata)
    );

    let loopback = AllowList::none().with_loopback(true);
    for addr in [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
    ] {
        assert!(!is_forbidden(ip(addr), &loopback), "{addr}");
    }
    for addr in ["0.0.0.0", "::", "10.0.0.1", "169.254.169.254", "fe80::1"] {
        assert!(is_forbidden(ip(addr), &loopback), "{addr}");
    }

    assert_eq!(AllowList::parse("").unwrap(), AllowList::none());
    assert_eq!(
        AllowList::parse(" 1.2.3.4 ").unwrap().networks,
        vec![Cidr::new(ip("1.2.3.4"), 32).unwrap()]
    );
    for bad in [
        "10.0.0.0/33",
        "fd00::/129",
        "localhost",
        "10.0.0/8",
        "10.0.0.0/x",
    ] {
        assert!(AllowList::parse(bad).is_err(), "{bad}");
    }
    assert!(Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    assert!(!Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("::1")));
}

#[tokio::test]
async fn net_guard_ip_literals_are_checked_without_dns() {
    // A resolver that knows nothing: literals must never reach it.
    let none = StaticResolver::new();
    let policy = insecure().clone();
    let strict = strict();
    let cases = [
        ("https://127.0.0.1/", "127.0.0.1"),
        ("https://2130706433/", "127.0.0.1"),
        ("https://0x7f.1/", "127.0.0.1"),
        ("https://0x7f000001/", "127.0.0.1"),
        ("https://017700000001/", "127.0.0.1"),
        ("https://127.1/", "127.0.0.1"),
        ("https://0/", "0.0.0.0"),
        ("https://[::1]/", "::1"),
        ("https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
        ("https://[::ffff:a9fe:a9fe]/", "::ffff:169.254.169.254"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
        ),
        ("https://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254"),
        ("https://2852039166/", "169.254.169.254"),
        ("https://10.0.0.1:8443/", "10.0.0.1"),
        ("https://[fd00::1]/", "fd00::1"),
        ("https://[fe80::1]/", "fe80::1"),
    ];
    for (text, expected) in cases {
        let err = check_destination(&url(text), &strict, &none)
            .await
            .unwrap_err();
        match err {
            Refused::Forbidden { ip: got, .. } => assert_eq!(got, ip(expected), "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    // Public literals pass, with the URL's port or the scheme's.
    assert_eq!(
        check_destination(&url("https://93.184.216.34/"), &strict, &none)
            .await
            .unwrap(),
        vec![SocketAddr::new(ip("93.184.216.34"), 443)]
    );
    assert_eq!(
        check_destination(&url("https://[2606:4700::1]:8443/x"), &strict, &none)
            .await
            .unwrap(),
        vec![SocketAddr::new(ip("2606:4700::1"), 8443)]
    );
    // Insecure mode: http and loopback literals pass, other private ones still do not.
    assert_eq!(
        check_destination(&url("http://127.0.0.1:9/"), &policy, &none)
            .await
            .unwrap(),
        vec![SocketAddr::new(ip("127.0.0.1"), 9)]
    );
    assert!(
        check_destination(&url("http://[::1]/"), &policy, &none)
            .await
            .is_ok()
    );
    assert!(matches!(
        check_destination(&url("http://10.0.0.1/"), &policy, &none).await,
        Err(Refused::Forbidden {
            reason: Forbidden::Private,
            ..
        })
    ));
}

#[tokio::test]
async fn net_guard_hostname_is_refused_if_any_address_is_forbidden() {
    let resolver = StaticResolver::new()
        .with("mixed.test", &[ip("93.184.216.34"), ip("10.0.0.1")])
        .with("mixed6.test", &[ip("2606:4700::1"), ip("fd00::5")])
        .with("public.test", &[ip("93.184.216.34"), ip("2606:4700::1")])
        .with("localhost", &[ip("127.0.0.1"), ip("::1")])
        .with("empty.test", &[]);
    let policy = strict();
    assert!(matches!(
        check_destination(&url("https://mixed.test/hook"), &policy, &resolver).await,
        Err(Refused::Forbidden {
            reason: Forbidden::Private,
            ..
        })
    ));
    assert!(matches!(
        check_destination(&url("https://mixed6.test/hook"), &policy, &resolver).await,
        Err(Refused::Forbidden {
            reason: Forbidden::UniqueLocal,
            ..
        })
    ));
    assert!(matches!(
        check_destination(&url("https://LOCALHOST./hook"), &policy, &resolver).await,
        Err(Refused::Forbidden {
            reason: Forbidden::Loopback,
            ..
        })
    ));
    assert_eq!(
        check_destination(&url("https://public.test/hook"), &policy, &resolver)
            .await
            .unwrap(),
        vec![
            SocketAddr::new(ip("93.184.216.34"), 443),
            SocketAddr::new(ip("2606:4700::1"), 443)
        ]
    );
    assert!(matches!(
        check_destination(&url("https://empty.test/"), &policy, &resolver).await,
        Err(Refused::NoAddress { .. })
    ));
    assert!(matches!(
        check_destination(&url("https://unknown.test/"), &policy, &resolver).await,
        Err(Refused::Resolve { .. })
    ));
    // The allow list exempts a network; the other addresses of the name are still checked.
    let allowed = Policy::new(
        Purpose::WEBHOOKS,
        false,
        AllowList::parse("10.0.0.0/8").unwrap().networks,
    );
    assert!(
        check_destination(&url("https://mixed.test/"), &allowed, &resolver)
            .await
            .is_ok()
    );
    assert!(
        check_destination(&url("https://mixed6.test/"), &allowed, &resolver)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn net_guard_scheme_userinfo_and_insecure_http() {
    let resolver = StaticResolver::new()
        .with("localhost", &[ip("127.0.0.1"), ip("::1")])
        .with("public.test", &[ip("93.184.216.34")])
        .with("mixed.test", &[ip("127.0.0.1"), ip("93.184.216.34")]);
    let strict = strict();
    let insecure = insecure();
    assert!(matches!(
        check_destination(&url("http://public.test/"), &strict, &resolver).await,
        Err(Refused::InsecureHttp { .. })
    ));
    for scheme in [
        "ftp://public.test/",
        "file:///etc/passwd",
        "gopher://public.test/",
        "ws://public.test/",
    ] {
        assert!(
            matches!(
                check_destination(&url(scheme), &insecure, &resolver).await,
                Err(Refused::Scheme { .. })
            ),
            "{scheme}"
        );
    }
    assert_eq!(
        check_destination(&url("https://user:pw@public.test/"), &strict, &resolver).await,
        Err(Refused::UserInfo)
    );
    assert_eq!(
        check_destination(&url("https://user@public.test/"), &strict, &resolver).await,
        Err(Refused::UserInfo)
    );
    // Insecure: http to loopback only, for every address of the name; https to loopback is allowed too.
    assert_eq!(
        check_destination(&url("http://localhost:8080/"), &insecure, &resolver)
            .await
            .unwrap(),
        vec![
            SocketAddr::new(ip("127.0.0.1"), 8080),
            SocketAddr::new(ip("::1"), 8080)
        ]
    );
    assert!(
        check_destination(&url("https://localhost/"), &insecure, &resolver)
            .await
            .is_ok()
    );
    assert!(matches!(
        check_destination(&url("http://public.test/"), &insecure, &resolver).await,
        Err(Refused::HttpNotLoopback { .. })
    ));
    assert!(matches!(
        check_destination(&url("http://mixed.test/"), &insecure, &resolver).await,
        Err(Refused::HttpNotLoopback { .. })
    ));
    assert!(
        check_destination(&url("https://public.test/"), &insecure, &resolver)
            .await
            .is_ok()
    );
    // The default configuration refuses localhost with a message for the delivery record.
    let err = check_destination(&url("https://localhost/hook"), &strict, &resolver)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "destination 127.0.0.1 is a loopback address; webhooks may not target private networks \
         (WEBHOOK_ALLOW_INSECURE / WEBHOOK_ALLOWED_NETWORKS)"
    );
}

#[test]
fn net_guard_refusal_messages() {
    let p = Purpose::WEBHOOKS;
    let mapped = Refused::Forbidden {
        ip: ip("::ffff:169.254.169.254"),
        reason: Forbidden::CloudMetadata,
        purpose: p,
    };
    assert_eq!(
        mapped.to_string(),
        "destination ::ffff:169.254.169.254 is a cloud metadata service address (it embeds IPv4 169.254.169.254); \
         webhooks may not target private networks (WEBHOOK_ALLOW_INSECURE / WEBHOOK_ALLOWED_NETWORKS)"
    );
    assert_eq!(
        Refused::InsecureHttp { purpose: p }.to_string(),
        "http is not allowed; webhooks must use https (http to loopback only with WEBHOOK_ALLOW_INSECURE=true)"
    );
}

/// Counts its calls, and answers the first `public_calls` with a public address and later ones with `then`.
struct Rebinding {
    calls: AtomicUsize,
    public_calls: usize,
    then: IpAddr,
}

#[async_trait]
impl Resolver for Rebinding {
    async fn resolve(&self, _host: &str) -> std::io::Result<Vec<IpAddr>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(vec![if n < self.public_calls {
            ip("93.184.216.34")
        } else {
            self.then
        }])
    }
}

#[tokio::test]
async fn net_guard_client_refuses_a_forbidden_address_before_connecting() {
    let resolver: Arc<dyn Resolver> =
        Arc::new(StaticResolver::new().with("example.test", &[ip("10.0.0.1")]));
    let policy = strict();
    let client = guarded_client(&policy, resolver.clone(), Duration::from_millis(300)).unwrap();
    // Straight through the client: its resolver refuses, so nothing connects.
    let err = client
        .get("https://example.test/hook")
        .send()
        .await
        .unwrap_err();
    let refused = refusal(&err).unwrap_or_else(|| panic!("not our refusal: {err:?}"));
    assert!(
        matches!(
            refused,
            Refused::Forbidden {
                reason: Forbidden::Private,
                ..
            }
        ),
        "{refused}"
    );
    assert!(!err.is_timeout(), "{err:?}");
    // Through send_checked: the same refusal, typed.
    let request = client
        .post("https://example.test/hook")
        .body("{}")
        .build()
        .unwrap();
    match send_checked(&client, request, &policy, resolver.as_ref()).await {
        Err(SendError::Refused(Refused::Forbidden { ip: got, .. })) => {
            assert_eq!(got, ip("10.0.0.1"))
        }
        other => panic!("{other:?}"),
    }
    // IP literals skip reqwest's resolver; send_checked refuses them before sending.
    let request = client.post("https://10.0.0.1/hook").build().unwrap();
    assert!(matches!(
        send_checked(&client, request, &policy, resolver.as_ref()).await,
        Err(SendError::Refused(Refused::Forbidden { .. }))
    ));
}

#[tokio::test]
async fn net_guard_dns_rebinding_is_caught_at_connect() {
    // The check sees a public address; the connect-time lookup gets the metadata address.
    let rebinding = Arc::new(Rebinding {
        calls: AtomicUsize::new(0),
        public_calls: 1,
        then: ip("169.254.169.254"),
    });
    let policy = strict();
    let client = guarded_client(&policy, rebinding.clone(), Duration::from_millis(300)).unwrap();
    let request = client.post("https://rebind.test/hook").build().unwrap();
    match send_checked(&client, request, &policy, rebinding.as_ref()).await {
        Err(SendError::Refused(Refused::Forbidden {
            ip: got, reason, ..
        })) => {
            assert_eq!(got, ip("169.254.169.254"));
            assert_eq!(reason, Forbidden::CloudMetadata);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rebinding.calls.load(Ordering::SeqCst), 2);
}

/// A loopback HTTP/1.1 server answering every request with `body`; counts the connections it accepts.
async fn loopback_server(body: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn net_guard_loopback_receiver_reachable_only_when_allowed() {
    let (addr, accepted) = loopback_server(b"ok".to_vec()).await;
    let resolver: Arc<dyn Resolver> =
        Arc::new(StaticResolver::new().with("hooks.test", &[ip("127.0.0.1")]));
    let target = format!("http://hooks.test:{}/hook", addr.port());

    let insecure = insecure();
    let client = guarded_client(&insecure, resolver.clone(), Duration::from_secs(5)).unwrap();
    let request = client.post(&target).body("{}").build().unwrap();
    let response = send_checked(&client, request, &insecure, resolver.as_ref())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        read_capped(response, 1024).await.unwrap(),
        Capped {
            body: "ok".into(),
            truncated: false
        }
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // The default policy: refused by the check, and by the client alone (https only, and its resolver).
    let strict = strict();
    let client = guarded_client(&strict, resolver.clone(), Duration::from_secs(5)).unwrap();
    let request = client.post(&target).build().unwrap();
    assert!(matches!(
        send_checked(&client, request, &strict, resolver.as_ref()).await,
        Err(SendError::Refused(Refused::InsecureHttp { .. }))
    ));
    assert!(client.post(&target).send().await.is_err());
    let https = format!("https://hooks.test:{}/hook", addr.port());
    let err = client.post(&https).send().await.unwrap_err();
    assert!(
        matches!(
            refusal(&err),
            Some(Refused::Forbidden {
                reason: Forbidden::Loopback,
                ..
            })
        ),
        "{err:?}"
    );
    // Insecure mode's client still refuses a private address at connect time.
    let private: Arc<dyn Resolver> =
        Arc::new(StaticResolver::new().with("hooks.test", &[ip("192.168.1.10")]));
    let client = guarded_client(&insecure, private, Duration::from_millis(300)).unwrap();
    let err = client.post(&target).send().await.unwrap_err();
    assert!(
        matches!(
            refusal(&err),
            Some(Refused::Forbidden {
                reason: Forbidden::Private,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "no refused request reached the receiver"
    );
}

#[tokio::test]
async fn net_guard_read_capped_stops_at_the_cap() {
    let body: Vec<u8> = (0..10_000u32).map(|n| (n % 251) as u8).collect();
    let (addr, _) = loopback_server(body.clone()).await;
    let resolver: Arc<dyn Resolver> = Arc::new(StaticResolver::new());
    let client = guarded_client(&insecure(), resolver, Duration::from_secs(5)).unwrap();
    let target = format!("http://127.0.0.1:{}/", addr.port());

    let capped = read_capped(client.get(&target).send().await.unwrap(), 100)
        .await
        .unwrap();
    assert!(capped.truncated);
    assert_eq!(&capped.body[..], &body[..100]);
    let whole = read_capped(client.get(&target).send().await.unwrap(), 10_000)
        .await
        .unwrap();
    assert!(!whole.truncated);
    assert_eq!(&whole.body[..], &body[..]);
    let zero = read_capped(client.get(&target).send().await.unwrap(), 0)
        .await
        .unwrap();
    assert_eq!(
        zero,
        Capped {
            body: Bytes::new(),
            truncated: true
        }
    );
}

#[tokio::test]
async fn net_guard_system_resolver_resolves_localhost() {
    // Resolution only (no connection): localhost is in /etc/hosts and is refused by the default policy.
    let ips = SystemResolver.resolve("localhost").await.unwrap();
    assert!(
        !ips.is_empty() && ips.iter().all(|&ip| is_loopback(ip)),
        "{ips:?}"
    );
    let err = check_destination(&url("https://localhost/"), &strict(), &SystemResolver)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Refused::Forbidden {
                reason: Forbidden::Loopback,
                ..
            }
        ),
        "{err}"
    );
}
