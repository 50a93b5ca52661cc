//! The service around the endpoints: the providers and models catalogues, the OpenAPI document and Swagger UI,
//! health, metrics, CORS and security headers, and configuration mistakes that stop start-up.

use crate::support::{self, Options, kv, start};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn providers_docs_health_and_metrics(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let p = stack.get("/api/v1/providers").await;
    assert_eq!(p.status, 200);
    assert_eq!(
        (
            p.body["default_provider"].as_str(),
            p.body["default_model"].as_str()
        ),
        (Some("openai"), Some("gpt-image-2"))
    );
    let providers = p.body["providers"].as_array().expect("providers");
    let ids: Vec<&str> = providers.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["openai", "azure_openai", "flux", "bfl"]);
    assert_eq!(
        (
            providers[0]["default_model"].as_str(),
            providers[0]["max_images"].as_u64(),
            providers[0]["configured"].as_bool(),
            providers[0]["circuit"].as_str()
        ),
        (Some("gpt-image-2"), Some(4), Some(true), Some("closed"))
    );
    assert!(
        providers[0]["models"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("gpt-image-2.5-sunburst")))
    );
    assert_eq!(
        providers[2]["supported_sizes"],
        json!(["1024x1024", "512x512", "768x768", "1536x1024", "1024x1536"])
    );
    assert_eq!(providers[2]["configured"], false);

    // The catalogue: every model with its parameters, lifecycle and whether it is served here.
    let m = stack.get("/api/v1/models").await;
    assert_eq!(m.status, 200);
    let models = m.body["models"].as_array().expect("models");
    let model = |id: &str| {
        models
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
            .clone()
    };
    let gpt2 = model("gpt-image-2");
    assert_eq!(
        (gpt2["status"].as_str(), gpt2["available"].as_bool()),
        (Some("ga"), Some(true))
    );
    assert_eq!(gpt2["served_by"], json!(["openai"]));
    assert_eq!(gpt2["sizes"]["rules"]["multiple_of"], 16);
    let dalle3 = model("dall-e-3");
    assert_eq!(
        (
            dalle3["status"].as_str(),
            dalle3["retires_on"].as_str(),
            dalle3["replaced_by"].as_str(),
            dalle3["available"].as_bool()
        ),
        (
            Some("retired"),
            Some("2026-05-12"),
            Some("gpt-image-2"),
            Some(false)
        )
    );
    assert_eq!(model("gpt-image-1.5")["status"], "deprecated");
    assert_eq!(
        model("flux-2-pro")["available"],
        false,
        "BFL is not configured here"
    );

    let spec = stack.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["openapi"]
            .as_str()
            .expect("version")
            .starts_with("3.1")
    );
    for path in [
        "/api/v1/generate",
        "/api/v1/generate/batch",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/batches/{id}",
        "/api/v1/images/{id}",
        "/api/v1/images/{id}/download",
        "/api/v1/providers",
        "/health/",
        "/health/ready",
        "/health/live",
        "/metrics",
    ] {
        assert!(
            spec.body["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        spec.body["components"]["schemas"]
            .get("ErrorBody")
            .is_some()
    );
    let docs = stack
        .http
        .get(stack.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status().as_u16(), 200);
    let html = docs.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "Swagger UI page");
    let asset = stack
        .http
        .get(stack.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(
        asset.status().as_u16(),
        200,
        "Swagger UI assets are built in"
    );

    let health = stack.get("/health/").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let queue = if support::standalone() {
        "queue"
    } else {
        "redis"
    };
    for c in ["database", queue, "storage"] {
        assert_eq!(
            health.body["components"][c]["status"], "healthy",
            "{}",
            health.body
        );
    }
    assert_eq!(
        health.body["components"]["provider:openai"]["status"],
        "circuit_closed"
    );
    assert_eq!(stack.get("/health/ready").await.status, 200);
    assert_eq!(stack.get("/health/live").await.status, 200);

    let _ = stack
        .post("/api/v1/jobs", json!({"prompt": "count me"}), &[])
        .await;
    let metrics = stack.metrics_text().await;
    for name in [
        "imagegen_http_requests_total",
        "imagegen_http_request_duration_seconds_bucket",
        "imagegen_queue_depth",
        "imagegen_jobs_submitted_total",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("route=\"/api/v1/jobs\""),
        "routes are labelled by their pattern"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn bad_configuration_stops_start_up_with_one_line(pool: PgPool) {
    let db = support::database_url(&pool);
    let run = |env: Vec<(&str, String)>| {
        let mut cmd = std::process::Command::new(support::BIN);
        cmd.arg("api")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run imagegen")
    };
    let base = || {
        vec![
            ("DATABASE_URL", db.clone()),
            ("REDIS_URL", support::redis_url()),
            ("OPENAI_API_KEY", "k".to_owned()),
        ]
    };
    for (var, value) in [
        ("API_PORT", "not-a-port"),
        ("STORAGE_BACKEND", "floppy"),
        ("DEFAULT_PROVIDER", "midjourney"),
        ("ENABLE_IMAGE_STORAGE", "maybe"),
        ("WAIT_MAX_SECS", "-1"),
        ("ENABLE_AUTHENTICATION", "sometimes"),
    ] {
        let mut env = base();
        env.push((var, value.to_owned()));
        let out = run(env);
        assert!(!out.status.success(), "{var}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{var} named in: {stderr}");
    }
    let out = run(vec![
        ("REDIS_URL", support::redis_url()),
        ("OPENAI_API_KEY", "k".to_owned()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    let out = run(vec![
        ("DATABASE_URL", db.clone()),
        ("REDIS_URL", support::redis_url()),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_API_KEY"));
    // Authentication without a key for the signed download links (or with a short one).
    for key in [None, Some("too-short")] {
        let mut env = base();
        env.push(("ENABLE_AUTHENTICATION", "true".to_owned()));
        if let Some(k) = key {
            env.push(("DOWNLOAD_SIGNING_KEY", k.to_owned()));
        }
        let out = run(env);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("DOWNLOAD_SIGNING_KEY"), "{stderr}");
        assert!(
            !stderr.contains("too-short"),
            "the key is never echoed: {stderr}"
        );
    }

    // `*` with authentication on is refused.
    let mut env = base();
    env.extend([
        ("ENABLE_AUTHENTICATION", "true".to_owned()),
        ("DOWNLOAD_SIGNING_KEY", "x".repeat(40)),
        ("CORS_ORIGINS", "*".to_owned()),
    ]);
    let out = run(env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CORS_ORIGINS") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );

    // A token issuer over plain http (not loopback), without an audience, or Entra's multi-tenant alias.
    for (extra, named) in [
        (
            vec![
                ("OIDC_ISSUER", "http://idp.example.com"),
                ("OIDC_AUDIENCE", "api://x"),
            ],
            "OIDC_ISSUER",
        ),
        (
            vec![("OIDC_ISSUER", "https://idp.example.com")],
            "OIDC_AUDIENCE",
        ),
        (
            vec![
                ("AZURE_AD_TENANT_ID", "common"),
                ("AZURE_AD_CLIENT_ID", "c"),
            ],
            "AZURE_AD_TENANT_ID",
        ),
    ] {
        let mut env = base();
        env.extend([
            ("ENABLE_AUTHENTICATION", "true".to_owned()),
            ("DOWNLOAD_SIGNING_KEY", "x".repeat(40)),
        ]);
        env.extend(extra.into_iter().map(|(k, v)| (k, v.to_owned())));
        let out = run(env);
        assert!(!out.status.success(), "{named} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(named) && stderr.trim().lines().count() == 1,
            "{stderr}"
        );
    }

    // `imagegen migrate` on an up-to-date database is a no-op that succeeds.
    let out = std::process::Command::new(support::BIN)
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &db)
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CORS from CORS_ORIGINS (exact origins; preflights answered, other origins get no grant) and security headers.
#[sqlx::test(migrations = "./migrations")]
async fn cors_and_security_headers(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv(
                "CORS_ORIGINS",
                "https://app.example.com, http://localhost:3000",
            )],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, stack.url("/api/v1/jobs"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type, x-api-key")
            .send()
    };
    let ok = preflight("https://app.example.com")
        .await
        .expect("preflight");
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight("https://evil.example.com")
        .await
        .expect("preflight");
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let r = stack
        .http
        .post(stack.url("/api/v1/jobs"))
        .header("Origin", "http://localhost:3000")
        .json(&json!({"prompt": "cors"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap_or_default()
            .contains("location")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap_or_default()
            .contains("default-src 'none'")
    );
    let docs = stack
        .http
        .get(stack.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert!(!docs.headers().contains_key("x-frame-options") || docs.status().is_redirection());
}
