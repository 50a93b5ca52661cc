//! `imagegen` with no role (or `imagegen standalone`): the API and the workers in one process, on embedded
//! defaults so a fresh clone runs with no Postgres, no Redis and no API keys:
//! - no DATABASE_URL: a SQLite file (`./data/imagegen.db`), migrated at start;
//! - no REDIS_URL: an in-process queue, job events and provider limits;
//! - a provider without a key: the built-in emulator, started in process, answers its real client (sandbox).
//!
//! Given DATABASE_URL and REDIS_URL it uses them, exactly as `imagegen api` and `imagegen worker` would.

use anyhow::Context;
use clap::{Args, FromArgMatches};
use imagegen_api::ApiArgs;
use imagegen_emulator::Emulator;
use imagegen_shared::backends::Backends;
use imagegen_shared::config::{FluxProtocol, ProviderArgs};
use imagegen_shared::db;
use imagegen_shared::domain::ProviderId;
use imagegen_shared::queue::JobMessage;
use imagegen_shared::telemetry;
use imagegen_worker::WorkerArgs;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Where the embedded database lives when DATABASE_URL is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:./data/imagegen.db";
/// Unfinished jobs re-queued at start; any beyond are found by the reconciler's next passes.
const RESUME_LIMIT: i64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Api,
    Worker,
    Flags,
}

/// Reads `T` from the environment alone, with the standalone defaults: DATABASE_URL and REDIS_URL optional, and
/// the API on loopback unless API_HOST says otherwise (a laptop should not expose it).
fn from_env<T: Args + FromArgMatches>(mode: Mode) -> Result<T, clap::Error> {
    let mut command = T::augment_args(clap::Command::new("imagegen").no_binary_name(true));
    if mode != Mode::Flags {
        command = command
            .mut_arg("database_url", |a| {
                a.required(false).default_value(DEFAULT_DATABASE_URL)
            })
            .mut_arg("redis_url", |a| a.required(false).default_value(""));
    }
    if mode == Mode::Api {
        command = command.mut_arg("api_host", |a| a.default_value("127.0.0.1"));
    }
    let matches = command.try_get_matches_from(std::iter::empty::<String>())?;
    T::from_arg_matches(&matches)
}

/// What the standalone process runs.
pub struct Settings {
    pub api: ApiArgs,
    pub worker: WorkerArgs,
    /// STANDALONE_WORKER=false serves the API alone: jobs are recorded and wait for the next start with workers
    /// (for inspecting a database, or tests of queued jobs).
    pub run_worker: bool,
    /// SANDBOX=false leaves keyless providers unconfigured instead of answering them with the emulator.
    pub sandbox: bool,
}

/// Parses both roles' settings; a clap error is returned for the caller to print on one line.
pub fn parse() -> Result<Settings, clap::Error> {
    #[derive(clap::Parser)]
    struct Flags {
        /// Run the workers in this process (true) or only the API (false).
        #[arg(long, env = "STANDALONE_WORKER", value_name = "STANDALONE_WORKER", default_value_t = true,
              action = clap::ArgAction::Set)]
        standalone_worker: bool,
        /// Answer keyless providers with the built-in emulator (true) or leave them unconfigured (false).
        #[arg(long, env = "SANDBOX", value_name = "SANDBOX", default_value_t = true,
              action = clap::ArgAction::Set)]
        sandbox: bool,
    }
    let flags = from_env::<Flags>(Mode::Flags)?;
    let api = from_env::<ApiArgs>(Mode::Api)?;
    let mut worker = from_env::<WorkerArgs>(Mode::Worker)?;
    // One EDIT_* for both halves (each role parses it from the same variables): what the API accepts as a URL is
    // what the worker fetches.
    worker.edits = api.edits.clone();
    Ok(Settings {
        api,
        worker,
        run_worker: flags.standalone_worker,
        sandbox: flags.sandbox,
    })
}

/// Points every keyless provider at the emulator at `root` (`http://127.0.0.1:PORT`) and marks it as sandbox:
/// OpenAI (unless Azure OpenAI is configured: a real GPT image provider then serves those models), the FLUX host
/// and Black Forest Labs.
fn use_sandbox(
    providers: &mut ProviderArgs,
    root: &str,
    key: &str,
) -> anyhow::Result<Vec<ProviderId>> {
    let azure_configured = providers.azure_openai_endpoint.is_some();
    let flux_is_bfl =
        providers.flux_protocol == Some(FluxProtocol::Bfl) && !is_blank(&providers.flux_api_key);
    let v1: url::Url = format!("{root}/v1").parse().context("sandbox URL")?;
    let mut sandbox = Vec::new();
    if is_blank(&providers.openai_api_key) && !azure_configured {
        providers.openai_api_key = Some(key.into());
        providers.openai_base_url = v1.clone();
        sandbox.push(ProviderId::OpenAi);
    }
    if is_blank(&providers.flux_api_key) {
        providers.flux_api_key = Some(key.into());
        providers.flux_base_url = v1;
        providers.flux_protocol = Some(FluxProtocol::OpenAiCompatible);
        providers.flux_model = None;
        sandbox.push(ProviderId::Flux);
    }
    if is_blank(&providers.bfl_api_key) && !flux_is_bfl {
        providers.bfl_api_key = Some(key.into());
        providers.bfl_base_url = Some(format!("{root}/bfl/v1").parse().context("sandbox URL")?);
        sandbox.push(ProviderId::Bfl);
    }
    providers.sandbox = sandbox.clone();
    Ok(sandbox)
}

fn is_blank(value: &Option<secrecy::SecretString>) -> bool {
    use secrecy::ExposeSecret;
    value
        .as_ref()
        .is_none_or(|v| v.expose_secret().trim().is_empty())
}

/// Runs until `shutdown` resolves, then stops gracefully; `force` (a second signal) ends the workers' grace period
/// at once, their running jobs handed back to the queue.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    force: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Settings {
        mut api,
        mut worker,
        run_worker,
        sandbox,
    } = settings;
    let _logs = telemetry::init(&api.core.log_level)?;
    let stop = CancellationToken::new();

    // Sandbox providers: the emulator on a free loopback port, with a key only this process knows.
    let openai_keyless =
        is_blank(&api.providers.openai_api_key) && api.providers.azure_openai_endpoint.is_none();
    let needs_sandbox = sandbox
        && (openai_keyless
            || is_blank(&api.providers.flux_api_key)
            || is_blank(&api.providers.bfl_api_key));
    let mut emulator_task = None;
    if needs_sandbox {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("sandbox emulator: cannot listen on loopback")?;
        let addr = listener.local_addr().context("sandbox emulator address")?;
        let key = format!("sandbox-{}", uuid::Uuid::new_v4().simple());
        let emulator = Emulator::with_protocols(vec![key.clone()], Vec::new(), &[]);
        emulator_task = Some(tokio::spawn(imagegen_emulator::spawn_on(
            listener, emulator,
        )));
        let base = format!("http://{addr}");
        let sandbox = use_sandbox(&mut api.providers, &base, &key)?;
        use_sandbox(&mut worker.providers, &base, &key)?;
        let names: Vec<String> = sandbox.iter().map(ToString::to_string).collect();
        tracing::info!(
            providers = %names.join(","),
            emulator = %base,
            "sandbox: {} answered by the built-in emulator (deterministic pictures, no cost); set their API keys \
             to use the real services",
            names.join(" and ")
        );
    }

    let redis_url = Some(api.redis.redis_url.trim()).filter(|u| !u.is_empty());
    let backends = Backends::connect(
        &api.database.database_url,
        api.database.database_max_connections,
        redis_url,
        &api.redis.queue_name,
    )?;
    db::migrate(&backends.db)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: migration failed: {e}"))?;

    // Alone on its database with an in-process queue, this process is the whole fleet: whatever was unfinished
    // when it last stopped is its own and goes back on the queue now.
    if backends.is_fleet_of_one() && run_worker {
        let unfinished = db::reconcile::resume_after_restart(&backends.db, RESUME_LIMIT)
            .await
            .context("resuming unfinished jobs")?;
        if !unfinished.is_empty() {
            tracing::info!(
                jobs = unfinished.len(),
                "resuming jobs left unfinished at the last stop"
            );
        }
        for (job_id, correlation_id) in unfinished {
            backends
                .queue
                .push(JobMessage {
                    job_id,
                    correlation_id,
                })
                .await
                .context("queueing unfinished jobs")?;
        }
    }

    let addr = format!("{}:{}", api.api_host, api.api_port);
    let listener = imagegen_api::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("API_PORT: cannot listen on {addr}: {e}"))?;
    tracing::info!(
        url = %format!("http://{}", listener.local_addr().map(|a| a.to_string()).unwrap_or(addr)),
        stores = %backends.describe(),
        storage = %api
            .storage
            .settings()
            .map_err(|e| e.to_string())
            .and_then(|s| {
                imagegen_shared::storage::ImageStorage::from_settings(&s).map_err(|e| e.to_string())
            })
            .map_or_else(|e| e, |s| s.location().to_owned()),
        workers = run_worker,
        "standalone: API and workers in one process"
    );

    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    // One process, one metrics registry: the API's /metrics already shows the workers' figures; WORKER_METRICS_PORT
    // serves the same registry on its own port for scrapers configured for a worker.
    let _ = imagegen_api::state::metrics_handle();
    if let Some(port) = worker.worker_metrics_port.take() {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| anyhow::anyhow!("WORKER_METRICS_PORT: cannot listen on {port}: {e}"))?;
        tokio::spawn(imagegen_api::routes::metrics::serve_process_metrics(
            listener,
            stop.clone(),
        ));
    }

    // Checked before either half starts, so a bad worker setting does not leave the API up alone.
    let worker = if run_worker {
        Some(worker.settings()?)
    } else {
        None
    };

    // A second signal: the workers hand their running jobs back at once, and the API stops without draining.
    let forced = CancellationToken::new();
    {
        let forced = forced.clone();
        tokio::spawn(async move {
            force.await;
            forced.cancel();
        });
    }

    // Either half ending (an error, or the signal) stops the other.
    let api_task = async {
        let serve = imagegen_api::serve(
            api,
            backends.clone(),
            listener,
            stop.clone().cancelled_owned(),
        );
        let result = tokio::select! {
            result = serve => result,
            () = forced.cancelled() => Ok(()),
        };
        stop.cancel();
        result
    };
    let worker_task = async {
        let Some(worker) = worker else {
            tracing::info!(
                "STANDALONE_WORKER=false: no workers; jobs wait for the next start with workers"
            );
            return Ok(());
        };
        let result = imagegen_worker::consumer::run_with_forceable(
            worker,
            backends.clone(),
            stop.clone().cancelled_owned(),
            forced.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        result
    };
    let (api_result, worker_result) = tokio::join!(api_task, worker_task);
    if let Some(task) = emulator_task {
        task.abort();
    }
    api_result.and(worker_result)
}
