//! Signed webhooks (Standard Webhooks): the settings (`config`) and the dispatcher that sends the outbox's
//! deliveries (`dispatcher`). The endpoints that manage them are in `routes::webhooks`; the outbox itself is written
//! by the database (see `db::webhooks` and the `webhooks` migration), so every path that ends a job (worker, API
//! cancel, reconciler) queues its deliveries without knowing of them.

pub mod config;
pub mod dispatcher;

use crate::error::ApiError;
use imagegen_shared::domain::ValidationErrors;

/// Refuses an http webhook URL unless WEBHOOK_ALLOW_INSECURE (the address is checked again at delivery).
pub fn check_scheme(
    url: &str,
    settings: &config::WebhookSettings,
    field: &str,
) -> Result<(), ApiError> {
    if url.starts_with("https://") || (settings.policy.allow_insecure && url.starts_with("http://"))
    {
        return Ok(());
    }
    Err(ApiError::Validation(ValidationErrors::one(
        field,
        "must be an https URL (http only where the service sets WEBHOOK_ALLOW_INSECURE=true, for loopback)",
    )))
}
