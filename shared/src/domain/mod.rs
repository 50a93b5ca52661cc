//! Domain types: parsed once at the edge ("parse, don't validate") so deeper code never re-checks a prompt or size.

pub mod catalogue;
pub mod ids;
pub mod job;
pub mod prompt;
pub mod request;

pub use catalogue::{CATALOGUE, ImageSize, ProviderId, ProviderSpec, Quality, Style};
pub use ids::{BatchId, ImageId, JobId};
pub use job::{JobStatus, Moderation, ModerationSource, ModerationStage};
pub use prompt::{MAX_PROMPT_CHARS, Prompt};
pub use request::{
    FieldError, GenerateBody, GenerationLimits, GenerationRequest, ValidationErrors,
};
