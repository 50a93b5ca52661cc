//! The worker fleet: takes job ids off the queue (`JobQueue::consume`), runs each job (see `job`), and stops
//! gracefully: on SIGTERM it takes no new jobs, lets running ones finish within a grace period, and gives back to
//! the queue whatever is still running when that period ends.
//!
//! Start it with `run(args.settings()?, shutdown)` (or `run_with` on stores shared with the API). Modules:
//! `config` (settings), `consumer` (the queue loop and the process lifecycle), `job` (one job, by step), `store`
//! (pictures into storage), `providers` and `routing` (who is called), `download`, `retry`, and the periodic
//! chores `reconciler` and `retention` (run by `imagegen_shared::ticker::every`).

pub mod config;
pub mod consumer;
pub mod download;
pub mod job;
pub mod picture_memory;
pub mod providers;
pub mod reconciler;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod store;

pub use config::{DownloadSettings, FleetArgs, ProviderLimits, WorkerArgs, WorkerSettings};
pub use consumer::{run, run_with};
