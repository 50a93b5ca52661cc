//! The webhook outbox against real databases (Postgres per test, and SQLite): deliveries are written by the
//! triggers in the state change's transaction, once per event and receiver; a dispatcher's claim takes a bounded
//! share per owner and never what another holds.

use imagegen_shared::db::{self, Db, NewJob};
use imagegen_shared::domain::{GenerationRequest, JobId, JobStatus, ProviderId};
use sqlx::PgPool;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sqlite() -> (Db, TempDir) {
    let dir =
        TempDir(std::env::temp_dir().join(format!("imagegen-outbox-{}", uuid::Uuid::new_v4())));
    let url = format!("sqlite:{}/jobs.db", dir.0.display());
    let db = db::connect_lazy(&url, 4).expect("sqlite");
    db::migrate(&db).await.expect("migrate");
    (db, dir)
}

fn new_job(owner: &str, webhook: Option<&str>) -> NewJob {
    let mut request = serde_json::json!({"prompt": "a kite", "model": "gpt-image-2", "size": "1024x1024",
        "num_images": 1, "allow_failover": true});
    if let Some(url) = webhook {
        request["webhook"] =
            serde_json::json!({"url": url, "events": ["job.started", "job.succeeded"]});
    }
    let request: GenerationRequest = serde_json::from_value(request).expect("valid request");
    NewJob {
        provider: ProviderId::OpenAi,
        id: JobId::new(),
        owner: owner.into(),
        correlation_id: "corr".into(),
        request,
        max_attempts: 3,
        max_calls: 3,
        status: JobStatus::Queued,
        moderation: None,
        error: None,
        deadline_secs: None,
        api_key_id: None,
        reserved_usd_micros: 0,
        inputs: Vec::new(),
    }
}

/// Runs a job to success (claim, then complete), which fires `job.started` and `job.succeeded`.
async fn run_job(db: &Db, job: &NewJob) {
    db::jobs::insert(db, job).await.expect("insert");
    db::jobs::claim_job(db, job.id, "w1", LEASE)
        .await
        .expect("claim")
        .expect("claimed");
    let served = db::Served {
        route: "openai:gpt-image-2".into(),
        translations: Vec::new(),
    };
    db::jobs::complete_succeeded(db, job.id, "w1", &[], &serde_json::json!({}), 5, &served)
        .await
        .expect("complete")
        .expect("ours");
}

async fn the_outbox_holds_each_event_once_per_receiver(db: &Db) {
    let events = vec!["job.succeeded".to_owned()];
    db::webhooks::create_endpoint(
        db,
        "alice",
        "https://a.example/hook",
        &events,
        None,
        "whsec_x",
        None,
    )
    .await
    .expect("endpoint");
    let job = new_job("alice", Some("https://own.example/hook"));
    run_job(db, &job).await;
    let filter = db::webhooks::DeliveryFilter {
        limit: 100,
        ..Default::default()
    };
    let mut got: Vec<(String, String)> = db::webhooks::list_deliveries(db, "alice", &filter)
        .await
        .expect("list")
        .into_iter()
        .map(|(d, _)| (d.event_type, d.url))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "job.started".to_owned(),
                "https://own.example/hook".to_owned()
            ),
            (
                "job.succeeded".to_owned(),
                "https://a.example/hook".to_owned()
            ),
            (
                "job.succeeded".to_owned(),
                "https://own.example/hook".to_owned()
            ),
        ]
    );
    // Another owner's job reaches neither.
    run_job(db, &new_job("bob", None)).await;
    let bob = db::webhooks::list_deliveries(db, "bob", &filter)
        .await
        .expect("list");
    assert!(bob.is_empty());
}

async fn a_claim_takes_a_bounded_share_per_owner_and_nothing_held(db: &Db) {
    // Alice has many due deliveries, Bob one.
    for _ in 0..6 {
        run_job(db, &new_job("alice", Some("https://alice.example/hook"))).await;
    }
    run_job(db, &new_job("bob", Some("https://bob.example/hook"))).await;
    let claimed = db::webhooks::claim_due(db, 20, 2, 60.0, &[])
        .await
        .expect("claim");
    let alice = claimed.iter().filter(|d| d.owner == "alice").count();
    let bob = claimed.iter().filter(|d| d.owner == "bob").count();
    assert_eq!((alice, bob), (2, 2), "at most 2 per owner, Bob not starved");
    assert!(claimed.iter().all(|d| d.attempts == 1));
    // What is held is not claimed again; an owner marked busy gets nothing.
    let again = db::webhooks::claim_due(db, 20, 100, 60.0, &["alice".to_owned()])
        .await
        .expect("claim");
    assert!(again.is_empty(), "{again:?}");
    let rest = db::webhooks::claim_due(db, 20, 100, 60.0, &[])
        .await
        .expect("claim");
    assert_eq!(
        rest.len(),
        10,
        "alice's other 10 (6 jobs x 2 events, 2 taken)"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn outbox_events_once_per_receiver_postgres(pool: PgPool) {
    the_outbox_holds_each_event_once_per_receiver(&Db::from(pool)).await;
}

#[tokio::test]
async fn outbox_events_once_per_receiver_sqlite() {
    let (db, _dir) = sqlite().await;
    the_outbox_holds_each_event_once_per_receiver(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn outbox_claims_are_fair_and_exclusive_postgres(pool: PgPool) {
    a_claim_takes_a_bounded_share_per_owner_and_nothing_held(&Db::from(pool)).await;
}

#[tokio::test]
async fn outbox_claims_are_fair_and_exclusive_sqlite() {
    let (db, _dir) = sqlite().await;
    a_claim_takes_a_bounded_share_per_owner_and_nothing_held(&db).await;
}
