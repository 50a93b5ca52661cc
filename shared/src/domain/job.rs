//! A job's lifecycle: `queued -> running -> succeeded | failed | moderated | canceled`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "job_status", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Moderated,
    Canceled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Moderated => "moderated",
            JobStatus::Canceled => "canceled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job ended without images: the job's `error_code`. Stored as text; a code this version does not know (a
/// row written by a newer one) reads as `Unknown` and is shown as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum FailureCode {
    /// Our keyword filter refused the prompt; the job never reached a provider.
    ContentBlocked,
    /// The provider's safety system refused, on the prompt or the picture.
    ContentPolicyViolation,
    /// The provider refused the request or our credentials, or kept failing.
    ProviderError,
    /// No worker can reach a provider that serves the job's model.
    ProviderNotConfigured,
    /// The pictures could not be stored.
    StorageError,
    /// An edit's input cannot be used: a URL refused or not serving an image, too large, too many pixels, a mask
    /// of the wrong size, or a stored input missing or damaged. Final: no provider is called.
    InvalidInput,
    /// The job's deadline passed before it started.
    DeadlineExceeded,
    /// The client canceled it.
    Canceled,
    Unknown(String),
}

impl FailureCode {
    const KNOWN: [FailureCode; 8] = [
        FailureCode::ContentBlocked,
        FailureCode::ContentPolicyViolation,
        FailureCode::ProviderError,
        FailureCode::ProviderNotConfigured,
        FailureCode::StorageError,
        FailureCode::InvalidInput,
        FailureCode::DeadlineExceeded,
        FailureCode::Canceled,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            FailureCode::ContentBlocked => "content_blocked",
            FailureCode::ContentPolicyViolation => "content_policy_violation",
            FailureCode::ProviderError => "provider_error",
            FailureCode::ProviderNotConfigured => "provider_not_configured",
            FailureCode::StorageError => "storage_error",
            FailureCode::InvalidInput => "invalid_input",
            FailureCode::DeadlineExceeded => "deadline_exceeded",
            FailureCode::Canceled => "canceled",
            FailureCode::Unknown(code) => code,
        }
    }

    pub fn parse(code: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|k| k.as_str() == code)
            .cloned()
            .unwrap_or_else(|| FailureCode::Unknown(code.to_owned()))
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for FailureCode {
    fn from(code: String) -> Self {
        FailureCode::parse(&code)
    }
}

impl From<FailureCode> for String {
    fn from(code: FailureCode) -> Self {
        code.as_str().to_owned()
    }
}

impl sqlx::Type<sqlx::Postgres> for FailureCode {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Type<sqlx::Sqlite> for FailureCode {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for FailureCode
where
    String: sqlx::Decode<'r, DB>,
{
    fn decode(
        value: <DB as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(FailureCode::parse(&String::decode(value)?))
    }
}

impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for FailureCode
where
    String: sqlx::Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        self.as_str().to_owned().encode_by_ref(buf)
    }
}

/// Where a moderation decision was made: on the prompt, or on the generated picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModerationStage {
    Input,
    Output,
}

/// Who made it: our keyword filter, or the provider's safety system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModerationSource {
    Keyword,
    Provider,
}

/// Stored on a `moderated` job (jsonb). Never holds the blocked word itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Moderation {
    pub stage: ModerationStage,
    pub source: ModerationSource,
    /// The provider's own category results, when it gave any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub categories: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queued_and_running_are_unfinished() {
        use JobStatus::*;
        for s in [Succeeded, Failed, Moderated, Canceled] {
            assert!(s.is_terminal(), "{s}");
        }
        assert!(!Queued.is_terminal() && !Running.is_terminal());
    }

    #[test]
    fn failure_codes_round_trip_as_text_and_keep_unknown_ones() {
        for code in FailureCode::KNOWN {
            assert_eq!(FailureCode::parse(code.as_str()), code);
        }
        let newer = FailureCode::parse("budget_exceeded");
        assert_eq!(newer, FailureCode::Unknown("budget_exceeded".into()));
        assert_eq!(newer.to_string(), "budget_exceeded");
    }
}
