//! Following a job to its end: its event stream (`GET /api/v1/jobs/{id}/events`, server-sent events) first; when
//! the service has none (404) or the stream breaks, polling `GET /api/v1/jobs/{id}` (at most once a second, long-polled;
//! `Retry-After` honoured).

use super::client::{Client, Exit, Failure};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// The statuses a job ends in.
pub const TERMINAL: [&str; 4] = ["succeeded", "failed", "moderated", "canceled"];

/// No byte for this long (the service sends a heartbeat every 15 s) and the stream counts as broken.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// Polling: consecutive network failures tolerated before giving up.
const POLL_RETRIES: u32 = 5;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Parses a server-sent event stream fed in arbitrary chunks (lines end in `\n` or `\r\n`; `:` lines are comments).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    name: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(Event {
                        name: self.name.take().unwrap_or_else(|| "message".into()),
                        data: self.data.join("\n"),
                    });
                }
                self.name = None;
                self.data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

/// What happens to a job on its way to the end, for the progress display.
pub enum Update<'a> {
    /// `event: status` (or a polled state): `queued`, or `running` with its provider, route and attempt.
    Status(&'a Value),
    Retrying(&'a Value),
    Failover(&'a Value),
    PartialImage(&'a Value),
}

/// Follows job `id` until it ends; its final view (`GET /api/v1/jobs/{id}`'s shape).
pub async fn follow(
    client: &Client,
    id: &str,
    on_update: &mut dyn FnMut(Update<'_>),
) -> Result<Value, Failure> {
    if let Some(job) = stream(client, id, on_update).await? {
        return Ok(job);
    }
    poll(client, id, on_update).await
}

/// The job's event stream to its terminal event; `None` when there is no stream or it broke (then poll).
async fn stream(
    client: &Client,
    id: &str,
    on_update: &mut dyn FnMut(Update<'_>),
) -> Result<Option<Value>, Failure> {
    let path = format!("/api/v1/jobs/{id}/events");
    let request = client
        .request(Method::GET, &path)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    // The connection and the answer's head within the usual timeout; the body is watched for silence below.
    let response = match tokio::time::timeout(client.timeout(), request.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => return Ok(None),
    };
    match response.status() {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_ACCEPTABLE => {
            return Ok(None);
        }
        s if s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            return Err(Failure::answer(s, &body));
        }
        s if !s.is_success() => return Ok(None),
        _ => {}
    }
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return Ok(None);
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(STREAM_IDLE, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            // Ended without a terminal event, broke, or went silent: poll.
            Ok(None) | Ok(Some(Err(_))) | Err(_) => return Ok(None),
        };
        for event in parser.push(&chunk) {
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match event.name.as_str() {
                name if TERMINAL.contains(&name) && data.get("job_id").is_some() => {
                    return Ok(Some(data));
                }
                "status" => on_update(Update::Status(&data)),
                "retrying" => on_update(Update::Retrying(&data)),
                "failover" => on_update(Update::Failover(&data)),
                "partial_image" => on_update(Update::PartialImage(&data)),
                _ => {}
            }
        }
    }
}

/// Polls the job until it ends: at most once a second, each request held up to two seconds by the service
/// (`?wait=2`) so the end is seen at once; after a 429 or 503, as `Retry-After` says.
async fn poll(
    client: &Client,
    id: &str,
    on_update: &mut dyn FnMut(Update<'_>),
) -> Result<Value, Failure> {
    let hold = if client.timeout() > Duration::from_secs(4) {
        2
    } else {
        0
    };
    let path = format!("/api/v1/jobs/{id}?wait={hold}");
    let mut failures = 0;
    loop {
        let asked = tokio::time::Instant::now();
        let job = match client.json(Method::GET, &path, None).await {
            Ok((job, _)) => job,
            Err(f)
                if matches!(f.exit, Exit::Network | Exit::Limited) && failures < POLL_RETRIES =>
            {
                failures += 1;
                let pause = f.retry_after.unwrap_or(Duration::from_secs(2));
                tokio::time::sleep(pause.min(Duration::from_secs(60))).await;
                continue;
            }
            Err(f) => return Err(f),
        };
        failures = 0;
        let status = job["status"].as_str().unwrap_or_default();
        if TERMINAL.contains(&status) {
            return Ok(job);
        }
        on_update(Update::Status(&job));
        tokio::time::sleep_until(asked + Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_chunking() {
        let text = ": heartbeat\n\nid: 1\nevent: status\ndata: {\"status\":\"queued\"}\n\n\
                    id: 2\r\nevent: succeeded\r\ndata: {\"job_id\":\"x\"}\r\n\r\ndata: tail";
        for size in [1, 2, 5, 7, text.len()] {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                events.extend(parser.push(chunk));
            }
            assert_eq!(
                events,
                vec![
                    Event {
                        name: "status".into(),
                        data: "{\"status\":\"queued\"}".into()
                    },
                    Event {
                        name: "succeeded".into(),
                        data: "{\"job_id\":\"x\"}".into()
                    },
                ],
                "chunks of {size}"
            );
        }
    }
}
