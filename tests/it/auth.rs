//! Bearer tokens from an OpenID Connect issuer (a test identity provider on loopback with its own RSA and EC keys),
//! checked by the real API process: every refusal case, roles, key rotation, owner isolation; plus the admin key
//! endpoints, /metrics on its own port and the header-size limit; API keys from `imagegen keys` (owners isolated from
//! each other, revocation, signed download links) and per-owner limits (requests per minute shared by the fleet,
//! images per day, jobs at once).

use crate::support::{self, Options, Reply, Stack, authentication_on, generate_body, kv, start};
use imagegen_testkit::idp::{self, AUDIENCE, Kind, TENANT, TestIdp};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

const SIGNING_KEY: &str = "auth-tests-signing-key-of-32-chars-or-more";

async fn start_with_idp(pool: &PgPool, idp: &TestIdp, extra: Vec<(String, String)>) -> Stack {
    let mut api_env = vec![
        kv("ENABLE_AUTHENTICATION", "true"),
        kv("DOWNLOAD_SIGNING_KEY", SIGNING_KEY),
        kv("OIDC_ISSUER", idp.issuer.clone()),
        kv("OIDC_AUDIENCE", AUDIENCE),
    ];
    api_env.extend(extra);
    start(
        pool,
        Options {
            api_env,
            ..Options::default()
        },
    )
    .await
}

/// One request with `Authorization: Bearer <credential>` (none when empty).
async fn call(
    stack: &Stack,
    method: &str,
    path: &str,
    credential: &str,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = stack.http.request(method, stack.url(path));
    if !credential.is_empty() {
        req = req.bearer_auth(credential);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    Reply::from(req.send().await.expect("request")).await
}

fn assert_invalid_token(r: &Reply, case: &str, token: &str) {
    assert_eq!(r.status, 401, "{case}: {}", r.body);
    r.assert_error(401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="imagegen", error="invalid_token""#),
        "{case}"
    );
    assert!(
        !r.body.to_string().contains(token),
        "{case}: token echoed: {}",
        r.body
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn tokens_from_an_oidc_issuer_are_checked_for_every_case(pool: PgPool) {
    let idp = TestIdp::start().await;
    let stack = start_with_idp(&pool, &idp, Vec::new()).await;
    let generate = ["Images.Generate"];

    // Valid RS256 (Alice) and ES256 (Bob) tokens: accepted; owners are `<tid>/<oid>`, isolated from each other.
    let alice = idp.token("rsa-1", &idp.claims("alice-oid", &generate));
    let bob = idp.token("ec-1", &idp.claims("bob-oid", &generate));
    let r = call(
        &stack,
        "POST",
        "/api/v1/generate",
        &alice,
        Some(generate_body("alice's token lighthouse")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    let image_url = r.body["images"][0]["url"]
        .as_str()
        .expect("image url")
        .to_owned();
    let image_id = r.body["images"][0]["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    let r = call(
        &stack,
        "POST",
        "/api/v1/jobs",
        &bob,
        Some(json!({"prompt": "bob's token harbour"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        call(
            &stack,
            "GET",
            &format!("/api/v1/jobs/{job_id}"),
            &alice,
            None
        )
        .await
        .status,
        200
    );
    for path in [
        format!("/api/v1/jobs/{job_id}"),
        format!("/api/v1/images/{image_id}"),
        format!("/api/v1/images/{image_id}/download"),
    ] {
        call(&stack, "GET", &path, &bob, None)
            .await
            .assert_error(404, "not_found");
    }
    let listed = call(&stack, "GET", "/api/v1/jobs", &bob, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(
        !listed.body.to_string().contains(&job_id),
        "Bob's list shows Alice's job: {}",
        listed.body
    );
    let owners: Vec<String> = sqlx::query_scalar("SELECT DISTINCT owner FROM jobs ORDER BY owner")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    if !support::standalone() {
        assert_eq!(
            owners,
            vec![format!("{TENANT}/alice-oid"), format!("{TENANT}/bob-oid")]
        );
    }
    // The signed link works without a header (an `<img src>`).
    let download = stack.http.get(&image_url).send().await.expect("download");
    assert_eq!(download.status(), 200);

    // Key rotation: a token under a new kid is accepted without a restart (one JWKS fetch); further unknown kids
    // within the minute do not make the API fetch again.
    let before = idp.jwks_fetches();
    idp.add_key("rsa-2", Kind::Rsa, true);
    let rotated = idp.token("rsa-2", &idp.claims("alice-oid", &generate));
    let r = call(&stack, "GET", "/api/v1/jobs", &rotated, None).await;
    assert_eq!(r.status, 200, "rotated key: {}", r.body);
    assert_eq!(idp.jwks_fetches(), before + 1, "one fetch for the new kid");
    idp.add_key("rsa-3", Kind::Rsa, true);
    for kid in ["rsa-3", "rsa-2"] {
        let t = idp.token(kid, &idp.claims("alice-oid", &generate));
        let r = call(&stack, "GET", "/api/v1/jobs", &t, None).await;
        if kid == "rsa-3" {
            // Published after the last fetch, and the minute has not passed: refused, no new fetch.
            assert_invalid_token(&r, "unknown kid within the minute", &t);
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    assert_eq!(
        idp.jwks_fetches(),
        before + 1,
        "unknown kids are rate-limited"
    );

    // Every refusal: 401 invalid_token with the challenge, the token never echoed.
    let now = idp::now();
    let with = |patch: Value| {
        let mut c = idp.claims("alice-oid", &generate);
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("claims").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    idp.add_key("rsa-unpublished", Kind::Rsa, false);
    let rsa_n = idp.jwk("rsa-1")["n"].as_str().expect("n").to_owned();
    let valid = idp.token("rsa-1", &with(json!({})));
    let (valid_head, valid_rest) = valid.split_once('.').expect("jwt");
    let (_, valid_sig) = valid_rest.split_once('.').expect("jwt");
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            idp.token("rsa-1", &with(json!({"exp": now - 300, "nbf": now - 900}))),
        ),
        (
            "not yet valid",
            idp.token("rsa-1", &with(json!({"nbf": now + 600}))),
        ),
        (
            "wrong issuer",
            idp.token("rsa-1", &with(json!({"iss": "http://127.0.0.1:1/evil"}))),
        ),
        (
            "wrong audience",
            idp.token("rsa-1", &with(json!({"aud": "api://someone-else"}))),
        ),
        ("no exp", idp.token("rsa-1", &with(json!({"exp": null})))),
        (
            "payload swapped under a valid signature",
            format!(
                "{valid_head}.{}.{valid_sig}",
                idp::signing_input(&json!({}), &with(json!({"oid": "mallory"})))
                    .split_once('.')
                    .expect("input")
                    .1
            ),
        ),
        (
            "signed by a key the issuer does not publish, under its kid",
            idp.token_with_header(
                "rsa-unpublished",
                &json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}),
                &with(json!({})),
            ),
        ),
        (
            "RS256 claimed for the EC key",
            idp.token_with_header(
                "ec-1",
                &json!({"alg": "RS256", "typ": "JWT", "kid": "ec-1"}),
                &with(json!({})),
            ),
        ),
        ("alg none", idp::unsigned_token("rsa-1", &with(json!({})))),
        (
            "HS256 with the public key as secret",
            idp::hs256_token("rsa-1", &with(json!({})), rsa_n.as_bytes()),
        ),
        ("not a JWT", "abc.def.ghi".to_owned()),
    ];
    for (case, token) in &cases {
        let r = call(
            &stack,
            "POST",
            "/api/v1/jobs",
            token,
            Some(json!({"prompt": "should not run"})),
        )
        .await;
        assert_invalid_token(&r, case, token);
    }
    // The log says why, and never holds a token.
    let logs = stack.api_proc.output();
    for reason in [
        "The token has expired",
        "The token is not valid yet",
        "configured issuer",
        "audience",
        "signature is invalid",
        "algorithm is not accepted",
    ] {
        assert!(logs.contains(reason), "log lacks {reason:?}");
    }
    for (case, token) in &cases {
        assert!(!logs.contains(token.as_str()), "{case}: token in the log");
    }
    assert!(!logs.contains(&alice), "a valid token in the log");

    // A small clock skew is tolerated (exp 20 s ago).
    let skewed = idp.token("rsa-1", &with(json!({"exp": now - 20})));
    assert_eq!(
        call(&stack, "GET", "/api/v1/jobs", &skewed, None)
            .await
            .status,
        200
    );

    // Authenticated without the role: reads work, generating is 403 with insufficient_scope.
    let reader = idp.token("rsa-1", &idp.claims("carol-oid", &[]));
    assert_eq!(
        call(&stack, "GET", "/api/v1/jobs", &reader, None)
            .await
            .status,
        200
    );
    for (path, body) in [
        ("/api/v1/generate", generate_body("no role")),
        ("/api/v1/jobs", json!({"prompt": "no role"})),
        (
            "/api/v1/generate/batch",
            json!({"requests": [{"prompt": "no role"}]}),
        ),
    ] {
        let r = call(&stack, "POST", path, &reader, Some(body)).await;
        r.assert_error(403, "forbidden");
        assert!(
            r.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("Images.Generate")),
            "{}",
            r.body
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="imagegen", error="insufficient_scope""#)
        );
    }
    // Delegated scopes (`scp`) count like app roles.
    let delegated = idp.token(
        "ec-1",
        &with(json!({"roles": null, "scp": "User.Read Images.Generate"})),
    );
    assert_eq!(
        call(
            &stack,
            "POST",
            "/api/v1/jobs",
            &delegated,
            Some(json!({"prompt": "scoped"}))
        )
        .await
        .status,
        202
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn admins_manage_api_keys_over_http(pool: PgPool) {
    let idp = TestIdp::start().await;
    let stack = start_with_idp(&pool, &idp, Vec::new()).await;
    let admin = idp.token("rsa-1", &idp.claims("admin-oid", &["Images.Admin"]));
    let user = idp.token("rsa-1", &idp.claims("user-oid", &["Images.Generate"]));

    call(&stack, "GET", "/api/v1/admin/keys", &user, None)
        .await
        .assert_error(403, "forbidden");
    call(&stack, "GET", "/api/v1/admin/keys", "", None)
        .await
        .assert_error(401, "authentication_required");
    call(
        &stack,
        "POST",
        "/api/v1/admin/keys",
        &admin,
        Some(json!({"owner": " "})),
    )
    .await
    .assert_error(400, "validation_failed");

    let r = call(
        &stack,
        "POST",
        "/api/v1/admin/keys",
        &admin,
        Some(json!({"owner": "robot", "name": "nightly", "expires_days": 30})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.body["key"].as_str().expect("key").to_owned();
    let key_id = r.body["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("igk_") && r.body["expires_at"].is_string());

    // The key works for generating, not for the admin endpoints; the list never shows keys.
    let r = call(
        &stack,
        "POST",
        "/api/v1/jobs",
        &key,
        Some(json!({"prompt": "robot's job"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    call(&stack, "GET", "/api/v1/admin/keys", &key, None)
        .await
        .assert_error(403, "forbidden");
    let listed = call(&stack, "GET", "/api/v1/admin/keys", &admin, None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["keys"][0]["owner"], "robot");
    assert!(!listed.body.to_string().contains(&key));

    // Revoked: it stops working at once; a second revoke or an unknown id is 404.
    let path = format!("/api/v1/admin/keys/{key_id}");
    assert_eq!(
        call(&stack, "DELETE", &path, &admin, None).await.status,
        200
    );
    call(&stack, "GET", "/api/v1/jobs", &key, None)
        .await
        .assert_error(401, "invalid_token");
    call(&stack, "DELETE", &path, &admin, None)
        .await
        .assert_error(404, "not_found");
    call(&stack, "DELETE", "/api/v1/admin/keys/nope", &admin, None)
        .await
        .assert_error(404, "not_found");
}

/// The identity provider is down: tokens cannot be checked (503, retry), API keys still work.
#[sqlx::test(migrations = "./migrations")]
async fn an_unreachable_issuer_answers_503_and_api_keys_still_work(pool: PgPool) {
    let idp = TestIdp::start().await;
    let token = idp.token("rsa-1", &idp.claims("alice-oid", &["Images.Generate"]));
    let dead_issuer = format!("http://127.0.0.1:{}", support::free_port());
    let stack = start(
        &pool,
        Options {
            api_env: vec![
                kv("ENABLE_AUTHENTICATION", "true"),
                kv("DOWNLOAD_SIGNING_KEY", SIGNING_KEY),
                kv("OIDC_ISSUER", dead_issuer),
                kv("OIDC_AUDIENCE", AUDIENCE),
            ],
            ..Options::default()
        },
    )
    .await;
    let r = call(&stack, "GET", "/api/v1/jobs", &token, None).await;
    r.assert_error(503, "service_unavailable");
    assert!(r.header("retry-after").is_some());

    // A key from `imagegen keys create` needs no identity provider.
    let key = stack.keys(&["create", "--owner", "robot"]).await;
    let r = call(
        &stack,
        "POST",
        "/api/v1/jobs",
        &key,
        Some(json!({"prompt": "keys work while the issuer is down"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
}

#[sqlx::test(migrations = "./migrations")]
async fn open_service_limits_metrics_port_headers_and_admin(pool: PgPool) {
    let metrics_port = support::free_port();
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv("API_METRICS_PORT", metrics_port.to_string())],
            ..Options::default()
        },
    )
    .await;
    // Not on the API's port any more; on its own.
    stack.get("/metrics").await.assert_error(404, "not_found");
    let scraped = stack
        .http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .expect("text")
            .contains("imagegen_http_requests_total")
    );

    // 40 KiB of headers: 431 in our error shape, before anything else runs.
    let big = "x".repeat(8 * 1024);
    let mut req = stack.http.get(stack.url("/api/v1/jobs"));
    for i in 0..5 {
        req = req.header(format!("x-filler-{i}"), &big);
    }
    let r = Reply::from(req.send().await.expect("request")).await;
    r.assert_error(431, "headers_too_large");
    // A normal request is fine.
    assert_eq!(stack.get("/api/v1/jobs").await.status, 200);

    // With authentication off nobody administers: a key minted now would outlive the switch to authentication.
    stack
        .post("/api/v1/admin/keys", serde_json::json!({"owner": "x"}), &[])
        .await
        .assert_error(403, "forbidden");
}

/// ENABLE_AUTHENTICATION with API keys from `imagegen keys`: no key or a bad one is 401 (with WWW-Authenticate,
/// never echoing the key), each owner sees only its own jobs and images (the other's ids are 404), a revoked key
/// stops working at once; health stays open.
#[sqlx::test(migrations = "./migrations")]
async fn api_keys_authenticate_and_isolate_owners(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: authentication_on(),
            ..Options::default()
        },
    )
    .await;
    let alice = stack.keys(&["create", "--owner", "alice"]).await;
    let bob = stack
        .keys(&["create", "--owner", "bob", "--name", "ci"])
        .await;
    assert!(alice.starts_with("igk_") && alice != bob, "{alice}");

    // No credentials, a malformed one, an unknown key: 401 in the seed's shape, the key never echoed.
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "x"}), &[])
        .await;
    r.assert_error(401, "authentication_required");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="imagegen""#)
    );
    for bad in [
        "Bearer igk_not-a-key",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
        "Basic YWxpY2U6cHc=",
    ] {
        let r = stack
            .post(
                "/api/v1/jobs",
                json!({"prompt": "x"}),
                &[("Authorization", bad)],
            )
            .await;
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        assert!(!r.body.to_string().contains("igk_not-a-key"), "{}", r.body);
    }
    assert_eq!(
        stack.get("/health/ready").await.status,
        200,
        "health needs no key"
    );

    // Alice's job and image; Bob sees neither, exactly like ids that do not exist.
    let bearer_alice = format!("Bearer {alice}");
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("alice's lighthouse"),
            &[("Authorization", bearer_alice.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let job_id = r.body["job_id"].as_str().expect("job id").to_owned();
    let image_id = r.body["images"][0]["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    for path in [
        format!("/api/v1/jobs/{job_id}"),
        format!("/api/v1/images/{image_id}"),
        format!("/api/v1/images/{image_id}/download"),
    ] {
        let own = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("get");
        assert_eq!(own.status(), 200, "{path}");
        let other = stack
            .http
            .get(stack.url(&path))
            .header("X-API-Key", &bob)
            .send()
            .await
            .expect("get");
        assert_eq!(other.status(), 404, "{path}");
    }
    // Batches, cancel, delete and idempotency keys are scoped too.
    let batch = stack
        .http
        .post(stack.url("/api/v1/generate/batch"))
        .bearer_auth(&alice)
        .header("Prefer", "respond-async")
        .json(&json!([{"prompt": "batch item"}]))
        .send()
        .await
        .expect("batch");
    assert_eq!(batch.status(), 202);
    let batch: serde_json::Value = batch.json().await.expect("json");
    let batch_id = batch["batch_id"].as_str().expect("batch id").to_owned();
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/v1/batches/{batch_id}")),
        (
            reqwest::Method::POST,
            format!("/api/v1/jobs/{job_id}/cancel"),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/images/{image_id}"),
        ),
    ] {
        let other = stack
            .http
            .request(method.clone(), stack.url(&path))
            .header("X-API-Key", &bob)
            .send()
            .await
            .expect("request");
        assert_eq!(other.status(), 404, "{method} {path}");
    }
    let keyed = |key: String| {
        let (http, url) = (stack.http.clone(), stack.url("/api/v1/jobs"));
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "shared-key")
                .json(&json!({"prompt": "same key"}))
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.expect("json")["job_id"].clone()
        }
    };
    assert_ne!(
        keyed(alice.clone()).await,
        keyed(bob.clone()).await,
        "one key, two owners: two jobs"
    );

    // The image URL handed out is a signed link: it works without any header (an `<img src>`), and only as given.
    let signed = r.body["images"][0]["url"].as_str().expect("url").to_owned();
    assert!(signed.contains("signature="), "{signed}");
    let plain = reqwest::Client::new();
    let got = plain.get(&signed).send().await.expect("signed download");
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    let tampered = signed.replace("signature=", "signature=00");
    assert_eq!(
        plain.get(&tampered).send().await.expect("get").status(),
        404
    );
    let unsigned = signed.split('?').next().expect("path").to_owned();
    assert_eq!(
        plain.get(&unsigned).send().await.expect("get").status(),
        401
    );
    let later = signed.replace("expires=", "expires=9");
    assert_eq!(
        plain.get(&later).send().await.expect("get").status(),
        404,
        "the expiry is signed too"
    );

    let listed: serde_json::Value = stack
        .http
        .get(stack.url("/api/v1/jobs"))
        .header("X-API-Key", &bob)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    // Bob's list holds only the job his own key made, none of Alice's.
    let prompts: Vec<&str> = listed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["prompt"].as_str())
        .collect();
    assert_eq!(prompts, ["same key"], "{listed}");

    // Revoked behind the API's back (`imagegen keys revoke` on the database): refused within API_KEY_CACHE_SECS
    // (5 s by default; a revocation through the admin API applies at once, see auth_fleet).
    let prefix: String = alice.chars().take(10).collect();
    stack.keys(&["revoke", &prefix]).await;
    let revoked = std::time::Instant::now();
    loop {
        let r = stack
            .http
            .get(stack.url(&format!("/api/v1/jobs/{job_id}")))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("get");
        if r.status() == 401 {
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(7),
            "a revoked key still works after 7 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listing = stack.keys(&["list"]).await;
    assert!(
        listing.contains("alice") && listing.contains("bob"),
        "{listing}"
    );
    assert!(!listing.contains(&bob), "keys are never listed");
}

/// Per-owner limits: requests per minute shared by two API processes (through Redis), images per day, and jobs
/// queued or running at once; over a limit, 429 with Retry-After and RateLimit-* headers; health is never limited.
#[sqlx::test(migrations = "./migrations")]
async fn per_owner_limits_are_shared_and_answer_429(pool: PgPool) {
    // Minute windows are fixed: start well inside one, so the count cannot reset halfway through the test.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let limits = vec![
        kv("RATE_LIMIT_PER_MINUTE", "8"),
        kv("IMAGE_QUOTA_PER_DAY", "3"),
        kv("MAX_ACTIVE_JOBS_PER_OWNER", "2"),
    ];
    let stack = start(
        &pool,
        Options {
            api_env: limits.clone(),
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    // Jobs in flight: two may wait, the third is refused.
    for i in 0..2 {
        let r = stack
            .post("/api/v1/jobs", json!({"prompt": format!("job {i}")}), &[])
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert!(r.header("ratelimit-remaining").is_some());
    }
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "one too many"}), &[])
        .await;
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some() && r.header("ratelimit-limit") == Some("2"));
    // Cancel one: room for one more job, which is the third image of the day; the fourth image is over the quota.
    let listed = stack.get("/api/v1/jobs").await;
    let first = listed.body["jobs"][0]["job_id"]
        .as_str()
        .expect("job")
        .to_owned();
    let c = stack
        .post(&format!("/api/v1/jobs/{first}/cancel"), json!({}), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "third image"}), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let c = stack
        .post(
            &format!(
                "/api/v1/jobs/{}/cancel",
                r.body["job_id"].as_str().expect("id")
            ),
            json!({}),
            &[],
        )
        .await;
    assert_eq!(c.status, 200);
    let r = stack
        .post("/api/v1/jobs", json!({"prompt": "fourth image"}), &[])
        .await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("quota"),
        "{}",
        r.body
    );

    // Requests per minute: 8 requests so far (jobs, list, cancels), the whole budget. Another API process
    // on the same Redis refuses too (the count is the fleet's), while health stays open.
    if support::standalone() {
        let r = stack.get("/api/v1/jobs").await;
        r.assert_error(429, "rate_limited");
    } else {
        let mut env = stack.env.clone();
        env.extend([kv("API_HOST", "127.0.0.1"), kv("API_PORT", "0")]);
        env.extend(limits);
        let mut second = support::Proc::spawn("api-2", &["api"], &env);
        let other = format!("http://{}", second.listening_addr().await);
        let r = stack
            .http
            .get(format!("{other}/api/v1/jobs"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(
            stack
                .http
                .get(format!("{other}/health/ready"))
                .send()
                .await
                .expect("health")
                .status(),
            200
        );
    }
    assert_eq!(stack.get("/health/live").await.status, 200);
}

/// A replay of an accepted request (same Idempotency-Key, same body) returns its job even at the active-jobs limit,
/// and spends nothing of the daily quota.
#[sqlx::test(migrations = "./migrations")]
async fn an_idempotent_replay_at_the_limit_returns_its_job_and_spends_nothing(pool: PgPool) {
    let limits = vec![
        kv("IMAGE_QUOTA_PER_DAY", "2"),
        kv("MAX_ACTIVE_JOBS_PER_OWNER", "1"),
    ];
    let stack = start(
        &pool,
        Options {
            api_env: limits,
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let key = [("Idempotency-Key", "replay-1")];
    let first = stack
        .post("/api/v1/jobs", json!({"prompt": "a"}), &key)
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["job_id"].as_str().expect("id").to_owned();
    for _ in 0..3 {
        let again = stack
            .post("/api/v1/jobs", json!({"prompt": "a"}), &key)
            .await;
        assert_eq!(
            (again.status, again.body["job_id"].as_str()),
            (202, Some(id.as_str())),
            "{}",
            again.body
        );
    }
    // A new request is over the active-jobs limit...
    stack
        .post("/api/v1/jobs", json!({"prompt": "b"}), &[])
        .await
        .assert_error(429, "rate_limited");
    // ...and once the first is canceled, it is the second image of the day: the replays spent none.
    let c = stack
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let second = stack
        .post("/api/v1/jobs", json!({"prompt": "b"}), &[])
        .await;
    assert_eq!(second.status, 202, "{}", second.body);
    let c = stack
        .post(
            &format!(
                "/api/v1/jobs/{}/cancel",
                second.body["job_id"].as_str().expect("id")
            ),
            json!({}),
            &[],
        )
        .await;
    assert_eq!(c.status, 200);
    let third = stack
        .post("/api/v1/jobs", json!({"prompt": "c"}), &[])
        .await;
    third.assert_error(429, "rate_limited");
    assert!(
        third.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("quota"),
        "{}",
        third.body
    );
}
