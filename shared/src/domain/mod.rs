//! Domain types: parsed once at the edge ("parse, don't validate") so deeper code never re-checks a prompt or size.

pub mod attempt;
pub mod edit;
pub mod ids;
pub mod job;
pub mod offer;
pub mod options;
pub mod prompt;
pub mod provider;
pub mod request;
pub mod resolve;
pub mod translate;

pub use attempt::AttemptRecord;
pub use edit::{EditParams, InputFidelity};
pub use ids::{BatchId, CorrelationId, ImageId, JobId, OwnerId};
pub use job::{FailureCode, JobStatus, Moderation, ModerationSource, ModerationStage};
pub use offer::{Offer, ProviderModels, today};
pub use options::{Background, ImageSize, ModerationLevel, OutputFormat, Quality, Size, Style};
pub use prompt::{MAX_PROMPT_CHARS, Prompt};
pub use provider::{ModelId, ProviderId, route_key};
pub use request::{FieldError, GenerateBody, GenerationRequest, ValidationErrors};
pub use resolve::{LifecycleNotice, ResolveError, Resolved, resolve};
