//! A job's retry history: what happened on each route before the job ended, in order. The worker builds it while it
//! walks a job's routes and stores it in the job's `provider_meta` under `retries`; the API shows it as it is
//! (`provider_details.retries`), so the JSON shape is a contract: `{"route", "attempt", "error", "status", "code"}`
//! for a failed call (`status` and `code` null when unknown) and `{"route", "skipped"}` for a route passed over.

use serde::{Deserialize, Serialize};

/// One entry of a job's retry history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttemptRecord {
    /// A provider call that did not produce stored images.
    Failed {
        /// The route called, `provider:model`.
        route: String,
        /// The job's attempt number (over all routes), counting from 1.
        attempt: i32,
        /// What went wrong, as the job's error message would say it.
        error: String,
        /// The provider's HTTP status, when it answered.
        status: Option<u16>,
        /// The provider's error code, when it gave one.
        code: Option<String>,
    },
    /// A route not called: why (`circuit open`, the prompt is too long there, ...).
    Skipped { route: String, skipped: String },
}

impl AttemptRecord {
    pub fn skipped(route: impl Into<String>, why: impl Into<String>) -> Self {
        AttemptRecord::Skipped {
            route: route.into(),
            skipped: why.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AttemptRecord;
    use serde_json::json;

    #[test]
    fn stored_json_keeps_its_shape() {
        let failed = AttemptRecord::Failed {
            route: "openai:gpt-image-1".into(),
            attempt: 2,
            error: "boom".into(),
            status: None,
            code: Some("server_error".into()),
        };
        let skipped = AttemptRecord::skipped("bfl:flux-2-pro", "circuit open");
        let value = serde_json::to_value([&failed, &skipped]).expect("serialises");
        assert_eq!(
            value,
            json!([
                {"route": "openai:gpt-image-1", "attempt": 2, "error": "boom", "status": null, "code": "server_error"},
                {"route": "bfl:flux-2-pro", "skipped": "circuit open"},
            ])
        );
        let back: Vec<AttemptRecord> = serde_json::from_value(value).expect("reads back");
        assert_eq!(back, vec![failed, skipped]);
    }
}
