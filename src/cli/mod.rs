//! The command-line client: `imagegen generate`, `imagegen jobs list|show|cancel`, `imagegen models` and
//! `imagegen usage` talk to a running service over its public API (`--server`, `IMAGEGEN_API_KEY`).
//!
//! Exit codes (`Exit`): 0 done; 1 anything unexpected (a 5xx from the service, an answer we cannot read, a file we
//! cannot write); 2 bad input (our arguments, or the service's 400/404/409/410/413/422); 3 authentication (401/403:
//! no key, a wrong one, or one that may not do this); 4 the job did not succeed (provider failure, content policy,
//! canceled; the service's 502); 5 network (cannot connect, a timeout, a broken connection, 503); 6 a limit (429
//! rate limit or quota, 402 budget); 130 interrupted (the job goes on).

mod client;
mod commands;
mod events;
mod generate;
mod progress;

use clap::{Args, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

/// Where the service is and how to talk to it (every client command).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The service's base URL.
    #[arg(
        long,
        env = "IMAGEGEN_SERVER",
        default_value = "http://localhost:8003",
        global = true
    )]
    pub server: String,
    /// An API key (`igk_...`) or bearer token; needed when the service has authentication on.
    #[arg(long, env = "IMAGEGEN_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Seconds each request may take (downloads: four times this).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub timeout: u64,
}

impl ClientArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// The client's subcommands, flattened into `imagegen`'s own.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Generate images on a running service, show its progress, and write the files (their paths on stdout).
    Generate(Box<GenerateArgs>),
    /// Your jobs on a running service: list, show, cancel.
    Jobs(Box<JobsArgs>),
    /// The models a running service offers and what each accepts.
    Models(Box<ModelsArgs>),
    /// Images, jobs and USD spent on a running service.
    Usage(Box<UsageArgs>),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// A model id (`imagegen models`); default: the service's default model.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// A provider (`openai`, `azure_openai`, `flux`, `bfl`).
    #[arg(long)]
    pub provider: Option<String>,
    /// WIDTHxHEIGHT (e.g. 1024x1024) or `auto`.
    #[arg(long, short = 's', value_parser = parse_size)]
    pub size: Option<String>,
    /// Quality (`low`, `medium`, `high`, `auto`, ...: the model's list).
    #[arg(long, short = 'q')]
    pub quality: Option<String>,
    /// How many images.
    #[arg(short = 'n', long = "num-images", value_parser = clap::value_parser!(u8).range(1..=10))]
    pub n: Option<u8>,
    /// A seed, for models that take one (the FLUX models).
    #[arg(long)]
    pub seed: Option<u32>,
    /// Background (`transparent`, `opaque`, `auto`; GPT image models).
    #[arg(long)]
    pub background: Option<String>,
    /// File format (`png`, `jpeg`, `webp`: the model's list).
    #[arg(long)]
    pub format: Option<String>,
    /// The folder to write the images to (made if missing).
    #[arg(long, short = 'o', default_value = ".")]
    pub output: std::path::PathBuf,
    /// Give up waiting after this many seconds (the job goes on; `imagegen jobs show` follows it up).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_wait: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub action: JobsAction,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum JobsAction {
    /// Your jobs, newest first.
    List {
        /// How many (1 to 100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=100))]
        limit: u16,
        /// The next page: the cursor a previous list printed.
        #[arg(long)]
        cursor: Option<String>,
        /// The service's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job with its images.
    Show {
        /// The job's id.
        id: String,
        /// The service's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id.
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Retired models too.
    #[arg(long)]
    pub all: bool,
    /// The service's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GroupBy {
    Day,
    Model,
    Provider,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Start (YYYY-MM-DD or RFC 3339); default: the first of this month.
    #[arg(long)]
    pub from: Option<String>,
    /// End, exclusive (YYYY-MM-DD or RFC 3339); default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// How to group.
    #[arg(long, value_enum, default_value = "day")]
    pub group_by: GroupBy,
    /// The service's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `WIDTHxHEIGHT` or `auto`.
fn parse_size(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "auto" {
        return Ok(s);
    }
    match s.split_once('x') {
        Some((w, h))
            if w.parse::<u32>().is_ok_and(|w| w > 0) && h.parse::<u32>().is_ok_and(|h| h > 0) =>
        {
            Ok(s)
        }
        _ => Err("expected WIDTHxHEIGHT (e.g. 1024x1024) or auto".into()),
    }
}

/// Runs a client command to its end; the process's exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Generate(args) => generate::run(*args).await,
        ClientCommand::Jobs(args) => commands::jobs(*args).await,
        ClientCommand::Models(args) => commands::models(*args).await,
        ClientCommand::Usage(args) => commands::usage(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("imagegen: {}", failure.message);
            ExitCode::from(failure.exit as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_are_width_by_height_or_auto() {
        assert_eq!(parse_size("1024X768").as_deref(), Ok("1024x768"));
        assert_eq!(parse_size("auto").as_deref(), Ok("auto"));
        for bad in ["1024", "0x10", "axb", "10x", "-5x5"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
