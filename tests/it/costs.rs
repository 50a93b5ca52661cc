//! What images cost: every job shows its cost (per charged provider call, failover attempts included), the usage
//! report adds up to the jobs' costs exactly, and a budget refuses with 402 once spent (in either mode; `budgets`
//! has the fleet-wide cases).

use crate::support::dalle3_and_flux;
use crate::support::{Options, kv, start};
use serde_json::{Value, json};
use sqlx::PgPool;

pub fn micros(v: &Value) -> i64 {
    v["usd_micros"]
        .as_i64()
        .unwrap_or_else(|| panic!("no usd_micros in {v}"))
}

/// The emulator's `usage` priced at gpt-image-1-mini's $2 (text in) / $8 (image out) per 1M tokens, rounded up to
/// a micro-dollar.
fn mini_cost(usage: &Value) -> i64 {
    let text = usage["input_tokens_details"]["text_tokens"]
        .as_i64()
        .expect("text tokens");
    let output = usage["output_tokens"].as_i64().expect("output tokens");
    (text * 2000 + output * 8000 + 999) / 1000
}

#[sqlx::test(migrations = "./migrations")]
async fn every_job_shows_what_it_cost_and_the_usage_report_adds_up(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let body = json!({"prompt": "a lighthouse at dawn", "model": "gpt-image-1-mini", "quality": "low",
        "num_images": 2});
    let mini = stack.post("/api/v1/generate", body, &[]).await;
    assert_eq!(mini.status, 200, "{}", mini.body);
    let cost = &mini.body["cost"];
    assert_eq!(
        (cost["basis"].as_str(), cost["estimated"].as_bool()),
        (Some("tokens"), Some(false)),
        "priced from the usage the provider reported: {cost}"
    );
    assert_eq!(
        micros(cost),
        mini_cost(&mini.body["usage"]),
        "{}",
        mini.body
    );
    let charges = mini.body["charges"].as_array().expect("charges");
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["route"], "openai:gpt-image-1-mini");
    let shares: i64 = mini.body["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| micros(&i["cost"]))
        .sum();
    assert_eq!(
        shares,
        micros(cost),
        "the pictures' shares add up to the job's cost"
    );

    // gpt-image-2's price is provisional: its cost is marked estimated.
    let two = stack
        .post("/api/v1/generate", json!({"prompt": "a red fox"}), &[])
        .await;
    assert_eq!(two.status, 200, "{}", two.body);
    assert_eq!(two.body["cost"]["estimated"], true, "{}", two.body["cost"]);
    assert!(micros(&two.body["cost"]) > 0);
    // The job as read later says the same.
    let job_id = two.body["job_id"].as_str().expect("id");
    let read = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(read.body["cost"], two.body["cost"]);

    let report = stack.get("/api/v1/usage?group_by=model").await;
    assert_eq!(report.status, 200, "{}", report.body);
    let total = &report.body["total"];
    assert_eq!(
        micros(total),
        micros(cost) + micros(&two.body["cost"]),
        "{}",
        report.body
    );
    assert_eq!(
        (total["jobs"].as_i64(), total["images"].as_i64()),
        (Some(2), Some(3))
    );
    let models: Vec<&str> = report.body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["key"].as_str())
        .collect();
    assert_eq!(models, ["gpt-image-1-mini", "gpt-image-2"]);
    let by_day = stack.get("/api/v1/usage").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(
        by_day.body["groups"][0]["key"],
        today.as_str(),
        "{}",
        by_day.body
    );
    assert_eq!(micros(&by_day.body["groups"][0]), micros(total));

    // Bad questions get the error shape.
    for bad in [
        "/api/v1/usage?group_by=week",
        "/api/v1/usage?from=2026-12-01&to=2026-11-01",
        "/api/v1/usage?from=yesterday",
    ] {
        stack.get(bad).await.assert_error(400, "validation_failed");
    }
    stack
        .get("/api/v1/usage?owner=someone-else")
        .await
        .assert_error(403, "forbidden");
}

/// The first provider charges and then fails (its picture does not decode); the job fails over and succeeds on the
/// second; both calls are charged and shown.
#[sqlx::test(migrations = "./migrations")]
async fn a_failover_after_a_charge_shows_both_costs(pool: PgPool) {
    let mut options = dalle3_and_flux();
    options.api_env.push(kv("PROVIDER_MAX_ATTEMPTS", "1"));
    options.worker_env.push(kv("PROVIDER_MAX_ATTEMPTS", "1"));
    let stack = start(&pool, options).await;
    stack.emulator_config(json!({"corrupt_next": 1})).await;

    let r = stack
        .post(
            "/api/v1/generate",
            json!({"prompt": "harbour at night", "size": "1024x1024"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["served_by"], "flux:flux-schnell", "{}", r.body);
    let charges = r.body["charges"].as_array().expect("charges");
    let routes: Vec<&str> = charges.iter().filter_map(|c| c["route"].as_str()).collect();
    assert_eq!(
        routes,
        ["openai:gpt-image-2", "flux:flux-schnell"],
        "{}",
        r.body
    );
    assert_eq!(charges[0]["basis"], "tokens");
    assert_eq!(charges[1]["basis"], "per_megapixel");
    let sum: i64 = charges.iter().map(micros).sum();
    assert!(
        micros(&charges[0]) > 0 && micros(&charges[1]) > 0,
        "{charges:?}"
    );
    assert_eq!(micros(&r.body["cost"]), sum);
    assert_eq!(r.body["cost"]["basis"], "mixed");
    let report = stack.get("/api/v1/usage?group_by=provider").await;
    assert_eq!(micros(&report.body["total"]), sum, "{}", report.body);
    assert_eq!(report.body["total"]["jobs"], 1, "one job, charged twice");
}

/// A budget in one process (the standalone mode keeps its counters in process): spent, it answers 402.
#[sqlx::test(migrations = "./migrations")]
async fn a_spent_budget_answers_402_with_its_figures(pool: PgPool) {
    let stack = start(
        &pool,
        Options {
            api_env: vec![kv("BUDGET_USD_PER_DAY", "0.012")],
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let body = json!({"prompt": "x", "model": "gpt-image-1-mini", "quality": "low"});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(stack.post("/api/v1/jobs", body.clone(), &[]).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [202, 202, 202, 402], "$0.005 each against $0.012");
    let refusal = &statuses[3];
    refusal.assert_error(402, "budget_exceeded");
    assert!(
        refusal.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("daily budget")),
        "{}",
        refusal.body
    );
    assert_eq!(
        refusal.body["budget"]["limit_usd"], 0.012,
        "{}",
        refusal.body
    );
    // A canceled job gives its reservation back at once.
    let id = statuses[0].body["job_id"].as_str().expect("id");
    let canceled = stack
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}), &[])
        .await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);
    assert_eq!(stack.post("/api/v1/jobs", body, &[]).await.status, 202);
}
