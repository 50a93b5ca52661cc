//! Why one attempt did not produce stored images, and what that means: retry, try another route, or end the job
//! (with which status, code and message, and how the attempt reads in the job's history).

use crate::providers::ProviderError;
use crate::store::StoreError;
use imagegen_shared::db::JobFailure;
use imagegen_shared::domain::{
    AttemptRecord, FailureCode, JobStatus, Moderation, ModerationSource,
};

/// Why one attempt did not produce stored images.
pub enum AttemptError {
    Provider(ProviderError),
    Store(StoreError),
}

impl AttemptError {
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Provider(e) => matches!(e, ProviderError::Retryable { .. }),
            AttemptError::Store(e) => e.retryable(),
        }
    }

    /// A provider's own verdict on our configuration (credentials, credits, deployment): another route may work.
    pub fn route_broken(&self) -> bool {
        matches!(
            self,
            AttemptError::Provider(ProviderError::Final {
                status: Some(401..=404),
                ..
            })
        )
    }

    pub fn describe(&self) -> String {
        match self {
            AttemptError::Provider(e) => e.to_string(),
            AttemptError::Store(e) => e.to_string(),
        }
    }

    /// The attempt as the job's history shows it; `attempt` is the job's attempt number.
    pub fn record(&self, route: &str, attempt: i32) -> AttemptRecord {
        let provider = match self {
            AttemptError::Provider(p) => Some(p),
            AttemptError::Store(_) => None,
        };
        AttemptRecord::Failed {
            route: route.to_owned(),
            attempt,
            error: self.describe(),
            status: provider.and_then(ProviderError::status),
            code: provider.and_then(|p| p.code().map(str::to_owned)),
        }
    }

    /// How the job ends if this was its last attempt; `exhausted`: attempts ran out rather than a final answer.
    pub fn failure(&self, exhausted: bool) -> JobFailure {
        let (status, code, message, moderation) = match self {
            AttemptError::Provider(ProviderError::ContentPolicy {
                stage,
                message,
                categories,
            }) => (
                JobStatus::Moderated,
                FailureCode::ContentPolicyViolation,
                message.clone(),
                Some(Moderation {
                    stage: *stage,
                    source: ModerationSource::Provider,
                    categories: categories.clone(),
                }),
            ),
            AttemptError::Store(StoreError::Storage(e)) => (
                JobStatus::Failed,
                FailureCode::StorageError,
                format!("Could not store the image: {e}"),
                None,
            ),
            other if exhausted => (
                JobStatus::Failed,
                FailureCode::ProviderError,
                format!(
                    "The provider kept failing; giving up after the last attempt: {}",
                    other.describe()
                ),
                None,
            ),
            other => (
                JobStatus::Failed,
                FailureCode::ProviderError,
                other.describe(),
                None,
            ),
        };
        JobFailure {
            status,
            code,
            message,
            moderation,
        }
    }
}
