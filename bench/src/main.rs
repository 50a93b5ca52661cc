//! `imagegen-bench`: runs the benchmark scenarios against the release binary and the built-in emulator on
//! loopback, and writes `bench/results/latest.md` and `bench/results/latency.svg`. Every figure that compares is a
//! ratio taken in the same run: these machines are shared and noisy. Run it with `scripts/bench.sh [--quick]`.

mod auth;
mod cpu_budget;
mod load;
mod pgbench;
mod report;
mod stack;
mod streams;

use anyhow::Context;
use clap::Parser;
use load::{Sample, closed_loop, percentile_ms};
use report::{Section, Series};
use serde_json::json;
use stack::{Stack, cpu_seconds, peak_rss_mib};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "imagegen benchmarks (see scripts/bench.sh)")]
pub struct Opts {
    /// Shorter runs and the smaller wait-mode scale only (under five minutes on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// The imagegen binary to run.
    #[arg(long, default_value = "target/release/imagegen")]
    pub bin: String,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: std::path::PathBuf,
    /// Skip the LiteLLM comparison.
    #[arg(long)]
    no_litellm: bool,
    /// Run only these scenarios (1-9), e.g. --only 1,3.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
}

pub fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.1}")
    }
}

pub fn client(max_idle: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle)
        .timeout(Duration::from_secs(330))
        .build()?)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let wants = |n: u8| opts.only.is_empty() || opts.only.contains(&n);
    std::fs::create_dir_all(&opts.out)?;
    let started = Instant::now();
    let mut sections = Vec::new();
    let mut series = Vec::new();
    if wants(1) {
        eprintln!("bench: 1. async submit throughput");
        sections.push(submit_throughput(&opts, &mut series).await?);
    }
    if wants(2) {
        eprintln!("bench: 2. queue overhead");
        sections.push(queue_overhead(&opts).await?);
    }
    if wants(3) {
        eprintln!("bench: 3. wait mode at scale");
        sections.push(wait_at_scale(&opts).await?);
    }
    if wants(4) {
        eprintln!("bench: 4. worker throughput and fleet limits");
        sections.push(worker_throughput(&opts).await?);
    }
    if wants(5) {
        eprintln!("bench: 5. large images");
        sections.push(large_images(&opts).await?);
    }
    if wants(6) {
        if opts.no_litellm {
            let mut s = Section::new("6. Side by side with LiteLLM", &[]);
            s.note("Skipped (--no-litellm).");
            sections.push(s);
        } else {
            eprintln!("bench: 6. side by side with LiteLLM");
            sections.push(litellm(&opts, &mut series).await?);
        }
    }
    if wants(7) {
        eprintln!("bench: 7. authentication cost");
        sections.push(auth::auth_cost(&opts).await?);
    }
    if wants(8) {
        eprintln!("bench: 8. live event streams at scale");
        sections.push(streams::event_streams(&opts).await?);
    }
    if wants(9) {
        eprintln!("bench: 9. CPU per wait-mode job, by process");
        sections.push(cpu_budget::cpu_per_job(&opts).await?);
    }
    let preamble = machine(&opts, started.elapsed());
    let md = report::markdown("imagegen benchmarks", &preamble, &sections);
    std::fs::write(opts.out.join("latest.md"), &md)?;
    if !series.is_empty() {
        std::fs::write(
            opts.out.join("latency.svg"),
            report::svg("p50 latency against concurrency (same run)", &series),
        )?;
    }
    println!("{md}");
    eprintln!(
        "bench: wrote {} in {:.0} s",
        opts.out.join("latest.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn machine(opts: &Opts, took: Duration) -> Vec<String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                })
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let version = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "not found".into())
    };
    vec![
        format!(
            "Run {} ({} mode, {:.0} s). Machine: {cores} cores, {mem} RAM. imagegen {} ({}), {}, {}, {}.",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            if opts.quick { "quick" } else { "full" },
            took.as_secs_f64(),
            env!("CARGO_PKG_VERSION"),
            opts.bin,
            version("rustc", &["--version"]),
            version("psql", &["--version"]),
            version("redis-server", &["--version"]),
        ),
        String::new(),
        "Everything runs on this one machine over loopback: the load generator, the emulator standing in for the \
         provider, Postgres, Redis and imagegen itself, so absolute figures are low and noisy; compare the ratios \
         taken within one run. Latencies are whole-request times measured by the client."
            .into(),
    ]
}

/// Connections the floors open at most: Postgres allows 100 in all, and the API and other runs hold some.
const MAX_FLOOR_CONNS: usize = 64;

/// Scenario 1: `POST /api/v1/jobs` at 1..256 clients against `pgbench` inserting the same row and a bare
/// INSERT + LPUSH of it (the floors), with as many connections as clients.
async fn submit_throughput(opts: &Opts, series: &mut Vec<Series>) -> anyhow::Result<Section> {
    let stack = Stack::start(&opts.bin, 0, &[]).await?;
    // The same API recording each submission with its own INSERT, for the group commit's A/B in the same run.
    let single = Stack::start(&opts.bin, 0, &[("SUBMIT_GROUP_COMMIT", "false".to_owned())]).await?;
    let duration = Duration::from_secs(if opts.quick { 3 } else { 10 });
    let db_url = format!("{}/{}", stack::PG, stack.db);
    let api_pool = stack
        .env
        .iter()
        .find(|(k, _)| k == "DATABASE_MAX_CONNECTIONS")
        .map_or_else(|| "10 (the default)".to_owned(), |(_, v)| v.clone());
    let redis = redis::Client::open(stack::REDIS)?
        .get_connection_manager()
        .await?;
    let floor_key = format!("bench-floor-{}", uuid::Uuid::new_v4().simple());
    let http = client(512)?;
    // The request as the API stores it for `{"prompt": ..., "model": "gpt-image-2"}` (its default quality is auto).
    let request = json!({"model": "gpt-image-2", "prompt": "A lighthouse at dusk", "size": "1024x1024",
        "quality": "auto", "num_images": 1, "allow_failover": true});
    let mut s = Section::new(
        "1. Async submit throughput",
        &[
            "clients",
            "imagegen req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "API CPU ms/req",
            "one INSERT each req/s",
            "group / one each",
            "pgbench INSERT tps",
            "pgbench p99 ms",
            "INSERT+LPUSH req/s",
            "INSERT+LPUSH p99 ms",
            "imagegen / pgbench",
            "imagegen / INSERT+LPUSH",
        ],
    );
    s.note(format!(
        "`POST /api/v1/jobs` (validate, moderate, INSERT the job, push it on the apalis queue, nudge workers, answer \
         202) from N closed-loop clients for {secs} s each, no workers running; the API's pool is \
         DATABASE_MAX_CONNECTIONS={api_pool}. The floors, in the same run on the same scratch database, Postgres and \
         Redis, with as many connections as clients (at most {MAX_FLOOR_CONNS}: this Postgres allows 100 in all): \
         `pgbench -c N -j 2 -T {secs} -M prepared` running a single-row INSERT of the same job row, and our own \
         program doing that INSERT plus an LPUSH. pgbench's p99 comes from its per-transaction log. 'API CPU ms/req' \
         is the API process's user + system CPU time over the run divided by the requests it answered: with two \
         cores shared by the load generator, Postgres, Redis and the API, CPU per request is what caps the rate. \
         'one INSERT each' is the same API with SUBMIT_GROUP_COMMIT=false (each submission its own statement and \
         commit), run right after.",
        secs = duration.as_secs()
    ));
    let (mut ours_line, mut floor_line) = (Vec::new(), Vec::new());
    for clients in [1usize, 16, 64, 256] {
        let url = format!("{}/api/v1/jobs", stack.api);
        let body = json!({"prompt": "A lighthouse at dusk"});
        let h = http.clone();
        let cpu_before = cpu_seconds(stack.api_pid).unwrap_or(f64::NAN);
        let ours = closed_loop(clients, duration, move |_| {
            let (h, url, body) = (h.clone(), url.clone(), body.clone());
            async move {
                matches!(h.post(url).json(&body).send().await, Ok(r) if r.status().as_u16() == 202)
            }
        })
        .await;
        let api_cpu_ms = (cpu_seconds(stack.api_pid).unwrap_or(f64::NAN) - cpu_before) * 1000.0
            / ours.ok().max(1) as f64;
        let one_each = {
            let url = format!("{}/api/v1/jobs", single.api);
            let body = json!({"prompt": "A lighthouse at dusk"});
            let h = http.clone();
            closed_loop(clients, duration, move |_| {
                let (h, url, body) = (h.clone(), url.clone(), body.clone());
                async move {
                    matches!(h.post(url).json(&body).send().await, Ok(r) if r.status().as_u16() == 202)
                }
            })
            .await
        };
        let conns = clients.min(MAX_FLOOR_CONNS);
        let pgb = {
            let (url, req, dir) = (
                db_url.clone(),
                serde_json::to_string_pretty(&request)?,
                std::env::temp_dir().join(format!("imagegen-bench-pgbench-{}", stack.db)),
            );
            tokio::task::spawn_blocking(move || {
                let run = pgbench::insert_floor(&url, &req, conns, duration, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                run
            })
            .await??
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(u32::try_from(conns).unwrap_or(64))
            .min_connections(u32::try_from(conns).unwrap_or(64))
            .connect(&db_url)
            .await?;
        let (pool2, redis2, key, req) = (
            pool.clone(),
            redis.clone(),
            floor_key.clone(),
            request.clone(),
        );
        let floor = closed_loop(clients, duration, move |_| {
            let (pool, mut redis, key, req) = (pool2.clone(), redis2.clone(), key.clone(), req.clone());
            async move {
                let id = uuid::Uuid::now_v7();
                let inserted = sqlx::query(
                    "INSERT INTO jobs (id, owner, correlation_id, status, provider, request, max_attempts) \
                     VALUES ($1, 'anonymous', $2, 'queued', 'openai', $3, 3)",
                )
                .bind(id)
                .bind(id.to_string())
                .bind(sqlx::types::Json(&req))
                .execute(&pool)
                .await
                .is_ok();
                let pushed: redis::RedisResult<i64> =
                    redis::cmd("LPUSH").arg(&key).arg(id.to_string()).query_async(&mut redis).await;
                inserted && pushed.is_ok()
            }
        })
        .await;
        pool.close().await;
        ours_line.push((clients as f64, ours.pct_ms(50.0)));
        floor_line.push((clients as f64, floor.pct_ms(50.0)));
        s.row(vec![
            clients.to_string(),
            format!("{:.0}", ours.rps()),
            ms(ours.pct_ms(50.0)),
            ms(ours.pct_ms(99.0)),
            ours.errors.to_string(),
            format!("{api_cpu_ms:.2}"),
            format!("{:.0}", one_each.rps()),
            format!("{:.2}", ours.rps() / one_each.rps().max(1e-9)),
            if pgb.failed > 0 {
                format!("{:.0} ({} failed)", pgb.tps, pgb.failed)
            } else {
                format!("{:.0}", pgb.tps)
            },
            ms(pgb.p99_ms),
            format!("{:.0}", floor.rps()),
            ms(floor.pct_ms(99.0)),
            format!("{:.2}", ours.rps() / pgb.tps.max(1e-9)),
            format!("{:.2}", ours.rps() / floor.rps().max(1e-9)),
        ]);
        eprintln!(
            "bench:   {clients} clients: {:.0} req/s (p99 {:.1} ms; one INSERT each {:.0}) vs pgbench {:.0} tps (p50 {:.1}, p99 {:.1} ms), INSERT+LPUSH {:.0}",
            ours.rps(),
            ours.pct_ms(99.0),
            one_each.rps(),
            pgb.tps,
            pgb.p50_ms,
            pgb.p99_ms,
            floor.rps()
        );
    }
    let _: redis::RedisResult<i64> = redis::cmd("DEL")
        .arg(&floor_key)
        .query_async(&mut redis.clone())
        .await;
    series.push(Series {
        label: "submit (async)".into(),
        points: ours_line,
    });
    series.push(Series {
        label: "floor: INSERT+LPUSH, a connection per client".into(),
        points: floor_line,
    });
    Ok(s)
}

/// Scenario 2: Time from submit to the provider call starting, and from the provider's answer to the client's, with a
/// provider that answers at once.
async fn queue_overhead(opts: &Opts) -> anyhow::Result<Section> {
    let stack = Stack::start(&opts.bin, 1, &[]).await?;
    let n = if opts.quick { 100 } else { 400 };
    let http = client(8)?;
    let url = format!("{}/api/v1/generate", stack.api);
    let body =
        json!({"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1024x1024"});
    // Warm-up: connections, caches.
    for i in 0..10 {
        let _ = http
            .post(&url)
            .header("X-Correlation-ID", format!("warm-{i}"))
            .json(&body)
            .send()
            .await;
    }
    let mut sent = HashMap::new();
    let mut total = Vec::new();
    for i in 0..n {
        let id = format!("bench-q-{i}");
        let t0 = now_us();
        let r = http
            .post(&url)
            .header("X-Correlation-ID", &id)
            .json(&body)
            .send()
            .await?;
        let ok = r.status().as_u16() == 200;
        let _ = r.bytes().await;
        let t1 = now_us();
        if ok {
            sent.insert(id, (t0, t1));
            total.push(t1 - t0);
        }
    }
    let timeline = stack.emulator_get("/emulator/timeline").await?;
    let (mut to_provider, mut from_provider, mut provider) = (Vec::new(), Vec::new(), Vec::new());
    for e in timeline.as_array().into_iter().flatten() {
        let Some(id) = e["correlation_id"].as_str() else {
            continue;
        };
        let Some((t0, t1)) = sent.get(id) else {
            continue;
        };
        let (arrived, answered) = (
            e["arrived_us"].as_u64().unwrap_or(0),
            e["answered_us"].as_u64().unwrap_or(0),
        );
        to_provider.push(arrived.saturating_sub(*t0));
        from_provider.push(t1.saturating_sub(answered));
        provider.push(answered.saturating_sub(arrived));
    }
    let mut s = Section::new("2. Queue overhead", &["segment", "p50 ms", "p99 ms", "n"]);
    s.note(format!(
        "{n} sequential wait-mode `POST /api/v1/generate` requests, one worker, emulator latency 0. The emulator \
         records when each call (matched by X-Correlation-ID) arrived and was answered; clocks are the same \
         machine's. 'submit -> provider call' covers validation, INSERT, queue push, the worker's wake-up, claim and \
         attempt count; 'provider answer -> client' covers decoding, sha256, the charge with the storage intent, \
         the storage write, the success transaction and the job event that carries the job to its waiter."
    ));
    for (label, v) in [
        ("submit -> provider call starts", &to_provider),
        (
            "provider call (emulator renders a 1024x1024 PNG)",
            &provider,
        ),
        ("provider answer -> client has the answer", &from_provider),
        ("whole request", &total),
    ] {
        s.row(vec![
            label.into(),
            ms(percentile_ms(v, 50.0)),
            ms(percentile_ms(v, 99.0)),
            v.len().to_string(),
        ]);
    }
    Ok(s)
}

/// Scenario 3: Many waiting clients at once, the provider taking 5 s: completions, errors and the API's peak memory.
async fn wait_at_scale(opts: &Opts) -> anyhow::Result<Section> {
    let scales: &[usize] = if opts.quick { &[1000] } else { &[1000, 10_000] };
    let mut s = Section::new(
        "3. Wait mode at scale",
        &[
            "waiting clients",
            "succeeded",
            "errors",
            "wall time s",
            "API peak RSS MiB",
            "API RSS per waiter KiB",
        ],
    );
    s.note(
        "N wait-mode requests opened within two seconds (waves of 50 every 10 ms) and held (`Prefer: wait=300`), \
         emulator latency 5 s, two workers with \
         WORKER_CONCURRENCY=500 each. Peak RSS is the API process's VmHWM after the run; per waiter = (peak - \
         idle) / N.",
    );
    for &n in scales {
        let extra = [
            ("WORKER_CONCURRENCY", "500".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "20".to_owned()),
        ];
        let stack = Stack::start(&opts.bin, 2, &extra).await?;
        stack.emulator_config(json!({"latency_ms": 5000})).await?;
        let idle = peak_rss_mib(stack.api_pid).unwrap_or(f64::NAN);
        let drops_before = crate::load::loopback_drops();
        let http = client(n)?;
        let url = format!("{}/api/v1/generate", stack.api);
        let body =
            json!({"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1024x1024"});
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            // All 10,000 within two seconds, in small waves (`load::pace` says why).
            crate::load::pace(i).await;
            let (h, url, body) = (http.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                match h
                    .post(url)
                    .header("Prefer", "wait=300")
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 200 => {
                        match r.json::<serde_json::Value>().await {
                            Ok(b) if b["status"] == "succeeded" => "ok".to_owned(),
                            Ok(b) => format!("job {}", b["status"]),
                            Err(_) => "bad body".to_owned(),
                        }
                    }
                    Ok(r) => format!("HTTP {}", r.status().as_u16()),
                    Err(e) => {
                        let mut text = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(inner) = source {
                            text = format!("{text}: {inner}");
                            source = inner.source();
                        }
                        // Keep the kind, not the URL.
                        text.split_once(": ")
                            .map(|(_, rest)| rest.to_owned())
                            .unwrap_or(text)
                    }
                }
            }));
        }
        let (ok, outcomes) = crate::load::tally(tasks).await;
        if !outcomes.is_empty() {
            s.note(format!("{n} waiters, failures by kind: {outcomes:?}"));
        }
        if let (Some(before), Some(after)) = (drops_before, crate::load::loopback_drops())
            && after > before
        {
            s.note(format!(
                "{n} waiters: the kernel dropped {} packets on loopback (a CPU's input queue was full)",
                after - before
            ));
        }
        let wall = t0.elapsed().as_secs_f64();
        let peak = peak_rss_mib(stack.api_pid).unwrap_or(f64::NAN);
        s.row(vec![
            n.to_string(),
            ok.to_string(),
            (n - ok).to_string(),
            format!("{wall:.1}"),
            format!("{peak:.1}"),
            format!("{:.1}", (peak - idle) * 1024.0 / n as f64),
        ]);
        eprintln!("bench:   {n} waiters: {ok} ok in {wall:.1} s, API peak {peak:.1} MiB");
    }
    Ok(s)
}

/// Scenario 4: A backlog drained by workers with concurrency K against a provider taking L: jobs/s against the ceiling,
/// and the most calls the emulator ever saw at once against the fleet limit.
async fn worker_throughput(opts: &Opts) -> anyhow::Result<Section> {
    let backlog: i64 = if opts.quick { 300 } else { 1000 };
    let latency_ms = 200u64;
    let mut s = Section::new(
        "4. Worker throughput and fleet limits",
        &[
            "workers x K",
            "PROVIDER_CONCURRENCY",
            "ceiling jobs/s",
            "jobs/s",
            "of ceiling",
            "emulator max in flight",
            "within limit",
        ],
    );
    s.note(format!(
        "{backlog} jobs queued first, then the workers start; emulator latency {latency_ms} ms. Ceiling = \
         min(workers x K, limit) / latency. 'max in flight' is the emulator's own count of concurrent calls."
    ));
    for (workers, k, limit) in [(2usize, 8usize, Some(12usize)), (2, 8, None)] {
        let mut extra = vec![("WORKER_CONCURRENCY", k.to_string())];
        if let Some(l) = limit {
            extra.push(("PROVIDER_CONCURRENCY", format!("openai={l}")));
        }
        let mut stack = Stack::start(&opts.bin, 0, &extra).await?;
        stack
            .emulator_config(json!({"latency_ms": latency_ms}))
            .await?;
        let http = client(64)?;
        let url = format!("{}/api/v1/jobs", stack.api);
        for i in 0..backlog {
            let r = http
                .post(&url)
                .json(&json!({"prompt": format!("backlog {i}")}))
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 202, "submit: {}", r.status());
        }
        let pool = stack.pool().await?;
        let t0 = Instant::now();
        for _ in 0..workers {
            stack.add_worker(&[])?;
        }
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE status <> 'queued' AND status <> 'running'",
            )
            .fetch_one(&pool)
            .await?;
            if done >= backlog || t0.elapsed() > Duration::from_secs(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t0.elapsed().as_secs_f64();
        let rate = backlog as f64 / took;
        let width = limit.map_or(workers * k, |l| l.min(workers * k));
        let ceiling = width as f64 / (latency_ms as f64 / 1000.0);
        let stats = stack.emulator_get("/emulator/stats").await?;
        let max_in_flight = stats["openai"]["max_in_flight"].as_u64().unwrap_or(0);
        s.row(vec![
            format!("{workers} x {k}"),
            limit.map_or("unlimited".into(), |l| l.to_string()),
            format!("{ceiling:.0}"),
            format!("{rate:.1}"),
            format!("{:.0}%", rate / ceiling * 100.0),
            max_in_flight.to_string(),
            limit.map_or("-".into(), |l| {
                if max_in_flight as usize <= l {
                    "yes".into()
                } else {
                    "NO".into()
                }
            }),
        ]);
        eprintln!(
            "bench:   {workers}x{k} limit {limit:?}: {rate:.1} jobs/s (ceiling {ceiling:.0}), max in flight {max_in_flight}"
        );
    }
    Ok(s)
}

/// Scenario 5: 32 jobs at once whose pictures are 4 MB: the worker's peak memory.
async fn large_images(opts: &Opts) -> anyhow::Result<Section> {
    let (n, size) = (32usize, 4 * 1024 * 1024u64);
    let mut s = Section::new(
        "5. Large images",
        &[
            "provider answer",
            "worker RSS after one job MiB",
            "peak RSS MiB",
            "MiB per image in flight",
            "x image size",
        ],
    );
    s.note(format!(
        "{n} wait-mode jobs at once, one worker with WORKER_CONCURRENCY={n}, the emulator padding every picture to \
         {} MiB and answering after 1.5 s so all are in flight together. GPT image models always answer base64; \
         the url path (a download from the provider's host) is taken by the FLUX host (Together's protocol) with \
         OPENAI_RESPONSE_FORMAT=url.",
        size / 1024 / 1024
    ));
    // (row label, model, OPENAI_RESPONSE_FORMAT, emulator protocol)
    let cases = [
        ("gpt-image-2, base64", "gpt-image-2", "b64_json", "openai"),
        ("flux-schnell, b64_json", "flux-schnell", "b64_json", "flux"),
        ("flux-schnell, url", "flux-schnell", "url", "flux"),
    ];
    for (label, model, format, protocol) in cases {
        let extra = [
            ("WORKER_CONCURRENCY", n.to_string()),
            ("OPENAI_RESPONSE_FORMAT", format.to_owned()),
            ("MAX_IMAGE_BYTES", (size * 2).to_string()),
            ("FLUX_API_KEY", stack::API_KEY.to_owned()),
        ];
        let stack = Stack::start(&opts.bin, 1, &extra).await?;
        stack
            .emulator_config_for(protocol, json!({"latency_ms": 1500, "image_bytes": size}))
            .await?;
        let http = client(n)?;
        let url = format!("{}/api/v1/generate", stack.api);
        let body =
            json!({"prompt": "A very large lighthouse", "model": model, "size": "1024x1024"});
        http.post(&url).json(&body).send().await?.bytes().await?;
        let worker = stack.worker_pids[0];
        let before = peak_rss_mib(worker).unwrap_or(f64::NAN);
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (h, url, body) = (http.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                h.post(url)
                    .header("Prefer", "wait=300")
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap_or(false));
        }
        anyhow::ensure!(ok == n, "{label}: only {ok} of {n} succeeded");
        let peak = peak_rss_mib(worker).unwrap_or(f64::NAN);
        let per = (peak - before) / n as f64;
        s.row(vec![
            label.into(),
            format!("{before:.1}"),
            format!("{peak:.1}"),
            format!("{per:.1}"),
            format!("{:.2}", per / (size as f64 / 1024.0 / 1024.0)),
        ]);
        eprintln!("bench:   {label}: worker {before:.1} -> {peak:.1} MiB");
    }
    Ok(s)
}

/// Scenario 6: LiteLLM's proxy in front of the same emulator against our wait mode, both against calling the emulator
/// directly.
async fn litellm(opts: &Opts, series: &mut Vec<Series>) -> anyhow::Result<Section> {
    let stack = Stack::start(&opts.bin, 1, &[("WORKER_CONCURRENCY", "64".to_owned())]).await?;
    let port = stack::free_port();
    let pidfile = std::env::temp_dir().join(format!("litellm-bench-{port}.pid"));
    let started = std::process::Command::new("bash")
        .arg("bench/litellm/start.sh")
        .arg(port.to_string())
        .arg(format!("{}/v1", stack.emulator))
        .env("LITELLM_PIDFILE", &pidfile)
        .status()
        .context("bench/litellm/start.sh")?;
    let mut s = Section::new(
        "6. Side by side with LiteLLM",
        &[
            "clients",
            "path",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "added p50 ms",
            "added p99 ms",
        ],
    );
    if !started.success() {
        s.note("LiteLLM could not be installed or started here (see bench/litellm/start.sh); no figures.");
        return Ok(s);
    }
    let _guard = KillOnDrop(pidfile);
    let duration = Duration::from_secs(if opts.quick { 3 } else { 10 });
    s.note(format!(
        "Zero emulator latency, {} s per cell, closed-loop clients. Per request, **imagegen** validates and moderates \
         the prompt, INSERTs the job, queues it, a worker claims it, counts the attempt, calls the provider, decodes \
         and hashes the picture, stores it (local disk) and records it in a transaction, publishes the job event, and \
         the waiting API request re-reads the job and answers with our download URL. **LiteLLM** (one proxy process, \
         no database, no retries) forwards the request to the provider and relays the answer (the base64 picture \
         itself). 'added' = the path's percentile minus the direct call's at the same concurrency.",
        duration.as_secs()
    ));
    let http = client(256)?;
    // GPT image models answer base64 only and refuse `response_format` (LiteLLM refuses it for them too).
    let direct_body =
        json!({"model": "gpt-image-2", "prompt": "A lighthouse at dusk", "size": "1024x1024"});
    let ours_body =
        json!({"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1024x1024"});
    let (mut ours_line, mut lite_line, mut direct_line) = (Vec::new(), Vec::new(), Vec::new());
    for clients in [1usize, 16, 64] {
        let run = |url: String, key: &'static str, body: serde_json::Value| {
            let h = http.clone();
            closed_loop(clients, duration, move |_| {
                let (h, url, body) = (h.clone(), url.clone(), body.clone());
                async move {
                    match h.post(url).bearer_auth(key).json(&body).send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    }
                }
            })
        };
        let direct = run(
            format!("{}/v1/images/generations", stack.emulator),
            stack::API_KEY,
            direct_body.clone(),
        )
        .await;
        let lite = run(
            format!("http://127.0.0.1:{port}/v1/images/generations"),
            "sk-bench-master",
            direct_body.clone(),
        )
        .await;
        let ours = run(
            format!("{}/api/v1/generate", stack.api),
            "unused",
            ours_body.clone(),
        )
        .await;
        for (label, sample) in [
            ("emulator directly", &direct),
            ("LiteLLM proxy", &lite),
            ("imagegen wait mode", &ours),
        ] {
            s.row(row(clients, label, sample, &direct));
        }
        direct_line.push((clients as f64, direct.pct_ms(50.0)));
        lite_line.push((clients as f64, lite.pct_ms(50.0)));
        ours_line.push((clients as f64, ours.pct_ms(50.0)));
        eprintln!(
            "bench:   {clients} clients: direct {:.0}/s, litellm {:.0}/s, imagegen {:.0}/s",
            direct.rps(),
            lite.rps(),
            ours.rps()
        );
    }
    series.push(Series {
        label: "wait mode (imagegen)".into(),
        points: ours_line,
    });
    series.push(Series {
        label: "LiteLLM proxy".into(),
        points: lite_line,
    });
    series.push(Series {
        label: "emulator directly".into(),
        points: direct_line,
    });
    Ok(s)
}

fn row(clients: usize, label: &str, sample: &Sample, direct: &Sample) -> Vec<String> {
    vec![
        clients.to_string(),
        label.into(),
        format!("{:.0}", sample.rps()),
        ms(sample.pct_ms(50.0)),
        ms(sample.pct_ms(99.0)),
        sample.errors.to_string(),
        ms(sample.pct_ms(50.0) - direct.pct_ms(50.0)),
        ms(sample.pct_ms(99.0) - direct.pct_ms(99.0)),
    ]
}

/// Stops the LiteLLM proxy (its pid is in the file) when the scenario ends.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_file(&self.0);
    }
}
