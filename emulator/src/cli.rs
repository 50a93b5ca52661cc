//! `imagegen emulator` flags; each also reads an `EMULATOR_*` variable. They set the accepted keys, the Azure
//! deployments (`name` or `name=model`), the date models are served on, and the knobs' starting values, which
//! `POST /emulator/reset` returns to.

use crate::knobs::Knobs;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on (keep it on loopback).
    #[arg(
        long,
        env = "EMULATOR_HOST",
        value_name = "EMULATOR_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: String,
    /// Port to listen on (0 picks a free one; the chosen address is logged).
    #[arg(
        long,
        env = "EMULATOR_PORT",
        value_name = "EMULATOR_PORT",
        default_value_t = 8090
    )]
    pub port: u16,
    /// An accepted API key (repeatable). With none, any non-empty key passes.
    #[arg(
        long = "api-key",
        env = "EMULATOR_API_KEYS",
        value_name = "EMULATOR_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// An Azure deployment it serves, `name` or `name=model` (repeatable). A bare name serves the model it is named
    /// after, else gpt-image-2. With none, any name is served that way.
    #[arg(
        long = "azure-deployment",
        env = "EMULATOR_AZURE_DEPLOYMENTS",
        value_name = "NAME[=MODEL]",
        value_delimiter = ','
    )]
    pub azure_deployments: Vec<String>,
    /// The date models' retirement is compared with (YYYY-MM-DD); today's (UTC) by default.
    #[arg(long, env = "EMULATOR_TODAY", value_name = "YYYY-MM-DD")]
    pub today: Option<chrono::NaiveDate>,
    /// The knobs below are the starting values of every protocol.
    #[arg(long, env = "EMULATOR_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    #[arg(long, env = "EMULATOR_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    #[arg(long, env = "EMULATOR_ERROR_STATUS", default_value_t = 500)]
    pub error_status: u16,
    #[arg(long, env = "EMULATOR_RATE_LIMIT_RATE", default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    #[arg(long, env = "EMULATOR_RETRY_AFTER_S", default_value_t = 1)]
    pub retry_after_s: u64,
    #[arg(long, env = "EMULATOR_HANG_RATE", default_value_t = 0.0)]
    pub hang_rate: f64,
    #[arg(long, env = "EMULATOR_MODERATION_RATE", default_value_t = 0.0)]
    pub moderation_rate: f64,
    /// Lifetime of result URLs (OpenAI's are 60 minutes).
    #[arg(long, env = "EMULATOR_URL_TTL_S", default_value_t = 3600)]
    pub url_ttl_s: u64,
}

impl EmulatorArgs {
    pub fn knobs(&self) -> Knobs {
        Knobs {
            latency_ms: self.latency_ms,
            error_rate: self.error_rate,
            error_status: self.error_status,
            rate_limit_rate: self.rate_limit_rate,
            retry_after_s: self.retry_after_s,
            hang_rate: self.hang_rate,
            moderation_rate: self.moderation_rate,
            url_ttl_s: self.url_ttl_s,
            ..Knobs::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    #[test]
    fn flags_set_the_starting_knobs() {
        let cli = Cli::try_parse_from([
            "emulator",
            "--port",
            "0",
            "--api-key",
            "sk-a",
            "--api-key",
            "sk-b",
            "--latency-ms",
            "25",
            "--error-rate",
            "0.5",
            "--error-status",
            "503",
            "--rate-limit-rate",
            "0.1",
            "--retry-after-s",
            "3",
            "--hang-rate",
            "0.01",
            "--moderation-rate",
            "0.2",
            "--url-ttl-s",
            "60",
            "--azure-deployment",
            "images=gpt-image-1.5,gpt-image-2",
            "--today",
            "2026-12-01",
        ])
        .expect("parse");
        assert_eq!(cli.args.port, 0);
        assert_eq!(cli.args.api_keys, ["sk-a", "sk-b"]);
        assert_eq!(
            cli.args.azure_deployments,
            ["images=gpt-image-1.5", "gpt-image-2"]
        );
        assert_eq!(cli.args.today, chrono::NaiveDate::from_ymd_opt(2026, 12, 1));
        assert_eq!(
            cli.args.knobs(),
            Knobs {
                latency_ms: 25,
                error_rate: 0.5,
                error_status: 503,
                rate_limit_rate: 0.1,
                retry_after_s: 3,
                hang_rate: 0.01,
                moderation_rate: 0.2,
                url_ttl_s: 60,
                ..Knobs::default()
            }
        );
        assert!(Cli::try_parse_from(["emulator", "--latency-ms", "soon"]).is_err());
        assert!(Cli::try_parse_from(["emulator", "--today", "1 December"]).is_err());
    }
}
