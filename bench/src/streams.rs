//! Scenario 8: many live event streams (`GET /api/v1/jobs/{id}/events`) open at once while their jobs run: every
//! stream must see its job's end, and the API's memory per open stream is the figure (the wait-mode budget).

use crate::client;
use crate::report::Section;
use crate::stack::{Stack, peak_rss_mib};
use futures::StreamExt;
use serde_json::json;
use std::time::Instant;

pub async fn event_streams(opts: &crate::Opts) -> anyhow::Result<Section> {
    let scales: &[usize] = if opts.quick { &[1000] } else { &[1000, 10_000] };
    let mut s = Section::new(
        "8. Live event streams at scale",
        &[
            "open streams",
            "saw the end",
            "errors",
            "wall time s",
            "API peak RSS MiB",
            "API RSS per stream KiB",
        ],
    );
    s.note(
        "N jobs submitted at once (`POST /api/v1/jobs`), then one event stream per job opened in waves of 50 every \
         10 ms and read to its end; emulator latency 5 s, two workers with WORKER_CONCURRENCY=500. Per stream = \
         (peak - RSS after the submissions) / N.",
    );
    for &n in scales {
        let extra = [
            ("WORKER_CONCURRENCY", "500".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "20".to_owned()),
        ];
        let stack = Stack::start(&opts.bin, 2, &extra).await?;
        stack.emulator_config(json!({"latency_ms": 5000})).await?;
        let http = client(n)?;
        let body =
            json!({"prompt": "A lighthouse at dusk", "model": "gpt-image-2", "size": "1024x1024"});
        let mut ids = Vec::with_capacity(n);
        let submits = futures::stream::iter(0..n)
            .map(|_| {
                let (h, url, body) = (
                    http.clone(),
                    format!("{}/api/v1/jobs", stack.api),
                    body.clone(),
                );
                async move {
                    let r = h.post(url).json(&body).send().await.ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    v["job_id"].as_str().map(str::to_owned)
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        ids.extend(submits.into_iter().flatten());
        if ids.len() < n {
            s.note(format!(
                "{n} streams: only {} of the submissions were accepted",
                ids.len()
            ));
        }
        let before = peak_rss_mib(stack.api_pid).unwrap_or(f64::NAN);
        let drops_before = crate::load::loopback_drops();
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            crate::load::pace(i).await;
            let (h, url) = (
                http.clone(),
                format!("{}/api/v1/jobs/{id}/events", stack.api),
            );
            tasks.push(tokio::spawn(async move {
                let r = match h.get(url).send().await {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => return format!("HTTP {}", r.status().as_u16()),
                    Err(e) => {
                        return format!(
                            "connect: {}",
                            std::error::Error::source(&e)
                                .map_or_else(|| e.to_string(), ToString::to_string)
                        );
                    }
                };
                let mut body = r.bytes_stream();
                let mut text = String::new();
                while let Some(chunk) = body.next().await {
                    match chunk {
                        Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
                        Err(e) => return format!("stream broke: {e}"),
                    }
                }
                if text.contains("event: succeeded") {
                    "ok".to_owned()
                } else {
                    let last = text
                        .lines()
                        .rev()
                        .find(|l| l.starts_with("event: "))
                        .unwrap_or("no event");
                    format!("ended after {last}")
                }
            }));
        }
        let (ok, outcomes) = crate::load::tally(tasks).await;
        if !outcomes.is_empty() {
            s.note(format!("{n} streams, failures by kind: {outcomes:?}"));
            eprintln!("bench:   failures: {outcomes:?}");
        }
        if let (Some(before), Some(after)) = (drops_before, crate::load::loopback_drops())
            && after > before
        {
            s.note(format!(
                "{n} streams: the kernel dropped {} packets on loopback (a CPU's input queue was full)",
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
            format!("{:.1}", (peak - before) * 1024.0 / n as f64),
        ]);
        eprintln!("bench:   {n} streams: {ok} saw the end in {wall:.1} s, API peak {peak:.1} MiB");
    }
    Ok(s)
}
