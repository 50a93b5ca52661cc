//! `GET /openapi.json` and Swagger UI at `/docs`, its assets built into the binary (no CDN).

use crate::openapi::ApiDoc;
use crate::state::AppState;
use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub fn router() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
