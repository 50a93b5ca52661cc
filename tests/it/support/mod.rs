//! End-to-end harness: starts the real `imagegen` binary as `emulator`, `api` and `worker` processes on free
//! loopback ports, against a fresh Postgres database (sqlx::test) and a unique Redis queue name, and drives them
//! over HTTP like a client. Set TEST_LOG=1 to see the processes' logs.

mod client;
mod edit_inputs;
mod options;
mod process;
pub mod receiver;
mod servers;
mod stack;

pub use client::{Reply, download, generate_body, png_size};
pub use edit_inputs::{filled_png, multipart, png, sha256_hex};
pub use options::{azure, azure_options, bfl, dalle3_and_flux, flux_options, storage_env};
pub use process::{BIN, Proc, free_port};
pub use servers::{PrivatePostgres, PrivateRedis};
pub use stack::{
    API_KEY, Options, Stack, authentication_on, database_url, kv, redis_url, start, start_on,
};

/// The suite runs twice (scripts/test.sh): api + worker processes on Postgres and Redis, then with
/// E2E_MODE=standalone, where one `imagegen standalone` process on SQLite and an in-process queue plays both roles.
/// Tests that need several processes or Redis itself live in the modules that run leaves out (`fleet`, `faults`,
/// `deploy`, `standalone`).
pub fn standalone() -> bool {
    std::env::var("E2E_MODE").is_ok_and(|m| m == "standalone")
}

/// Skips the rest of a test in standalone mode, saying why: a guard for a test that the standalone run's filter
/// should have left out.
macro_rules! not_standalone {
    ($why:expr) => {
        if $crate::support::standalone() {
            eprintln!("skipped in standalone mode: {}", $why);
            return;
        }
    };
}
pub(crate) use not_standalone;
