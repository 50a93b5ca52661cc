//! The emulator over real HTTP, as our provider clients see it: OpenAI (GPT image models), Azure OpenAI (both
//! paths), Together's FLUX and BFL, the control plane and the knobs.

use super::*;
use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::json;
use std::time::{Duration, Instant};

/// One emulator on a free loopback port, and a client for it.
struct Harness {
    base: String,
    http: reqwest::Client,
    emulator: Emulator,
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
        self.image(0)
    }

    /// The decoded bytes of `data[i].b64_json`.
    fn image(&self, i: usize) -> Vec<u8> {
        let b64 = self.json["data"][i]["b64_json"]
            .as_str()
            .unwrap_or_else(|| panic!("b64_json: {}", self.json));
        decode(b64)
    }
}

fn decode(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

/// The date the tests run on, whatever the real one: the 1.x models still serve, three days before they go.
fn test_day() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 28).expect("date")
}

async fn serve_emulator(emulator: Emulator) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    emulator.set_today(Some(test_day()));
    tokio::spawn(spawn_on(listener, emulator.clone()));
    Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        emulator,
    }
}

async fn start_with(keys: &[&str], knobs: Knobs) -> Harness {
    serve_emulator(Emulator::new(
        keys.iter().map(|k| (*k).to_owned()).collect(),
        knobs,
    ))
    .await
}

/// An emulator serving these Azure deployment entries (`name` or `name=model`).
async fn start_azure(deployments: &[&str]) -> Harness {
    serve_emulator(Emulator::with_protocols(
        Vec::new(),
        deployments.iter().map(|d| (*d).to_owned()).collect(),
        &[],
    ))
    .await
}

async fn start(keys: &[&str]) -> Harness {
    start_with(keys, Knobs::default()).await
}

fn gpt(prompt: &str) -> Value {
    json!({"model": "gpt-image-2", "prompt": prompt})
}

fn sized(prompt: &str, size: &str) -> Value {
    json!({"model": "gpt-image-2", "prompt": prompt, "size": size})
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

    /// POSTs `body` to `path` (with its query) with these headers.
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
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

    /// Azure's deployments path with `api-version` (none if empty).
    async fn azure(&self, deployment: &str, version: &str, body: Value) -> Answer {
        let query = if version.is_empty() {
            String::new()
        } else {
            format!("?api-version={version}")
        };
        self.post(
            &format!("/openai/deployments/{deployment}/images/generations{query}"),
            &[("api-key", "azure-key")],
            body,
        )
        .await
    }

    /// A streamed generation: the content type and the (event, data) pairs.
    async fn stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (u16, String, Vec<(String, Value)>) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let content_type = header(r.headers(), "content-type")
            .unwrap_or_default()
            .to_owned();
        let text = r.text().await.expect("body");
        let events = text
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).expect("event data");
                    }
                }
                (name, data)
            })
            .collect();
        (status, content_type, events)
    }

    /// Submits a BFL task.
    async fn bfl_submit(&self, model: &str, body: Value) -> Answer {
        self.post(&format!("/bfl/v1/{model}"), &[("x-key", "bfl-key")], body)
            .await
    }

    /// Polls a BFL task until it is no longer pending.
    async fn bfl_wait(&self, polling_url: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .http
                .get(polling_url)
                .header("x-key", "bfl-key")
                .send()
                .await
                .expect("poll");
            let body: Value = r.json().await.expect("json");
            if body["status"] != "Pending" {
                return body;
            }
            assert!(Instant::now() < deadline, "still pending: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
async fn answers_like_openai_with_b64_and_usage() {
    let h = start(&[]).await;
    let prompt = "a red fox in the snow";
    let body = json!({"model": "gpt-image-2", "prompt": prompt, "n": 2, "size": "1536x1024", "quality": "high",
        "background": "opaque", "output_format": "png", "moderation": "low", "user": "owner-hash"});
    let a = h.generate(body).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let data = a.json["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let first = a.image(0);
    assert_eq!(png_dims(&first), (1536, 1024));
    assert_eq!(
        first,
        render_png(prompt, 0, 1536, 1024),
        "deterministic from the prompt; picture i has seed i"
    );
    assert_eq!(a.image(1), render_png(prompt, 1, 1536, 1024));
    for item in data {
        assert_eq!(
            item.as_object().map(|o| o.len()),
            Some(1),
            "b64_json only, no url or revised_prompt: {item}"
        );
    }
    assert_eq!(a.json["background"], "opaque");
    assert_eq!(a.json["output_format"], "png");
    assert_eq!(a.json["quality"], "high");
    assert_eq!(a.json["size"], "1536x1024");
    let text = prompt.len().div_ceil(4) as u64;
    assert_eq!(
        a.json["usage"],
        json!({"input_tokens": text, "input_tokens_details": {"image_tokens": 0, "text_tokens": text},
            "output_tokens": 2 * 6240, "output_tokens_details": {"image_tokens": 2 * 6240, "text_tokens": 0},
            "total_tokens": text + 2 * 6240})
    );
    let created = a.json["created"].as_u64().expect("created");
    assert!(created.abs_diff(files::now_secs()) < 5, "{created}");
}

#[tokio::test]
async fn formats_backgrounds_and_compression() {
    let h = start(&[]).await;
    let a = h
        .generate(
            json!({"model": "gpt-image-2", "prompt": "jpeg", "output_format": "jpeg",
            "output_compression": 60, "size": "1024x1536"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let jpeg = a.image(0);
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]), "a JPEG");
    assert_eq!(picture::dimensions(&jpeg), Some((1024, 1536)));
    assert_eq!(a.json["output_format"], "jpeg");
    let better = h
        .generate(
            json!({"model": "gpt-image-2", "prompt": "jpeg", "output_format": "jpeg",
            "size": "1024x1536"}),
        )
        .await
        .image(0);
    assert!(
        better.len() > jpeg.len(),
        "compression 60 is smaller than the default 100"
    );

    let a = h
        .generate(
            json!({"model": "gpt-image-2.5-flare", "prompt": "webp", "output_format": "webp",
            "size": "1536x864", "quality": "xhigh"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let webp = a.image(0);
    assert!(webp.starts_with(b"RIFF") && &webp[8..12] == b"WEBP");
    let decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&webp)).expect("webp");
    assert_eq!(decoder.dimensions(), (1536, 864));
    assert_eq!(
        a.json["usage"]["output_tokens"],
        (4160.0 * 1536.0 * 864.0 / 1_048_576.0 * 1.5_f64).round() as u64,
        "off the table: scaled by pixels; xhigh is 1.5x high"
    );

    for format in ["png", "webp"] {
        let a = h
            .generate(
                json!({"model": "gpt-image-1.5", "prompt": "alpha", "background": "transparent",
                "output_format": format}),
            )
            .await;
        assert_eq!(a.status, 200, "{format}: {}", a.json);
        assert_eq!(a.json["background"], "transparent");
        let bytes = a.image(0);
        if format == "png" {
            let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
                .read_info()
                .expect("png");
            assert_eq!(reader.info().color_type, png::ColorType::Rgba);
        } else {
            let decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&bytes)).expect("webp");
            assert!(decoder.has_alpha());
        }
    }
}

#[tokio::test]
async fn sizes_qualities_and_defaults_follow_the_model() {
    let h = start(&[]).await;
    let a = h
        .generate(json!({"model": "gpt-image-2", "prompt": "defaults"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(png_dims(&a.png()), (1024, 1024));
    assert_eq!(
        (
            &a.json["size"],
            &a.json["quality"],
            &a.json["background"],
            &a.json["output_format"]
        ),
        (
            &json!("1024x1024"),
            &json!("medium"),
            &json!("opaque"),
            &json!("png")
        )
    );
    assert_eq!(a.json["usage"]["output_tokens"], 1056);
    let a = h
        .generate(
            json!({"model": "gpt-image-1-mini", "prompt": "auto", "size": "auto", "quality": "auto",
            "background": "auto"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(
        (&a.json["size"], &a.json["quality"], &a.json["background"]),
        (&json!("1024x1024"), &json!("medium"), &json!("opaque"))
    );
    for (model, size, ok) in [
        ("gpt-image-1.5", "1536x1024", true),
        ("gpt-image-1.5-2025-12-16", "1024x1536", true),
        ("chatgpt-image-latest", "1536x864", false),
        ("gpt-image-2", "1536x864", true),
        ("gpt-image-2-2026-04-21", "2560x1440", true),
        ("gpt-image-2", "3840x2160", true),
        ("gpt-image-2.6-sunburst", "1008x1008", true),
        ("gpt-image-2", "1000x1000", false),
        ("gpt-image-2", "3856x2160", false),
        ("gpt-image-2", "3088x1024", false),
        ("gpt-image-2", "800x800", false),
    ] {
        let a = h
            .generate(json!({"model": model, "prompt": "sizes", "size": size, "quality": "low"}))
            .await;
        if ok {
            assert_eq!(a.status, 200, "{model} {size}: {}", a.json);
            assert_eq!(a.json["size"], size);
            let (w, h) = size.split_once('x').expect("WxH");
            assert_eq!(
                png_dims(&a.png()),
                (w.parse().expect("w"), h.parse().expect("h")),
                "{model} {size}"
            );
        } else {
            assert_eq!(
                a.error(),
                (
                    400,
                    Some("invalid_request_error"),
                    Some("invalid_size"),
                    Some("size")
                ),
                "{model} {size}: {}",
                a.json
            );
        }
    }
    for (model, quality, tokens) in [
        ("gpt-image-2.5-sunburst", "max", Some(8320)),
        ("gpt-image-2.6-flare", "xhigh", Some(6240)),
        ("gpt-image-2", "xhigh", None),
        ("gpt-image-1.5", "max", None),
        ("gpt-image-2", "hd", None),
        ("gpt-image-2", "standard", None),
    ] {
        let a = h
            .generate(json!({"model": model, "prompt": "q", "quality": quality}))
            .await;
        match tokens {
            Some(t) => {
                assert_eq!(a.status, 200, "{model} {quality}: {}", a.json);
                assert_eq!(a.json["quality"], quality);
                assert_eq!(a.json["usage"]["output_tokens"], t);
            }
            None => assert_eq!(
                a.error(),
                (
                    400,
                    Some("invalid_request_error"),
                    Some("invalid_value"),
                    Some("quality")
                ),
                "{model} {quality}"
            ),
        }
    }
}

#[tokio::test]
async fn retired_and_unknown_models_are_not_found() {
    let h = start(&[]).await;
    for (body, model) in [
        (json!({"model": "dall-e-3", "prompt": "x"}), "dall-e-3"),
        (json!({"model": "dall-e-2", "prompt": "x"}), "dall-e-2"),
        (
            json!({"model": "gpt-image-1", "prompt": "x"}),
            "gpt-image-1",
        ),
        (
            json!({"model": "gpt-image-9", "prompt": "x"}),
            "gpt-image-9",
        ),
        (json!({"prompt": "x"}), "dall-e-2"),
        (
            json!({"prompt": "x", "output_format": "png"}),
            "gpt-image-1",
        ),
    ] {
        let a = h.generate(body.clone()).await;
        assert_eq!(
            a.error(),
            (
                404,
                Some("invalid_request_error"),
                Some("model_not_found"),
                None
            ),
            "{body}: {}",
            a.json
        );
        assert_eq!(
            a.message(),
            format!("The model `{model}` does not exist or you do not have access to it.")
        );
    }
    // On 2026-12-01 the 1.x models are gone; gpt-image-2 stays.
    assert_eq!(
        h.generate(json!({"model": "gpt-image-1.5", "prompt": "x"}))
            .await
            .status,
        200
    );
    h.emulator
        .set_today(chrono::NaiveDate::from_ymd_opt(2026, 12, 1));
    for model in [
        "gpt-image-1.5",
        "gpt-image-1.5-2025-12-16",
        "gpt-image-1-mini",
        "chatgpt-image-latest",
    ] {
        let a = h.generate(json!({"model": model, "prompt": "x"})).await;
        assert_eq!(a.error().2, Some("model_not_found"), "{model}");
    }
    assert_eq!(h.generate(gpt("x")).await.status, 200);
}

#[tokio::test]
async fn the_same_prompt_gives_the_same_picture() {
    let h = start(&[]).await;
    let first = h
        .generate(sized("a lighthouse at dusk", "1024x1024"))
        .await
        .png();
    let again = h
        .generate(sized("a lighthouse at dusk", "1024x1024"))
        .await
        .png();
    let other = h
        .generate(sized("a lighthouse at dawn", "1024x1024"))
        .await
        .png();
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert_eq!(png_dims(&other), (1024, 1024));
}

#[tokio::test]
async fn every_answer_carries_openai_headers() {
    let h = start(&[]).await;
    for body in [
        gpt("headers"),
        json!({"model": "gpt-image-2"}),
        json!({"model": "dall-e-3", "prompt": "x"}),
    ] {
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
async fn streaming_sends_partial_images_then_the_completed_one() {
    let h = start(&[]).await;
    let prompt = "a streamed lighthouse";
    let body = json!({"model": "gpt-image-2", "prompt": prompt, "stream": true, "partial_images": 2,
        "quality": "low", "output_format": "jpeg", "output_compression": 90, "size": "1024x640"});
    let (status, content_type, events) = h
        .stream(
            "/v1/images/generations",
            &[("authorization", "Bearer k")],
            body.clone(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["size"], "1024x640");
        assert_eq!(data["quality"], "low");
        assert_eq!(data["background"], "opaque");
        assert_eq!(data["output_format"], "jpeg");
        assert!(data["created_at"].as_u64().is_some());
        let bytes = decode(data["b64_json"].as_str().expect("b64_json"));
        assert_eq!(picture::dimensions(&bytes), Some((1024, 640)), "event {i}");
        if name == "image_generation.partial_image" {
            assert_eq!(data["partial_image_index"], i);
            assert!(data.get("usage").is_none());
        }
    }
    let completed = &events[2].1;
    let text = prompt.len().div_ceil(4) as u64;
    let out = (272.0 * 1024.0 * 640.0 / 1_048_576.0_f64).round() as u64;
    assert_eq!(
        completed["usage"],
        json!({"input_tokens": text, "input_tokens_details": {"image_tokens": 0, "text_tokens": text},
            "output_tokens": out, "output_tokens_details": {"image_tokens": out, "text_tokens": 0},
            "total_tokens": text + out})
    );
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    plain.as_object_mut().map(|o| o.remove("partial_images"));
    let a = h.generate(plain).await;
    assert_eq!(
        a.json["data"][0]["b64_json"], completed["b64_json"],
        "the completed image is the picture a plain request gets"
    );

    let mut none = body.clone();
    none["partial_images"] = json!(0);
    none["n"] = json!(2);
    let (_, _, events) = h
        .stream(
            "/v1/images/generations",
            &[("authorization", "Bearer k")],
            none,
        )
        .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["image_generation.completed", "image_generation.completed"],
        "one completed event per picture"
    );
    assert_ne!(events[0].1["b64_json"], events[1].1["b64_json"]);
}

#[tokio::test]
async fn auth_follows_openai() {
    let h = start(&["sk-good-key-1234"]).await;
    let a = h.generate_as(None, gpt("x")).await;
    assert_eq!(
        a.error(),
        (401, Some("invalid_request_error"), None, None),
        "{}",
        a.json
    );
    assert!(a.message().starts_with("You didn't provide an API key."));
    let a = h.generate_as(Some(""), gpt("x")).await;
    assert_eq!(a.status, 401, "an empty key is no key");

    let a = h.generate_as(Some("sk-bad-key-9999"), gpt("x")).await;
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
    let a = h.generate_as(Some("sk-good-key-1234"), gpt("x")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    // Auth comes before validation.
    let a = h.generate_as(Some("sk-bad-key-9999"), json!({})).await;
    assert_eq!(a.status, 401);

    let open = start(&[]).await;
    let a = open.generate_as(Some("whatever"), gpt("x")).await;
    assert_eq!(
        a.status, 200,
        "any non-empty key passes when none are configured"
    );
    let a = open.generate_as(None, gpt("x")).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn validation_errors_name_the_param_and_code() {
    let h = start(&[]).await;
    let long = "x".repeat(32_001);
    let with = |field: &str, value: Value| {
        let mut body = gpt("x");
        body[field] = value;
        body
    };
    let cases = [
        (
            with("size", json!("512x512")),
            "size",
            Some("invalid_size"),
            "Invalid size '512x512'",
        ),
        (
            with("n", json!(0)),
            "n",
            Some("integer_below_min_value"),
            "Expected a value >= 1",
        ),
        (
            with("n", json!(11)),
            "n",
            Some("integer_above_max_value"),
            "Expected a value <= 10",
        ),
        (
            with("n", json!("2")),
            "n",
            Some("invalid_type"),
            "expected an integer",
        ),
        (
            with("prompt", json!(long)),
            "prompt",
            Some("string_above_max_length"),
            "maximum length 32000",
        ),
        (
            with("prompt", json!("")),
            "prompt",
            Some("empty_string"),
            "",
        ),
        (
            json!({"model": "gpt-image-2"}),
            "prompt",
            Some("missing_required_parameter"),
            "Missing required parameter: 'prompt'.",
        ),
        (
            with("quality", json!("ultra")),
            "quality",
            Some("invalid_value"),
            "Supported values are: 'low', 'medium', 'high', and 'auto'.",
        ),
        (
            with("background", json!("transparent")),
            "background",
            Some("unsupported_value"),
            "transparent",
        ),
        (
            with("background", json!("clear")),
            "background",
            Some("invalid_value"),
            "",
        ),
        (
            with("output_format", json!("bmp")),
            "output_format",
            Some("invalid_value"),
            "",
        ),
        (
            with("output_format", json!("gif")),
            "output_format",
            Some("unsupported_value"),
            "preview",
        ),
        (
            with("frame_count", json!(4)),
            "frame_count",
            Some("unsupported_parameter"),
            "",
        ),
        (
            with("complexity", json!("extreme")),
            "complexity",
            Some("invalid_value"),
            "",
        ),
        (
            with("safety_identifier", json!(1)),
            "safety_identifier",
            Some("invalid_type"),
            "",
        ),
        (
            with("output_compression", json!(80)),
            "output_compression",
            Some("unsupported_parameter"),
            "'jpeg' and 'webp'",
        ),
        (
            json!({"model": "gpt-image-2", "prompt": "x", "output_format": "jpeg", "output_compression": 101}),
            "output_compression",
            Some("integer_above_max_value"),
            "",
        ),
        (
            json!({"model": "gpt-image-1.5", "prompt": "x", "background": "transparent", "output_format": "jpeg"}),
            "background",
            Some("unsupported_value"),
            "jpeg",
        ),
        (
            with("moderation", json!("strict")),
            "moderation",
            Some("invalid_value"),
            "",
        ),
        (
            with("partial_images", json!(4)),
            "partial_images",
            Some("integer_above_max_value"),
            "",
        ),
        (
            with("stream", json!("yes")),
            "stream",
            Some("invalid_type"),
            "",
        ),
        (with("user", json!(7)), "user", Some("invalid_type"), ""),
        (
            with("style", json!("vivid")),
            "style",
            Some("unsupported_parameter"),
            "dall-e-3",
        ),
        (
            with("response_format", json!("b64_json")),
            "response_format",
            Some("unsupported_parameter"),
            "base64",
        ),
        (
            with("extra", json!(1)),
            "extra",
            None,
            "Unrecognized request argument supplied: extra",
        ),
    ];
    let count = cases.len();
    for (body, param, code, message) in cases {
        let a = h.generate(body.clone()).await;
        assert_eq!(
            a.error(),
            (400, Some("invalid_request_error"), code, Some(param)),
            "{body}: {}",
            a.json
        );
        assert!(a.message().contains(message), "{body}: {}", a.json);
    }
    let a = h
        .generate(
            json!({"model": "gpt-image-2", "prompt": "x", "style": null, "user": null, "n": null,
                "safety_identifier": "hashed-user", "complexity": "high"}),
        )
        .await;
    assert_eq!(a.status, 200, "null is absent: {}", a.json);
    let a = h.raw(Some("sk-any"), "{not json".into()).await;
    assert_eq!(a.error(), (400, Some("invalid_request_error"), None, None));
    assert!(a.message().contains("could not parse the JSON body"));
    let stats = h.stats().await;
    assert_eq!(stats["by_status"]["400"], count + 1, "{stats}");
}

#[tokio::test]
async fn an_injected_failure_is_followed_by_success() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"fail_next": 1}})).await;
    let a = h.generate(gpt("retry me")).await;
    assert_eq!(a.error(), (500, Some("server_error"), None, None));
    assert_eq!(
        a.message(),
        "The server had an error while processing your request. Sorry about that!"
    );
    assert!(header(&a.headers, "x-request-id").is_some());
    assert_eq!(h.generate(gpt("retry me")).await.status, 200);
    let (_, cfg) = h.get_json("/emulator/config").await;
    assert_eq!(cfg["openai"]["fail_next"], 0, "the counter ran out");

    h.config(json!({"openai": {"fail_next": 2, "error_status": 503}}))
        .await;
    let a = h.generate(gpt("x")).await;
    assert_eq!(a.error().0, 503);
    assert!(a.message().contains("overloaded"), "{}", a.json);
    h.config(json!({"openai": {"error_status": 404}})).await;
    let a = h.generate(gpt("x")).await;
    assert_eq!(
        (a.status, a.json["error"]["message"].is_string()),
        (404, true),
        "other statuses get a plausible body"
    );
    assert_eq!(h.generate(gpt("x")).await.status, 200);

    h.config(json!({"openai": {"error_rate": 1.0, "error_status": 500}}))
        .await;
    assert_eq!(h.generate(gpt("x")).await.status, 500);
    h.config(json!({"openai": {"error_rate": 0.0}})).await;
    assert_eq!(h.generate(gpt("x")).await.status, 200);
}

#[tokio::test]
async fn a_rate_limit_says_when_to_retry() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"rate_limit_next": 1, "retry_after_s": 7, "fail_next": 1}}))
        .await;
    let a = h.generate(gpt("x")).await;
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
        h.generate(gpt("x")).await.status,
        500,
        "the 429 comes before the injected error"
    );
    assert_eq!(h.generate(gpt("x")).await.status, 200);
}

#[tokio::test]
async fn moderation_by_trigger_word_and_knob() {
    let h = start(&[]).await;
    let a = h.generate(gpt("a scene, EMULATOR-MODERATE please")).await;
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
    let a = h.generate(gpt("emulator-moderate-revised scene")).await;
    assert_eq!(a.error().2, Some("content_policy_violation"));
    assert!(
        a.message()
            .contains("Image descriptions generated from your prompt may contain text"),
        "{}",
        a.json
    );

    // Knob-driven failures come before moderation.
    h.config(json!({"openai": {"fail_next": 1}})).await;
    assert_eq!(h.generate(gpt("emulator-moderate")).await.status, 500);
    assert_eq!(h.generate(gpt("emulator-moderate")).await.status, 400);

    h.config(json!({"openai": {"moderate_next": 1}})).await;
    let a = h.generate(gpt("an innocent cat")).await;
    assert_eq!(a.error().2, Some("content_policy_violation"));
    assert_eq!(h.generate(gpt("an innocent cat")).await.status, 200);
    h.config(json!({"openai": {"moderation_rate": 1.0}})).await;
    assert_eq!(h.generate(gpt("an innocent cat")).await.status, 400);
}

#[tokio::test]
async fn a_corrupt_answer_is_charged_but_is_not_an_image() {
    let h = start(&[]).await;
    let body =
        json!({"model": "gpt-image-2", "prompt": "a corrupt lighthouse", "n": 2, "quality": "low"});
    let normal = h.generate(body.clone()).await;
    assert_eq!(normal.status, 200, "{}", normal.json);

    h.config(json!({"openai": {"corrupt_next": 1}})).await;
    let a = h.generate(body.clone()).await;
    assert_eq!(
        a.status, 200,
        "a success as far as the provider is concerned: {}",
        a.json
    );
    assert!(header(&a.headers, "x-request-id").is_some());
    assert_eq!(a.json["usage"], normal.json["usage"], "charged as usual");
    assert_eq!(a.json["usage"]["output_tokens"], 2 * 272);
    assert_eq!(a.json["data"].as_array().map(Vec::len), Some(2));
    for i in 0..2 {
        let bytes = a.image(i);
        assert_eq!(bytes, knobs::CORRUPT_BYTES, "picture {i}");
        assert!(
            png::Decoder::new(std::io::Cursor::new(&bytes[..]))
                .read_info()
                .is_err(),
            "picture {i} does not decode as PNG"
        );
        assert_eq!(picture::dimensions(&bytes), None);
    }
    let (_, cfg) = h.get_json("/emulator/config").await;
    assert_eq!(cfg["openai"]["corrupt_next"], 0, "the counter ran out");

    let b = h.generate(body).await;
    assert_eq!(b.status, 200, "{}", b.json);
    assert_eq!(
        png_dims(&b.image(0)),
        (1024, 1024),
        "the next one is normal"
    );
    assert_eq!(b.image(1), normal.image(1));
    assert_eq!(b.json["usage"], normal.json["usage"]);

    // An injected failure comes first and leaves the counter alone; a prompt refused by the trigger word uses one
    // up (its fate was drawn when it arrived), like `moderate_next`.
    h.config(json!({"openai": {"corrupt_next": 2, "fail_next": 1}}))
        .await;
    assert_eq!(h.generate(gpt("x")).await.status, 500);
    assert_eq!(h.generate(gpt("emulator-moderate")).await.status, 400);
    assert_eq!(h.generate(gpt("x")).await.png(), knobs::CORRUPT_BYTES);
    assert_eq!(
        h.generate(gpt("x")).await.png(),
        render_png("x", 0, 1024, 1024)
    );

    // Streamed: every event's picture is garbage; the completed event keeps its usage.
    h.config(json!({"openai": {"corrupt_next": 1}})).await;
    let (status, _, events) = h
        .stream(
            "/v1/images/generations",
            &[("authorization", "Bearer k")],
            json!({"model": "gpt-image-2", "prompt": "x", "stream": true, "partial_images": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 2);
    for (_, data) in &events {
        assert_eq!(
            decode(data["b64_json"].as_str().expect("b64")),
            knobs::CORRUPT_BYTES
        );
    }
    assert_eq!(events[1].1["usage"]["output_tokens"], 1056);
}

#[tokio::test]
async fn corrupt_answers_on_azure_together_and_bfl() {
    let h = start(&[]).await;
    h.config(json!({"azure": {"corrupt_next": 1}, "flux": {"corrupt_next": 1}, "bfl": {"corrupt_next": 1}}))
        .await;

    let a = h.azure("d", "preview", azure_body("a harbour")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.json["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    assert_eq!(
        a.json["data"][0]["content_filter_results"]["violence"]["filtered"],
        false
    );
    assert_eq!(a.image(0), knobs::CORRUPT_BYTES);
    assert_eq!(a.image(1), knobs::CORRUPT_BYTES);
    let a = h.azure("d", "preview", azure_body("a harbour")).await;
    assert!(
        a.image(0).starts_with(&[0xFF, 0xD8]),
        "the next one is a JPEG"
    );

    let a = h.generate(schnell("a red fox")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let url = a.json["data"][0]["url"].as_str().expect("url");
    let (status, headers, bytes) = h.fetch(url).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("image/png"),
        "claims to be an image"
    );
    assert_eq!(bytes, knobs::CORRUPT_BYTES);
    let a = h.generate(schnell("a red fox")).await;
    let (_, _, bytes) = h
        .fetch(a.json["data"][0]["url"].as_str().expect("url"))
        .await;
    assert_eq!(png_dims(&bytes), (512, 384), "the next one is a picture");

    let a = h
        .bfl_submit("flux-2-pro", json!({"prompt": "a fjord"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["cost"], 3.0, "charged as usual");
    let done = h
        .bfl_wait(a.json["polling_url"].as_str().expect("url"))
        .await;
    assert_eq!(done["status"], "Ready", "{done}");
    let (status, headers, bytes) = h
        .fetch(done["result"]["sample"].as_str().expect("sample"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/jpeg"));
    assert_eq!(bytes, knobs::CORRUPT_BYTES);
    let a = h
        .bfl_submit("flux-2-pro", json!({"prompt": "a fjord"}))
        .await;
    let done = h
        .bfl_wait(a.json["polling_url"].as_str().expect("url"))
        .await;
    let (_, _, bytes) = h
        .fetch(done["result"]["sample"].as_str().expect("sample"))
        .await;
    assert_eq!(
        picture::dimensions(&bytes),
        Some((1024, 1024)),
        "the next one is a picture"
    );
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
        .json(&gpt("hang"))
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
        h.generate(gpt("x")).await.status,
        200,
        "only the next one hung"
    );
}

#[tokio::test]
async fn latency_holds_requests_in_flight_and_stats_count_them() {
    let h = start(&[]).await;
    h.config(json!({"openai": {"latency_ms": 300}})).await;
    let started = Instant::now();
    let calls = (0..5).map(|i| h.generate(gpt(&format!("concurrent {i}"))));
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
    assert_eq!(h.generate(gpt("x")).await.status, 500);
    assert_eq!(h.generate_as(None, gpt("x")).await.status, 401);
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

    assert_eq!(h.generate(gpt("x")).await.status, 200);
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

#[tokio::test]
async fn config_takes_json_whatever_the_content_type() {
    let h = start(&[]).await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = h
            .http
            .put(format!("{}/emulator/config", h.base))
            .body(r#"{"openai": {"latency_ms": 7}}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.expect("config");
        assert_eq!(r.status().as_u16(), 200, "{content_type:?}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["openai"]["latency_ms"], 7);
    }
    let r = h
        .http
        .put(format!("{}/emulator/config", h.base))
        .body("latency_ms=7")
        .send()
        .await
        .expect("config");
    assert_eq!(r.status().as_u16(), 400, "not JSON");

    // Reset takes no body, but one sent anyway (JSON or not, whatever its type) is no reason to refuse.
    for content_type in [None, Some("application/json"), Some("text/plain")] {
        let mut req = h.http.post(format!("{}/emulator/reset", h.base)).body("{}");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.expect("reset");
        assert_eq!(r.status().as_u16(), 204, "{content_type:?}");
    }
    assert_eq!(
        h.get_json("/emulator/config").await.1["openai"],
        json!(Knobs::default()),
        "reset"
    );
}

fn schnell(prompt: &str) -> Value {
    json!({"model": "black-forest-labs/FLUX.1-schnell", "prompt": prompt, "width": 512, "height": 384,
        "steps": 4, "n": 2, "seed": 40, "output_format": "png"})
}

#[tokio::test]
async fn together_serves_schnell_with_urls_that_expire() {
    let h = start(&[]).await;
    let a = h.generate(schnell("a red fox")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["object"], "list");
    assert_eq!(a.json["model"], "black-forest-labs/FLUX.1-schnell");
    let data = a.json["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[1]["type"], "url");
    let url = data[1]["url"].as_str().expect("url");
    assert!(
        url.starts_with(&format!("{}/files/", h.base)) && url.contains(".png?se="),
        "built from the Host header, SAS-like: {url}"
    );
    let (status, headers, bytes) = h.fetch(url).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert_eq!(
        header(&headers, "content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(bytes, render_png("a red fox", 41, 512, 384), "seed + index");
    let (status, headers, body) = h.fetch(&url.replace("sig=", "sig=00")).await;
    assert_eq!(status, 403, "a tampered signature");
    assert_eq!(
        header(&headers, "x-ms-error-code"),
        Some("AuthenticationFailed")
    );
    assert!(String::from_utf8_lossy(&body).contains("<Code>AuthenticationFailed</Code>"));

    let mut b64 = schnell("a red fox");
    b64["response_format"] = json!("base64");
    b64["output_format"] = json!("jpeg");
    let a = h.generate(b64).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["data"][0]["type"], "b64_json");
    assert_eq!(picture::dimensions(&a.image(0)), Some((512, 384)));
    assert!(a.image(0).starts_with(&[0xFF, 0xD8]));

    // Expired URLs answer Azure Blob Storage's 403.
    let (status, _) = h.config(json!({"flux": {"url_ttl_s": 0}})).await;
    assert_eq!(status, 200);
    let a = h.generate(schnell("x")).await;
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
    h.config(json!({"flux": {"url_ttl_s": 3600}})).await;
    assert_eq!(h.generate(schnell("y")).await.status, 200);
    assert_eq!(h.fetch(url).await.0, 403);
    let (status, headers, body) = h
        .fetch(&format!("{}/files/no-such-picture.png", h.base))
        .await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "x-ms-error-code"), Some("BlobNotFound"));
    assert!(String::from_utf8_lossy(&body).contains("<Code>BlobNotFound</Code>"));

    let mut free = schnell("x");
    free["model"] = json!("black-forest-labs/FLUX.1-schnell-Free");
    let a = h.generate(free).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (404, Some("model_not_available")),
        "the free endpoint is gone: {}",
        a.json
    );
    let stats = h.get_json("/emulator/stats").await.1;
    assert_eq!(stats["flux"]["requests"], 5, "{stats}");
    assert_eq!(stats["openai"]["requests"], 0, "{stats}");
}

fn azure_body(prompt: &str) -> Value {
    // The official AzureOpenAI client sends the deployment name as `model`; anything goes there.
    json!({"model": "whatever-the-client-sends", "prompt": prompt, "n": 2, "size": "1024x1024",
        "output_format": "jpeg", "output_compression": 90})
}

#[tokio::test]
async fn azure_deployments_answer_like_openai_with_filter_results() {
    let h = start_azure(&[]).await;
    let a = h
        .azure(
            "my-gpt-image-2",
            "2025-04-01-preview",
            azure_body("a harbour"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(header(&a.headers, "apim-request-id").is_some());
    let data = a.json["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for item in data {
        assert_eq!(
            item["content_filter_results"]["violence"]["filtered"],
            false
        );
        assert_eq!(
            item["prompt_filter_results"]["jailbreak"]["detected"],
            false
        );
        assert!(item.get("revised_prompt").is_none());
    }
    assert_eq!(picture::dimensions(&a.image(1)), Some((1024, 1024)));
    assert_eq!(a.json["quality"], "high", "Azure's auto is high");
    assert_eq!(a.json["output_format"], "jpeg");
    assert_eq!(a.json["usage"]["output_tokens"], 2 * 4160);
    for version in ["preview", "latest", "2025-12-01-preview", "2026-05-01"] {
        assert_eq!(
            h.azure("d", version, azure_body("x")).await.status,
            200,
            "{version}"
        );
    }

    let a = h.azure("d", "2024-10-21", azure_body("x")).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"]["code"], "BadRequest");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not support this operation")),
        "{}",
        a.json
    );
    let a = h.azure("d", "", azure_body("x")).await;
    assert_eq!(
        (a.status, &a.json["error"]["code"]),
        (404, &json!("404")),
        "no api-version"
    );
    let mut webp = azure_body("x");
    webp["output_format"] = json!("webp");
    let a = h.azure("d", "preview", webp).await;
    assert_eq!(
        a.error(),
        (
            400,
            Some("invalid_request_error"),
            Some("unsupported_value"),
            Some("output_format")
        )
    );
    // Named after a model: that model; named after a retired one: no such deployment.
    let mut flexible = azure_body("x");
    flexible["size"] = json!("1536x864");
    assert_eq!(
        h.azure("gpt-image-1-mini", "preview", flexible.clone())
            .await
            .status,
        400
    );
    assert_eq!(
        h.azure("anything", "preview", flexible.clone())
            .await
            .status,
        200
    );
    for retired in ["dall-e-3", "gpt-image-1"] {
        let a = h.azure(retired, "preview", azure_body("x")).await;
        assert_eq!(
            (a.status, &a.json["error"]["code"]),
            (404, &json!("DeploymentNotFound")),
            "{retired}"
        );
    }
    // gpt-image-1.5 leaves Azure on 2026-12-16.
    assert_eq!(
        h.azure("gpt-image-1.5", "preview", azure_body("x"))
            .await
            .status,
        200
    );
    h.emulator
        .set_today(chrono::NaiveDate::from_ymd_opt(2026, 12, 16));
    assert_eq!(
        h.azure("gpt-image-1.5", "preview", azure_body("x"))
            .await
            .status,
        404
    );

    let a = h
        .post(
            "/openai/deployments/d/images/generations?api-version=preview",
            &[("api-key", "")],
            azure_body("x"),
        )
        .await;
    assert_eq!((a.status, &a.json["error"]["code"]), (401, &json!("401")));
}

#[tokio::test]
async fn azure_deployment_entries_pick_the_model() {
    let h = start_azure(&[
        "images=gpt-image-1.5",
        "old=gpt-image-1",
        "plain",
        "typo=gpt-image-7",
    ])
    .await;
    let mut flexible = azure_body("x");
    flexible["size"] = json!("1536x864");
    let a = h.azure("images", "preview", flexible.clone()).await;
    assert_eq!(
        a.error().3,
        Some("size"),
        "gpt-image-1.5 has three sizes: {}",
        a.json
    );
    let mut transparent = azure_body("x");
    transparent["background"] = json!("transparent");
    transparent["output_format"] = json!("png");
    transparent
        .as_object_mut()
        .map(|o| o.remove("output_compression"));
    assert_eq!(
        h.azure("images", "preview", transparent.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        h.azure("plain", "preview", flexible).await.status,
        200,
        "gpt-image-2"
    );
    assert_eq!(h.azure("plain", "preview", transparent).await.status, 400);
    for missing in ["old", "typo", "unlisted"] {
        let a = h.azure(missing, "preview", azure_body("x")).await;
        assert_eq!(
            (a.status, &a.json["error"]["code"]),
            (404, &json!("DeploymentNotFound")),
            "{missing}"
        );
    }
}

#[tokio::test]
async fn azure_v1_path_takes_the_deployment_from_model() {
    let h = start_azure(&["images=gpt-image-1.5", "two=gpt-image-2"]).await;
    let mut body = azure_body("v1");
    body["model"] = json!("two");
    body["size"] = json!("1536x864");
    let v1 = |query: &str| format!("/openai/v1/images/generations{query}");
    let a = h.post(&v1(""), &[("api-key", "k")], body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["size"], "1536x864");
    assert!(a.json["data"][0]["content_filter_results"].is_object());
    let a = h
        .post(
            &v1("?api-version=preview"),
            &[("authorization", "Bearer token")],
            body.clone(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = h
        .post(
            &v1("?api-version=2025-04-01-preview"),
            &[("api-key", "k")],
            body.clone(),
        )
        .await;
    assert_eq!(
        (a.status, &a.json["error"]["code"]),
        (400, &json!("BadRequest"))
    );
    body["model"] = json!("images");
    assert_eq!(
        h.post(&v1(""), &[("api-key", "k")], body.clone())
            .await
            .error()
            .3,
        Some("size")
    );
    body["model"] = json!("nope");
    let a = h.post(&v1(""), &[("api-key", "k")], body.clone()).await;
    assert_eq!(
        (a.status, &a.json["error"]["code"]),
        (404, &json!("DeploymentNotFound"))
    );
    body.as_object_mut().map(|o| o.remove("model"));
    let a = h.post(&v1(""), &[("api-key", "k")], body).await;
    assert_eq!(a.error().3, Some("model"), "{}", a.json);
    let a = h
        .post(&v1(""), &[], json!({"model": "two", "prompt": "x"}))
        .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn azure_content_filter_and_knobs() {
    let h = start_azure(&[]).await;
    let a = h
        .azure("d", "preview", azure_body("emulator-moderate harbour"))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"]["code"], "content_policy_violation");
    assert_eq!(
        a.json["error"]["inner_error"]["code"],
        "ResponsibleAIPolicyViolation"
    );
    assert_eq!(
        a.json["error"]["inner_error"]["content_filter_results"]["violence"]["filtered"],
        true
    );
    let a = h
        .azure(
            "d",
            "preview",
            azure_body("emulator-moderate-output harbour"),
        )
        .await;
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The generated image was filtered")),
        "{}",
        a.json
    );
    h.config(json!({"azure": {"rate_limit_next": 1, "retry_after_s": 6}}))
        .await;
    let a = h.azure("d", "2025-04-01-preview", azure_body("x")).await;
    assert_eq!((a.status, &a.json["error"]["code"]), (429, &json!("429")));
    assert_eq!(header(&a.headers, "retry-after"), Some("6"));
    assert_eq!(header(&a.headers, "retry-after-ms"), Some("6000"));
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2025-04-01-preview"))
    );
    let (status, _, events) = h
        .stream(
            "/openai/deployments/d/images/generations?api-version=preview",
            &[("api-key", "k")],
            json!({"prompt": "stream", "stream": true, "partial_images": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].1["quality"], "high");
    let stats = h.get_json("/emulator/stats").await.1;
    assert_eq!(stats["azure"]["requests"], 4, "{stats}");
}

#[tokio::test]
async fn bfl_tasks_cost_credits_and_poll_to_a_picture() {
    let h = start(&[]).await;
    let a = h
        .bfl_submit("flux-2-pro", json!({"prompt": "a fjord", "seed": 5}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["cost"], 3.0);
    assert_eq!(a.json["output_mp"], 1.0);
    assert_eq!(a.json["input_mp"], 0.0);
    let id = a.json["id"].as_str().expect("id");
    let polling_url = a.json["polling_url"].as_str().expect("polling_url");
    assert_eq!(polling_url, format!("{}/bfl/v1/get_result?id={id}", h.base));
    let done = h.bfl_wait(polling_url).await;
    assert_eq!(done["status"], "Ready", "{done}");
    assert_eq!(done["result"]["seed"], 5);
    assert_eq!(done["result"]["prompt"], "a fjord");
    assert!(done["result"]["duration"].is_number());
    let sample = done["result"]["sample"].as_str().expect("sample");
    assert!(sample.contains(".jpg?se="), "jpeg by default: {sample}");
    let (status, headers, bytes) = h.fetch(sample).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/jpeg"));
    assert_eq!(picture::dimensions(&bytes), Some((1024, 1024)));

    let reference =
        base64::engine::general_purpose::STANDARD.encode(render_png("ref", 0, 1024, 1024));
    for (model, body, cost, output_mp, input_mp, size) in [
        (
            "flux-2-pro",
            json!({"width": 1440, "height": 1440}),
            4.5,
            1.98,
            0.0,
            (1440, 1440),
        ),
        (
            "flux-2-pro",
            json!({"width": 2048, "height": 2048, "input_image": reference, "input_image_8": "https://example.com/x.png"}),
            10.5,
            4.0,
            2.0,
            (2048, 2048),
        ),
        (
            "flux-2-flex",
            json!({"width": 1024, "height": 512}),
            5.0,
            0.5,
            0.0,
            (1024, 512),
        ),
        (
            "flux-2-klein-4b",
            json!({"width": 64, "height": 64}),
            1.4,
            0.0,
            0.0,
            (64, 64),
        ),
        ("flux-2-max", json!({}), 7.0, 1.0, 0.0, (1024, 1024)),
        (
            "flux-pro-1.1",
            json!({"width": 1440, "height": 960}),
            4.0,
            1.32,
            0.0,
            (1440, 960),
        ),
        ("flux-dev", json!({}), 2.5, 0.75, 0.0, (1024, 768)),
        (
            "flux-pro-1.1-ultra",
            json!({"aspect_ratio": "3:2"}),
            6.0,
            0.99,
            0.0,
            (1248, 832),
        ),
        ("flux-kontext-pro", json!({}), 4.0, 1.0, 0.0, (1024, 1024)),
        (
            "flux-kontext-max",
            json!({"aspect_ratio": "9:21", "input_image": "https://example.com/a.png"}),
            8.0,
            1.0,
            1.0,
            (672, 1568),
        ),
    ] {
        let mut body = body;
        body["prompt"] = json!("sizes");
        body["output_format"] = json!("png");
        let a = h.bfl_submit(model, body.clone()).await;
        assert_eq!(a.status, 200, "{model} {body}: {}", a.json);
        assert_eq!(
            (&a.json["cost"], &a.json["output_mp"], &a.json["input_mp"]),
            (&json!(cost), &json!(output_mp), &json!(input_mp)),
            "{model} {body}"
        );
        let done = h
            .bfl_wait(a.json["polling_url"].as_str().expect("url"))
            .await;
        let (_, _, bytes) = h
            .fetch(done["result"]["sample"].as_str().expect("sample"))
            .await;
        assert_eq!(png_dims(&bytes), size, "{model}");
    }
}

#[tokio::test]
async fn bfl_validates_like_fastapi() {
    let h = start(&[]).await;
    let loc = |a: &Answer| a.json["detail"][0]["loc"].clone();
    for (model, body, field) in [
        ("flux-2-pro", json!({"prompt": "x", "width": 1000}), "width"),
        ("flux-2-pro", json!({"prompt": "x", "height": 48}), "height"),
        (
            "flux-pro-1.1",
            json!({"prompt": "x", "width": 1536}),
            "width",
        ),
        ("flux-dev", json!({"prompt": "x", "height": 1000}), "height"),
        (
            "flux-pro-1.1-ultra",
            json!({"prompt": "x", "aspect_ratio": "3:1"}),
            "aspect_ratio",
        ),
        (
            "flux-kontext-pro",
            json!({"prompt": "x", "aspect_ratio": 1.5}),
            "aspect_ratio",
        ),
        ("flux-2-pro", json!({"width": 1024}), "prompt"),
        (
            "flux-2-pro",
            json!({"prompt": "x", "output_format": "webp"}),
            "output_format",
        ),
    ] {
        let a = h.bfl_submit(model, body.clone()).await;
        assert_eq!(a.status, 422, "{model} {body}: {}", a.json);
        assert_eq!(loc(&a), json!(["body", field]), "{model} {body}");
    }
    let a = h
        .bfl_submit(
            "flux-2-pro",
            json!({"prompt": "x", "width": 2560, "height": 2048}),
        )
        .await;
    assert_eq!(a.status, 422, "over 4 MP: {}", a.json);
    for gone in ["flux-schnell", "flux-2-dev", "flux-3"] {
        let a = h.bfl_submit(gone, json!({"prompt": "x"})).await;
        assert_eq!(
            (a.status, &a.json),
            (404, &json!({"detail": "Not Found"})),
            "{gone}"
        );
    }
    let a = h
        .post("/bfl/v1/flux-2-pro", &[], json!({"prompt": "x"}))
        .await;
    assert_eq!(
        (a.status, &a.json),
        (403, &json!({"detail": "Not authenticated"}))
    );

    for (prompt, status) in [
        ("emulator-moderate fjord", "Request Moderated"),
        ("emulator-moderate-output fjord", "Content Moderated"),
    ] {
        let a = h
            .bfl_submit("flux-2-klein-9b", json!({"prompt": prompt}))
            .await;
        assert_eq!(a.status, 200);
        let done = h
            .bfl_wait(a.json["polling_url"].as_str().expect("url"))
            .await;
        assert_eq!(done["status"], status, "{done}");
    }
    let body = h
        .bfl_wait(&format!("{}/bfl/v1/get_result?id=nope", h.base))
        .await;
    assert_eq!(body["status"], "Task not found");
    let (status, _) = h.get_json("/bfl/v1/get_result?id=nope").await;
    assert_eq!(status, 403, "polling needs the key too");
}

#[tokio::test]
async fn bfl_edits_take_the_endpoints_reference_images_and_draw_from_them() {
    let h = start(&[]).await;
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (one, two) = (
        b64(render_png("one", 0, 64, 64)),
        b64(render_png("two", 0, 64, 64)),
    );
    let mut samples = Vec::new();
    for body in [
        json!({"prompt": "a cat", "seed": 3, "output_format": "png"}),
        json!({"prompt": "a cat", "seed": 3, "output_format": "png", "input_image": one, "input_image_2": two}),
        json!({"prompt": "a cat", "seed": 3, "output_format": "png", "input_image": two, "input_image_2": one}),
        json!({"prompt": "a cat", "seed": 3, "output_format": "png", "input_image": one, "input_image_2": two}),
    ] {
        let a = h.bfl_submit("flux-kontext-pro", body.clone()).await;
        assert_eq!(a.status, 200, "{body}: {}", a.json);
        let done = h
            .bfl_wait(a.json["polling_url"].as_str().expect("url"))
            .await;
        assert_eq!(done["result"]["prompt"], "a cat");
        let (_, _, bytes) = h
            .fetch(done["result"]["sample"].as_str().expect("sample"))
            .await;
        samples.push(bytes);
    }
    assert_ne!(samples[0], samples[1], "an edit differs from a generation");
    assert_ne!(samples[1], samples[2], "other inputs, another picture");
    assert_eq!(samples[1], samples[3], "the same inputs, the same picture");

    for (model, body, field) in [
        (
            "flux-kontext-pro",
            json!({"input_image_5": one.clone()}),
            "input_image_5",
        ),
        (
            "flux-pro-1.1",
            json!({"input_image": one.clone()}),
            "input_image",
        ),
        (
            "flux-2-pro",
            json!({"input_image": b64(b"just text".to_vec())}),
            "input_image",
        ),
        (
            "flux-2-pro",
            json!({"input_image_3": "%%% not base64"}),
            "input_image_3",
        ),
    ] {
        let mut body = body;
        body["prompt"] = json!("edit");
        let a = h.bfl_submit(model, body.clone()).await;
        assert_eq!(a.status, 422, "{model} {body}: {}", a.json);
        assert_eq!(a.json["detail"][0]["loc"][1], field, "{}", a.json);
    }
    let a = h
        .bfl_submit(
            "flux-2-pro",
            json!({"prompt": "eight", "input_image_8": one}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
}
