//! What a flood of bad credentials costs (issue 20, item 4): failed authentications are limited per client address
//! (X-Forwarded-For believed from TRUSTED_PROXIES only), answered 429 in the error shape before any key lookup, and
//! unknown keys are remembered briefly; a good key is unaffected. Database lookups are counted twice: by the API's
//! own counter on its key-lookup path and, on Postgres, by Postgres' statistics of the `api_keys` table. Also: a
//! multi-tenant Entra app accepts tokens of its allowed tenants only, each with its own tenant's issuer (item 6).

use crate::support::{self, Options, Reply, Stack, kv, start};
use imagegen_testkit::idp::{TENANT, TestIdp};
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};

const SIGNING_KEY: &str = "auth-limits-signing-key-of-32-chars-or-more";
/// AUTH_FAILURES_PER_MINUTE in these tests.
const LIMIT: u64 = 20;
const FLOOD: usize = 10_000;
const CONCURRENCY: usize = 50;

/// The sum of a Prometheus counter over its labels, as /metrics shows it now.
async fn counter(stack: &Stack, name: &str) -> u64 {
    let text = stack.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Index and sequential scans of `api_keys` that Postgres counted in this test's database.
async fn api_key_scans(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT (coalesce(seq_scan, 0) + coalesce(idx_scan, 0))::bigint FROM pg_stat_user_tables \
         WHERE relname = 'api_keys'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_user_tables")
}

async fn get_jobs(stack: &Stack, key: &str, client: &str) -> Reply {
    let r = stack
        .http
        .get(stack.url("/api/v1/jobs"))
        .header("Authorization", format!("Bearer {key}"))
        .header("X-Forwarded-For", client)
        .send()
        .await
        .expect("request");
    Reply::from(r).await
}

fn assert_throttled(r: &Reply, case: &str) {
    r.assert_error(429, "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{case}: no Retry-After"));
    assert!((1..=60).contains(&retry), "{case}: Retry-After {retry}");
    assert!(
        r.body["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{case}: {}",
        r.body
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_flood_of_bad_keys_costs_a_bounded_number_of_lookups(pool: PgPool) {
    // Minute windows are fixed: start well inside one, so the flooded address stays refused to the end.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 40 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let stack = start(
        &pool,
        Options {
            api_env: vec![
                kv("ENABLE_AUTHENTICATION", "true"),
                kv("DOWNLOAD_SIGNING_KEY", SIGNING_KEY),
                kv("AUTH_FAILURES_PER_MINUTE", LIMIT.to_string()),
                kv("TRUSTED_PROXIES", "127.0.0.1,::1"),
            ],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let good = stack.keys(&["create", "--owner", "alice"]).await;
    let lookups = || counter(&stack, "imagegen_auth_key_lookups_total");
    let scans_before = if support::standalone() {
        0
    } else {
        api_key_scans(&pool).await
    };

    // A good key is looked up once, then served from the cache.
    let before = lookups().await;
    for _ in 0..30 {
        assert_eq!(get_jobs(&stack, &good, "198.51.100.1").await.status, 200);
    }
    let good_lookups = lookups().await - before;
    assert!(
        (1..=2).contains(&good_lookups),
        "30 requests with one good key: {good_lookups} lookups"
    );

    // The same unknown key from three addresses: looked up once, then remembered as unknown.
    let before = lookups().await;
    let unknown = "igk_this-key-was-never-issued-by-anyone";
    for client in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        for _ in 0..5 {
            get_jobs(&stack, unknown, client)
                .await
                .assert_error(401, "invalid_token");
        }
    }
    assert_eq!(lookups().await - before, 1, "a repeated bad key");

    // 10,000 different made-up keys from one address behind our proxy, a good key from another address meanwhile.
    let before = lookups().await;
    let started = Instant::now();
    let statuses = futures::future::join_all((0..CONCURRENCY).map(|worker| {
        let (stack, good) = (&stack, &good);
        async move {
            let mut seen = std::collections::BTreeMap::<u16, usize>::new();
            for i in (worker..FLOOD).step_by(CONCURRENCY) {
                let bad = format!("igk_{}", uuid::Uuid::new_v4().simple());
                let r = get_jobs(stack, &bad, "10.9.8.7, 203.0.113.7").await;
                if r.status == 429 {
                    assert_throttled(&r, "flood");
                } else {
                    r.assert_error(401, "invalid_token");
                }
                *seen.entry(r.status).or_default() += 1;
                if i % 200 == 0 {
                    let ok = get_jobs(stack, good, "198.51.100.1").await;
                    assert_eq!(ok.status, 200, "good key during the flood: {}", ok.body);
                }
            }
            seen
        }
    }))
    .await;
    let mut totals = std::collections::BTreeMap::<u16, usize>::new();
    for seen in statuses {
        for (status, n) in seen {
            *totals.entry(status).or_default() += n;
        }
    }
    let flood_lookups = lookups().await - before;
    eprintln!(
        "flood: {FLOOD} bad keys in {:.1} s: {totals:?}, {flood_lookups} key lookups",
        started.elapsed().as_secs_f64()
    );
    // Per minute window: the limit, plus what was already past the check when it was reached; the flood may span
    // two windows. The good key adds a lookup every API_KEY_CACHE_SECS at most.
    let bound = 2 * (LIMIT + 1 + CONCURRENCY as u64) + 20;
    assert!(
        flood_lookups <= bound,
        "{flood_lookups} key lookups for {FLOOD} bad keys (bound {bound})"
    );
    assert!(totals.get(&429).copied().unwrap_or(0) >= FLOOD - 2 * (LIMIT as usize + CONCURRENCY));

    // The flooded address is refused before any lookup, even a good key's that is not cached; a good key the
    // API knows (cached) still works from it.
    let r = get_jobs(&stack, "igk_yet-another-made-up-key", "203.0.113.7").await;
    assert_throttled(&r, "flooded address");
    assert_eq!(
        get_jobs(&stack, &good, "198.51.100.1").await.status,
        200,
        "good key, other address"
    );
    assert_eq!(
        get_jobs(&stack, &good, "203.0.113.7").await.status,
        200,
        "a cached good key from the flooded address"
    );
    // A client cannot escape by claiming another address: only what our proxy saw counts.
    let r = get_jobs(&stack, "igk_made-up", "198.51.100.99, 203.0.113.7").await;
    assert_throttled(&r, "spoofed X-Forwarded-For");

    // Requests without credentials count too.
    let mut last = None;
    for _ in 0..=LIMIT {
        let r = stack
            .http
            .get(stack.url("/api/v1/jobs"))
            .header("X-Forwarded-For", "192.0.2.50")
            .send()
            .await
            .expect("request");
        last = Some(Reply::from(r).await);
    }
    assert_throttled(&last.expect("replies"), "no credentials");
    let r = stack
        .http
        .get(stack.url("/api/v1/jobs"))
        .header("X-Forwarded-For", "192.0.2.51")
        .send()
        .await
        .expect("request");
    Reply::from(r)
        .await
        .assert_error(401, "authentication_required");

    // Postgres' own count of lookups agrees (its statistics arrive within seconds).
    if !support::standalone() {
        let counted = lookups().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let scans = loop {
            let scans = api_key_scans(&pool).await - scans_before;
            if scans >= counted as i64 || Instant::now() > deadline {
                break scans;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            scans >= counted as i64,
            "Postgres counted {scans} scans of api_keys, the API {counted} lookups"
        );
        assert!(
            scans <= counted as i64 + 5,
            "Postgres counted {scans} scans of api_keys for {counted} lookups"
        );
    }
}

/// A multi-tenant Entra app (`organizations`, with an allow-list): tokens of an allowed tenant are accepted with
/// their own tenant's issuer (v2.0 or v1), a foreign tenant's are refused, and so is a token whose issuer names
/// another tenant than its `tid`.
#[sqlx::test(migrations = "./migrations")]
async fn a_multi_tenant_app_accepts_its_allowed_tenants_only(pool: PgPool) {
    let idp = TestIdp::start().await;
    let other = "99999999-8888-7777-6666-555555555555";
    let foreign = "0badc0de-0000-4000-8000-000000000000";
    let client_id = "6f1d2c3b-aaaa-bbbb-cccc-0123456789ab";
    let stack = start(
        &pool,
        Options {
            api_env: vec![
                kv("ENABLE_AUTHENTICATION", "true"),
                kv("DOWNLOAD_SIGNING_KEY", SIGNING_KEY),
                kv("AZURE_AD_TENANT_ID", "organizations"),
                kv("AZURE_AD_CLIENT_ID", client_id),
                kv("AZURE_AD_AUTHORITY_HOST", idp.issuer.clone()),
                kv(
                    "AZURE_AD_ALLOWED_TENANTS",
                    format!("{}, {other}", TENANT.to_uppercase()),
                ),
            ],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let token = |tid: &str, iss: String| {
        let mut claims = idp.claims(&format!("user-of-{tid}"), &["Images.Generate"]);
        claims["tid"] = json!(tid);
        claims["iss"] = json!(iss);
        claims["aud"] = json!(client_id);
        idp.token("rsa-1", &claims)
    };
    let call = |t: String| {
        let (http, url) = (stack.http.clone(), stack.url("/api/v1/jobs"));
        async move {
            let r = http
                .post(url)
                .bearer_auth(t)
                .json(&json!({"prompt": "a tenant's lighthouse"}))
                .send()
                .await
                .expect("request");
            Reply::from(r).await
        }
    };
    for (case, t) in [
        ("tenant 1, v2.0", token(TENANT, idp.entra_issuer(TENANT))),
        ("tenant 2, v2.0", token(other, idp.entra_issuer(other))),
        (
            "tenant 2, v1",
            token(other, format!("https://sts.windows.net/{other}/")),
        ),
    ] {
        let r = call(t).await;
        assert_eq!(r.status, 202, "{case}: {}", r.body);
    }
    for (case, t) in [
        ("foreign tenant", token(foreign, idp.entra_issuer(foreign))),
        (
            "tid of another tenant than iss",
            token(foreign, idp.entra_issuer(TENANT)),
        ),
        (
            "iss of another allowed tenant",
            token(TENANT, idp.entra_issuer(other)),
        ),
        (
            "the alias as issuer",
            token(TENANT, idp.entra_issuer("organizations")),
        ),
    ] {
        let r = call(t).await;
        r.assert_error(401, "invalid_token");
        assert!(!r.body.to_string().contains("eyJ"), "{case}: token echoed");
        eprintln!("{case}: {}", r.body["message"]);
    }
    // Each tenant's users are owners of their own, `<tid>/<oid>`.
    let owners = stack
        .count(
            &pool,
            &format!("SELECT count(DISTINCT owner) FROM jobs WHERE owner LIKE '{TENANT}/%' OR owner LIKE '{other}/%'"),
        )
        .await;
    assert_eq!(owners, 2);
}
