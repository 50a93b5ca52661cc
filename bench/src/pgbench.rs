//! The floor Postgres itself sets for a submission: `pgbench` running a single-row INSERT of the job row, its
//! latencies read from its per-transaction log (`-l`), so its p50 and p99 are computed the same way as ours.

use crate::load::percentile_ms;
use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What one `pgbench` run did.
pub struct PgbenchRun {
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: u64,
}

/// The script: the row `POST /api/v1/jobs` records for the bench's request (`request_json`), a fresh id per insert.
/// pgbench reads `:name` anywhere in a script as its variable (JSON's `"allow_failover":true` included, which then
/// fails to parse), so the request travels hex-encoded and Postgres decodes it: no colon reaches pgbench but `::`.
fn script(request_json: &str) -> String {
    let hex: String = request_json.bytes().map(|b| format!("{b:02x}")).collect();
    format!(
        "INSERT INTO jobs (id, owner, correlation_id, status, provider, request, max_attempts) \
         VALUES (gen_random_uuid(), 'anonymous', 'pgbench', 'queued', 'openai', \
         convert_from(decode('{hex}', 'hex'), 'UTF8')::jsonb, 3);\n"
    )
}

/// Runs `pgbench -c conns -j 2 -T secs -M prepared` with the INSERT script against `db_url` (blocking: call it from
/// `spawn_blocking`). `dir` holds the script and the transaction logs, removed afterwards.
pub fn insert_floor(
    db_url: &str,
    request_json: &str,
    conns: usize,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<PgbenchRun> {
    std::fs::create_dir_all(dir)?;
    let script_path = dir.join("insert.sql");
    std::fs::write(&script_path, script(request_json))?;
    let prefix = dir.join(format!("log{conns}"));
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-j", "2", "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(format!("-c{conns}"))
        .arg(format!("-T{}", duration.as_secs().max(1)))
        .arg("-f")
        .arg(&script_path)
        .arg(db_url)
        .stdin(Stdio::null())
        .output()
        .context("running pgbench (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "tps = 12345.678901 (without initial connection time)"
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("no tps in pgbench's output")?;
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // One log per thread, a line per transaction: client_id transaction_no time_us script_no epoch epoch_us.
    let stem = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut latencies_us = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.")));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        latencies_us.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
        std::fs::remove_file(&path)?;
    }
    Ok(PgbenchRun {
        tps,
        p50_ms: percentile_ms(&latencies_us, 50.0),
        p99_ms: percentile_ms(&latencies_us, 99.0),
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_carries_the_request_without_a_pgbench_variable() {
        let json = r#"{"allow_failover":true,"prompt":"it's: a:b"}"#;
        let s = script(json);
        let without_casts = s.replace("::", "");
        assert!(!without_casts.contains(':'), "{s}");
        let hex = s
            .split("decode('")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_default();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        assert_eq!(String::from_utf8_lossy(&bytes), json);
        assert!(s.trim_end().ends_with(';'));
    }
}
