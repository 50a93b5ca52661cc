//! Webhooks with two dispatchers at once: two API processes on one Postgres and Redis share the outbox, and each
//! delivery is sent once (per attempt), never by both. Needs several processes: left out of the standalone run
//! (scripts/test.sh), `not_standalone!` stays as a guard.

use crate::support::receiver::{Answer, Receiver};
use crate::support::{Options, Proc, kv, not_standalone, start};
use crate::webhooks::{
    job_body, owner_secret, reference_verify, settled, submit, verify, webhook_env,
};
use std::collections::HashMap;
use std::time::Duration;

#[sqlx::test(migrations = "./migrations")]
async fn two_dispatchers_send_each_delivery_once(pool: sqlx::PgPool) {
    not_standalone!("two API processes on one database");
    // Each answer takes a while, so both dispatchers have deliveries in flight at once; two slots each, so neither
    // can take all twenty.
    let receiver =
        Receiver::start(Vec::new(), Answer::ok().after(Duration::from_millis(700))).await;
    let mut env = webhook_env("0,1s,1s,1s");
    env.push(kv("WEBHOOK_CONCURRENCY", "2"));
    let stack = start(
        &pool,
        Options {
            api_env: env.clone(),
            ..Options::default()
        },
    )
    .await;
    let mut second_env = stack.env.clone();
    second_env.extend(env);
    second_env.extend([kv("API_HOST", "127.0.0.1"), kv("API_PORT", "0")]);
    let mut second = Proc::spawn("api-2", &["api"], &second_env);
    let second_api = format!("http://{}", second.listening_addr().await);
    let secret = owner_secret(&stack).await;

    let url = receiver.url("/hook");
    let mut jobs = Vec::new();
    for i in 0..20 {
        let body = job_body(&format!("picture {i}"), Some(&url));
        if i % 2 == 0 {
            jobs.push(submit(&stack, body).await);
        } else {
            let r = stack
                .http
                .post(format!("{second_api}/api/v1/jobs"))
                .json(&body)
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status(), 202);
            let v: serde_json::Value = r.json().await.expect("json");
            jobs.push(v["job_id"].as_str().expect("job id").to_owned());
        }
    }
    for id in &jobs {
        let job = stack.wait_terminal(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    receiver
        .wait_for(20, Duration::from_secs(90), |_| true)
        .await;
    let mut message_ids = Vec::new();
    for id in &jobs {
        let records = settled(&stack, id, 1).await;
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(records[0]["status"], "succeeded", "{records:#?}");
        assert_eq!(records[0]["attempts"], 1, "{records:#?}");
        message_ids.push(records[0]["message_id"].as_str().expect("id").to_owned());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let got = receiver.received();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for hook in &got {
        *seen.entry(hook.webhook_id()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(got.len(), 20, "{got:#?}");
    for id in &message_ids {
        assert_eq!(seen.get(id.as_str()), Some(&1), "{id} not delivered once");
    }
    for hook in &got {
        verify(&secret, hook);
    }
    reference_verify(
        &got.iter()
            .map(|r| (vec![secret.clone()], r))
            .collect::<Vec<_>>(),
    );
    // Both took part (otherwise this proves nothing about two dispatchers).
    let attempts = |out: String| out.matches("webhook attempt").count();
    let (first, other) = (attempts(stack.api_proc.output()), attempts(second.output()));
    assert!(
        first > 0 && other > 0,
        "both dispatchers should have sent some: {first} and {other}"
    );
    assert_eq!(first + other, 20);
}
