//! What a client cannot make the API say: download links built from forwarded headers only when the connection
//! comes from one of TRUSTED_PROXIES (else `http` and a well-formed `Host`, or `localhost`). (`/health/`'s dependency
//! errors, shown in full only with a credential while authentication is on, are tested in `fleet`: they need Redis
//! itself to be unreachable.)

use crate::support::{self, Options, Reply, Stack, generate_body, kv, start};
use sqlx::PgPool;

/// The headers a client (or a proxy) sends to make the links point elsewhere.
const FORWARDED: [(&str, &str); 2] = [
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
];

/// A finished job's id, submitted with `headers`, and the download URL its answer gave.
async fn generate(stack: &Stack, headers: &[(&str, &str)]) -> (String, String) {
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("a lighthouse behind a proxy"),
            headers,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (
        r.body["job_id"].as_str().expect("job id").to_owned(),
        r.body["images"][0]["url"].as_str().expect("url").to_owned(),
    )
}

/// The download URL of job `id` as `GET /api/v1/jobs/{id}` with `headers` (a `Host` among them replaces reqwest's).
async fn job_url(stack: &Stack, id: &str, headers: &[(&str, &str)]) -> String {
    let mut req = stack.http.get(stack.url(&format!("/api/v1/jobs/{id}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = Reply::from(req.send().await.expect("get job")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["images"][0]["url"].as_str().expect("url").to_owned()
}

/// The path of the download link, which no header changes.
fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find('/')
        .map_or("", |slash| &after_scheme[slash..])
}

#[sqlx::test(migrations = "./migrations")]
async fn without_trusted_proxies_forwarded_headers_are_ignored(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    // `stack.api` is http://127.0.0.1:PORT: the Host reqwest sends.
    let (id, url) = generate(&stack, &FORWARDED).await;
    assert!(
        url.starts_with(&format!("{}/api/v1/images/", stack.api)),
        "{url}"
    );
    let path = path_of(&url).to_owned();
    assert!(path.starts_with("/api/v1/images/"), "{url}");
    assert_eq!(job_url(&stack, &id, &FORWARDED).await, url);

    // The Host header is the client's to choose, but only a well-formed one is used.
    for (host, base) in [
        ("images.example.com", "http://images.example.com"),
        ("images.example.com:8443", "http://images.example.com:8443"),
        ("[::1]:8003", "http://[::1]:8003"),
        ("evil.example/phish", "http://localhost"),
        ("evil.example@127.0.0.1", "http://localhost"),
        ("evil example", "http://localhost"),
        ("\"evil.example\"", "http://localhost"),
        ("evil.example:8443/x", "http://localhost"),
        ("evil.example:99999", "http://localhost"),
        ("evil.example:", "http://localhost"),
        ("[::1", "http://localhost"),
        ("evil..example", "http://localhost"),
        ("evil.example\\x", "http://localhost"),
    ] {
        let mut headers = vec![("Host", host)];
        headers.extend(FORWARDED);
        assert_eq!(
            job_url(&stack, &id, &headers).await,
            format!("{base}{path}"),
            "Host: {host}"
        );
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_trusted_proxy_sets_scheme_and_host(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")],
            ..Options::default()
        },
    )
    .await;
    let (id, url) = generate(&stack, &FORWARDED).await;
    let path = path_of(&url).to_owned();
    assert_eq!(url, format!("https://evil.example{path}"));
    assert!(path.starts_with("/api/v1/images/"), "{url}");

    // Without forwarded headers: the Host, over http.
    assert_eq!(
        job_url(&stack, &id, &[]).await,
        format!("{}{path}", stack.api)
    );
    for (headers, base) in [
        // A chain of proxies: the first value, the client's side.
        (
            vec![
                ("X-Forwarded-Host", "images.example.com, proxy.internal"),
                ("X-Forwarded-Proto", "https,http"),
            ],
            "https://images.example.com".to_owned(),
        ),
        (
            vec![("X-Forwarded-Proto", "HTTPS")],
            stack.api.replace("http://", "https://"),
        ),
        // Anything but https is http; a malformed forwarded host falls back to the Host header.
        (
            vec![
                ("X-Forwarded-Host", "evil.example/phish"),
                ("X-Forwarded-Proto", "gopher"),
            ],
            stack.api.clone(),
        ),
        (
            vec![
                ("Host", "bad host"),
                ("X-Forwarded-Host", "user@evil.example"),
            ],
            "http://localhost".to_owned(),
        ),
    ] {
        assert_eq!(
            job_url(&stack, &id, &headers).await,
            format!("{base}{path}"),
            "{headers:?}"
        );
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_bad_trusted_proxies_entry_stops_start_up(pool: PgPool) {
    for value in ["proxy.internal", "10.0.0.0/33", "10.0.0.0/8;127.0.0.1"] {
        let out = std::process::Command::new(support::BIN)
            .arg("api")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", support::database_url(&pool))
            .env("REDIS_URL", support::redis_url())
            .env("OPENAI_API_KEY", "k")
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", "0")
            .env("TRUSTED_PROXIES", value)
            .output()
            .expect("run imagegen");
        assert!(
            !out.status.success(),
            "TRUSTED_PROXIES={value} must stop start-up"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("TRUSTED_PROXIES") && stderr.contains(value),
            "{stderr}"
        );
    }
}
