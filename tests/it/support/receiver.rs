//! A webhook receiver on loopback, started by a test: a small HTTP/1.1 server on 127.0.0.1:0 that records every
//! request (path, headers, raw body) and every TCP connection, and answers by a script ("503 twice, then 200",
//! "410", "429 with Retry-After: 1", "200 after a second").

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Held this long before answering.
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The raw body, exactly as received.
    pub body: String,
    pub at: Instant,
    /// What the receiver answered it.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").expect("a webhook-id header")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// The headers as an HTTP header map (what a receiver's framework hands a verifier).
    pub fn header_map(&self) -> reqwest::header::HeaderMap {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in &self.headers {
            map.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                reqwest::header::HeaderValue::from_str(v).expect("header value"),
            );
        }
        map
    }
}

struct Shared {
    script: VecDeque<Answer>,
    default: Answer,
    received: Vec<Received>,
    connections: usize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers `200` to everything.
    pub async fn ok() -> Receiver {
        Self::start(Vec::new(), Answer::ok()).await
    }

    /// Answers by `script` (one answer per request, in order), then `default` to the rest.
    pub async fn start(script: Vec<Answer>, default: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Mutex::new(Shared {
            script: script.into(),
            default,
            received: Vec::new(),
            connections: 0,
        }));
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn({
            let shared = shared.clone();
            let notify = notify.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    shared.lock().expect("receiver lock").connections += 1;
                    tokio::spawn(serve(stream, shared.clone(), notify.clone()));
                }
            }
        });
        Receiver {
            addr,
            shared,
            notify,
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on: `answer` to every request (what was left of the script is dropped).
    pub fn answer(&self, answer: Answer) {
        let mut shared = self.shared.lock().expect("receiver lock");
        shared.script.clear();
        shared.default = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().expect("receiver lock").received.clone()
    }

    /// The requests to `path`.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// TCP connections accepted, whether or not a request came over them.
    pub fn connections(&self) -> usize {
        self.shared.lock().expect("receiver lock").connections
    }

    /// Waits until at least `n` requests matching `filter` arrived (panics after `within`); returns those.
    pub async fn wait_for(
        &self,
        n: usize,
        within: Duration,
        filter: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let got: Vec<Received> = self.received().into_iter().filter(&filter).collect();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let all = self.received();
                panic!(
                    "the receiver got {} of the {n} requests expected within {within:?}; all it got: {:#?}",
                    got.len(),
                    all.iter()
                        .map(|r| (&r.path, r.header("webhook-id"), r.answered, &r.body))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// Reads one request, records it, answers it and closes the connection.
async fn serve(mut stream: TcpStream, shared: Arc<Mutex<Shared>>, notify: Arc<Notify>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    let answer = {
        let mut shared = shared.lock().expect("receiver lock");
        let answer = shared
            .script
            .pop_front()
            .unwrap_or_else(|| shared.default.clone());
        shared.received.push(Received {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
            at: Instant::now(),
            answered: answer.status,
        });
        answer
    };
    notify.notify_waiters();
    tokio::time::sleep(answer.delay).await;
    let mut response = format!(
        "HTTP/1.1 {} Answer\r\ncontent-length: 2\r\ncontent-type: text/plain\r\nconnection: close\r\n",
        answer.status
    );
    for (k, v) in &answer.headers {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str("\r\nok");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
