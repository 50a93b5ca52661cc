//! The HTTP side of the client: one `reqwest` client with a timeout on every request, credentials in
//! `Authorization: Bearer`, and every failure sorted into an exit code.

use super::ClientArgs;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// The process's exit codes (documented in `cli` and the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Unexpected = 1,
    BadInput = 2,
    Auth = 3,
    JobFailed = 4,
    Network = 5,
    Limited = 6,
    Interrupted = 130,
}

/// Why a command stopped: its exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// The answer's `Retry-After` (429, 503), for callers that try again.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A request that never got an answer (or whose answer broke off).
    pub fn transport(url: &str, err: &reqwest::Error) -> Failure {
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "cannot connect"
        } else if err.is_decode() {
            return Failure::new(Exit::Unexpected, format!("{url}: unreadable answer: {err}"));
        } else {
            "request failed"
        };
        // reqwest's own text names the cause (refused, DNS, reset); its source chain holds the details.
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        Failure::new(Exit::Network, format!("{url}: {what}: {detail}"))
    }

    /// A non-2xx answer, from its status and the service's error body (`error`, `message`).
    pub fn answer(status: StatusCode, body: &Value) -> Failure {
        let code = body["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("http_{}", status.as_u16()));
        let mut message = body["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        if let Some(details) = body["details"].as_array() {
            let parts: Vec<String> = details
                .iter()
                .filter_map(|d| {
                    let m = d["message"].as_str()?;
                    Some(match d["field"].as_str() {
                        Some(f) => format!("{f}: {m}"),
                        None => m.to_owned(),
                    })
                })
                .collect();
            if !parts.is_empty() && !parts.iter().all(|p| message.contains(p.as_str())) {
                message = format!("{message} ({})", parts.join("; "));
            }
        }
        let exit = match status.as_u16() {
            401 | 403 => Exit::Auth,
            402 | 429 => Exit::Limited,
            502 => Exit::JobFailed,
            503 | 504 => Exit::Network,
            400..=499 => Exit::BadInput,
            _ => Exit::Unexpected,
        };
        let hint = match status.as_u16() {
            401 => "; set IMAGEGEN_API_KEY (or --api-key) to a valid key or token",
            _ => "",
        };
        Failure::new(exit, format!("{} {code}: {message}{hint}", status.as_u16()))
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    timeout: Duration,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client, Failure> {
        let base = args.server.trim().trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base)
            .map_err(|e| Failure::new(Exit::BadInput, format!("--server {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Failure::new(
                Exit::BadInput,
                format!("--server {base:?}: must be an http:// or https:// URL"),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(args.timeout()))
            .user_agent(concat!("imagegen-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(Exit::Unexpected, format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            key: args
                .api_key
                .as_deref()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
            timeout: args.timeout(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A request to `path` on the service (or to an absolute URL), with credentials; no timeout yet.
    pub fn request(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            self.url(path_or_url)
        };
        let mut request = self.http.request(method, url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        request
    }

    /// Sends `request`; a non-2xx answer is a `Failure` (with the service's code and message).
    pub async fn send(&self, what: &str, request: RequestBuilder) -> Result<Response, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| Failure::transport(what, &e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        let mut failure = Failure::answer(status, &body);
        failure.retry_after = retry_after;
        Err(failure)
    }

    /// A JSON answer, with the response headers.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, reqwest::header::HeaderMap), Failure> {
        let mut request = self
            .request(method, path)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(&self.url(path), request).await?;
        let headers = response.headers().clone();
        let value = response
            .json::<Value>()
            .await
            .map_err(|e| Failure::transport(&self.url(path), &e))?;
        Ok((value, headers))
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self.json(Method::GET, path, None).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_map_to_exit_codes() {
        let body = json!({"error": "invalid_token", "message": "The API key is not valid"});
        let f = Failure::answer(StatusCode::UNAUTHORIZED, &body);
        assert_eq!(f.exit, Exit::Auth);
        assert!(f.message.contains("invalid_token") && f.message.contains("IMAGEGEN_API_KEY"));
        let cases = [
            (400, Exit::BadInput),
            (403, Exit::Auth),
            (404, Exit::BadInput),
            (402, Exit::Limited),
            (429, Exit::Limited),
            (500, Exit::Unexpected),
            (502, Exit::JobFailed),
            (503, Exit::Network),
        ];
        for (status, exit) in cases {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(Failure::answer(status, &Value::Null).exit, exit, "{status}");
        }
    }

    #[test]
    fn validation_details_are_kept() {
        let body = json!({"error": "validation_failed", "message": "Invalid request",
                          "details": [{"field": "size", "message": "not offered"}]});
        let f = Failure::answer(StatusCode::BAD_REQUEST, &body);
        assert!(f.message.contains("size: not offered"), "{}", f.message);
    }
}
