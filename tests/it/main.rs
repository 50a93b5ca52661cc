//! The integration tests, one binary: the real `imagegen` binary started as processes (emulator, api, worker, or one
//! standalone process) and driven over HTTP, one module per resource or concern. scripts/test.sh runs them all, then
//! again in standalone mode (E2E_MODE=standalone) without the modules that need the api and worker processes on
//! Postgres and Redis or do not use the stack at all: `fleet`, `auth_fleet`, `webhooks_fleet`, `faults`, `budgets`,
//! `shutdown`, `deploy` and `standalone`.

mod support;

mod auth;
mod auth_fleet;
mod auth_limits;
mod budgets;
mod cli;
mod costs;
mod deploy;
mod edit_failover;
mod edits;
mod events;
mod faults;
mod fleet;
mod generate;
mod health;
mod images;
mod jobs;
mod metrics;
mod models;
mod openai;
mod playground;
mod providers;
mod proxies;
mod sandbox;
mod shutdown;
mod standalone;
mod submissions;
mod webhooks;
mod webhooks_fleet;
