//! The emulator over real HTTP, as our provider clients see it.

use super::*;
use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::json;
use std::time::{Duration, Instant};

/// One emulator on a free loopback port, and a client for it.
struct Harness {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    fn error(&self) -> (u16, Option<&str>, Option<&str>, Option<&str>) {
        let e = &self.json["error"];
        (
            self.status,
            e["type"].as_str(),
            e["code"].as_str(),
            e["param"].as_str(),
        )
    }

    fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }

    fn png(&self) -> Vec<u8> {
        let b64 = self.json["data"][0]["b64_json"].as_str().expect("b64_json");
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    }
}

async fn start_with(keys: &[&str], knobs: Knobs) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let emulator = Emulator::new(keys.iter().map(|k| (*k).to_owned()).collect(), knobs);
    tokio::spawn(spawn_on(listener, emulator));
    Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

async fn start(keys: &[&str]) -> Harness {
    start_with(keys, Knobs::default()).await
}

fn dalle(prompt: &str) -> Value {
    json!({"model": "dall-e-3", "prompt": prompt})
}

fn b64(prompt: &str, size: &str) -> Value {
    json!({"model": "dall-e-3", "prompt": prompt, "size": size, "response_format": "b64_json"})
}

impl Harness {
    async fn raw(&self, key: Option<&str>, body: reqwest::Body) -> Answer {
        let mut req = self
            .http
            .post(format!("{}/v1/images/generations", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let json = r.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    }

    async fn generate_as(&self, key: Option<&str>, body: Value) -> Answer {
        self.raw(key, body.to_string().into()).await
    }

    async fn generate(&self, body: Value) -> Answer {
        self.generate_as(Some("sk-any"), body).await
    }

    async fn config(&self, patch: Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}/emulator/config", self.base))
            .json(&patch)
            .send()
            .await
            .expect("config");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn stats(&self) -> Value {
        self.get_json("/emulator/stats").await.1["openai"].clone()
    }

    async fn fetch(&self, url: &str) -> (u16, HeaderMap, Vec<u8>) {
        let r = self.http.get(url).send().await.expect("file");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.bytes().await.expect("bytes").to_vec())
    }
}

fn png_dims(bytes: &[u8]) -> (u32, u32) {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("png");
    (reader.info().width, reader.info().height)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn answers_like_openai_with_urls_and_b64() {
    let h = start(&[]).await;
    let a = h.generate(b64("a red fox", "1792x1024")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let png = a.png();
    assert_eq!(png_dims(&png), (1792, 1024));
    assert_eq!(
        png,
        render_png("a red fox", 0, 1792, 1024),
        "deterministic from the prompt, seed 0"
    );
    let revised = a.json["data"][0]["revised_prompt"]
        .as_str()
        .expect("revised");
    assert!(
        revised.starts_with("a red fox") && revised.len() > "a red fox".len(),
        "{revised}"
    );
    assert!(a.json["data"][0].get("url").is_none());
    let created = a.json["created"].as_u64().expect("created");
    assert!(created.abs_diff(files::now_secs()) < 5, "{created}");

    let mut body = dalle("a red fox");
    body["size"] = json!("1792x1024");
    let a = h.generate(body).await;
    assert_eq!(a.status, 200);
    assert!(a.json["data"][0].get("b64_json").is_none());
    let url = a.json["data"][0]["url"].as_str().expect("url");
    assert!(
        url.starts_with(&format!("{}/files/", h.base)) && url.contains(".png?se="),
        "built from the Host header, SAS-like: {url}"
    );
    let (status, headers, bytes) = h.fetch(url).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert_eq!(
        header(&headers, "content-length"),
        Some(png.len().to_string().as_str())
    );
    assert_eq!(bytes, png, "the URL serves the same picture");
    let (status, headers, body) = h.fetch(&url.replace("sig=", "sig=00")).await;
    assert_eq!(status, 403, "a tampered signature");
    assert_eq!(
        header(&headers, "x-ms-error-code"),
        Some("AuthenticationFailed")
    );
    assert!(String::from_utf8_lossy(&body).contains("<Code>AuthenticationFailed</Code>"));
}

#[tokio::test]
async fn sizes_and_defaults_are_honoured() {
    let h = start(&[]).await;
    for (size, dims) in [
        ("1024x1024", (1024, 1024)),
        ("1792x1024", (1792, 1024)),
        ("1024x1792", (1024, 1792)),
    ] {
        let a = h.generate(b64("sizes", size)).await;
        assert_eq!(a.status, 200, "{size}: {}", a.json);
        assert_eq!(png_dims(&a.png()), dims, "{size}");
    }
    let body = json!({"model": "dall-e-3", "prompt": "defaults", "n": 1, "quality": "hd", "style": "natural",
        "response_format": "b64_json", "user": "owner-hash"});
    let a = h.generate(body).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(png_dims(&a.png()), (1024, 1024), "1024x1024 by default");
}

#[tokio::test]
async fn the_same_prompt_gives_the_same_picture() {
    let h = start(&[]).await;
    let first = h
        .generate(b64("a lighthouse at dusk", "1024x1024"))
        .await
        .png();
    let again = h
        .generate(b64("a lighthouse at dusk", "1024x1024"))
        .await
        .png();
    let other = h
        .generate(b64("a lighthouse at dawn", "1024x1024"))
        .await
        .png();
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert_eq!(png_dims(&other), (1024, 1024));
}

#[tokio::test]
async fn every_answer_carries_openai_headers() {
    let h = start(&[]).await;
    for body in [dalle("headers"), json!({"model": "dall-e-3"})] {
        let a = h.generate(body).await;
        let id = header(&a.headers, "x-request-id").expect("x-request-id");
        let hex = id.strip_prefix("req_").expect("req_ prefix");
        assert!(
            hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(header(&a.headers, "openai-version"), Some("2020-10-01"));
        assert_eq!(header(&a.headers, "openai-organization"), Some("emulator"));
        assert!(
            header(&a.headers, "openai-processing-ms")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some()
        );
        assert_eq!(header(&a.headers, "content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn urls_expire_with_an_azure_blob_error() {
    let h = start(&[]).await;
    let (status, _) = h.config(json!({"openai": {"url_ttl_s": 0}})).await;
    assert_eq!(status, 200);
    let a = h.generate(dalle("x")).await;
    let url = a.json["data"][0]["url"].as_str().expect("url");
    let (status, headers, body) = h.fetch(url).await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "content-type"), Some("application/xml"));
    let xml = String::from_utf8_lossy(&body);
    assert!(
        xml.starts_with("<?xml") && xml.contains("<Code>AuthenticationFailed</Code>"),
        "{xml}"
    );
    // The expired picture is swept by the next one; its URL keeps answering 403.
    h.config(json!({"openai": {"url_ttl_s": 3600}})).await;
    assert_eq!(h.generate(dalle("y")).await.status, 200);
    assert_eq!(h.fetch(url).await.0, 403);

    let (status, headers, body) = h
        .fetch(&format!("{}/files/no-such-picture.png", h.base))
        .await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "x-ms-error-code"), Some("BlobNotFound"));
    assert!(String::from_utf8_lossy(&body).contains("<Code>BlobNotFound</Code>"));
}

#[tokio::test]
async fn auth_follows_openai() {
    let h = start(&["sk-good-key-1234"]).await;
    let a = h.generate_as(None, dalle("x")).await;
    assert_eq!(
        a.error(),
        (401, Some("invalid_request_error"), None, None),
        "{}",
        a.json
    );
    assert!(a.message().starts_with("You didn't provide an API key."));
    let a = h.generate_as(Some(""), dalle("x")).await;
    assert_eq!(a.status, 401, "an empty key is no key");

    let a = h.generate_as(Some("sk-bad-key-9999"), dalle("x")).await;
    assert_eq!(
        a.error(),
        (
            401,
            Some("invalid_request_error"),
            Some("invalid_api_key"),
            None
        )
    );
    assert_eq!(
        a.message(),
        "Incorrect API key provided: sk-...9999. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    let a = h.generate_as(Some("sk-good-key-1234"), dalle("x")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    // Auth comes before validation.
    let a = h.generate_as(Some("sk-bad-key-9999"), json!({})).await;
    assert_eq!(a.status, 401);

    let open = start(&[]).await;
    let a = open.generate_as(Some("whatever"), dalle("x")).await;
    assert_eq!(
        a.status, 200,
        "any non-empty key passes when none are configured"
    );
    let a = open.generate_as(None, dalle("x")).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn validation_errors_name_the_param_and_code() {
    let h = start(&[]).await;
    let long = "x".repeat(4001);
    let cases = [
        (
            json!({"model": "dall-e-3", "prompt": "x", "size": "512x512"}),
            Some("size"),
            Some("invalid_size"),
            "The size is not supported by this model.",
        ),
        (
            json!({"model": "dall-e-3", "prompt": "x", "n": 2}),
            Some("n"),
            None,
            "You must provide n=1 for this model.",
        ),
        (
            json!({"model": "dall-e-3", "prompt": long}),
            Some("prompt"),
            Some("string_above_max_length"),
            "",
        ),
        (json!({"model": "dall-e-3"}), Some("prompt"), None, ""),
        (json!({"prompt": "x"}), Some("model"), None, "dall-e-3"),
        (
            json!({"model": "dall-e-2", "prompt": "x"}),
            Some("model"),
            None,
            "dall-e-3",
        ),
        (
            json!({"model": "dall-e-3", "prompt": "x", "quality": "ultra"}),
            Some("quality"),
            Some("invalid_value"),
            "",
        ),
        (
            json!({"model": "dall-e-3", "prompt": "x", "style": "baroque"}),
            Some("style"),
            Some("invalid_value"),
            "",
        ),
        (
            json!({"model": "dall-e-3", "prompt": "x", "response_format": "jpeg"}),
            Some("response_format"),
            Some("invalid_value"),
            "",
        ),
        (
            json!({"model": "dall-e-3", "prompt": "x", "user": 7}),
            Some("user"),
            None,
            "",
        ),
        (
            json!({"model": "dall-e-3", "prompt": "x", "extra": 1}),
            None,
            None,
            "Unrecognized request argument supplied: extra",
        ),
    ];
    for (body, param, code, message) in cases {
        let a = h.generate(body.clone()).await;
        assert_eq!(
            a.error(),
            (400, Some("invalid_request_error"), code, param),
            "{body}: {}",
            a.json
        );
        assert!(a.message().contains(message), "{body}: {}", a.json);
    }
    let a = h.raw(Some("sk-any"), "{not json".into()).await;
    assert_eq!(a.error(), (400, Some("invalid_request_error"), None, None));
    assert!(a.message().contains("could not parse the JSON body"));
    let stats = h.stats().await;
    assert_eq!(stats["by_status"]["400"], 12, "{stats}");
}

#[tokio::test]
async fn an_injected_failure_is_followed_by_success() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"fail_next": 1}})).await;
    let a = h.generate(dalle("retry me")).await;
    assert_eq!(a.error(), (500, Some("server_error"), None, None));
    assert_eq!(
        a.message(),
        "The server had an error while processing your request. Sorry about that!"
    );
    assert!(header(&a.headers, "x-request-id").is_some());
    assert_eq!(h.generate(dalle("retry me")).await.status, 200);
    let (_, cfg) = h.get_json("/emulator/config").await;
    assert_eq!(cfg["openai"]["fail_next"], 0, "the counter ran out");

    h.config(json!({"openai": {"fail_next": 2, "error_status": 503}}))
        .await;
    let a = h.generate(dalle("x")).await;
    assert_eq!(a.error().0, 503);
    assert!(a.message().contains("overloaded"), "{}", a.json);
    h.config(json!({"openai": {"error_status": 404}})).await;
    let a = h.generate(dalle("x")).await;
    assert_eq!(
        (a.status, a.json["error"]["message"].is_string()),
        (404, true),
        "other statuses get a plausible body"
    );
    assert_eq!(h.generate(dalle("x")).await.status, 200);

    h.config(json!({"openai": {"error_rate": 1.0, "error_status": 500}}))
        .await;
    assert_eq!(h.generate(dalle("x")).await.status, 500);
    h.config(json!({"openai": {"error_rate": 0.0}})).await;
    assert_eq!(h.generate(dalle("x")).await.status, 200);
}

#[tokio::test]
async fn a_rate_limit_says_when_to_retry() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"rate_limit_next": 1, "retry_after_s": 7, "fail_next": 1}}))
        .await;
    let a = h.generate(dalle("x")).await;
    assert_eq!(
        a.error(),
        (429, Some("requests"), Some("rate_limit_exceeded"), None)
    );
    assert!(
        a.message()
            .starts_with("Rate limit exceeded for images per minute")
    );
    assert_eq!(header(&a.headers, "retry-after"), Some("7"));
    assert_eq!(
        h.generate(dalle("x")).await.status,
        500,
        "the 429 comes before the injected error"
    );
    assert_eq!(h.generate(dalle("x")).await.status, 200);
}

#[tokio::test]
async fn moderation_by_trigger_word_and_knob() {
    let h = start(&[]).await;
    let a = h.generate(dalle("a scene, EMULATOR-MODERATE please")).await;
    assert_eq!(
        a.error(),
        (
            400,
            Some("invalid_request_error"),
            Some("content_policy_violation"),
            None
        )
    );
    assert_eq!(a.message(), openai::SAFETY_MESSAGE);
    let a = h.generate(dalle("emulator-moderate-revised scene")).await;
    assert_eq!(a.error().2, Some("content_policy_violation"));
    assert!(
        a.message()
            .contains("Image descriptions generated from your prompt may contain text"),
        "{}",
        a.json
    );

    // Knob-driven failures come before moderation.
    h.config(json!({"openai": {"fail_next": 1}})).await;
    assert_eq!(h.generate(dalle("emulator-moderate")).await.status, 500);
    assert_eq!(h.generate(dalle("emulator-moderate")).await.status, 400);

    h.config(json!({"openai": {"moderate_next": 1}})).await;
    let a = h.generate(dalle("an innocent cat")).await;
    assert_eq!(a.error().2, Some("content_policy_violation"));
    assert_eq!(h.generate(dalle("an innocent cat")).await.status, 200);
    h.config(json!({"openai": {"moderation_rate": 1.0}})).await;
    assert_eq!(h.generate(dalle("an innocent cat")).await.status, 400);
}

#[tokio::test]
async fn a_hung_request_is_dropped_when_the_client_gives_up() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"hang_next": 1}})).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let r = impatient
        .post(format!("{}/v1/images/generations", h.base))
        .bearer_auth("k")
        .json(&dalle("hang"))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()), "it never answered");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = h.stats().await;
        if stats["in_flight"] == 0 {
            assert_eq!(stats["requests"], 1);
            assert_eq!(stats["max_in_flight"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "still in flight: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.generate(dalle("x")).await.status,
        200,
        "only the next one hung"
    );
}

#[tokio::test]
async fn latency_holds_requests_in_flight_and_stats_count_them() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"latency_ms": 300}})).await;
    let started = Instant::now();
    let calls = (0..5).map(|i| h.generate(dalle(&format!("concurrent {i}"))));
    for a in futures::future::join_all(calls).await {
        assert_eq!(a.status, 200);
        let ms: u64 = header(&a.headers, "openai-processing-ms")
            .and_then(|v| v.parse().ok())
            .expect("processing ms");
        assert!(ms >= 300, "{ms}");
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "served concurrently"
    );
    h.config(json!({"openai": {"latency_ms": 0, "fail_next": 1}}))
        .await;
    assert_eq!(h.generate(dalle("x")).await.status, 500);
    assert_eq!(h.generate_as(None, dalle("x")).await.status, 401);
    let stats = h.stats().await;
    assert_eq!(
        stats,
        json!({"requests": 7, "in_flight": 0, "max_in_flight": 5,
            "by_status": {"200": 5, "401": 1, "500": 1}})
    );
}

#[tokio::test]
async fn knobs_merge_and_reset_to_their_starting_values() {
    let start_knobs = Knobs {
        latency_ms: 5,
        error_status: 503,
        ..Knobs::default()
    };
    let h = start_with(&[], start_knobs.clone()).await;
    let (status, cfg) = h.get_json("/emulator/config").await;
    assert_eq!(status, 200);
    assert_eq!(cfg["openai"], json!(start_knobs));
    let (status, cfg) = h
        .config(json!({"openai": {"retry_after_s": 9, "url_ttl_s": 60}}))
        .await;
    assert_eq!(status, 200);
    let merged = Knobs {
        retry_after_s: 9,
        url_ttl_s: 60,
        ..start_knobs.clone()
    };
    assert_eq!(cfg["openai"], json!(merged), "fields not given are kept");
    assert_eq!(
        h.get_json("/emulator/config").await.1["openai"],
        json!(merged)
    );

    for bad in [
        json!({"dalle": {"latency_ms": 1}}),
        json!({"openai": {"latncy_ms": 1}}),
        json!({"openai": {"latency_ms": "slow"}}),
        json!(["openai"]),
    ] {
        let (status, _) = h.config(bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
    }
    assert_eq!(
        h.get_json("/emulator/config").await.1["openai"],
        json!(merged),
        "refused patches change nothing"
    );

    assert_eq!(h.generate(dalle("x")).await.status, 200);
    let r = h
        .http
        .post(format!("{}/emulator/reset", h.base))
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        h.get_json("/emulator/config").await.1["openai"],
        json!(start_knobs)
    );
    assert_eq!(
        h.stats().await,
        json!({"requests": 0, "in_flight": 0, "max_in_flight": 0, "by_status": {}})
    );
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let h = start(&[]).await;
    assert_eq!(h.get_json("/health").await, (200, json!({"status": "ok"})));
    let (status, body) = h.get_json("/v1/images/variations-nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        json!({"message": "Invalid URL (GET /v1/images/variations-nope)", "type": "invalid_request_error",
            "param": null, "code": null})
    );
    let (status, body) = h.get_json("/v1/images/generations").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["type"], "invalid_request_error");
}
