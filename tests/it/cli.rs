//! The command-line client (`imagegen generate`, `jobs`, `models`, `usage`, `completions`) against a running stack,
//! as a person or a script runs it: files written are valid images of the size asked, progress on a non-terminal is
//! plain lines, and each kind of failure has its own exit code (2 bad input, 3 authentication, 4 the job failed,
//! 5 network, 6 a limit).

use crate::support::{BIN, Options, Stack, free_port, kv, png_size, start};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SIGNING_KEY: &str = "cli-tests-signing-key-of-32-chars-or-more!";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `imagegen <args>` with a clean environment (plus `env`); stdout and stderr are pipes, not terminals.
async fn imagegen(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(BIN);
    command.args(args).env_clear().kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("imagegen finished within 2 minutes")
        .expect("imagegen ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn out_dir() -> PathBuf {
    std::env::temp_dir().join(format!("imagegen-cli-{}", uuid::Uuid::new_v4()))
}

/// The paths `generate` printed, each a PNG of `size`.
fn assert_images(run: &Run, dir: &Path, n: usize, size: (u32, u32)) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = run.stdout.lines().map(PathBuf::from).collect();
    assert_eq!(paths.len(), n, "{run}");
    for path in &paths {
        assert!(
            path.starts_with(dir),
            "{} not in {}",
            path.display(),
            dir.display()
        );
        let bytes = std::fs::read(path).expect("the file printed exists");
        assert_eq!(png_size(&bytes), size, "{}", path.display());
    }
    paths
}

#[sqlx::test(migrations = "./migrations")]
async fn generate_writes_images_and_the_other_commands_read_them(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let server = stack.api.as_str();
    let dir = out_dir();
    let dir_arg = dir.to_string_lossy().to_string();

    let run = imagegen(
        &[
            "generate",
            "A lighthouse at dusk",
            "--model",
            "gpt-image-2",
            "--size",
            "1536x1024",
            "--quality",
            "low",
            "-n",
            "2",
            "-o",
            &dir_arg,
            "--server",
            server,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    let paths = assert_images(&run, &dir, 2, (1536, 1024));
    // Not a terminal: plain, timestamped lines, no spinner or escape codes, each state change once.
    assert!(
        !run.stderr.contains('\x1b') && !run.stderr.contains('\r'),
        "{run}"
    );
    assert!(run.stderr.lines().all(|l| l.starts_with('[')), "{run}");
    let job_id = run
        .stderr
        .split("submitted job ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the progress names the job")
        .to_owned();
    for expected in [
        "(gpt-image-2",
        "succeeded: 2 images on openai:gpt-image-2",
        "wrote ",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?} missing: {run}");
    }
    assert!(
        paths.iter().all(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&job_id))),
        "{run}"
    );

    // The key from IMAGEGEN_API_KEY and the server from IMAGEGEN_SERVER; a service without authentication ignores it.
    let env = [
        ("IMAGEGEN_SERVER", server),
        ("IMAGEGEN_API_KEY", "igk_ignored"),
    ];
    let list = imagegen(&["jobs", "list", "--limit", "5"], &env).await;
    assert_eq!(list.code, 0, "{list}");
    assert!(list.stdout.starts_with("JOB "), "{list}");
    assert!(
        list.stdout.contains(&job_id) && list.stdout.contains("succeeded"),
        "{list}"
    );
    let json_list = imagegen(&["jobs", "list", "--json"], &env).await;
    let page: Value = serde_json::from_str(&json_list.stdout).expect("jobs list --json is JSON");
    assert_eq!(page["jobs"][0]["job_id"], job_id.as_str());

    let show = imagegen(&["jobs", "show", &job_id], &env).await;
    assert_eq!(show.code, 0, "{show}");
    assert!(show.stdout.contains("status     succeeded"), "{show}");
    assert_eq!(show.stdout.matches("\nimage ").count(), 2, "{show}");

    // A finished job cannot be canceled (409: bad input); a malformed id is refused before any request.
    let cancel = imagegen(&["jobs", "cancel", &job_id], &env).await;
    assert_eq!(cancel.code, 2, "{cancel}");
    assert!(cancel.stderr.contains("job_not_cancelable"), "{cancel}");
    assert_eq!(
        imagegen(&["jobs", "show", "not-a-uuid"], &env).await.code,
        2
    );

    let models = imagegen(&["models"], &env).await;
    assert_eq!(models.code, 0, "{models}");
    assert!(models.stdout.contains("gpt-image-2 (default)"), "{models}");
    assert!(
        !models.stdout.contains("dall-e-3"),
        "retired models only with --all: {models}"
    );
    assert!(
        imagegen(&["models", "--all"], &env)
            .await
            .stdout
            .contains("dall-e-3")
    );

    let usage = imagegen(&["usage", "--group-by", "model"], &env).await;
    assert_eq!(usage.code, 0, "{usage}");
    let row = usage
        .stdout
        .lines()
        .find(|l| l.starts_with("gpt-image-2 "))
        .unwrap_or_else(|| panic!("no gpt-image-2 row: {usage}"));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("2"),
        "two images: {usage}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let completions = imagegen(&["completions", shell], &[]).await;
        assert_eq!(completions.code, 0, "{completions}");
        assert!(
            completions.stdout.contains("generate"),
            "{shell}: {completions}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `imagegen generate` into `dir` on `stack`, with `extra` arguments and environment.
async fn generate(stack: &Stack, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = dir.to_string_lossy().to_string();
    let mut args = vec![
        "generate",
        "A lighthouse at dusk",
        "--size",
        "1024x1024",
        "-o",
        &dir,
        "--server",
        &stack.api,
    ];
    args.extend_from_slice(extra);
    imagegen(&args, env).await
}

#[sqlx::test(migrations = "./migrations")]
async fn exit_codes_tell_bad_input_auth_provider_failure_network_and_limits_apart(pool: PgPool) {
    let mut stack = start(&pool, Options::default()).await;
    let dir = out_dir();

    // 2: bad input, ours (before any request) or the service's (400).
    let run = generate(&stack, &dir, &["--size", "12"], &[]).await;
    assert_eq!(run.code, 2, "{run}");
    let run = generate(&stack, &dir, &["--model", "no-such-model"], &[]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("400 "), "{run}");
    assert_eq!(imagegen(&["generate", "x", "-n", "0"], &[]).await.code, 2);

    // 5: network (nothing listens there).
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let run = imagegen(&["generate", "x", "--server", &nowhere], &[]).await;
    assert_eq!(run.code, 5, "{run}");
    assert!(run.stderr.contains("cannot connect"), "{run}");
    assert_eq!(
        imagegen(&["models", "--server", &nowhere], &[]).await.code,
        5
    );

    // 4: the provider refuses every call, so the job fails; the message says why, nothing is written.
    stack
        .emulator_config(json!({"error_rate": 1.0, "error_status": 400}))
        .await;
    let run = generate(&stack, &dir, &["--model", "gpt-image-2"], &[]).await;
    assert_eq!(run.code, 4, "{run}");
    assert!(run.stderr.contains(" failed: "), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    stack.emulator_config(json!({"error_rate": 0.0})).await;

    // 3: authentication on, without a key and with a wrong one; with the right one it works (signed links).
    stack
        .restart_api_with(&[
            kv("ENABLE_AUTHENTICATION", "true"),
            kv("DOWNLOAD_SIGNING_KEY", SIGNING_KEY),
        ])
        .await;
    let run = generate(&stack, &dir, &[], &[]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stderr.contains("401 authentication_required"), "{run}");
    assert!(run.stderr.contains("IMAGEGEN_API_KEY"), "{run}");
    let run = generate(&stack, &dir, &[], &[("IMAGEGEN_API_KEY", "igk_wrong")]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stderr.contains("invalid_token"), "{run}");
    let key = stack.keys(&["create", "--owner", "cli-user"]).await;
    let run = generate(&stack, &dir, &[], &[("IMAGEGEN_API_KEY", &key)]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_images(&run, &dir, 1, (1024, 1024));
    let list = imagegen(
        &["jobs", "list", "--server", &stack.api, "--api-key", &key],
        &[],
    )
    .await;
    assert_eq!(list.code, 0, "{list}");
    assert_eq!(
        list.stdout.lines().count(),
        2,
        "the owner's one job: {list}"
    );

    // 6: a limit (a daily budget of nothing: 402).
    stack
        .restart_api_with(&[kv("BUDGET_USD_PER_DAY", "0")])
        .await;
    let run = generate(&stack, &dir, &[], &[("IMAGEGEN_API_KEY", &key)]).await;
    assert_eq!(run.code, 6, "{run}");
    assert!(run.stderr.contains("402 budget_exceeded"), "{run}");
    let _ = std::fs::remove_dir_all(&dir);
}
