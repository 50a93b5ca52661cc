//! How handling one queue message ends: what the queue consumer reads to acknowledge a message or have it delivered
//! again. Every step of a job returns these, so they sit apart from the steps.

use imagegen_shared::db::{DbError, Succeeded};
use imagegen_shared::domain::{JobId, JobStatus};

/// How handling one queue message ended.
#[derive(Debug)]
pub enum Outcome {
    /// This worker recorded the job's success: what it wrote, the answer its waiters are sent.
    Succeeded(Box<Succeeded>),
    /// This worker took the job to another terminal state (failed, moderated, canceled).
    Finished(JobStatus),
    /// Nothing to do: the job is already finished, gone, or was taken over by another worker.
    NotOurs,
    /// Its route was saturated or paused: the job went back to the queue, due again after a delay.
    Deferred,
}

impl Outcome {
    /// The same outcome without what a success wrote (that goes to the job's waiters).
    pub fn summary(&self) -> Outcome {
        match self {
            Outcome::Succeeded(_) => Outcome::Finished(JobStatus::Succeeded),
            Outcome::Finished(status) => Outcome::Finished(*status),
            Outcome::NotOurs => Outcome::NotOurs,
            Outcome::Deferred => Outcome::Deferred,
        }
    }
}

/// Why a message could not be handled now; each comes back later.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Postgres trouble: the message should come back later.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Another worker holds a live lease; look again once it could have expired.
    #[error("job {0} is held by another worker")]
    Busy(JobId),
    /// An edit's stored inputs could not be read now; the message comes back.
    #[error("job {0}: {1}")]
    Inputs(JobId, String),
    /// The worker is shutting down and gave the job back to the queue.
    #[error("job {0} released at shutdown")]
    Released(JobId),
}
