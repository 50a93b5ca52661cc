//! `imagegen jobs list|show|cancel`, `imagegen models` and `imagegen usage`: tables for people, `--json` for
//! scripts.

use super::client::{Client, Exit, Failure};
use super::generate::{cost_text, usd_text};
use super::{GroupBy, JobsAction, JobsArgs, ModelsArgs, UsageArgs};
use reqwest::Method;
use serde_json::Value;

/// Prints rows as columns padded to their widest cell (the last column is not padded).
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let line: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect();
        out(line.join("  ").trim_end());
    };
    print(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        print(row.clone());
    }
}

/// One line on stdout; a closed pipe (`| head`) is not an error.
pub fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!(
            "{}…",
            one_line
                .chars()
                .take(max.saturating_sub(1))
                .collect::<String>()
        )
    }
}

fn print_json(v: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Failure::new(Exit::Unexpected, format!("JSON: {e}")))?;
    out(&text);
    Ok(())
}

/// A job id as the API takes it (a UUID); anything else is refused here, before a request.
fn job_id(id: &str) -> Result<String, Failure> {
    uuid::Uuid::parse_str(id.trim())
        .map(|u| u.to_string())
        .map_err(|_| Failure::new(Exit::BadInput, format!("{id:?} is not a job id (a UUID)")))
}

pub async fn jobs(args: JobsArgs) -> Result<(), Failure> {
    let client = Client::new(&args.client)?;
    match args.action {
        JobsAction::List {
            limit,
            cursor,
            json,
        } => {
            let mut path = format!("/api/v1/jobs?limit={limit}");
            if let Some(c) = cursor {
                path.push_str("&cursor=");
                path.push_str(&percent_encode(&c));
            }
            let page = client.get(&path).await?;
            if json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = page["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    vec![
                        text(&j["job_id"]),
                        text(&j["status"]),
                        text(&j["model"]),
                        text(&j["size"]),
                        j["images"].as_array().map_or(0, Vec::len).to_string(),
                        cost_text(&j["cost"]).unwrap_or_else(|| "-".into()),
                        j["created_at"]
                            .as_str()
                            .map_or_else(|| "-".into(), |t| t.chars().take(19).collect()),
                        short(j["prompt"].as_str().unwrap_or_default(), 48),
                    ]
                })
                .collect();
            table(
                &[
                    "JOB", "STATUS", "MODEL", "SIZE", "IMAGES", "COST", "CREATED", "PROMPT",
                ],
                &rows,
            );
            if let Some(next) = page["next_cursor"].as_str() {
                eprintln!("more: imagegen jobs list --limit {limit} --cursor {next}");
            }
            Ok(())
        }
        JobsAction::Show { id, json } => {
            let job = client
                .get(&format!("/api/v1/jobs/{}", job_id(&id)?))
                .await?;
            if json {
                return print_json(&job);
            }
            let facts = [
                ("job", text(&job["job_id"])),
                ("status", text(&job["status"])),
                ("prompt", text(&job["prompt"])),
                ("model", text(&job["model"])),
                ("served by", text(&job["served_by"])),
                ("size", text(&job["size"])),
                ("quality", text(&job["quality"])),
                ("images", text(&job["num_images"])),
                ("seed", text(&job["seed"])),
                (
                    "cost",
                    cost_text(&job["cost"]).unwrap_or_else(|| "-".into()),
                ),
                ("created", text(&job["created_at"])),
                ("finished", text(&job["finished_at"])),
                (
                    "error",
                    match job["error"]["code"].as_str() {
                        Some(code) => format!("{code}: {}", text(&job["error"]["message"])),
                        None => "-".into(),
                    },
                ),
            ];
            for (name, value) in facts {
                if value != "-" {
                    out(&format!("{name:<10} {value}"));
                }
            }
            if job["sandbox"].as_bool() == Some(true) {
                out(&format!(
                    "{:<10} yes (the built-in emulator drew it)",
                    "sandbox"
                ));
            }
            for image in job["images"].as_array().into_iter().flatten() {
                out(&format!(
                    "{:<10} {}x{} {} {}",
                    "image",
                    image["width"],
                    image["height"],
                    text(&image["content_type"]),
                    text(&image["url"])
                ));
            }
            Ok(())
        }
        JobsAction::Cancel { id } => {
            let id = job_id(&id)?;
            let (job, _) = client
                .json(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None)
                .await?;
            out(&format!("job {id} {}", text(&job["status"])));
            Ok(())
        }
    }
}

pub async fn models(args: ModelsArgs) -> Result<(), Failure> {
    let client = Client::new(&args.client)?;
    let catalogue = client.get("/api/v1/models").await?;
    if args.json {
        return print_json(&catalogue);
    }
    let default = catalogue["default_model"].as_str().unwrap_or_default();
    let rows: Vec<Vec<String>> = catalogue["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| args.all || m["status"].as_str() != Some("retired"))
        .map(|m| {
            let list = |v: &Value| {
                let items: Vec<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect();
                if items.is_empty() {
                    "-".into()
                } else {
                    items.join(",")
                }
            };
            let id = m["id"].as_str().unwrap_or_default();
            vec![
                if id == default {
                    format!("{id} (default)")
                } else {
                    id.to_owned()
                },
                text(&m["status"]),
                if m["available"].as_bool() == Some(true) {
                    list(&m["served_by"])
                } else {
                    "not configured".into()
                },
                text(&m["sizes"]["default"]),
                list(&m["qualities"]),
                text(&m["max_images"]),
                if m["seed"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                list(&m["output_formats"]),
            ]
        })
        .collect();
    table(
        &[
            "MODEL",
            "STATUS",
            "PROVIDERS",
            "SIZE",
            "QUALITIES",
            "MAX N",
            "SEED",
            "FORMATS",
        ],
        &rows,
    );
    Ok(())
}

pub async fn usage(args: UsageArgs) -> Result<(), Failure> {
    let client = Client::new(&args.client)?;
    let group = match args.group_by {
        GroupBy::Day => "day",
        GroupBy::Model => "model",
        GroupBy::Provider => "provider",
    };
    let mut path = format!("/api/v1/usage?group_by={group}");
    for (name, value) in [("from", &args.from), ("to", &args.to)] {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", percent_encode(v)));
        }
    }
    let usage = client.get(&path).await?;
    if args.json {
        return print_json(&usage);
    }
    eprintln!(
        "usage of {} from {} to {}",
        text(&usage["owner"]),
        text(&usage["from"]),
        text(&usage["to"])
    );
    let row = |g: &Value| {
        vec![
            text(&g["key"]),
            text(&g["images"]),
            text(&g["jobs"]),
            format!("${}", usd_text(g["usd"].as_f64().unwrap_or(0.0))),
        ]
    };
    let mut rows: Vec<Vec<String>> = usage["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    rows.push(row(&usage["total"]));
    table(&[&group.to_uppercase(), "IMAGES", "JOBS", "USD"], &rows);
    Ok(())
}

fn percent_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
