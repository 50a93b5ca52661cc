//! Scenario 9: what one wait-mode job costs in each process (issue 19, item 2): CPU milliseconds per job for the API,
//! the worker, the emulator (standing in for the provider), Postgres (every server process: the run is the only
//! client) and Redis, and the round trips behind them: Postgres transactions and Redis commands per job, by command.

use crate::load::closed_loop;
use crate::report::Section;
use crate::stack::{REDIS, Stack, cpu_seconds};
use crate::{Opts, client, ms};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// CPU seconds of every process whose command name is `name` (Postgres forks a process per connection).
fn cpu_of_named(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == name || c.trim().starts_with(&format!("{name}:")))
        })
        .filter_map(cpu_seconds)
        .sum()
}

/// Redis's calls per command so far (`INFO commandstats`).
async fn redis_calls(redis: &mut redis::aio::ConnectionManager) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Transactions committed and rolled back in `db` so far.
async fn pg_transactions(pool: &sqlx::PgPool, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

struct Snapshot {
    api: f64,
    worker: f64,
    emulator: f64,
    postgres: f64,
    redis: f64,
    transactions: i64,
    calls: BTreeMap<String, u64>,
}

async fn snapshot(
    stack: &Stack,
    pool: &sqlx::PgPool,
    redis: &mut redis::aio::ConnectionManager,
) -> Snapshot {
    // Give the stats collector its moment: pg_stat_database is updated when a backend goes idle.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Snapshot {
        api: cpu_seconds(stack.api_pid).unwrap_or(f64::NAN),
        worker: stack
            .worker_pids
            .iter()
            .filter_map(|p| cpu_seconds(*p))
            .sum(),
        emulator: cpu_seconds(stack.emulator_pid).unwrap_or(f64::NAN),
        postgres: cpu_of_named("postgres"),
        redis: cpu_of_named("redis-server"),
        transactions: pg_transactions(pool, &stack.db).await,
        calls: redis_calls(redis).await,
    }
}

pub async fn cpu_per_job(opts: &Opts) -> anyhow::Result<Section> {
    let stack = Stack::start(&opts.bin, 1, &[("WORKER_CONCURRENCY", "64".to_owned())]).await?;
    let pool = sqlx::PgPool::connect(&format!("{}/{}", crate::stack::PG, stack.db)).await?;
    let mut redis = redis::Client::open(REDIS)?.get_connection_manager().await?;
    let http = client(128)?;
    let url = format!("{}/api/v1/generate", stack.api);
    let body = json!({"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1024x1024",
        "quality": "low"});
    let clients = 64;
    let duration = Duration::from_secs(if opts.quick { 5 } else { 15 });
    // Warm-up: connections, caches, prepared statements.
    let (h, u, b) = (http.clone(), url.clone(), body.clone());
    closed_loop(clients, Duration::from_secs(2), move |_| {
        let (h, u, b) = (h.clone(), u.clone(), b.clone());
        async move { matches!(h.post(u).json(&b).send().await, Ok(r) if r.status().as_u16() == 200) }
    })
    .await;
    let before = snapshot(&stack, &pool, &mut redis).await;
    let (h, u, b) = (http.clone(), url.clone(), body.clone());
    let run = closed_loop(clients, duration, move |_| {
        let (h, u, b) = (h.clone(), u.clone(), b.clone());
        async move {
            match h.post(u).json(&b).send().await {
                Ok(r) if r.status().as_u16() == 200 => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    let after = snapshot(&stack, &pool, &mut redis).await;
    let jobs = run.ok().max(1) as f64;
    let per_job = |a: f64, b: f64| (b - a) * 1000.0 / jobs;
    let rows = [
        ("API", per_job(before.api, after.api)),
        ("worker", per_job(before.worker, after.worker)),
        (
            "emulator (the provider)",
            per_job(before.emulator, after.emulator),
        ),
        (
            "Postgres (all processes)",
            per_job(before.postgres, after.postgres),
        ),
        ("Redis", per_job(before.redis, after.redis)),
    ];
    let total: f64 = rows.iter().map(|(_, v)| v).sum();
    let mut s = Section::new(
        "9. CPU per wait-mode job, by process",
        &["process", "CPU ms per job", "share"],
    );
    let mut commands: Vec<(String, f64)> = after
        .calls
        .iter()
        .map(|(name, calls)| {
            let was = before.calls.get(name).copied().unwrap_or(0);
            (name.clone(), calls.saturating_sub(was) as f64 / jobs)
        })
        .filter(|(_, per)| *per >= 0.05)
        .collect();
    commands.sort_by(|a, b| b.1.total_cmp(&a.1));
    let redis_total: f64 = commands.iter().map(|(_, v)| v).sum();
    s.note(format!(
        "{clients} closed-loop clients for {secs} s of wait-mode `POST /api/v1/generate` (gpt-image-2, 1024x1024, \
         low), one worker (WORKER_CONCURRENCY=64), emulator latency 0: {jobs:.0} jobs, {rate:.0} jobs/s, p50 {p50} \
         ms. CPU is user + system time from /proc over the measured run (after a 2 s warm-up) divided by the jobs \
         answered 200; Postgres counts every `postgres` process and Redis the server, so anything else running \
         on the machine at the time is counted too. The load generator's own CPU is not in the table. Round trips \
         per job: {tx:.1} Postgres transactions (pg_stat_database, the scenario's own database), {redis_total:.1} \
         Redis commands ({top}).",
        secs = duration.as_secs(),
        rate = run.rps(),
        p50 = ms(run.pct_ms(50.0)),
        tx = (after.transactions - before.transactions) as f64 / jobs,
        top = commands
            .iter()
            .take(8)
            .map(|(n, v)| format!("{n} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    for (process, v) in rows {
        s.row(vec![
            process.into(),
            format!("{v:.3}"),
            format!("{:.0}%", 100.0 * v / total.max(1e-9)),
        ]);
    }
    s.row(vec!["all".into(), format!("{total:.3}"), "100%".into()]);
    eprintln!(
        "bench:   {jobs:.0} jobs at {:.0}/s; CPU ms per job: total {total:.3}",
        run.rps()
    );
    Ok(s)
}
