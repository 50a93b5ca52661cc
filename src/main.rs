//! `imagegen`: one binary, several roles. `api` and `worker` are deployed and scaled separately; `migrate` applies
//! the database schema; `emulator` serves faithful local copies of the providers' APIs for tests and sandboxes.
//! With no role (or `standalone`) it runs the API and the workers in one process on embedded defaults.
//! `generate`, `jobs`, `models` and `usage` are a command-line client of a running service (`cli`).

mod cli;
mod standalone;

use clap::{Args, Parser, Subcommand};
use imagegen_api::ApiArgs;
use imagegen_emulator::EmulatorArgs;
use imagegen_shared::config::{CoreArgs, DatabaseArgs};
use imagegen_shared::{db, telemetry};
use imagegen_worker::WorkerArgs;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every process (API, worker, emulator, standalone) allocates through jemalloc: see Cargo.toml for why.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "imagegen",
    version,
    about = "Image generation service: API, workers and provider emulator"
)]
struct Cli {
    /// Without a role: `standalone`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// API and workers in one process; SQLite, an in-process queue and sandbox providers unless DATABASE_URL,
    /// REDIS_URL and API keys say otherwise (the default).
    Standalone,
    /// Serve the HTTP API.
    Api(Box<ApiArgs>),
    /// Run a queue worker that calls the providers and stores images.
    Worker(Box<WorkerArgs>),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
    /// Serve the provider emulator (OpenAI Images API) on loopback.
    Emulator(EmulatorArgs),
    /// Exit 0 when URL answers 2xx within the timeout, else 1 (container health checks; the image has no curl).
    Healthcheck(HealthcheckArgs),
    /// Manage API keys (ENABLE_AUTHENTICATION): create (printed once), list, revoke.
    Keys(KeysArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
struct KeysArgs {
    #[command(flatten)]
    core: CoreArgs,
    /// The database the API uses; by default the standalone mode's SQLite file (./data/imagegen.db), as the service
    /// started without DATABASE_URL uses.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL",
          default_value = standalone::DEFAULT_DATABASE_URL)]
    database_url: String,
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Create a key for OWNER and print it (it cannot be shown again; only its hash is stored).
    Create {
        /// The principal the key acts as: every job it creates belongs to this owner.
        #[arg(long)]
        owner: String,
        /// A label to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// Days until the key stops working (default: never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires: Option<u32>,
    },
    /// List keys (prefix, owner, label, dates); never the keys themselves.
    List,
    /// Revoke a key by its id or its listed prefix.
    Revoke {
        /// The key's id, or the prefix `imagegen keys list` shows.
        key: String,
    },
}

#[derive(Args, Debug)]
struct HealthcheckArgs {
    /// What to ask.
    #[arg(
        long,
        env = "HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:8003/health/live"
    )]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, env = "HEALTHCHECK_TIMEOUT_SECS", default_value_t = 3)]
    timeout_secs: u64,
}

#[derive(Args, Debug)]
struct MigrateArgs {
    #[command(flatten)]
    core: CoreArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// After a second shutdown signal, how long the process waits for its running jobs to be handed back to the queue
/// before it exits anyway (their leases then expire and the reconciler re-queues them).
const FORCED_EXIT_AFTER: Duration = Duration::from_secs(5);

/// The shutdown signals, SIGTERM or Ctrl-C (SIGINT): the first begins a graceful shutdown (workers take no new
/// jobs and let running ones finish within their grace period), a second during it cuts it short (running jobs go
/// back to the queue now and the process exits).
struct Signals {
    first: CancellationToken,
    second: CancellationToken,
}

impl Signals {
    /// Listens from now on (the handlers are installed before this returns).
    fn listen() -> Signals {
        let signals = Signals {
            first: CancellationToken::new(),
            second: CancellationToken::new(),
        };
        let tokens = [signals.first.clone(), signals.second.clone()];
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).ok();
            let mut int = signal(SignalKind::interrupt()).ok();
            tokio::spawn(async move {
                for token in tokens {
                    tokio::select! {
                        () = next(&mut term) => {}
                        () = next(&mut int) => {}
                    }
                    token.cancel();
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            for token in tokens {
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                token.cancel();
            }
        });
        signals
    }

    /// Resolves on the first signal.
    fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        self.first.clone().cancelled_owned()
    }

    /// Resolves on the second signal.
    fn force(&self) -> impl Future<Output = ()> + Send + 'static {
        self.second.clone().cancelled_owned()
    }

    /// Runs `role` to its end, but no longer than FORCED_EXIT_AFTER past a second signal.
    async fn bounded(&self, role: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
        let forced = async {
            self.second.cancelled().await;
            tokio::time::sleep(FORCED_EXIT_AFTER).await;
        };
        tokio::select! {
            result = role => result,
            () = forced => anyhow::bail!(
                "still stopping {}s after the second shutdown signal; exiting anyway (jobs not handed back are \
                 re-queued when their leases expire)",
                FORCED_EXIT_AFTER.as_secs()
            ),
        }
    }
}

/// The next delivery of a signal; never, if its handler could not be installed.
#[cfg(unix)]
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(s) = signal
        && s.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// clap's errors span several lines; configuration errors must be one line naming the variable.
fn one_line(err: &clap::Error) -> String {
    err.render()
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("imagegen: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imagegen: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck(args)) = &cli.command {
        return healthcheck(args);
    }
    let command = match cli.command.unwrap_or(Command::Standalone) {
        Command::Client(command) => return runtime.block_on(cli::run(command)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "imagegen", &mut script);
            // A closed pipe is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
            return ExitCode::SUCCESS;
        }
        Command::Standalone => match standalone::parse() {
            Ok(args) => Role::Standalone(Box::new(args)),
            Err(e) => {
                eprintln!("imagegen: {}", one_line(&e));
                return ExitCode::from(2);
            }
        },
        other => Role::Other(other),
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("imagegen: error: {}", chain.join(": "));
            ExitCode::from(2)
        }
    }
}

/// One GET on a blocking client (no runtime needed); prints the failure on stderr for `docker inspect`.
fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let answer = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(args.timeout_secs.max(1)))
        .build()
        .and_then(|client| client.get(&args.url).send());
    match answer {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("imagegen healthcheck: {} answered {}", args.url, r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("imagegen healthcheck: {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}

/// `imagegen keys ...`: on the same database the API uses (migrated first, which is idempotent).
async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    use imagegen_shared::db::api_keys;
    let db = db::connect_lazy(&args.database_url, 2)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
    db::migrate(&db)
        .await
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    match args.action {
        KeysAction::Create {
            owner,
            name,
            expires,
        } => {
            let owner = owner.trim();
            anyhow::ensure!(
                !owner.is_empty() && owner.len() <= 256,
                "--owner: 1 to 256 characters"
            );
            let (key, _) = api_keys::generate();
            let record = api_keys::create(&db, owner, &name, &key, expires).await?;
            println!("{key}");
            eprintln!(
                "created key {} ({}) for owner {:?}{}; it is shown only this once",
                record.id,
                record.prefix,
                record.owner,
                record
                    .expires_at
                    .map(|t| format!(", expires {}", t.to_rfc3339()))
                    .unwrap_or_default()
            );
        }
        KeysAction::List => {
            println!("ID\tPREFIX\tOWNER\tNAME\tCREATED\tEXPIRES\tREVOKED");
            for k in api_keys::list(&db).await? {
                let date = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d").to_string())
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.prefix,
                    k.owner,
                    k.name,
                    k.created_at.format("%Y-%m-%d"),
                    date(k.expires_at),
                    date(k.revoked_at)
                );
            }
        }
        KeysAction::Revoke { key } => match api_keys::revoke(&db, key.trim()).await? {
            1 => eprintln!("revoked {key}"),
            _ => anyhow::bail!("no single active key has the id or prefix {key:?}"),
        },
    }
    Ok(())
}

/// A role with its settings read.
enum Role {
    Standalone(Box<standalone::Settings>),
    Other(Command),
}

async fn run(role: Role) -> anyhow::Result<()> {
    // Only the long-running roles take over SIGINT and SIGTERM: Ctrl-C still stops `migrate` and `keys` at once.
    let command = match role {
        Role::Standalone(args) => {
            let signals = Signals::listen();
            let run = standalone::run(*args, signals.shutdown(), signals.force());
            return signals.bounded(run).await;
        }
        Role::Other(command) => command,
    };
    match command {
        Command::Standalone
        | Command::Healthcheck(_)
        | Command::Client(_)
        | Command::Completions { .. } => {
            anyhow::bail!(
                "standalone, healthcheck and the client commands run before the runtime starts"
            )
        }
        Command::Api(args) => {
            let _logs = telemetry::init(&args.core.log_level)?;
            let addr = format!("{}:{}", args.api_host, args.api_port);
            let listener = imagegen_api::bind(&addr)
                .await
                .map_err(|e| anyhow::anyhow!("API_PORT: cannot listen on {addr}: {e}"))?;
            let signals = Signals::listen();
            let api = imagegen_api::run(*args, listener, signals.shutdown());
            // No jobs to hand back here: a second signal ends the shutdown delay and the open requests at once.
            tokio::select! {
                result = api => result,
                () = signals.second.cancelled() => {
                    tracing::warn!("second shutdown signal: exiting now, without waiting for open requests");
                    Ok(())
                }
            }
        }
        Command::Worker(args) => {
            let _logs = telemetry::init(&args.core.log_level)?;
            let signals = Signals::listen();
            let worker = imagegen_worker::consumer::run_forceable(
                args.settings()?,
                signals.shutdown(),
                signals.force(),
            );
            signals.bounded(worker).await
        }
        Command::Migrate(args) => {
            let _logs = telemetry::init(&args.core.log_level)?;
            let pool = db::connect_lazy(&args.database.database_url, 1)
                .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
            tracing::info!(database = pool.kind(), "applying migrations");
            db::migrate(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
            tracing::info!("database schema is up to date");
            Ok(())
        }
        Command::Keys(args) => {
            let _logs = telemetry::init(&args.core.log_level)?;
            keys(args).await
        }
        Command::Emulator(args) => {
            let _logs = telemetry::init("info")?;
            imagegen_emulator::run(args, Signals::listen().shutdown())
                .await
                .map_err(Into::into)
        }
    }
}
