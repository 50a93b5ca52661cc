//! Webhooks to clients (issue 17): signatures as Standard Webhooks specifies them. The destination checks that keep
//! deliveries away from private networks are in [`crate::net_guard`].

pub mod signature;

pub use signature::{
    DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SecretError, SignedHeaders,
    VerifyError, WebhookSecret, sign, signature_header, verify, verify_now,
};
