//! Edit jobs through the real worker (`run_with`, SQLite job store, in-process queue, local storage) against the
//! provider emulator on 127.0.0.1: the worker reads the job's stored inputs and sends them as the provider's edit
//! call, and a retry sends the very same bytes (the emulator records the SHA-256 of every input it receives).

use clap::Parser;
use imagegen_shared::backends::Backends;
use imagegen_shared::db::job_inputs::{InputRole, JobInput};
use imagegen_shared::db::{self, JobRecord, NewJob};
use imagegen_shared::domain::{JobId, JobStatus, ProviderId};
use imagegen_shared::queue::JobMessage;
use imagegen_worker::WorkerArgs;
use sha2::Digest;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-test-edits";

/// A `w`x`h` PNG, RGBA when `alpha`, filled with `fill`.
fn png(w: u32, h: u32, alpha: bool, fill: u8) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(if alpha {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        let mut writer = enc.write_header().expect("header");
        let px = if alpha { 4 } else { 3 };
        writer
            .write_image_data(&vec![fill; (w * h * px) as usize])
            .expect("data");
    }
    out
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// An emulator on 127.0.0.1 whose OpenAI fails the next `fail_next` calls with a 500; its base URL.
async fn emulator(fail_next: u32) -> (imagegen_emulator::Emulator, String) {
    let knobs = imagegen_emulator::knobs::Knobs {
        fail_next,
        error_status: 500,
        ..imagegen_emulator::knobs::Knobs::default()
    };
    let emu = imagegen_emulator::Emulator::new(vec![KEY.into()], knobs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(imagegen_emulator::spawn_on(listener, emu.clone()));
    (emu, format!("http://{addr}"))
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

/// One stored input: its file under the local storage root and its `job_inputs` row.
fn stored(root: &Path, job: JobId, role: InputRole, position: i32, bytes: &[u8]) -> JobInput {
    let key = format!("inputs/{job}/{}-{position}.png", role.as_str());
    let path = root.join(&key);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    std::fs::write(&path, bytes).expect("write");
    JobInput {
        job_id: job,
        owner: "anonymous".into(),
        role,
        position,
        storage_key: Some(key),
        source_url: None,
        source_image: None,
        content_type: Some("image/png".into()),
        size_bytes: Some(bytes.len() as i64),
        sha256: Some(sha(bytes)),
        width: Some(64),
        height: Some(64),
    }
}

/// Runs one edit job (`images` then `mask`, stored; their files removed again when `lose_files`) on a real worker
/// against `base_url` until it ends.
async fn run_edit(
    base_url: &str,
    images: &[Vec<u8>],
    mask: Option<&[u8]>,
    lose_files: bool,
) -> JobRecord {
    run_edit_on(base_url, Host::OpenAi, images, mask, lose_files).await
}

#[derive(Clone, Copy)]
enum Host {
    OpenAi,
    /// Azure OpenAI, the deployments path.
    Azure,
    /// Black Forest Labs, FLUX.1 Kontext.
    Kontext,
}

async fn run_edit_on(
    base_url: &str,
    host: Host,
    images: &[Vec<u8>],
    mask: Option<&[u8]>,
    lose_files: bool,
) -> JobRecord {
    let dir =
        std::env::temp_dir().join(format!("imagegen-edits-{}", uuid::Uuid::new_v4().simple()));
    let root = dir.join("images");
    std::fs::create_dir_all(&root).expect("root");
    let database_url = format!("sqlite:{}", dir.join("jobs.db").display());
    let (provider, model) = match host {
        Host::OpenAi => (ProviderId::OpenAi, "gpt-image-2"),
        Host::Azure => (ProviderId::AzureOpenAi, "gpt-image-2"),
        Host::Kontext => (ProviderId::Bfl, "flux-kontext-pro"),
    };
    let mut args: Vec<String> = [
        "imagegen",
        "--database-url",
        &database_url,
        "--redis-url",
        "redis://unused",
        "--enabled-providers",
        provider.as_str(),
        "--storage-backend",
        "local",
        "--local-storage-path",
        &root.display().to_string(),
        "--reconcile-enabled",
        "false",
        "--worker-concurrency",
        "1",
        "--shutdown-grace-secs",
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let provider_args = match host {
        Host::OpenAi => vec![
            "--openai-api-key".into(),
            KEY.into(),
            "--openai-base-url".into(),
            format!("{base_url}/v1"),
        ],
        Host::Azure => vec![
            "--azure-openai-api-key".into(),
            KEY.into(),
            "--azure-openai-endpoint".into(),
            base_url.into(),
            "--azure-openai-deployment-name".into(),
            "gpt-image-2".into(),
        ],
        Host::Kontext => vec![
            "--bfl-api-key".into(),
            KEY.into(),
            "--bfl-base-url".into(),
            format!("{base_url}/bfl/v1"),
        ],
    };
    args.extend(provider_args);
    let args = Cli::try_parse_from(args).expect("arguments").worker;
    let settings = args.settings().expect("settings");
    let backends = Backends::connect(&database_url, 2, None, "edits").expect("stores");
    db::migrate(&backends.db).await.expect("migrate");
    let id = JobId::new();
    let mut inputs: Vec<JobInput> = images
        .iter()
        .enumerate()
        .map(|(i, b)| stored(&root, id, InputRole::Image, i as i32, b))
        .collect();
    inputs.extend(mask.map(|m| stored(&root, id, InputRole::Mask, 0, m)));
    if lose_files {
        std::fs::remove_dir_all(root.join("inputs")).expect("remove");
    }
    let job = db::jobs::insert(
        &backends.db,
        &NewJob {
            provider,
            id,
            owner: "anonymous".into(),
            correlation_id: "corr-edit".into(),
            request: serde_json::from_value(serde_json::json!({"prompt": "paint it blue",
                "model": model, "size": "1024x1024", "num_images": 1, "allow_failover": false,
                "edit": {"images": images.len(), "mask": mask.is_some(), "input_fidelity": if matches!(host, Host::Kontext) { None } else { Some("high") }}}))
            .expect("valid"),
            max_attempts: 3,
            max_calls: 3,
            status: JobStatus::Queued,
            moderation: None,
            error: None,
            deadline_secs: None,
            api_key_id: None,
            reserved_usd_micros: 0,
            inputs,
        },
    )
    .await
    .expect("insert");
    backends
        .queue
        .push(JobMessage {
            job_id: job.id,
            correlation_id: "corr-edit".into(),
        })
        .await
        .expect("push");
    let stop = CancellationToken::new();
    let worker = imagegen_worker::run_with(settings, backends.clone(), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let watch = async {
        let started = Instant::now();
        let record = loop {
            let record = db::jobs::get_job_unscoped(&backends.db, job.id)
                .await
                .expect("read")
                .expect("row");
            if record.status.is_terminal() {
                break record;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "job still {:?} after a minute",
                record.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.cancel();
        record
    };
    let (ran, record) = tokio::join!(worker, watch);
    ran.expect("the worker ran and stopped");
    let _ = std::fs::remove_dir_all(&dir);
    record
}

/// An OpenAI edit with an image and a mask; the first call fails with a 500, and the retry sends the same stored
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_edit_sends_image_and_mask_and_its_retry_the_same_bytes() {
    let (emu, base) = emulator(1).await;
    let image = png(64, 64, false, 40);
    let mask = png(64, 64, true, 0);
    let record = run_edit(&base, std::slice::from_ref(&image), Some(&mask), false).await;
    assert_eq!(
        record.status,
        JobStatus::Succeeded,
        "{:?}",
        record.error_message
    );
    let calls = emu.edit_records();
    assert_eq!(calls.len(), 2, "a failed call and its retry: {calls:?}");
    for call in &calls {
        assert_eq!(call.images, [sha(&image)]);
        assert_eq!(call.mask.as_deref(), Some(sha(&mask).as_str()));
        assert_eq!(call.input_fidelity.as_deref(), Some("high"));
        assert_eq!(call.prompt, "paint it blue");
        assert_eq!(call.model.as_deref(), Some("gpt-image-2"));
        assert_eq!(call.correlation_id.as_deref(), Some("corr-edit"));
    }
}

/// A stored input that is gone ends the job at once with a clear message, without a provider call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_fails_the_job_without_a_call() {
    let (emu, base) = emulator(0).await;
    let record = run_edit(&base, &[png(64, 64, false, 1)], None, true).await;
    assert_eq!(record.status, JobStatus::Failed);
    let message = record.error_message.unwrap_or_default();
    assert!(
        message.contains("The edit's inputs cannot be sent: input image 0 is missing from storage"),
        "{message}"
    );
    assert!(emu.edit_records().is_empty());
}

/// A FLUX.1 Kontext edit with two reference images sends them as `input_image` and `input_image_2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kontext_edit_sends_two_reference_images() {
    let (emu, base) = emulator(0).await;
    let first = png(64, 64, false, 10);
    let second = png(64, 64, false, 200);
    let record = run_edit_on(
        &base,
        Host::Kontext,
        &[first.clone(), second.clone()],
        None,
        false,
    )
    .await;
    assert_eq!(
        record.status,
        JobStatus::Succeeded,
        "{:?}",
        record.error_message
    );
    let calls = emu.edit_records();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].images, [sha(&first), sha(&second)]);
    assert_eq!(calls[0].model.as_deref(), Some("flux-kontext-pro"));
}

/// An Azure OpenAI edit goes to the deployment's `images/edits` with the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_edit_sends_the_image_to_the_deployment() {
    let (emu, base) = emulator(0).await;
    let image = png(64, 64, false, 90);
    let record = run_edit_on(
        &base,
        Host::Azure,
        std::slice::from_ref(&image),
        None,
        false,
    )
    .await;
    assert_eq!(
        record.status,
        JobStatus::Succeeded,
        "{:?}",
        record.error_message
    );
    let calls = emu.edit_records();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].protocol, "azure");
    assert_eq!(calls[0].images, [sha(&image)]);
    assert_eq!(calls[0].input_fidelity.as_deref(), Some("high"));
}
