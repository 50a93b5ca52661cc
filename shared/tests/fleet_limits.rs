//! Fleet-wide limits against a real Redis: permits are bounded, expire when their holder dies, pauses and circuits
//! behave as the whole fleet relies on.

use imagegen_shared::limits::{Admission, BreakerState, FleetLimits, LimitSettings};
use imagegen_shared::queue::redis_connection;
use std::time::Duration;

fn limits() -> FleetLimits {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (_, conn) = redis_connection(&url).expect("redis url");
    FleetLimits::new(
        conn,
        &format!("limits-test-{}", uuid::Uuid::new_v4().simple()),
    )
}

fn settings(concurrency: u32, ttl_ms: u64) -> LimitSettings {
    LimitSettings {
        concurrency,
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(200),
        permit_ttl: Duration::from_millis(ttl_ms),
    }
}

#[tokio::test]
async fn permits_are_bounded_and_a_dead_holders_permit_expires() {
    let l = limits();
    let s = settings(2, 300);
    assert_eq!(
        l.admit("r", "a", &s).await.expect("redis"),
        Admission::Granted
    );
    assert_eq!(
        l.admit("r", "b", &s).await.expect("redis"),
        Admission::Granted
    );
    assert_eq!(
        l.admit("r", "c", &s).await.expect("redis"),
        Admission::Saturated
    );
    assert_eq!(l.in_flight("r").await.expect("redis"), 2);
    l.release("r", "a").await.expect("release");
    assert_eq!(
        l.admit("r", "c", &s).await.expect("redis"),
        Admission::Granted
    );
    // "b" and "c" never release (their worker died): after the TTL their places come back.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        l.admit("r", "d", &s).await.expect("redis"),
        Admission::Granted
    );
    assert_eq!(
        l.admit("r", "e", &s).await.expect("redis"),
        Admission::Granted
    );
    // A renewed permit stays.
    l.renew("r", "e", Duration::from_secs(5))
        .await
        .expect("renew");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(l.in_flight("r").await.expect("redis"), 1);
}

#[tokio::test]
async fn a_pause_holds_every_caller_until_it_ends() {
    let l = limits();
    let s = settings(0, 1000);
    l.pause("r", Duration::from_millis(300))
        .await
        .expect("pause");
    match l.admit("r", "a", &s).await.expect("redis") {
        Admission::Paused(left) => assert!(left <= Duration::from_millis(300)),
        other => panic!("expected a pause, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        l.admit("r", "a", &s).await.expect("redis"),
        Admission::Granted
    );
}

#[tokio::test]
async fn the_circuit_opens_half_opens_with_one_probe_and_closes() {
    let l = limits();
    let s = settings(0, 1000);
    assert!(!l.record_failure("r", &s).await.expect("redis"));
    assert!(
        l.record_failure("r", &s).await.expect("redis"),
        "opens at the threshold"
    );
    assert_eq!(
        l.breaker_state("r").await.expect("redis"),
        BreakerState::Open
    );
    assert_eq!(l.admit("r", "a", &s).await.expect("redis"), Admission::Open);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        l.admit("r", "probe", &s).await.expect("redis"),
        Admission::Probe
    );
    assert_eq!(
        l.admit("r", "other", &s).await.expect("redis"),
        Admission::Open,
        "one probe at a time"
    );
    // The probe fails: open again at once.
    assert!(l.record_failure("r", &s).await.expect("redis"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        l.admit("r", "probe2", &s).await.expect("redis"),
        Admission::Probe
    );
    // The probe succeeds: its permit comes back (the first probe's is still held) and the circuit closes.
    let held = l.in_flight("r").await.expect("redis");
    l.release_succeeded("r", "probe2").await.expect("redis");
    assert_eq!(l.in_flight("r").await.expect("redis"), held - 1);
    assert_eq!(
        l.breaker_state("r").await.expect("redis"),
        BreakerState::Closed
    );
    assert_eq!(
        l.admit("r", "b", &s).await.expect("redis"),
        Admission::Granted
    );
}

#[tokio::test]
async fn a_permit_asked_ahead_is_only_ever_a_plain_grant() {
    let l = limits();
    let s = settings(1, 1000);
    assert!(l.admit_ahead("r", "a", &s).await.expect("redis"));
    assert!(
        !l.admit_ahead("r", "b", &s).await.expect("redis"),
        "saturated"
    );
    assert_eq!(l.in_flight("r").await.expect("redis"), 1);
    l.release("r", "a").await.expect("release");
    l.pause("r", Duration::from_millis(200))
        .await
        .expect("pause");
    assert!(!l.admit_ahead("r", "c", &s).await.expect("redis"), "paused");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A circuit due for its probe: asking ahead leaves the probe to the ordinary admission.
    assert!(!l.record_failure("r", &s).await.expect("redis"));
    assert!(l.record_failure("r", &s).await.expect("redis"));
    assert!(!l.admit_ahead("r", "d", &s).await.expect("redis"), "open");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !l.admit_ahead("r", "e", &s).await.expect("redis"),
        "a probe is not a guess's to take"
    );
    assert_eq!(
        l.breaker_state("r").await.expect("redis"),
        BreakerState::Open
    );
    assert_eq!(l.in_flight("r").await.expect("redis"), 0);
    assert_eq!(
        l.admit("r", "probe", &s).await.expect("redis"),
        Admission::Probe
    );
}

#[tokio::test]
async fn in_memory_limits_take_nothing_ahead() {
    let l = FleetLimits::local();
    let s = settings(1, 1000);
    assert!(!l.admit_ahead("r", "a", &s).await.expect("no round trip"));
    assert_eq!(
        l.admit("r", "b", &s).await.expect("local"),
        Admission::Granted
    );
}
