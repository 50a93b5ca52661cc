//! Budgets for the whole API fleet: two API processes share the counters, so concurrent submissions cannot
//! overshoot a budget by more than one request; reservations settle to the real cost when jobs end; an admin's
//! change holds at once on every process; a key's own budget applies besides its owner's. The standalone re-run
//! of scripts/test.sh leaves this module out (`costs` covers the in-process counters).

use crate::costs::micros;
use crate::support::{self, Options, Reply, Stack, kv, not_standalone, start};
use imagegen_testkit::idp::{AUDIENCE, TestIdp};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

async fn call(
    stack: &Stack,
    url: &str,
    method: &str,
    credential: &str,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = stack.http.request(method, url).bearer_auth(credential);
    if let Some(body) = body {
        req = req.json(&body);
    }
    Reply::from(req.send().await.expect("request")).await
}

/// An API with authentication on, trusting `idp` (whose admin token manages keys and budgets).
fn authenticated(idp: &TestIdp) -> Vec<(String, String)> {
    vec![
        kv("ENABLE_AUTHENTICATION", "true"),
        kv(
            "DOWNLOAD_SIGNING_KEY",
            "budget-tests-signing-key-of-32-chars-or-more",
        ),
        kv("OIDC_ISSUER", idp.issuer.clone()),
        kv("OIDC_AUDIENCE", AUDIENCE),
    ]
}

/// An API key for each of team-a and team-b, created by `admin`.
async fn team_keys(stack: &Stack, admin: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for owner in ["team-a", "team-b"] {
        let created = call(
            stack,
            &stack.url("/api/v1/admin/keys"),
            "POST",
            admin,
            Some(json!({"owner": owner})),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
        keys.push(created.body["key"].as_str().expect("key").to_owned());
    }
    keys
}

/// BUDGET_USD_PER_DAY of $0.012 and requests that may cost $0.005 each: concurrent submissions from two owners
/// through two API processes admit three per owner (the third overshoots by less than one request), refuse the
/// rest with 402, settle to the real cost when the jobs end, and follow an admin's change at once.
#[sqlx::test(migrations = "./migrations")]
async fn budgets_hold_across_two_api_processes(pool: PgPool) {
    not_standalone!("needs a second API process");
    let idp = TestIdp::start().await;
    let mut auth = authenticated(&idp);
    auth.push(kv("BUDGET_USD_PER_DAY", "0.012"));
    let mut stack = start(
        &pool,
        Options {
            api_env: auth.clone(),
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let mut env = stack.env.clone();
    env.extend([kv("API_HOST", "127.0.0.1"), kv("API_PORT", "0")]);
    env.extend(auth);
    let mut second = support::Proc::spawn("api-2", &["api"], &env);
    let other = format!("http://{}", second.listening_addr().await);
    let admin = idp.token("rsa-1", &idp.claims("admin-oid", &["Images.Admin"]));

    let keys = team_keys(&stack, &admin).await;
    let body = |i: usize| json!({"prompt": format!("budget {i}"), "model": "gpt-image-1-mini", "quality": "low"});
    let submissions = (0..12).map(|i| {
        let key = keys[i % 2].clone();
        let url = if (i / 2) % 2 == 0 {
            stack.url("/api/v1/jobs")
        } else {
            format!("{other}/api/v1/jobs")
        };
        let stack = &stack;
        async move { (i % 2, call(stack, &url, "POST", &key, Some(body(i))).await) }
    });
    let answers = futures::future::join_all(submissions).await;
    for owner in 0..2 {
        let mine: Vec<&Reply> = answers
            .iter()
            .filter(|(o, _)| *o == owner)
            .map(|(_, r)| r)
            .collect();
        let accepted = mine.iter().filter(|r| r.status == 202).count();
        let refused: Vec<&&Reply> = mine.iter().filter(|r| r.status == 402).collect();
        assert_eq!(
            (accepted, refused.len()),
            (3, 3),
            "owner {owner}: {:?}",
            mine.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        let refusal = refused[0];
        refusal.assert_error(402, "budget_exceeded");
        let budget = &refusal.body["budget"];
        assert_eq!(
            (budget["scope"].as_str(), budget["period"].as_str()),
            (Some("owner"), Some("day")),
            "{}",
            refusal.body
        );
        assert_eq!(budget["limit_usd"], 0.012);
        let spent = budget["spent_usd"].as_f64().expect("spent");
        assert!(
            (0.012..0.012 + 0.0051).contains(&spent),
            "over by less than one request's $0.005: {spent}"
        );
        let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
            .format("%Y-%m-%dT00:00:00Z")
            .to_string();
        assert_eq!(budget["resets_at"], tomorrow.as_str(), "{}", refusal.body);
    }

    // The jobs run; each owner's reservation settles to what its jobs really cost, so there is room again.
    stack.start_workers().await;
    for key in &keys {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = call(
                &stack,
                &stack.url("/api/v1/jobs"),
                "POST",
                key,
                Some(body(99)),
            )
            .await;
            if r.status == 202 {
                break;
            }
            assert_eq!(r.status, 402, "{}", r.body);
            assert!(
                tokio::time::Instant::now() < deadline,
                "the budget never settled: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every job ends; the usage report of each owner is the sum of its jobs' costs, within budget + one request.
    for key in &keys {
        let jobs = call(&stack, &stack.url("/api/v1/jobs"), "GET", key, None).await;
        let ids: Vec<String> = jobs.body["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter_map(|j| j["job_id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 4, "{}", jobs.body);
        let mut sum = 0;
        for id in &ids {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let job = loop {
                let j = call(
                    &stack,
                    &stack.url(&format!("/api/v1/jobs/{id}?wait=10")),
                    "GET",
                    key,
                    None,
                )
                .await;
                if j.body["status"] == "succeeded" {
                    break j;
                }
                assert!(tokio::time::Instant::now() < deadline, "{}", j.body);
            };
            sum += micros(&job.body["cost"]);
        }
        assert!(sum <= 12_000 + 5_100, "spent {sum} micro-dollars");
        let report = call(&stack, &stack.url("/api/v1/usage"), "GET", key, None).await;
        assert_eq!(micros(&report.body["total"]), sum, "{}", report.body);
    }

    // An admin lowers team-a's budget to nothing: the other API process refuses at once; team-b is untouched.
    let set = call(
        &stack,
        &stack.url("/api/v1/admin/budgets/team-a"),
        "PUT",
        &admin,
        Some(json!({"usd_per_day": 0})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let a = call(
        &stack,
        &format!("{other}/api/v1/jobs"),
        "POST",
        &keys[0],
        Some(body(100)),
    )
    .await;
    a.assert_error(402, "budget_exceeded");
    let b = call(
        &stack,
        &format!("{other}/api/v1/jobs"),
        "POST",
        &keys[1],
        Some(body(101)),
    )
    .await;
    assert_eq!(b.status, 202, "{}", b.body);
    // A key's own budget applies besides its owner's.
    let capped = call(
        &stack,
        &stack.url("/api/v1/admin/keys"),
        "POST",
        &admin,
        Some(json!({"owner": "team-c", "budget_usd_per_day": 0})),
    )
    .await;
    assert_eq!(capped.body["budget_usd_per_day"], 0.0, "{}", capped.body);
    let c = call(
        &stack,
        &stack.url("/api/v1/jobs"),
        "POST",
        capped.body["key"].as_str().expect("key"),
        Some(body(102)),
    )
    .await;
    c.assert_error(402, "budget_exceeded");
    assert_eq!(c.body["budget"]["scope"], "api_key", "{}", c.body);
    // Admins see every owner's usage; the owners are told apart.
    let all = call(
        &stack,
        &stack.url("/api/v1/usage?owner=*"),
        "GET",
        &admin,
        None,
    )
    .await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(
        all.body["total"]["jobs"].as_i64() >= Some(8),
        "{}",
        all.body
    );
}

/// Flushes of the API's gathered budget reads so far (`imagegen_gathered_items{gather="budget_read"}`).
async fn budget_reads(stack: &Stack) -> u64 {
    let text = stack.metrics_text().await;
    text.lines()
        .find(|l| l.starts_with("imagegen_gathered_items_count{gather=\"budget_read\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// Without a default budget, only an owner's own budget row can limit a plain submission, so the insert checks the
/// row itself instead of a read before it: an owner without a budget is recorded with no budget read at all, and
/// an owner an admin gave a budget is still held to it.
#[sqlx::test(migrations = "./migrations")]
async fn without_a_default_budget_the_insert_checks_the_owners_budget(pool: PgPool) {
    not_standalone!("group commit is Postgres's");
    let idp = TestIdp::start().await;
    let stack = start(
        &pool,
        Options {
            api_env: authenticated(&idp),
            start_worker: false,
            ..Options::default()
        },
    )
    .await;
    let admin = idp.token("rsa-1", &idp.claims("admin-oid", &["Images.Admin"]));
    let keys = team_keys(&stack, &admin).await;
    let set = call(
        &stack,
        &stack.url("/api/v1/admin/budgets/team-a"),
        "PUT",
        &admin,
        Some(json!({"usd_per_day": 0.012})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let body = json!({"prompt": "budget", "model": "gpt-image-1-mini", "quality": "low"});
    let jobs_url = stack.url("/api/v1/jobs");

    let reads = budget_reads(&stack).await;
    for _ in 0..4 {
        let r = call(&stack, &jobs_url, "POST", &keys[1], Some(body.clone())).await;
        assert_eq!(r.status, 202, "team-b has no budget: {}", r.body);
    }
    assert_eq!(
        budget_reads(&stack).await,
        reads,
        "no budget row read first"
    );

    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let r = call(&stack, &jobs_url, "POST", &keys[0], Some(body.clone())).await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, [202, 202, 202, 402], "$0.005 each against $0.012");
    let refusal = last.expect("answers");
    refusal.assert_error(402, "budget_exceeded");
    assert_eq!(refusal.body["budget"]["scope"], "owner", "{}", refusal.body);
    assert_eq!(
        refusal.body["budget"]["limit_usd"], 0.012,
        "{}",
        refusal.body
    );
    assert!(
        budget_reads(&stack).await > reads,
        "team-a's budget was read once the insert handed its jobs back"
    );
}
