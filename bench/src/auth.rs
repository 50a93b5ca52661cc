//! Scenario 7: what authentication costs per request. The test suite's OpenID Connect issuer (RSA and EC keys,
//! discovery and JWKS on loopback, `imagegen-testkit`) signs tokens; the same cheap read (`GET /api/v1/jobs/{id}`)
//! is timed with authentication off, with an API key (cached; a hash lookup in Postgres every API_KEY_CACHE_SECS) and with RS256 / ES256 bearer tokens
//! (a signature check against the cached JWKS).

use crate::load::closed_loop;
use crate::report::Section;
use crate::stack::{Stack, cpu_seconds};
use crate::{Opts, client, ms};
use imagegen_testkit::idp::{AUDIENCE, TestIdp};
use serde_json::json;
use std::time::Duration;

/// One job to read, submitted with `credential` (none when auth is off).
async fn one_job(stack: &Stack, credential: Option<&str>) -> anyhow::Result<String> {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs", stack.api))
        .json(&json!({"prompt": "A lighthouse at dusk"}));
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    let body: serde_json::Value = req.send().await?.error_for_status()?.json().await?;
    body["job_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no job id in {body}"))
}

pub async fn auth_cost(opts: &Opts) -> anyhow::Result<Section> {
    let duration = Duration::from_secs(if opts.quick { 3 } else { 8 });
    let clients = 16;
    let issuer = TestIdp::start().await;
    let mut s = Section::new(
        "7. Authentication cost",
        &[
            "credential",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "API CPU ms/req",
            "req/s vs none",
        ],
    );
    s.note(format!(
        "`GET /api/v1/jobs/{{id}}` (one indexed read) from {clients} closed-loop clients for {} s per row. 'none': \
         ENABLE_AUTHENTICATION=false; the other rows one API process with authentication on: an API key (SHA-256, \
         then its verdict from the key cache, API_KEY_CACHE_SECS=5: a lookup by hash in Postgres every 5 s) and bearer tokens from a loopback OIDC issuer \
         (RS256 2048-bit / ES256 P-256 signature check against the cached JWKS, claims checked). No workers run.",
        duration.as_secs()
    ));
    let http = client(64)?;
    let mut baseline = None;
    let run = |label: &'static str, stack: &Stack, job: String, credential: Option<String>| {
        let (http, api, pid) = (http.clone(), stack.api.clone(), stack.api_pid);
        async move {
            let url = format!("{api}/api/v1/jobs/{job}");
            let cpu_before = cpu_seconds(pid).unwrap_or(f64::NAN);
            let sample = closed_loop(clients, duration, move |_| {
                let (h, url, credential) = (http.clone(), url.clone(), credential.clone());
                async move {
                    let mut req = h.get(url);
                    if let Some(c) = credential {
                        req = req.bearer_auth(c);
                    }
                    matches!(req.send().await, Ok(r) if r.status().as_u16() == 200)
                }
            })
            .await;
            let cpu_ms = (cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_before) * 1000.0
                / sample.ok().max(1) as f64;
            eprintln!("bench:   {label}: {:.0} req/s", sample.rps());
            (label, sample, cpu_ms)
        }
    };
    let mut rows = Vec::new();
    {
        let open = Stack::start(&opts.bin, 0, &[]).await?;
        let job = one_job(&open, None).await?;
        rows.push(run("none", &open, job, None).await);
    }
    let secured = Stack::start(
        &opts.bin,
        0,
        &[
            ("ENABLE_AUTHENTICATION", "true".into()),
            (
                "DOWNLOAD_SIGNING_KEY",
                "bench-signing-key-of-at-least-32-characters".into(),
            ),
            ("OIDC_ISSUER", issuer.issuer.clone()),
            ("OIDC_AUDIENCE", AUDIENCE.into()),
        ],
    )
    .await?;
    let out = std::process::Command::new(&secured.bin)
        .args(["keys", "create", "--owner", "bench"])
        .envs(
            secured
                .env
                .iter()
                .filter(|(k, _)| k == "DATABASE_URL")
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for (label, credential) in [
        ("API key", key),
        (
            "JWT RS256",
            issuer.token("rsa-1", &issuer.claims("bench", &["Images.Generate"])),
        ),
        (
            "JWT ES256",
            issuer.token("ec-1", &issuer.claims("bench", &["Images.Generate"])),
        ),
    ] {
        let job = one_job(&secured, Some(&credential)).await?;
        rows.push(run(label, &secured, job, Some(credential)).await);
    }
    for (label, sample, cpu_ms) in rows {
        let base = *baseline.get_or_insert(sample.rps());
        s.row(vec![
            label.to_owned(),
            format!("{:.0}", sample.rps()),
            ms(sample.pct_ms(50.0)),
            ms(sample.pct_ms(99.0)),
            sample.errors.to_string(),
            format!("{cpu_ms:.3}"),
            format!("{:.2}", sample.rps() / base.max(1e-9)),
        ]);
    }
    Ok(s)
}
