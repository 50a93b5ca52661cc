//! Webhooks to clients: signatures as Standard Webhooks specifies them (`signature`), the event types and a
//! request's own webhook (`target`). The destination checks that keep
//! deliveries away from private networks are in [`crate::net_guard`].

pub mod signature;
pub mod target;

pub use signature::{
    DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SecretError, SignedHeaders,
    VerifyError, WebhookSecret, sign, signature_header, verify, verify_now,
};
