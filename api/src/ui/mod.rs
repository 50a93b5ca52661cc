//! The web playground at `/` (and `/ui`): one HTML page, its script and its stylesheet, compiled into the binary
//! (no external assets, no CDN, no build step). It uses the public API only, from the browser, with the caller's
//! key or token; these routes are open, take no credentials and are not part of the OpenAPI document.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const ICON_SVG: &str = include_str!("icon.svg");

/// The playground's own policy (the API's everywhere else is `default-src 'none'; sandbox`): scripts, styles and
/// calls to this origin only; images also from `data:` (partial pictures streamed as base64), `blob:` and any
/// http(s) origin, since download links may point at PUBLIC_BASE_URL or a storage's pre-signed URL.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob: http: https:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/icon.svg", get(icon))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/ui/icon.svg") }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files, revalidated each time: a new binary's page never runs an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON_SVG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for needle in ["<script src=\"/ui/app.js\"", "href=\"/ui/app.css\""] {
            assert!(INDEX_HTML.contains(needle), "{needle}");
        }
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(
                !text.contains("//cdn") && !text.contains("googleapis"),
                "external asset"
            );
        }
        // Inline scripts and style attributes would be refused by the policy.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains(" style=\""));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
