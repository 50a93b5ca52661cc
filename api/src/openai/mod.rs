//! The OpenAI-compatible surface: OpenAI's Images API paths, bodies, answers and errors on top of our pipeline, so
//! code written for an OpenAI SDK works by changing its base URL (`http://host:port/v1`) and key.

pub mod error;
pub mod images;
pub mod models;

use crate::state::AppState;
use axum::Router;
use axum::routing::{get, post};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/images/generations", post(images::generations))
        .route(
            "/v1/images/edits",
            post(images::edits).layer(axum::extract::DefaultBodyLimit::max(
                crate::routes::edits::body_limit(state),
            )),
        )
        .route("/v1/models", get(models::list))
}
