//! The web playground's routes: served from the binary at `/` and `/ui` with their own content security policy
//! (scripts and styles from this origin only, nothing inline), open even with authentication on, and kept out of
//! the OpenAPI document. scripts/browser-check.sh drives the page itself in a real browser.

use crate::support::{Options, authentication_on, start};
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn the_page_and_its_assets_are_served_open_with_their_own_policy(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: authentication_on(),
            ..Options::default()
        },
    )
    .await;
    let get = |path: &str| stack.http.get(stack.url(path)).send();
    for (path, content_type, needle) in [
        (
            "/",
            "text/html",
            "<script src=\"/ui/app.js\" defer></script>",
        ),
        ("/ui", "text/html", "id=\"generate-form\""),
        ("/ui/", "text/html", "id=\"gallery\""),
        ("/ui/app.js", "text/javascript", "/api/v1/models"),
        ("/ui/app.css", "text/css", "prefers-color-scheme: dark"),
        ("/ui/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let r = get(path).await.expect("request");
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
            "{path}: {csp}"
        );
        assert!(
            !csp.contains("unsafe") && !csp.contains("sandbox"),
            "{path}: {csp}"
        );
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = r.text().await.expect("body");
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
    // The API keeps its own strict policy, and its credentials.
    let r = get("/api/v1/jobs").await.expect("request");
    assert_eq!(r.status(), 401);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert_eq!(csp, "default-src 'none'; frame-ancestors 'none'; sandbox");
    // Not operations of the API: the document (and so schemathesis) leaves them out.
    let doc: serde_json::Value = get("/openapi.json")
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.keys().all(|p| p != "/" && !p.starts_with("/ui")),
        "{:?}",
        paths.keys()
    );
}
