//! Providers that point at the emulator are sandbox (issue 20, item 9): the emulator names itself on every answer
//! (`x-imagegen-emulator`), and the API asks each provider on a local host once at start-up. A provider on a local
//! server that is not the emulator stays real; so does every public host, which is never asked.

use crate::support::{Options, generate_body, kv, start};
use imagegen_testkit::idp::TestIdp;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn providers_answered_by_the_emulator_are_marked_sandbox(pool: PgPool) {
    // Some local server that is not the emulator (answers 404 without the header): FLUX's host here.
    let not_emulator = TestIdp::start().await;
    let mut options = Options {
        bfl_endpoint: true,
        ..Options::default()
    };
    let env = vec![
        kv("BFL_API_KEY", crate::support::API_KEY),
        kv("FLUX_API_KEY", "flux-key"),
        kv("FLUX_BASE_URL", format!("{}/v1", not_emulator.issuer)),
    ];
    options.api_env = env.clone();
    options.worker_env = env;
    let stack = start(&pool, options).await;

    // The emulator says so itself.
    let r = stack
        .http
        .get(format!("{}/v1", stack.emulator))
        .send()
        .await
        .expect("emulator");
    assert!(r.headers().contains_key("x-imagegen-emulator"));

    let providers = stack.get("/api/v1/providers").await;
    assert_eq!(providers.status, 200);
    let sandbox = |id: &str| {
        providers.body["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| (p["configured"].as_bool(), p["sandbox"].as_bool()))
    };
    assert_eq!(
        sandbox("openai"),
        Some((Some(true), Some(true))),
        "{}",
        providers.body
    );
    assert_eq!(
        sandbox("bfl"),
        Some((Some(true), Some(true))),
        "{}",
        providers.body
    );
    assert_eq!(
        sandbox("flux"),
        Some((Some(true), Some(false))),
        "a local server that is not the emulator: {}",
        providers.body
    );

    // And every answer about a job the emulator served says so.
    let r = stack
        .post(
            "/api/v1/generate",
            generate_body("a sandboxed lighthouse"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sandbox"], true, "{}", r.body);
    let job = stack
        .get(&format!(
            "/api/v1/jobs/{}",
            r.body["job_id"].as_str().expect("job id")
        ))
        .await;
    assert_eq!(job.body["sandbox"], true, "{}", job.body);
}
