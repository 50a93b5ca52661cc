//! The OpenAPI 3.1 document, generated from the handlers' annotations and the view types.
//!
//! The caller's endpoints (everything under `/api/v1` but the provider and model lists) are given their security requirements
//! and their 401/403/429/503 answers here, in one place, rather than on each handler: a new owner route cannot
//! forget them. `document` fits the result to one deployment: with authentication off it requires no credentials
//! and lists no 401 (schemathesis's `ignored_auth` check holds a document to that), and it states the batch
//! size limit the service really has.

use crate::error::ErrorBody;
use crate::routes;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Header, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi};

/// `GET /openapi.json` and Swagger UI at `/docs` and `/docs/` (the same page, so `curl /docs` shows it rather than a
/// redirect; assets under `/docs/`, built into the binary, no CDN), describing this service: whether it asks for
/// credentials (ENABLE_AUTHENTICATION) and the batch size it accepts (BATCH_MAX_REQUESTS). The UI's online validator
/// is off (`validatorUrl: "none"`), so the page never calls out. Built here and handed to `routes::router`, so the
/// routes need not know the document.
pub fn docs_router<S: Clone + Send + Sync + 'static>(
    authentication: bool,
    batch_max: usize,
) -> axum::Router<S> {
    use axum::extract::Path;
    use axum::routing::get;
    use std::sync::Arc;

    let document = Arc::new(document(authentication, batch_max));
    let config = Arc::new(utoipa_swagger_ui::Config::new([OPENAPI_PATH]).validator_url("none"));
    let page = {
        let config = config.clone();
        move || {
            let config = config.clone();
            async move { docs_page(config) }
        }
    };
    axum::Router::new()
        .route(
            OPENAPI_PATH,
            get(move || {
                let document = document.clone();
                async move { axum::Json(document) }
            }),
        )
        .route("/docs", get(page.clone()))
        .route("/docs/", get(page))
        .route(
            "/docs/{*asset}",
            get(move |Path(asset): Path<String>| {
                let config = config.clone();
                async move { docs_asset(&asset, config) }
            }),
        )
}

/// Where the OpenAPI document is served.
const OPENAPI_PATH: &str = "/openapi.json";

/// Swagger UI's page. Its links are relative (`./swagger-ui.css`), which from `/docs` would point at the root, so
/// the page names its base.
fn docs_page(
    config: std::sync::Arc<utoipa_swagger_ui::Config<'static>>,
) -> axum::response::Response {
    use axum::response::{Html, IntoResponse};
    match utoipa_swagger_ui::serve("index.html", config) {
        Ok(Some(file)) => {
            let html = String::from_utf8_lossy(&file.bytes).replacen(
                "<head>",
                "<head>\n    <base href=\"/docs/\">",
                1,
            );
            Html(html).into_response()
        }
        Ok(None) => http::StatusCode::NOT_FOUND.into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// One of Swagger UI's files under `/docs/` (`swagger-initializer.js` carries the configuration).
fn docs_asset(
    asset: &str,
    config: std::sync::Arc<utoipa_swagger_ui::Config<'static>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    match utoipa_swagger_ui::serve(asset, config) {
        Ok(Some(file)) if file.gzpipped => (
            [
                (CONTENT_TYPE, file.content_type),
                (CONTENT_ENCODING, "gzip".to_owned()),
            ],
            file.bytes.into_owned(),
        )
            .into_response(),
        Ok(Some(file)) => {
            ([(CONTENT_TYPE, file.content_type)], file.bytes.into_owned()).into_response()
        }
        Ok(None) => http::StatusCode::NOT_FOUND.into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Names of the security schemes in `components.securitySchemes`.
pub const BEARER_SCHEME: &str = "bearer";
pub const API_KEY_SCHEME: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    info(title = "imagegen", description = "Image generation over the GPT image models (OpenAI, Azure OpenAI) and FLUX (Together, \
Black Forest Labs): submit, wait or poll, download. `GET /api/v1/models` lists the models, what each accepts and its \
lifecycle; a retired model is served by its replacement (recorded on the job, with `Deprecation`, `Sunset` and \
`Warning` headers) or refused with 410 `model_retired`.\n\n\
With authentication on (ENABLE_AUTHENTICATION), every `/api/v1` endpoint but the provider and model lists needs an API key \
(`imagegen keys create`), sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`; health, metrics and these \
docs stay open. Signed download links work without a key.",
         license(name = "Apache-2.0")),
    paths(
        routes::generate::generate, routes::edits::edit, routes::edits::edit_batch, routes::generate::generate_batch,
        routes::jobs::create_job, routes::jobs::get_job, routes::jobs::list_jobs, routes::jobs::cancel_job,
        routes::batches::get_batch, routes::events::job_events, routes::events::batch_events,
        routes::webhooks::create_endpoint, routes::webhooks::list_endpoints, routes::webhooks::delete_endpoint,
        routes::webhooks::rotate_endpoint, routes::webhooks::get_secret, routes::webhooks::rotate_secret,
        routes::webhooks::list_deliveries, routes::webhooks::replay_delivery,
        routes::images::get_image, routes::images::download_image, routes::images::delete_image,
        routes::providers::list_providers,
        routes::models::list_models,
        routes::health::health, routes::health::ready, routes::health::live,
        routes::metrics::render,
        routes::admin::create_key, routes::admin::list_keys, routes::admin::revoke_key,
        routes::usage::usage,
        routes::budgets::list_budgets, routes::budgets::set_budget, routes::budgets::delete_budget,
        routes::budgets::set_key_budget,
        crate::openai::images::generations, crate::openai::images::edits, crate::openai::models::list,
    ),
    components(schemas(ErrorBody, crate::routes::events::ProgressEventView)),
    modifiers(&OwnerSecurity),
    tags((name = "generation"), (name = "jobs"), (name = "images"), (name = "usage"), (name = "webhooks", description = "Signed webhooks (Standard Webhooks): endpoints, secrets, deliveries"), (name = "openai", description = "OpenAI-compatible: point an OpenAI SDK's base URL at `/v1`"), (name = "health"), (name = "admin"))
)]
pub struct ApiDoc;

/// The document one service serves: `authentication` is its ENABLE_AUTHENTICATION, `batch_max` its
/// BATCH_MAX_REQUESTS (the largest batch body it accepts).
pub fn document(authentication: bool, batch_max: usize) -> Document {
    let mut doc = ApiDoc::openapi();
    if !authentication {
        // Every caller is `anonymous`: no credentials are asked for, and none is refused (403 stays: anonymous is
        // no administrator).
        if let Some(components) = doc.components.as_mut() {
            components.security_schemes.clear();
            components.responses.remove("Unauthorized");
        }
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                op.security = None;
                op.responses.responses.remove("401");
            }
        }
    }
    if let Some(RefOr::T(body)) = doc
        .paths
        .paths
        .get_mut("/api/v1/generate/batch")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut())
    {
        for content in body.content.values_mut() {
            if let RefOr::T(content) = content
                && let Some(RefOr::T(Schema::Array(array))) = content.schema.as_mut()
            {
                array.min_items = Some(1);
                array.max_items = Some(batch_max);
            }
        }
    }
    doc
}

/// Whether `path` is one of the caller's endpoints (scoped to an owner, authenticated, rate limited).
/// Endpoints that need credentials (when authentication is on): the owner's, and the OpenAI-compatible ones (whose
/// error answers are documented in OpenAI's shape on the handlers themselves).
fn is_owner_route(path: &str) -> bool {
    (path.starts_with("/api/v1/") && !matches!(path, "/api/v1/providers" | "/api/v1/models"))
        || path.starts_with("/v1/")
}

struct OwnerSecurity;

impl Modify for OwnerSecurity {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key (igk_...) or JWT")
                    .description(Some(
                        "`Authorization: Bearer <credential>`: an API key (`imagegen keys create`) or an access \
                         token from Entra ID or the configured OIDC issuer",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The same API key, in the `X-API-Key` header",
            ))),
        );
        for (name, response) in [
            ("Unauthorized", unauthorized()),
            ("Forbidden", error_response("Authenticated, but not allowed to do this (`forbidden`)")),
            ("RateLimited", rate_limited()),
            (
                "Unavailable",
                error_response("The database, queue or storage is unavailable (`service_unavailable`); retry after `Retry-After`")
                    .header("Retry-After", integer_header("Seconds to wait before retrying")),
            ),
        ] {
            components
                .responses
                .insert(name.to_owned(), RefOr::T(response.build()));
        }

        for (path, item) in doc.paths.paths.iter_mut() {
            if !is_owner_route(path) {
                continue;
            }
            // A signed link (`?expires=&signature=`) downloads without credentials.
            let anonymous_allowed = path.ends_with("/download");
            for op in operations(item) {
                secure(op, anonymous_allowed);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Either scheme will do; `anonymous_allowed` adds the empty requirement (no credentials).
fn secure(op: &mut Operation, anonymous_allowed: bool) {
    let mut requirements = vec![
        SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()),
        SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
    ];
    if anonymous_allowed {
        requirements.push(SecurityRequirement::default());
    }
    op.security = Some(requirements);
    for (status, component) in [
        ("401", "Unauthorized"),
        ("403", "Forbidden"),
        ("429", "RateLimited"),
        ("503", "Unavailable"),
    ] {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(component)));
    }
}

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

fn unauthorized() -> ResponseBuilder {
    error_response(
        "No credentials (`authentication_required`), or a bad, revoked or expired key (`invalid_token`)",
    )
    .header(
        "WWW-Authenticate",
        Header::builder()
            .schema(Some(Object::with_type(Type::String)))
            .description(Some(r#"`Bearer realm="imagegen"`, with `error="invalid_token"` for a bad key"#))
            .build(),
    )
}

fn rate_limited() -> ResponseBuilder {
    error_response(
        "Over a per-owner limit (`rate_limited`): requests per minute, images per day or jobs in flight",
    )
    .header("Retry-After", integer_header("Seconds until the limit resets"))
    .header("RateLimit-Limit", integer_header("The limit"))
    .header("RateLimit-Remaining", integer_header("What is left of it"))
    .header("RateLimit-Reset", integer_header("Seconds until it resets"))
}

fn integer_header(description: &str) -> Header {
    Header::builder()
        .schema(Some(Object::with_type(Type::Integer)))
        .description(Some(description))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(router: &axum::Router, path: &str) -> (u16, String, String) {
        use tower::ServiceExt;
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("answer");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn docs_page_is_served_with_and_without_the_slash_and_never_calls_out() {
        let router: axum::Router = docs_router(false, 10);
        for path in ["/docs", "/docs/"] {
            let (status, content_type, html) = get(&router, path).await;
            assert_eq!(status, 200, "{path}");
            assert!(
                content_type.starts_with("text/html"),
                "{path}: {content_type}"
            );
            assert!(html.contains("swagger-ui"), "{path}: {html}");
            // From /docs, the page's relative links must still reach /docs/...
            assert!(html.contains(r#"<base href="/docs/">"#), "{path}: {html}");
        }
        let (status, _, js) = get(&router, "/docs/swagger-initializer.js").await;
        assert_eq!(status, 200);
        assert!(js.contains(r#""validatorUrl": "none""#), "{js}");
        assert!(js.contains(r#""url": "/openapi.json""#), "{js}");
        let (status, content_type, _) = get(&router, "/docs/swagger-ui.css").await;
        assert_eq!((status, content_type.as_str()), (200, "text/css"));
        assert_eq!(get(&router, "/docs/nope.js").await.0, 404);
        let (status, _, spec) = get(&router, "/openapi.json").await;
        assert_eq!(status, 200);
        let spec: serde_json::Value = serde_json::from_str(&spec).expect("json");
        assert!(spec["paths"].get("/api/v1/jobs").is_some());
    }

    #[test]
    fn owner_routes_need_credentials_and_document_auth_failures() {
        let doc = serde_json::to_value(document(true, 10)).expect("serialise");
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes[BEARER_SCHEME]["scheme"], "bearer");
        assert_eq!(schemes[API_KEY_SCHEME]["in"], "header");
        assert_eq!(schemes[API_KEY_SCHEME]["name"], "X-API-Key");
        let paths = doc["paths"].as_object().expect("paths");
        let mut owner_ops = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                let security = op.get("security");
                if is_owner_route(path) {
                    owner_ops += 1;
                    let security = security.and_then(|s| s.as_array()).expect("security");
                    assert!(security.len() >= 2, "{method} {path}: {security:?}");
                    for status in ["401", "403", "429", "503"] {
                        assert!(
                            op["responses"].get(status).is_some(),
                            "{method} {path} does not document {status}"
                        );
                    }
                } else {
                    assert!(security.is_none(), "{method} {path} must stay open");
                }
            }
        }
        assert_eq!(owner_ops, 33);
        let batch = &doc["paths"]["/api/v1/generate/batch"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            (batch["minItems"].as_u64(), batch["maxItems"].as_u64()),
            (Some(1), Some(10))
        );
    }

    #[test]
    fn without_authentication_nothing_asks_for_credentials() {
        let doc = serde_json::to_value(document(false, 10)).expect("serialise");
        assert!(
            doc["components"]
                .get("securitySchemes")
                .is_none_or(|s| s.as_object().is_some_and(|m| m.is_empty()))
        );
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                assert!(op.get("security").is_none(), "{method} {path}");
                assert!(op["responses"].get("401").is_none(), "{method} {path}");
            }
        }
        assert!(
            doc["paths"]["/api/v1/jobs"]["get"]["responses"]
                .get("429")
                .is_some()
        );
    }
}
