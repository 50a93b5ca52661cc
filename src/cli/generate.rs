//! `imagegen generate "prompt"`: submits a job (`POST /api/v1/jobs`), follows it (event stream, else polling) with
//! a progress display on stderr, downloads its images into `-o DIR` and prints their paths on stdout.

use super::GenerateArgs;
use super::client::{Client, Exit, Failure};
use super::events::{self, Update};
use super::progress::Progress;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub async fn run(args: GenerateArgs) -> Result<(), Failure> {
    let prompt = args.prompt.trim();
    if prompt.is_empty() {
        return Err(Failure::new(Exit::BadInput, "the prompt is empty"));
    }
    if args.output.exists() && !args.output.is_dir() {
        return Err(Failure::new(
            Exit::BadInput,
            format!("-o {}: not a directory", args.output.display()),
        ));
    }
    let client = Client::new(&args.client)?;
    let mut body = json!({ "prompt": prompt });
    let fields = [
        ("model", args.model.clone()),
        ("provider", args.provider.clone()),
        ("size", args.size.clone()),
        ("quality", args.quality.clone()),
        ("background", args.background.clone()),
        ("output_format", args.format.clone()),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            body[name] = json!(v);
        }
    }
    if let Some(n) = args.n {
        body["num_images"] = json!(n);
    }
    if let Some(seed) = args.seed {
        body["seed"] = json!(seed);
    }

    let mut progress = Progress::new();
    let (job, _) = client
        .json(Method::POST, "/api/v1/jobs", Some(&body))
        .await?;
    let id = job["job_id"]
        .as_str()
        .ok_or_else(|| Failure::new(Exit::Unexpected, "the service's answer has no job_id"))?
        .to_owned();
    progress.line(&format!(
        "submitted job {id} ({}{})",
        job["model"].as_str().unwrap_or("?"),
        if job["sandbox"].as_bool() == Some(true) {
            ", sandbox"
        } else {
            ""
        }
    ));
    for t in job["translations"].as_array().into_iter().flatten() {
        if let Some(t) = t.as_str() {
            progress.line(t);
        }
    }
    progress.update(describe_status(&job));

    let mut on_update = |update: Update<'_>| {
        if let Some(text) = describe(&update) {
            progress.update(text);
        }
    };
    let follow = events::follow(&client, &id, &mut on_update);
    let finished = tokio::select! {
        result = tokio::time::timeout(Duration::from_secs(args.max_wait), follow) => match result {
            Ok(job) => job?,
            Err(_) => {
                return Err(Failure::new(Exit::Unexpected, format!(
                    "gave up waiting after {} s; job {id} goes on (imagegen jobs show {id})", args.max_wait)));
            }
        },
        _ = tokio::signal::ctrl_c() => {
            return Err(Failure::new(Exit::Interrupted, format!(
                "interrupted; job {id} goes on (imagegen jobs cancel {id} stops it)")));
        }
    };
    let status = finished["status"].as_str().unwrap_or_default();
    if status != "succeeded" {
        progress.finish();
        let error = &finished["error"];
        let reason = match (error["code"].as_str(), error["message"].as_str()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => finished["cancel_reason"]
                .as_str()
                .map_or_else(String::new, |r| format!("canceled by {r}")),
        };
        return Err(Failure::new(
            Exit::JobFailed,
            format!("job {id} {status}: {reason}"),
        ));
    }
    progress.update(format!(
        "succeeded: {} on {}{}",
        plural(finished["images"].as_array().map_or(0, Vec::len), "image"),
        finished["served_by"].as_str().unwrap_or("?"),
        cost_text(&finished["cost"])
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    ));
    let paths = download(&client, &finished, &args.output, &mut progress).await;
    progress.finish();
    let paths = paths?;
    for path in paths {
        super::commands::out(&path.display().to_string());
    }
    Ok(())
}

/// Writes each image as `DIR/<job id>-<n>.<ext>` (through a temporary file, so a path printed is a whole file).
async fn download(
    client: &Client,
    job: &Value,
    dir: &Path,
    progress: &mut Progress,
) -> Result<Vec<PathBuf>, Failure> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| Failure::new(Exit::Unexpected, format!("{}: {e}", dir.display())))?;
    let id = job["job_id"].as_str().unwrap_or("job");
    let mut paths = Vec::new();
    for (i, image) in job["images"].as_array().into_iter().flatten().enumerate() {
        let Some(url) = image["url"].as_str() else {
            continue;
        };
        let ext = match image["content_type"].as_str() {
            Some("image/jpeg") => "jpg",
            Some("image/webp") => "webp",
            _ => "png",
        };
        let path = dir.join(format!("{id}-{}.{ext}", i + 1));
        let request = client
            .request(Method::GET, url)
            .timeout(client.timeout() * 4);
        let response = client.send(url, request).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::transport(url, &e))?;
        let partial = path.with_extension(format!("{ext}.part"));
        let write = async {
            tokio::fs::write(&partial, &bytes).await?;
            tokio::fs::rename(&partial, &path).await
        };
        write
            .await
            .map_err(|e| Failure::new(Exit::Unexpected, format!("{}: {e}", path.display())))?;
        progress.line(&format!(
            "wrote {} ({}x{}, {} bytes)",
            path.display(),
            image["width"],
            image["height"],
            bytes.len()
        ));
        paths.push(path);
    }
    Ok(paths)
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `$0.000708 (estimated)`.
pub fn cost_text(cost: &Value) -> Option<String> {
    let usd = cost["usd"].as_f64()?;
    let estimated = if cost["estimated"].as_bool() == Some(true) {
        " (estimated)"
    } else {
        ""
    };
    Some(format!("${}{estimated}", usd_text(usd)))
}

pub fn usd_text(usd: f64) -> String {
    if usd == 0.0 {
        "0".into()
    } else if usd < 0.01 {
        format!("{usd:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else {
        format!("{usd:.4}")
    }
}

/// A polled job's state, or an `event: status`.
fn describe_status(data: &Value) -> String {
    let status = data["status"].as_str().unwrap_or("?");
    if status != "running" {
        return status.to_owned();
    }
    let mut text = "running".to_owned();
    if let Some(route) = data["route"].as_str() {
        text.push_str(&format!(" on {route}"));
    } else if let Some(p) = data["provider"].as_str() {
        text.push_str(&format!(" on {p}"));
    }
    if let Some(n) = data["attempt"].as_u64() {
        text.push_str(&format!(" (attempt {n})"));
    }
    text
}

fn describe(update: &Update<'_>) -> Option<String> {
    Some(match update {
        Update::Status(data) => describe_status(data),
        Update::Retrying(data) => format!(
            "attempt {} on {} failed ({}); retrying in {:.1} s",
            data["attempt"].as_u64().unwrap_or(0),
            data["route"].as_str().unwrap_or("?"),
            data["error"]["message"]
                .as_str()
                .or(data["error"]["code"].as_str())
                .unwrap_or("error"),
            data["retry_in_ms"].as_f64().unwrap_or(0.0) / 1000.0
        ),
        Update::Failover(data) => format!(
            "failover: {} -> {}",
            data["from"].as_str().unwrap_or("?"),
            data["to"].as_str().unwrap_or("?")
        ),
        Update::PartialImage(data) => format!(
            "partial image {} of picture {}",
            data["partial_image_index"].as_u64().unwrap_or(0) + 1,
            data["index"].as_u64().unwrap_or(0) + 1
        ),
    })
}
