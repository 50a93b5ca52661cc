//! Browser-facing protections: CORS from CORS_ORIGINS (exact origins; `*` only while authentication is off) and
//! standard security headers on every answer (the docs page keeps what Swagger UI needs).

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

#[derive(Debug, thiserror::Error)]
#[error("CORS_ORIGINS: {0}")]
pub struct CorsError(String);

/// The CORS layer for `origins` (comma-separated); `None` when no cross-origin access is wanted.
pub fn cors(origins: &str, authentication: bool) -> Result<Option<CorsLayer>, CorsError> {
    let list: Vec<&str> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    if list.is_empty() {
        return Ok(None);
    }
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-correlation-id"),
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("cancel-after"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::ETAG,
            HeaderName::from_static("x-correlation-id"),
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            // A request for a deprecated or retired model says so in these.
            header::WARNING,
            HeaderName::from_static("deprecation"),
            HeaderName::from_static("sunset"),
        ])
        .max_age(std::time::Duration::from_secs(600));
    if list == ["*"] {
        if authentication {
            return Err(CorsError(
                "`*` is refused while ENABLE_AUTHENTICATION is on; list the exact origins".into(),
            ));
        }
        return Ok(Some(base.allow_origin(AllowOrigin::any())));
    }
    let mut allowed = Vec::with_capacity(list.len());
    for origin in list {
        let parsed = url::Url::parse(origin)
            .map_err(|e| CorsError(format!("{origin:?} is not an origin: {e}")))?;
        let exact = parsed.origin().ascii_serialization();
        if !matches!(parsed.scheme(), "http" | "https") || exact != origin.trim_end_matches('/') {
            return Err(CorsError(format!(
                "{origin:?} is not an exact origin (scheme://host[:port], no path)"
            )));
        }
        allowed.push(
            HeaderValue::from_str(&exact).map_err(|e| CorsError(format!("{origin:?}: {e}")))?,
        );
    }
    Ok(Some(base.allow_origin(AllowOrigin::list(allowed))))
}

/// Security headers on every answer. The API serves JSON and images only, so nothing may run or frame it; the
/// Swagger UI page (/docs) is left to its own needs, and the playground (/, /ui) brings its own policy.
/// `docs`: the answer is for a /docs path. Called by `middleware::Envelope` on every answer.
pub fn add_headers(h: &mut HeaderMap, docs: bool) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !docs {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        // The playground's pages set their own (`ui::CONTENT_SECURITY_POLICY`); everything else gets this one.
        if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cors;

    #[test]
    fn origins_are_exact_and_star_needs_authentication_off() {
        assert!(cors("", true).expect("empty").is_none());
        assert!(
            cors("https://app.example.com, http://localhost:3000", true)
                .expect("ok")
                .is_some()
        );
        assert!(cors("*", false).expect("star").is_some());
        assert!(cors("*", true).is_err());
        assert!(cors("https://app.example.com/path", false).is_err());
        assert!(cors("app.example.com", false).is_err());
        assert!(cors("ftp://files.example.com", false).is_err());
    }
}
