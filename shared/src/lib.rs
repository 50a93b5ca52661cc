//! Everything the API and the worker fleet share: domain types, configuration, the job store (Postgres), the queue
//! with its job events (Redis, or in process), image storage (object_store), the provider catalogue and the tick
//! loop of periodic chores.

pub mod backends;
pub mod budget;
pub mod catalogue;
pub mod config;
pub mod cost;
pub mod db;
pub mod domain;
pub mod edit_inputs;
pub mod gather;
pub mod limits;
pub mod net_guard;
pub mod queue;
pub mod storage;
pub mod telemetry;
pub mod ticker;
pub mod webhooks;

/// Every process answers to the same owner until authentication lands; all reads are already scoped by it.
pub const ANONYMOUS_OWNER: &str = "anonymous";
