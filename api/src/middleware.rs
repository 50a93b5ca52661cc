//! Per-request plumbing: the correlation id (taken from `X-Correlation-ID` when sane, else new) on the request, the
//! response header, every log line (a span) and every error body; the header-size limit; the security headers;
//! HTTP metrics by matched route.

use crate::error::{PendingError, code_for_status};
use crate::extract::CorrelationId;
use crate::layers::{Around, Inner};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::{BoxFuture, Either};
use std::time::Instant;
use tracing::Instrument;

pub const CORRELATION_HEADER: &str = "x-correlation-id";
const MAX_CORRELATION_LEN: usize = 128;

/// A client-sent id is kept only if it is short and made of safe characters (it ends up in logs and headers).
fn sane_correlation_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_CORRELATION_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Every request's outer layer (`AroundLayer(Envelope)`): the security headers around the correlation id around the
/// header-size limit. A hand-written layer, as `crate::layers` says why.
#[derive(Clone, Copy, Default)]
pub struct Envelope;

impl Around for Envelope {
    fn around<S: Inner>(&self, mut req: Request, inner: S) -> BoxFuture<'static, Response> {
        detach_header_values(req.headers_mut());
        let docs = req.uri().path().starts_with("/docs");
        let id = req
            .headers()
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| sane_correlation_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        req.extensions_mut().insert(CorrelationId(id.clone()));
        let span = tracing::info_span!("request", correlation_id = %id, method = %req.method(), path = %req.uri().path());
        let openai = crate::openai::error::is_openai_path(req.uri().path());
        let started = Instant::now();
        let answer = match span.in_scope(|| header_limit(&req)) {
            Some(refusal) => Either::Left(std::future::ready(refusal)),
            None => Either::Right(crate::layers::call(inner, req).instrument(span.clone())),
        };
        // A combinator, not an async block: the block would keep its captured future's slot beside the one it
        // awaits, twice the inner future for the whole request.
        Box::pin(answer.map(move |response| {
            let mut response = finish_errors(response, &id, openai);
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(CORRELATION_HEADER, value);
            }
            crate::security::add_headers(response.headers_mut(), docs);
            span.in_scope(|| {
                tracing::info!(
                    status = response.status().as_u16(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "request"
                )
            });
            response
        }))
    }
}

/// Gives each header value its own few bytes instead of a slice of hyper's 8 KiB read buffer. A handler that waits
/// (wait mode, event streams) keeps its headers, and a slice would keep that whole buffer alive beside the one hyper
/// reads the connection into next: 8 KiB per waiting request, most of it during a burst of submissions. The body and
/// URI, the buffer's other users, are gone once the handler's extractors have run.
fn detach_header_values(headers: &mut axum::http::HeaderMap) {
    for value in headers.values_mut() {
        let sensitive = value.is_sensitive();
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(sensitive);
            *value = copy;
        }
    }
}

/// Gives every error response the seed's shape with the correlation id, whoever produced it (on the
/// OpenAI-compatible `/v1` paths, OpenAI's shape instead; the correlation id is in the header there).
fn finish_errors(response: Response, correlation_id: &str, openai: bool) -> Response {
    let status = response.status();
    if let Some(pending) = response.extensions().get::<PendingError>().cloned() {
        return rerender(response, pending, correlation_id, openai);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let pending = PendingError {
            code: code_for_status(status).to_owned(),
            message: status.canonical_reason().unwrap_or("Error").to_owned(),
            details: Vec::new(),
            job_id: None,
            budget: None,
        };
        return rerender(response, pending, correlation_id, openai);
    }
    response
}

/// Replaces an error response's body with ours, keeping its status and headers (Retry-After, Allow, ...).
fn rerender(
    response: Response,
    pending: PendingError,
    correlation_id: &str,
    openai: bool,
) -> Response {
    let (parts, _body) = response.into_parts();
    let mut rendered = if openai {
        crate::openai::error::render(parts.status, &pending)
    } else {
        pending.render(parts.status, correlation_id)
    };
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}

/// HTTP metrics by matched route (`AroundLayer(HttpMetrics)`); installed as a route layer so the matched path (not
/// the raw URL) is the label.
#[derive(Clone, Copy, Default)]
pub struct HttpMetrics;

impl Around for HttpMetrics {
    fn around<S: Inner>(&self, req: Request, inner: S) -> BoxFuture<'static, Response> {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".into());
        let method = req.method().to_string();
        let started = Instant::now();
        Box::pin(crate::layers::call(inner, req).map(move |response| {
            let status = response.status().as_u16().to_string();
            metrics::counter!("imagegen_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
                .increment(1);
            metrics::histogram!("imagegen_http_request_duration_seconds", "method" => method, "route" => route)
                .record(started.elapsed().as_secs_f64());
            response
        }))
    }
}

/// Largest header section we accept (names, values and separators). Entra tokens with many claims are a few KB;
/// beyond this a request is refused with 431 in our error shape before any handler (or credential check) runs.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The refusal (431) of a request whose header section is over MAX_HEADER_BYTES.
fn header_limit(req: &Request) -> Option<Response> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        tracing::info!(
            header_bytes = size,
            "request refused: header section too large"
        );
        return Some(crate::error::ApiError::HeadersTooLarge(MAX_HEADER_BYTES).into_response());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_must_be_sane() {
        assert!(sane_correlation_id("abc123-def456-ghi789"));
        assert!(sane_correlation_id("req_01:a.b"));
        assert!(!sane_correlation_id(""));
        assert!(!sane_correlation_id("has space"));
        assert!(!sane_correlation_id("new\nline"));
        assert!(!sane_correlation_id(&"a".repeat(129)));
    }
}
