//! `GET /openapi.json` and Swagger UI at `/docs`, its assets built into the binary (no CDN).

use crate::openapi;
use crate::state::AppState;
use axum::Router;
use utoipa_swagger_ui::SwaggerUi;

/// The document describes this service: whether it asks for credentials (ENABLE_AUTHENTICATION) and the batch
/// size it accepts (BATCH_MAX_REQUESTS).
pub fn router(authentication: bool, batch_max: usize) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url(
        "/openapi.json",
        openapi::document(authentication, batch_max),
    ))
}
