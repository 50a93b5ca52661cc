//! Talking to a stack as a client does: requests and their replies in the seed's shape, polling jobs to the end,
//! downloads, the emulator's knobs and counters.

use std::time::Duration;

use super::Stack;

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// The API's `/metrics` exposition as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn emulator_config(&self, openai: serde_json::Value) {
        self.emulator_config_for("openai", openai).await;
    }

    pub async fn emulator_config_for(&self, protocol: &str, knobs: serde_json::Value) {
        let r = self
            .http
            .put(format!("{}/emulator/config", self.emulator))
            .json(&serde_json::json!({ protocol: knobs }))
            .send()
            .await
            .expect("emulator config");
        assert!(r.status().is_success(), "emulator config: {}", r.status());
    }

    pub async fn emulator_stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/emulator/stats", self.emulator))
            .send()
            .await
            .expect("emulator stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Waits (bounded) until the emulator has a call of `protocol` in flight.
    pub async fn until_provider_busy(&self, protocol: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.emulator_stats().await[protocol]["in_flight"] != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {protocol} call started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn emulator_requests(&self) -> u64 {
        self.emulator_stats().await["openai"]["requests"]
            .as_u64()
            .expect("requests count")
    }

    /// POST JSON with optional extra headers; returns status, headers and JSON body (Null if not JSON).
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.post(self.url(path)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.http.get(self.url(path)).send().await.expect("request")).await
    }

    /// Polls a job (with long-polls, not sleeps) until it is terminal.
    pub async fn wait_terminal(&self, job_id: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/api/v1/jobs/{job_id}?wait=10")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let status = r.body["status"].as_str().unwrap_or_default().to_owned();
            if !["queued", "running"].contains(&status.as_str()) {
                return r.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job_id} never finished: {}",
                r.body
            );
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the seed's error shape, and that the body's correlation id is the one in the header.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status, body: {}",
            self.body
        );
        assert_eq!(self.body["success"], false, "{}", self.body);
        assert_eq!(self.body["error"], code, "{}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        let corr = self.body["correlation_id"]
            .as_str()
            .expect("correlation_id in error body");
        assert_eq!(Some(corr), self.header("x-correlation-id"), "{}", self.body);
    }
}

/// Decodes a PNG and returns its dimensions.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a valid PNG");
    let info = reader.info();
    (info.width, info.height)
}

/// GET `url` (an image link the API handed out): status, headers and the bytes, whatever the status.
pub async fn download(stack: &Stack, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = stack.http.get(url).send().await.expect("download");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.expect("bytes").to_vec())
}

pub fn generate_body(prompt: &str) -> serde_json::Value {
    serde_json::json!({ "prompt": prompt, "provider": "dalle3", "size": "1024x1024", "quality": "hd", "style": "vivid" })
}
