//! The job store against a real Postgres (one fresh database per test): the conditional transitions that make a
//! job finish exactly once.

use imagegen_shared::db::{self, Db, JobFailure, NewImage, NewJob, RouteAttempt};
use imagegen_shared::domain::{
    FailureCode, GenerationRequest, ImageId, JobId, JobStatus, ProviderId,
};
use sqlx::PgPool;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

/// A fresh, migrated SQLite database in its own directory (removed when the guard drops): the standalone mode's
/// job store must pass the same tests as the Postgres one.
async fn sqlite() -> (Db, TempDir) {
    let dir =
        TempDir(std::env::temp_dir().join(format!("imagegen-store-{}", uuid::Uuid::new_v4())));
    let url = format!("sqlite:{}/jobs.db", dir.0.display());
    let db = db::connect_lazy(&url, 4).expect("sqlite");
    db::migrate(&db).await.expect("migrate");
    (db, dir)
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn request(prompt: &str) -> GenerationRequest {
    serde_json::from_value(
        serde_json::json!({"prompt": prompt, "model": "gpt-image-2", "size": "1024x1024",
        "num_images": 1, "allow_failover": true}),
    )
    .expect("valid request")
}

fn new_job(owner: &str) -> NewJob {
    NewJob {
        provider: ProviderId::OpenAi,
        id: JobId::new(),
        owner: owner.into(),
        correlation_id: "corr-1".into(),
        request: request("a lighthouse"),
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

fn image(position: i32) -> NewImage {
    NewImage {
        id: ImageId::new(),
        position,
        storage_key: format!("2026/11/24/{position}.png"),
        content_type: "image/png".into(),
        size_bytes: 10,
        sha256: "ab".into(),
        width: 1024,
        height: 1024,
        revised_prompt: Some("revised".into()),
        seed: None,
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_job_is_claimed_once_and_completed_once(pool: PgPool) {
    a_job_is_claimed_once_and_completed_once_on(Db::from(pool)).await;
}

#[tokio::test]
async fn a_job_is_claimed_once_and_completed_once_on_sqlite() {
    let (db, _dir) = sqlite().await;
    a_job_is_claimed_once_and_completed_once_on(db).await;
}

async fn a_job_is_claimed_once_and_completed_once_on(db: Db) {
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    assert_eq!(job.status, JobStatus::Queued);

    let claimed = db::jobs::claim_job(&db, job.id, "w1", LEASE)
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!(
        (claimed.status, claimed.worker_id.as_deref()),
        (JobStatus::Running, Some("w1"))
    );
    // A duplicate delivery finds it held by a live lease.
    assert!(
        db::jobs::claim_job(&db, job.id, "w2", LEASE)
            .await
            .expect("claim")
            .is_none()
    );
    assert!(
        db::jobs::record_attempt(&db, job.id, "w2", "dalle3:openai")
            .await
            .expect("attempt")
            .is_none()
    );
    let attempt = db::jobs::record_attempt(&db, job.id, "w1", "dalle3:openai")
        .await
        .expect("attempt");
    assert_eq!(attempt.map(|a| (a.total, a.on_route)), Some((1, 1)));
    let other = db::jobs::record_attempt(&db, job.id, "w1", "flux_schnell")
        .await
        .expect("attempt");
    assert_eq!(
        other.map(|a| (a.total, a.on_route)),
        Some((2, 1)),
        "counted per route and in total"
    );

    let meta = serde_json::json!({"request_id": "req_1"});
    let done = db::jobs::complete_succeeded(&db, job.id, "w1", &[image(0)], &meta, 1200, &served())
        .await
        .expect("complete");
    let done = done.expect("first completion wins");
    assert_eq!(done.parts.job.status, JobStatus::Succeeded);
    assert_eq!(done.parts.images.len(), 1);
    // A second completion (late duplicate) changes nothing and writes no images.
    let again = db::jobs::complete_succeeded(&db, job.id, "w1", &[image(1)], &meta, 1, &served())
        .await
        .expect("complete");
    assert!(again.is_none());
    let failure = JobFailure {
        status: JobStatus::Failed,
        code: FailureCode::ProviderError,
        message: "y".into(),
        moderation: None,
    };
    assert!(
        db::jobs::complete_unsuccessful(&db, job.id, "w1", &failure, &[])
            .await
            .expect("fail")
            .is_none()
    );
    let images = db::images::images_for_jobs(&db, "alice", &[job.id])
        .await
        .expect("images");
    assert_eq!(images.len(), 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_expired_lease_lets_another_worker_take_over_and_the_late_one_loses(pool: PgPool) {
    an_expired_lease_lets_another_worker_take_over_and_the_late_one_loses_on(Db::from(pool)).await;
}

#[tokio::test]
async fn an_expired_lease_lets_another_worker_take_over_and_the_late_one_loses_on_sqlite() {
    let (db, _dir) = sqlite().await;
    an_expired_lease_lets_another_worker_take_over_and_the_late_one_loses_on(db).await;
}

async fn an_expired_lease_lets_another_worker_take_over_and_the_late_one_loses_on(db: Db) {
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    db::jobs::claim_job(&db, job.id, "w1", Duration::from_millis(1))
        .await
        .expect("claim")
        .expect("claimed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = db::jobs::claim_job(&db, job.id, "w2", LEASE)
        .await
        .expect("claim");
    assert_eq!(
        taken.expect("lease expired").worker_id.as_deref(),
        Some("w2")
    );
    assert!(
        !db::jobs::extend_lease(&db, job.id, "w1", LEASE)
            .await
            .expect("extend")
    );
    let meta = serde_json::json!({});
    assert!(
        db::jobs::complete_succeeded(&db, job.id, "w1", &[image(0)], &meta, 1, &served())
            .await
            .expect("late")
            .is_none()
    );
    assert!(
        db::jobs::complete_succeeded(&db, job.id, "w2", &[image(0)], &meta, 1, &served())
            .await
            .expect("owner")
            .is_some()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn reads_are_scoped_to_the_owner(pool: PgPool) {
    reads_are_scoped_to_the_owner_on(Db::from(pool)).await;
}

#[tokio::test]
async fn reads_are_scoped_to_the_owner_on_sqlite() {
    let (db, _dir) = sqlite().await;
    reads_are_scoped_to_the_owner_on(db).await;
}

async fn reads_are_scoped_to_the_owner_on(db: Db) {
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    assert!(
        db::jobs::get_job(&db, "alice", job.id)
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        db::jobs::get_job(&db, "mallory", job.id)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        db::jobs::list_jobs(&db, "mallory", None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn listing_pages_newest_first(pool: PgPool) {
    listing_pages_newest_first_on(Db::from(pool)).await;
}

#[tokio::test]
async fn listing_pages_newest_first_on_sqlite() {
    let (db, _dir) = sqlite().await;
    listing_pages_newest_first_on(db).await;
}

async fn listing_pages_newest_first_on(db: Db) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            db::jobs::insert(&db, &new_job("alice"))
                .await
                .expect("insert")
                .id,
        );
    }
    let first = db::jobs::list_jobs(&db, "alice", None, 2)
        .await
        .expect("page 1");
    assert_eq!(
        first.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let last = first.last().expect("row");
    let second = db::jobs::list_jobs(&db, "alice", Some((last.created_at, last.id)), 10)
        .await
        .expect("page 2");
    assert_eq!(
        second.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1], ids[0]]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_released_job_can_be_claimed_again_with_attempts_kept(pool: PgPool) {
    a_released_job_can_be_claimed_again_with_attempts_kept_on(Db::from(pool)).await;
}

#[tokio::test]
async fn a_released_job_can_be_claimed_again_with_attempts_kept_on_sqlite() {
    let (db, _dir) = sqlite().await;
    a_released_job_can_be_claimed_again_with_attempts_kept_on(db).await;
}

async fn a_released_job_can_be_claimed_again_with_attempts_kept_on(db: Db) {
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    db::jobs::claim_job(&db, job.id, "w1", LEASE)
        .await
        .expect("claim")
        .expect("claimed");
    db::jobs::record_attempt(&db, job.id, "w1", "dalle3:openai")
        .await
        .expect("attempt");
    assert!(
        db::jobs::release_job(&db, job.id, "w1")
            .await
            .expect("release")
    );
    let again = db::jobs::claim_job(&db, job.id, "w2", LEASE)
        .await
        .expect("claim")
        .expect("claimable again");
    assert_eq!(again.attempts, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_is_recorded_whole(pool: PgPool) {
    a_batch_is_recorded_whole_on(Db::from(pool)).await;
}

#[tokio::test]
async fn a_batch_is_recorded_whole_on_sqlite() {
    let (db, _dir) = sqlite().await;
    a_batch_is_recorded_whole_on(db).await;
}

async fn a_batch_is_recorded_whole_on(db: Db) {
    let jobs = vec![new_job("alice"), new_job("alice")];
    let batch_id = imagegen_shared::domain::BatchId::new();
    let (batch, rows) = db::batches::insert_batch(&db, batch_id, "alice", "corr", &jobs)
        .await
        .expect("batch");
    assert_eq!((batch.item_count, rows.len()), (2, 2));
    assert_eq!(
        rows.iter().map(|r| r.batch_index).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    let listed = db::jobs::jobs_in_batch(&db, "alice", batch_id)
        .await
        .expect("items");
    assert_eq!(listed.len(), 2);
    db::batches::delete_batch(&db, batch_id)
        .await
        .expect("delete");
    assert!(
        db::jobs::jobs_in_batch(&db, "alice", batch_id)
            .await
            .expect("items")
            .is_empty()
    );
}

fn served() -> db::Served {
    db::Served {
        route: "dalle3:openai".into(),
        translations: Vec::new(),
    }
}

/// A failure code written by another version reads back as it was, not as an error.
#[sqlx::test(migrations = "../migrations")]
async fn unknown_failure_codes_from_other_versions_read_back(pool: PgPool) {
    let db = Db::from(pool.clone());
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    sqlx::query("UPDATE jobs SET status = 'failed', error_code = 'budget_exceeded' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .expect("update");
    let read = db::jobs::get_job(&db, "alice", job.id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(
        read.error_code,
        Some(FailureCode::Unknown("budget_exceeded".into()))
    );
    sqlx::query("UPDATE jobs SET error_code = 'storage_error' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .expect("update");
    let read = db::jobs::get_job(&db, "alice", job.id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(read.error_code, Some(FailureCode::StorageError));
}

/// MAX_ACTIVE_JOBS_PER_OWNER holds under concurrent submissions (as from several API processes: each insert is its
/// own connection), and a replay of a recorded job comes back even at the limit.
#[sqlx::test(migrations = "../migrations")]
async fn the_active_jobs_limit_holds_under_concurrent_inserts(pool: PgPool) {
    the_active_jobs_limit_holds_under_concurrent_inserts_on(Db::from(pool)).await;
}

#[tokio::test]
async fn the_active_jobs_limit_holds_under_concurrent_inserts_on_sqlite() {
    let (db, _dir) = sqlite().await;
    the_active_jobs_limit_holds_under_concurrent_inserts_on(db).await;
}

async fn the_active_jobs_limit_holds_under_concurrent_inserts_on(db: Db) {
    use db::idempotency::{Existing, KeyClaim};
    use db::jobs::Inserted;
    let tries: Vec<_> = (0..12)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db::jobs::insert_admitted(&db, &new_job("alice"), None, Some(3)).await
            })
        })
        .collect();
    let mut recorded = 0;
    let mut refused = 0;
    for t in tries {
        match t.await.expect("task").expect("insert") {
            Inserted::New(_) => recorded += 1,
            Inserted::OverActiveLimit { active } => {
                assert_eq!(active, 3);
                refused += 1;
            }
            Inserted::Existing(e) => panic!("no key, yet {e:?}"),
        }
    }
    assert_eq!((recorded, refused), (3, 9));
    assert_eq!(
        db::jobs::active_count(&db, "alice").await.expect("count"),
        3
    );
    // Another owner is not held back by alice's jobs.
    assert!(matches!(
        db::jobs::insert_admitted(&db, &new_job("bob"), None, Some(3))
            .await
            .expect("bob"),
        Inserted::New(_)
    ));

    // A keyed job, then its replay at the limit: the same job, nothing new.
    let key = KeyClaim {
        owner: "bob",
        key: "k1",
        request_hash: "h1",
        ttl: std::time::Duration::from_secs(60),
    };
    let first = match db::jobs::insert_admitted(&db, &new_job("bob"), Some(&key), Some(2))
        .await
        .expect("first")
    {
        Inserted::New(job) => job,
        other => panic!("{other:?}"),
    };
    let again = db::jobs::insert_admitted(&db, &new_job("bob"), Some(&key), Some(2))
        .await
        .expect("replay");
    assert!(
        matches!(again, Inserted::Existing(Existing::Job(id)) if id == first.id),
        "{again:?}"
    );
    let found = db::idempotency::lookup(&db, "bob", "k1", "h1")
        .await
        .expect("lookup");
    assert_eq!(found, Some(Existing::Job(first.id)));
    assert!(
        db::idempotency::lookup(&db, "bob", "k1", "other")
            .await
            .is_err(),
        "another request under the key"
    );
}

/// Expired Idempotency-Keys are deleted by the reconciler's pass; live ones stay.
#[sqlx::test(migrations = "../migrations")]
async fn the_reconciler_purges_expired_idempotency_keys(pool: PgPool) {
    use db::idempotency::KeyClaim;
    let db = Db::from(pool);
    for (key, ttl) in [("old", 0), ("live", 3600)] {
        let claim = KeyClaim {
            owner: "alice",
            key,
            request_hash: "h",
            ttl: Duration::from_secs(ttl),
        };
        db::jobs::insert_admitted(&db, &new_job("alice"), Some(&claim), None)
            .await
            .expect("insert");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pass = db::reconcile::pass(&db, 0, Duration::from_secs(3600), 100)
        .await
        .expect("pass")
        .expect("lock");
    assert_eq!(pass.purged_keys, 1);
    assert_eq!(
        db::idempotency::lookup(&db, "alice", "old", "h")
            .await
            .expect("lookup"),
        None
    );
    assert!(
        db::idempotency::lookup(&db, "alice", "live", "h")
            .await
            .expect("lookup")
            .is_some()
    );
}

/// The pool does not ping a connection busy a moment ago (a round trip per query saved), but one that sat idle past
/// a second is checked first: one the server closed meanwhile (a restart, an idle-session timeout) is replaced
/// instead of failing the query it was handed out for.
#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_before_use() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let Db::Postgres(pool) = db::connect_lazy(&url, 1).expect("pool") else {
        panic!("DATABASE_URL is not a Postgres URL");
    };
    let pid = || sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool);
    let first = pid().await.expect("first query");
    let admin = PgPool::connect(&url).await.expect("admin connection");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(killed, "the pool's connection was not terminated");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = pid()
        .await
        .expect("the query after the idle connection was closed");
    assert_ne!(first, second, "the closed connection was handed out again");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_fetched_url_input_is_recorded_once_by_the_worker_holding_the_job(pool: PgPool) {
    a_fetched_url_input_is_recorded_once_by_the_worker_holding_the_job_on(Db::from(pool)).await;
}

#[tokio::test]
async fn a_fetched_url_input_is_recorded_once_by_the_worker_holding_the_job_on_sqlite() {
    let (db, _dir) = sqlite().await;
    a_fetched_url_input_is_recorded_once_by_the_worker_holding_the_job_on(db).await;
}

/// `record_fetched` sets a URL input's object only while its `storage_key` is NULL and only for the worker that
/// holds the job: of two racing fetches one wins, and a worker that lost its job records nothing.
async fn a_fetched_url_input_is_recorded_once_by_the_worker_holding_the_job_on(db: Db) {
    use db::job_inputs::{FetchedInput, InputRole, JobInput};
    let mut job = new_job("alice");
    job.inputs = vec![JobInput {
        job_id: job.id,
        owner: "alice".into(),
        role: InputRole::Image,
        position: 0,
        storage_key: None,
        source_url: Some("https://images.example/cat.png".into()),
        source_image: None,
        content_type: None,
        size_bytes: None,
        sha256: None,
        width: None,
        height: None,
    }];
    let id = job.id;
    db::jobs::insert(&db, &job).await.expect("insert");
    let fetched = |key: &str| FetchedInput {
        storage_key: key.into(),
        content_type: "image/png".into(),
        size_bytes: 123,
        sha256: "cd".into(),
        width: 64,
        height: 32,
    };
    let record = |worker: &'static str, key: &'static str| {
        let db = db.clone();
        async move {
            db::job_inputs::record_fetched(&db, id, InputRole::Image, 0, worker, &fetched(key))
                .await
                .expect("record")
        }
    };
    // Not claimed yet: nobody holds it.
    assert!(!record("w1", "inputs/a.png").await);
    db::jobs::claim_job(&db, id, "w1", LEASE)
        .await
        .expect("claim")
        .expect("claimed");
    assert!(!record("w2", "inputs/b.png").await, "not w2's job");
    assert!(record("w1", "inputs/a.png").await);
    assert!(!record("w1", "inputs/c.png").await, "recorded once");
    let rows = db::job_inputs::load(&db, id).await.expect("load");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].storage_key.as_deref(), Some("inputs/a.png"));
    assert_eq!(rows[0].content_type.as_deref(), Some("image/png"));
    assert_eq!(
        (rows[0].size_bytes, rows[0].width, rows[0].height),
        (Some(123), Some(64), Some(32))
    );
    assert_eq!(rows[0].sha256.as_deref(), Some("cd"));
}

/// Group commit: submissions arriving together are recorded by one INSERT, each caller answered with its own row,
/// written exactly as the single-row insert writes it (a deadline and a blocked job included).
#[sqlx::test(migrations = "../migrations")]
async fn concurrent_plain_inserts_are_recorded_together_each_with_its_own_row(pool: PgPool) {
    use imagegen_shared::db::group_insert::GroupInsert;
    let group = GroupInsert::new(pool.clone());
    let mut jobs: Vec<NewJob> = (0..40)
        .map(|i| new_job(&format!("owner-{}", i % 3)))
        .collect();
    jobs[5].deadline_secs = Some(60);
    jobs[7].status = JobStatus::Moderated;
    jobs[7].error = Some((FailureCode::ContentBlocked, "blocked".into()));
    let records = futures::future::join_all(jobs.iter().map(|j| group.insert(j.clone()))).await;
    let (flushes, rows) = group.stats();
    assert_eq!(rows, 40);
    assert!(
        flushes < 40,
        "{flushes} flushes for 40 rows: nothing was grouped"
    );
    let db = Db::from(pool);
    for (job, record) in jobs.iter().zip(records) {
        let record = record.expect("recorded");
        assert_eq!(record.id, job.id);
        assert_eq!(record.owner, job.owner);
        let stored = db::jobs::get_job(&db, &job.owner, job.id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.status, job.status);
        assert_eq!(stored.request.0, job.request);
        assert_eq!(stored.deadline_at.is_some(), job.deadline_secs.is_some());
        assert_eq!(stored.finished_at.is_some(), job.status.is_terminal());
    }
}

/// One bad row (an id already taken) fails only its own submission; the rest of its flush is recorded.
#[sqlx::test(migrations = "../migrations")]
async fn a_bad_row_fails_only_its_own_submission(pool: PgPool) {
    use imagegen_shared::db::group_insert::GroupInsert;
    let db = Db::from(pool.clone());
    let taken = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    let group = GroupInsert::new(pool);
    let mut jobs: Vec<NewJob> = (0..5).map(|_| new_job("bob")).collect();
    jobs[2].id = taken.id;
    let results = futures::future::join_all(jobs.iter().map(|j| group.insert(j.clone()))).await;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_err(), i == 2, "row {i}: {result:?}");
    }
    let bobs = db::jobs::list_jobs(&db, "bob", None, 10)
        .await
        .expect("list");
    assert_eq!(bobs.len(), 4);
}

/// A row inserted unless its owner has a budget: written for an owner without a budget row or with an empty one,
/// handed back unwritten for an owner with a limit, whatever else its flush carries.
#[sqlx::test(migrations = "../migrations")]
async fn a_row_checked_against_its_owners_budget_is_written_only_without_one(pool: PgPool) {
    use imagegen_shared::db::group_insert::{Check, Commit, GroupInsert, GroupInserted};
    let db = Db::from(pool.clone());
    db::budgets::set(&db, "limited", Some(12_000), None)
        .await
        .expect("budget");
    db::budgets::set(&db, "empty-row", None, None)
        .await
        .expect("budget");
    let group = GroupInsert::new(pool);
    let jobs: Vec<NewJob> = ["limited", "free", "empty-row", "limited"]
        .iter()
        .map(|owner| new_job(owner))
        .collect();
    // The last "limited" row was read and reserved for: written whatever the budget.
    let checks = [
        Check::UnlessBudgeted,
        Check::UnlessBudgeted,
        Check::UnlessBudgeted,
        Check::Read,
    ];
    let outcomes = futures::future::join_all(
        jobs.iter()
            .zip(checks)
            .map(|(job, check)| group.insert_checked(job.clone(), check, Commit::Flushed)),
    )
    .await;
    let written: Vec<bool> = outcomes
        .iter()
        .map(|o| match o.as_ref().expect("no error") {
            GroupInserted::New(_) => true,
            GroupInserted::Budgeted(_) => false,
        })
        .collect();
    assert_eq!(written, [false, true, true, true]);
    if let Ok(GroupInserted::Budgeted(back)) = &outcomes[0] {
        assert_eq!(back.id, jobs[0].id, "the job handed back as given");
    }
    let stored = db::jobs::get_job(&db, "limited", jobs[0].id)
        .await
        .expect("read");
    assert!(stored.is_none(), "nothing written for the budgeted owner");
}

/// Rows recorded without a flush (wait mode's) are recorded like any others, and the connection that wrote them
/// flushes every commit again afterwards: a 202 recorded on it next must be on disk before its client hears of it.
#[sqlx::test(migrations = "../migrations")]
async fn an_unflushed_group_insert_records_its_rows_and_leaves_its_connection_flushing(
    pool: PgPool,
) {
    use imagegen_shared::db::group_insert::{Check, Commit, GroupInsert, GroupInserted};
    let pool = one_connection(&pool).await;
    let group = GroupInsert::new(pool.clone());
    let jobs: Vec<NewJob> = (0..3).map(|_| new_job("alice")).collect();
    let outcomes =
        futures::future::join_all(jobs.iter().map(|job| {
            group.insert_checked(job.clone(), Check::UnlessBudgeted, Commit::Unflushed)
        }))
        .await;
    for outcome in outcomes {
        assert!(matches!(outcome, Ok(GroupInserted::New(_))), "{outcome:?}");
    }
    let db = Db::from(pool.clone());
    assert_eq!(
        db::jobs::list_jobs(&db, "alice", None, 10)
            .await
            .expect("list")
            .len(),
        3
    );
    let setting: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&pool)
        .await
        .expect("setting");
    assert_eq!(setting, "on");
    db::jobs::make_durable(&db, jobs[0].id)
        .await
        .expect("durable");
}

/// Runs job `id` to success on `worker`, one picture.
async fn claim_and_succeed(db: &Db, id: JobId, worker: &str) {
    db::jobs::claim_job(db, id, worker, LEASE)
        .await
        .expect("claim")
        .expect("claimed");
    db::jobs::complete_succeeded(
        db,
        id,
        worker,
        &[image(0)],
        &serde_json::json!({}),
        1,
        &served(),
    )
    .await
    .expect("complete")
    .expect("completed");
}

/// Runs job `id` on `worker` to a failure (no pictures, budget not settled).
async fn claim_and_fail(db: &Db, id: JobId, worker: &str) {
    db::jobs::claim_job(db, id, worker, LEASE)
        .await
        .expect("claim")
        .expect("claimed");
    let failure = JobFailure {
        status: JobStatus::Failed,
        code: FailureCode::ProviderError,
        message: "the provider failed".into(),
        moderation: None,
    };
    db::jobs::complete_unsuccessful(db, id, worker, &failure, &[])
        .await
        .expect("fail")
        .expect("ours");
}

/// Claims gathered: jobs claimed together are each claimed once, for this worker, as `claim_job` claims them; a job
/// running on another worker's live lease, a finished one, one asked for twice at once and an unknown id are not.
#[sqlx::test(migrations = "../migrations")]
async fn gathered_claims_give_each_job_once_and_only_claimable_ones(pool: PgPool) {
    use imagegen_shared::db::group_claim::GroupClaims;
    let db = Db::from(pool.clone());
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            db::jobs::insert(&db, &new_job("alice"))
                .await
                .expect("insert")
                .id,
        );
    }
    let running_elsewhere = ids[3];
    db::jobs::claim_job(&db, running_elsewhere, "w-other", LEASE)
        .await
        .expect("claim")
        .expect("claimed");
    let finished = ids[4];
    claim_and_succeed(&db, finished, "w-other").await;
    let unknown = JobId::new();
    let claims = GroupClaims::new(pool, "w-here".into(), LEASE);
    // ids[7] asked for twice in the same breath (its message delivered twice).
    let mut asked = ids.clone();
    asked.push(ids[7]);
    asked.push(unknown);
    let answers = futures::future::join_all(asked.iter().map(|id| claims.claim(&db, *id))).await;
    let (flushes, claimed) = claims.stats();
    assert_eq!(claimed, asked.len() as u64);
    assert!(
        flushes < asked.len() as u64,
        "{flushes} flushes for {claimed} claims: nothing was gathered"
    );
    let mut taken = std::collections::HashMap::new();
    for (id, answer) in asked.iter().zip(answers) {
        if let Some(job) = answer.expect("claim") {
            assert_eq!(job.id, *id);
            assert_eq!(job.status, JobStatus::Running);
            assert_eq!(job.worker_id.as_deref(), Some("w-here"));
            assert!(job.lease_until.is_some() && job.started_at.is_some());
            *taken.entry(*id).or_insert(0) += 1;
        }
    }
    for id in &ids {
        let expected = usize::from(*id != running_elsewhere && *id != finished);
        assert_eq!(taken.get(id).copied().unwrap_or(0), expected, "job {id}");
    }
    assert!(!taken.contains_key(&unknown));
    let other = db::jobs::get_job_unscoped(&db, running_elsewhere)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        other.worker_id.as_deref(),
        Some("w-other"),
        "a live lease is not taken over"
    );
}

/// Attempt counts gathered: each call is counted once, in total and on its own route, as `record_attempt` counts
/// it; a job on another worker, a finished one and an unknown id are not counted, and a job counted twice in the
/// same breath (run twice at once) has both calls counted.
#[sqlx::test(migrations = "../migrations")]
async fn gathered_attempt_counts_count_each_call_once_on_its_route(pool: PgPool) {
    use imagegen_shared::db::group_attempt::GroupAttempts;
    let db = Db::from(pool.clone());
    let mut ids = Vec::new();
    for i in 0..24 {
        let id = db::jobs::insert(&db, &new_job("alice"))
            .await
            .expect("insert")
            .id;
        match i {
            3 => claim_and_succeed(&db, id, "w-here").await,
            4 => {
                db::jobs::claim_job(&db, id, "w-other", LEASE)
                    .await
                    .expect("claim")
                    .expect("claimed");
            }
            _ => {
                db::jobs::claim_job(&db, id, "w-here", LEASE)
                    .await
                    .expect("claim")
                    .expect("claimed");
            }
        }
        ids.push(id);
    }
    // One call counted before: the gathered count goes on from it.
    db::jobs::record_attempt(&db, ids[0], "w-here", "openai")
        .await
        .expect("count")
        .expect("ours");
    let route = |i: usize| {
        if i.is_multiple_of(2) {
            "openai"
        } else {
            "flux"
        }
    };
    let mut asked: Vec<(JobId, &str)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, route(i)))
        .collect();
    asked.push((ids[7], "openai"));
    asked.push((JobId::new(), "openai"));
    let attempts = GroupAttempts::new(pool, "w-here".into());
    let answers = futures::future::join_all(
        asked
            .iter()
            .map(|(id, route)| attempts.record(&db, *id, route)),
    )
    .await;
    let (flushes, counted) = attempts.stats();
    assert_eq!(counted, asked.len() as u64);
    assert!(
        flushes < asked.len() as u64,
        "{flushes} flushes for {counted} counts: nothing was gathered"
    );
    let mut twice = Vec::new();
    for (i, ((id, _), answer)) in asked.iter().zip(answers).enumerate() {
        let answer = answer.expect("count");
        match i {
            3 | 4 | 25 => assert_eq!(answer, None, "call {i}: not this worker's job"),
            0 => assert_eq!(
                answer,
                Some(RouteAttempt {
                    total: 2,
                    on_route: 2
                })
            ),
            // Job 7's two calls, one per route: one after the other, the second sees both.
            7 | 24 => {
                let answer = answer.expect("ours");
                assert_eq!(answer.on_route, 1, "call {i}");
                twice.push(answer.total);
            }
            _ => assert_eq!(
                answer,
                Some(RouteAttempt {
                    total: 1,
                    on_route: 1
                }),
                "call {i}"
            ),
        }
        let job = db::jobs::get_job_unscoped(&db, *id).await.expect("read");
        if i == 25 {
            assert!(job.is_none());
            continue;
        }
        let job = job.expect("row");
        let expected: &[(&str, i32)] = match i {
            0 => &[("openai", 2)],
            3 | 4 => &[],
            7 | 24 => &[("flux", 1), ("openai", 1)],
            _ => &[(route(i), 1)],
        };
        let expected: std::collections::BTreeMap<String, i32> =
            expected.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        assert_eq!(
            job.provider_attempts.0, expected,
            "job {i}'s counts per route"
        );
        assert_eq!(
            job.attempts,
            expected.values().sum::<i32>(),
            "job {i}'s count"
        );
    }
    twice.sort_unstable();
    assert_eq!(twice, [1, 2], "job 7's two calls are both counted");
}

/// Successes gathered: each job is finished once, with its own images, charges and settlement, exactly as
/// `complete_succeeded` would answer and a later read finds it; its intents are cleared. A job running on another
/// worker, one finished already and a job finished twice at once (its second success) are not written.
#[sqlx::test(migrations = "../migrations")]
async fn gathered_successes_finish_each_job_once_as_a_read_finds_it(pool: PgPool) {
    use imagegen_shared::db::group_success::GroupSuccesses;
    let db = Db::from(pool.clone());
    let (elsewhere, finished, twice) = (3, 4, 7);
    let mut jobs = Vec::new();
    let mut pictures = Vec::new();
    for i in 0..16_usize {
        let job = db::jobs::insert(&db, &new_job(&format!("owner-{i}")))
            .await
            .expect("insert");
        let images: Vec<NewImage> = (0..(i % 3) as i32)
            .rev()
            .map(|position| {
                let mut image = image(position);
                image.storage_key = format!("2026/11/30/{i}-{position}.png");
                image
            })
            .collect();
        if i == finished {
            claim_and_succeed(&db, job.id, "w-here").await;
        } else {
            let worker = if i == elsewhere { "w-other" } else { "w-here" };
            db::jobs::claim_job(&db, job.id, worker, LEASE)
                .await
                .expect("claim")
                .expect("claimed");
            let keys: Vec<String> = images.iter().map(|p| p.storage_key.clone()).collect();
            db::pending::record_all(&db, &keys, job.id, worker)
                .await
                .expect("intents");
        }
        if i.is_multiple_of(2) {
            db::costs::record_charge(&db, &charge(&job, 1, 100 + i as i64))
                .await
                .expect("charge");
        }
        jobs.push(job);
        pictures.push(images);
    }
    let mut asked: Vec<usize> = (0..jobs.len()).collect();
    asked.push(twice);
    let successes = GroupSuccesses::new(pool, "w-here".into());
    let answers = futures::future::join_all(asked.iter().map(|&i| {
        let meta = serde_json::json!({ "job": i });
        let (successes, db, id, images) = (&successes, &db, jobs[i].id, &pictures[i]);
        async move {
            successes
                .complete(db, id, images, &meta, 10 + i as i64, &served())
                .await
        }
    }))
    .await;
    let (flushes, written) = successes.stats();
    assert_eq!(written, asked.len() as u64);
    assert!(
        flushes < asked.len() as u64,
        "{flushes} flushes for {written} successes: nothing was gathered"
    );
    let mut finished_by_us = std::collections::HashMap::new();
    for (i, answer) in asked.iter().zip(answers) {
        let Some(succeeded) = answer.expect("success") else {
            continue;
        };
        *finished_by_us.entry(*i).or_insert(0) += 1;
        let read = db::job_parts::get_job_parts(&db, &format!("owner-{i}"), jobs[*i].id)
            .await
            .expect("read")
            .expect("job");
        assert_eq!(
            format!("{:?}", succeeded.parts),
            format!("{read:?}"),
            "job {i}: the answer is the job as read back"
        );
        assert_eq!(read.job.status, JobStatus::Succeeded);
        assert_eq!(
            read.job.provider_meta.map(|m| m.0),
            Some(serde_json::json!({ "job": i }))
        );
        assert_eq!(read.job.generation_time_ms, Some(10 + *i as i64));
        assert_eq!(
            read.images.iter().map(|p| p.position).collect::<Vec<_>>(),
            (0..(*i as i32) % 3).collect::<Vec<_>>(),
            "job {i}'s own images, in position order"
        );
        assert_eq!(
            read.charges.len(),
            usize::from(i % 2 == 0),
            "job {i}'s charges"
        );
        let settlement = succeeded
            .settlement
            .expect("the success settles the budget");
        assert_eq!(settlement.owner, format!("owner-{i}"));
    }
    for i in 0..jobs.len() {
        let expected = usize::from(i != elsewhere && i != finished);
        assert_eq!(
            finished_by_us.get(&i).copied().unwrap_or(0),
            expected,
            "job {i}"
        );
    }
    let other = db::jobs::get_job_unscoped(&db, jobs[elsewhere].id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        (other.status, other.worker_id.as_deref()),
        (JobStatus::Running, Some("w-other")),
        "another worker's job is left alone"
    );
    let pending = db::pending::orphans(&db, 100).await.expect("pending");
    assert!(
        pending.is_empty(),
        "every finished job's intents are cleared: {pending:?}"
    );
}

/// Settlements gathered: each finished job is settled once, with its own reservation and cost; a running job, one
/// settled already, one asked for twice at once and an unknown id are not.
#[sqlx::test(migrations = "../migrations")]
async fn gathered_settlements_settle_each_finished_job_once(pool: PgPool) {
    use imagegen_shared::db::group_settle::GroupSettles;
    let db = Db::from(pool.clone());
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut job = new_job(&format!("owner-{i}"));
        job.reserved_usd_micros = 1_000 + i;
        let id = db::jobs::insert(&db, &job).await.expect("insert").id;
        if i == 2 {
            db::jobs::claim_job(&db, id, "w", LEASE)
                .await
                .expect("claim")
                .expect("claimed");
        } else {
            // Failed, not succeeded: a success settles its job's budget itself.
            claim_and_fail(&db, id, "w").await;
        }
        ids.push(id);
    }
    let still_running = ids[2];
    let settled_before = ids[5];
    assert!(
        db::costs::settle(&db, settled_before)
            .await
            .expect("settle")
            .is_some()
    );
    let settles = GroupSettles::new(pool);
    let mut asked = ids.clone();
    asked.push(ids[9]);
    asked.push(JobId::new());
    let answers = futures::future::join_all(asked.iter().map(|id| settles.settle(&db, *id))).await;
    let (flushes, settled) = settles.stats();
    assert_eq!(settled, asked.len() as u64);
    assert!(
        flushes < settled,
        "{flushes} flushes for {settled} settlements: nothing was gathered"
    );
    let mut got = std::collections::HashMap::new();
    for (id, answer) in asked.iter().zip(answers) {
        if let Some(s) = answer.expect("settle") {
            let i = ids.iter().position(|x| x == id).expect("one of ours");
            assert_eq!(s.owner, format!("owner-{i}"));
            assert_eq!(s.reserved_usd_micros, 1_000 + i as i64);
            *got.entry(*id).or_insert(0) += 1;
        }
    }
    for id in &ids {
        let expected = usize::from(*id != still_running && *id != settled_before);
        assert_eq!(got.get(id).copied().unwrap_or(0), expected, "job {id}");
    }
    // Settled means settled: a second round finds nothing left but the running job, which is not finished.
    for id in &ids {
        assert!(
            db::costs::settle(&db, *id).await.expect("settle").is_none(),
            "job {id}"
        );
    }
}

/// Budget rows read together: each owner gets its own row (or none), however many ask at once, and a change made
/// between two reads is seen by the next.
#[sqlx::test(migrations = "../migrations")]
async fn gathered_budget_reads_give_each_owner_its_own_row(pool: PgPool) {
    use imagegen_shared::db::budgets::{self, GroupReads};
    let db = Db::from(pool.clone());
    budgets::set(&db, "alice", Some(1_000), None)
        .await
        .expect("set");
    budgets::set(&db, "carol", None, Some(9_000))
        .await
        .expect("set");
    let reads = GroupReads::new(pool);
    let owners: Vec<&str> = (0..30).map(|i| ["alice", "bob", "carol"][i % 3]).collect();
    let rows = futures::future::join_all(owners.iter().map(|o| reads.get(&db, o))).await;
    for (owner, row) in owners.iter().zip(rows) {
        let row = row.expect("read");
        match *owner {
            "alice" => assert_eq!(row.map(|r| r.usd_micros_per_day), Some(Some(1_000))),
            "carol" => assert_eq!(row.map(|r| r.usd_micros_per_month), Some(Some(9_000))),
            _ => assert_eq!(row, None, "bob has no row"),
        }
    }
    budgets::set(&db, "bob", Some(5), None).await.expect("set");
    let bob = reads.get(&db, "bob").await.expect("read").expect("row");
    assert_eq!(bob.usd_micros_per_day, Some(5));
}

fn charge<'a>(job: &'a db::JobRecord, attempt: i32, usd_micros: i64) -> db::costs::NewCharge<'a> {
    db::costs::NewCharge {
        job_id: job.id,
        attempt,
        owner: job.owner.as_str(),
        api_key_id: None,
        provider: "openai",
        model: "gpt-image-2",
        cost: imagegen_shared::cost::Cost {
            usd_micros,
            basis: imagegen_shared::cost::CostBasis::Tokens,
            estimated: false,
        },
        images: 1,
    }
}

/// A charge adds to its job's cost once, however often the same attempt is recorded (alone or with its pictures'
/// storage intents); one recorded after the job's budget was settled comes back to be counted directly.
#[sqlx::test(migrations = "../migrations")]
async fn a_charge_counts_once_and_a_late_one_comes_back(pool: PgPool) {
    a_charge_counts_once_and_a_late_one_comes_back_on(Db::from(pool)).await;
}

#[tokio::test]
async fn a_charge_counts_once_and_a_late_one_comes_back_on_sqlite() {
    let (db, _dir) = sqlite().await;
    a_charge_counts_once_and_a_late_one_comes_back_on(db).await;
}

async fn a_charge_counts_once_and_a_late_one_comes_back_on(db: Db) {
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    // Recorded alone, and with the intents of the answer's pictures (one statement on Postgres): once either way.
    let keys = vec!["2026/11/30/a.png".to_owned(), "2026/11/30/b.png".to_owned()];
    for round in 0..2 {
        let late = db::costs::record_charge(&db, &charge(&job, 1, 40_000))
            .await
            .expect("charge");
        assert!(late.is_none(), "not settled yet");
        let late = db::costs::record_charge_and_intents(&db, &charge(&job, 1, 40_000), &keys, "w1")
            .await
            .expect("charge and intents");
        assert!(late.is_none(), "not settled yet");
        let mut pending = db::pending::orphans(&db, 10).await.expect("pending");
        pending.sort();
        assert_eq!(pending, keys, "each intent recorded once (round {round})");
    }
    let row = db::jobs::get_job(&db, "alice", job.id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(
        (row.cost_usd_micros, row.cost_basis.as_str()),
        (40_000, "tokens"),
        "the repeated attempt is counted once"
    );
    claim_and_fail(&db, job.id, "w1").await;
    db::costs::settle(&db, job.id)
        .await
        .expect("settle")
        .expect("first settlement");
    let late = db::costs::record_charge(&db, &charge(&job, 2, 5_000))
        .await
        .expect("charge")
        .expect("a charge after the settlement comes back");
    assert_eq!(
        (late.owner.as_str(), late.cost_usd_micros),
        ("alice", 5_000)
    );
    let late = db::costs::record_charge_and_intents(&db, &charge(&job, 3, 1_000), &[], "w1")
        .await
        .expect("charge")
        .expect("with intents too");
    assert_eq!(late.cost_usd_micros, 1_000);
    let charges = db::costs::charges_of(&db, job.id).await.expect("charges");
    assert_eq!(
        charges
            .iter()
            .map(|c| (c.attempt, c.usd_micros, c.route.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, 40_000, "openai:gpt-image-2"),
            (2, 5_000, "openai:gpt-image-2"),
            (3, 1_000, "openai:gpt-image-2")
        ]
    );
}

/// Charges gathered: each charge adds to its own job's cost once, with its pictures' storage intents; a charge
/// recorded before is not counted again, one after its job's budget was settled comes back, and two charges of
/// one job in the same breath are both counted.
#[sqlx::test(migrations = "../migrations")]
async fn gathered_charges_count_each_charge_once_with_its_intents(pool: PgPool) {
    use imagegen_shared::db::group_charge::GroupCharges;
    let db = Db::from(pool.clone());
    let mut jobs = Vec::new();
    for i in 0..20 {
        jobs.push(
            db::jobs::insert(&db, &new_job(&format!("owner-{i}")))
                .await
                .expect("insert"),
        );
    }
    let (charged_before, settled, twice) = (3, 5, 7);
    db::costs::record_charge(&db, &charge(&jobs[charged_before], 1, 1_003))
        .await
        .expect("charge");
    claim_and_fail(&db, jobs[settled].id, "w1").await;
    db::costs::settle(&db, jobs[settled].id)
        .await
        .expect("settle")
        .expect("settled");
    let keys = |i: usize| -> Vec<String> {
        if i.is_multiple_of(2) {
            vec![
                format!("2026/11/30/{i}-0.png"),
                format!("2026/11/30/{i}-1.png"),
            ]
        } else {
            Vec::new()
        }
    };
    let mut asked: Vec<(usize, i32)> = (0..jobs.len()).map(|i| (i, 1)).collect();
    asked.push((twice, 2));
    let charges = GroupCharges::new(pool, "w1".into());
    let answers = futures::future::join_all(asked.iter().map(|&(i, attempt)| {
        let (charges, db, job, keys) = (&charges, &db, &jobs[i], keys(i));
        async move {
            let c = charge(job, attempt, 1_000 + i as i64);
            charges.record(db, &c, &keys).await
        }
    }))
    .await;
    let (flushes, counted) = charges.stats();
    assert_eq!(counted, asked.len() as u64);
    assert!(
        flushes < asked.len() as u64,
        "{flushes} flushes for {counted} charges: nothing was gathered"
    );
    for ((i, _), answer) in asked.iter().zip(answers) {
        let late = answer.expect("charge");
        if *i == settled {
            let late = late.expect("a charge after the settlement comes back");
            assert_eq!(
                (late.owner.as_str(), late.cost_usd_micros),
                ("owner-5", 1_005)
            );
        } else {
            assert!(late.is_none(), "job {i}: not settled");
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        let row = db::jobs::get_job_unscoped(&db, job.id)
            .await
            .expect("read")
            .expect("row");
        let expected = if i == twice {
            2 * (1_000 + i as i64)
        } else {
            1_000 + i as i64
        };
        assert_eq!(row.cost_usd_micros, expected, "job {i}'s cost");
        let attempts: Vec<i32> = db::costs::charges_of(&db, job.id)
            .await
            .expect("charges")
            .iter()
            .map(|c| c.attempt)
            .collect();
        assert_eq!(
            attempts,
            if i == twice { vec![1, 2] } else { vec![1] },
            "job {i}"
        );
    }
    let mut pending = db::pending::orphans(&db, 100).await.expect("pending");
    pending.sort();
    let mut expected: Vec<String> = (0..jobs.len()).flat_map(keys).collect();
    expected.sort();
    assert_eq!(
        pending, expected,
        "each picture's intent recorded once, with its job's charge"
    );
}

/// The one-statement read of a job with its images and charges gives what the three reads give, in order, and
/// nothing of another owner's job.
#[sqlx::test(migrations = "../migrations")]
async fn a_job_is_read_whole_with_its_images_and_charges(pool: PgPool) {
    a_job_is_read_whole_with_its_images_and_charges_on(Db::from(pool)).await;
}

#[tokio::test]
async fn a_job_is_read_whole_with_its_images_and_charges_on_sqlite() {
    let (db, _dir) = sqlite().await;
    a_job_is_read_whole_with_its_images_and_charges_on(db).await;
}

async fn a_job_is_read_whole_with_its_images_and_charges_on(db: Db) {
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    let queued = db::job_parts::get_job_parts(&db, "alice", job.id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(queued.job.status, JobStatus::Queued);
    assert!(queued.images.is_empty() && queued.charges.is_empty());
    assert!(
        db::job_parts::get_job_parts(&db, "mallory", job.id)
            .await
            .expect("read")
            .is_none(),
        "another owner's job does not exist for them"
    );

    db::jobs::claim_job(&db, job.id, "w1", LEASE)
        .await
        .expect("claim")
        .expect("claimable");
    db::costs::record_charge(&db, &charge(&job, 2, 7))
        .await
        .expect("charge");
    db::costs::record_charge(&db, &charge(&job, 1, 11))
        .await
        .expect("charge");
    let mut second = image(1);
    second.revised_prompt = None;
    second.seed = Some(42);
    let succeeded = db::jobs::complete_succeeded(
        &db,
        job.id,
        "w1",
        &[second, image(0)],
        &serde_json::json!({}),
        5,
        &served(),
    )
    .await
    .expect("complete")
    .expect("ours");

    let whole = db::job_parts::get_job_parts(&db, "alice", job.id)
        .await
        .expect("read")
        .expect("job");
    let apart = db::images::images_for_jobs(&db, "alice", &[job.id])
        .await
        .expect("images");
    assert_eq!(whole.job.status, JobStatus::Succeeded);
    assert_eq!(whole.job.cost_usd_micros, 18);
    assert_eq!(
        format!("{:?}", whole.images),
        format!("{apart:?}"),
        "every column as the plain read gives it, in position order"
    );
    assert_eq!(
        whole.images.iter().map(|i| i.position).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        whole.charges,
        db::costs::charges_of(&db, job.id).await.expect("charges")
    );
    assert_eq!(
        whole.charges.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2]
    );

    // The success hands back what the read finds (its end event carries it to the waiters in place of that read),
    // through JSON as the event carries it, and settles the job's budget in the same write, once.
    assert_eq!(
        format!("{:?}", succeeded.parts),
        format!("{whole:?}"),
        "the success's own answer is the job as read back"
    );
    let carried: db::JobParts =
        serde_json::from_str(&serde_json::to_string(&succeeded.parts).expect("serialise"))
            .expect("deserialise");
    assert_eq!(format!("{carried:?}"), format!("{whole:?}"));
    let settlement = succeeded.settlement.expect("settled by the success");
    assert_eq!(
        (
            settlement.owner.as_str(),
            settlement.reserved_usd_micros,
            settlement.cost_usd_micros
        ),
        ("alice", 0, 18)
    );
    assert!(
        db::costs::settle(&db, job.id)
            .await
            .expect("settle")
            .is_none(),
        "nobody settles it again"
    );
}

/// One connection, so every query below runs on the one that was just given back.
async fn one_connection(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("connect")
}

async fn backend_pid(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pid")
}

// A connection goes back to the pool without a ping (vendor/README.md, "release"): what a caller left unread, or a
// rollback sqlx queued, must still be dealt with before anyone else uses it, and the connection must be kept, not
// thrown away (within the release's time bound).
#[sqlx::test(migrations = "../migrations")]
async fn a_connection_given_back_mid_answer_answers_the_next_query_rightly(pool: PgPool) {
    use futures::TryStreamExt;
    let pool = one_connection(&pool).await;
    let pid = backend_pid(&pool).await;
    {
        let mut rows =
            sqlx::query_scalar::<_, i32>("SELECT generate_series(1, 100000)").fetch(&pool);
        assert_eq!(rows.try_next().await.expect("row"), Some(1));
        // Dropped here with 99,999 rows unread.
    }
    let answer: i32 = sqlx::query_scalar("SELECT 42")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert_eq!(answer, 42);
    assert_eq!(backend_pid(&pool).await, pid, "the same connection, reused");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_transaction_dropped_unfinished_is_rolled_back_before_its_connection_is_reused(
    pool: PgPool,
) {
    let pool = one_connection(&pool).await;
    let pid = backend_pid(&pool).await;
    {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("CREATE TABLE half_done (n int)")
            .execute(&mut *tx)
            .await
            .expect("create");
        // Dropped without commit.
    }
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('half_done') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert!(!exists, "rolled back");
    assert_eq!(backend_pid(&pool).await, pid, "the same connection, reused");
}

// The claim's commit skips the disk flush for its own transaction only: the connection it ran on must be back to
// flushing every commit, or a job recorded on it next could be lost in a crash after its client heard "queued".
#[sqlx::test(migrations = "../migrations")]
async fn a_claim_leaves_its_connection_flushing_commits(pool: PgPool) {
    let pool = one_connection(&pool).await;
    let db = Db::from(pool.clone());
    let job = db::jobs::insert(&db, &new_job("alice"))
        .await
        .expect("insert");
    let claimed = db::jobs::claim_job(&db, job.id, "w1", LEASE)
        .await
        .expect("claim");
    assert!(claimed.is_some());
    let setting: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&pool)
        .await
        .expect("setting");
    assert_eq!(setting, "on");
}
