//! Everything the API and the worker fleet share: domain types, configuration, the job store (Postgres), the queue
//! and job events (Redis), image storage (object_store) and the provider catalogue.

pub mod backends;
pub mod catalogue;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod limits;
pub mod queue;
pub mod storage;
pub mod telemetry;

/// Every process answers to the same owner until authentication lands; all reads are already scoped by it.
pub const ANONYMOUS_OWNER: &str = "anonymous";
