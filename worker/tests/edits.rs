//! Edit jobs through the real worker (`run_with`, SQLite job store, in-process queue, local storage) against the
//! provider emulator on 127.0.0.1: the worker reads the job's stored inputs and sends them as the provider's edit
//! call, and a retry sends the very same bytes (the emulator records the SHA-256 of every input it receives).
//! Inputs named by URL are served by a loopback server each test starts (`Host`'s counters say how often it was
//! asked): fetched once, checked, stored and recorded before the first call, or the job fails `invalid_input`.

use clap::Parser;
use imagegen_shared::backends::Backends;
use imagegen_shared::db::job_inputs::{InputRole, JobInput};
use imagegen_shared::db::{self, JobRecord, NewJob};
use imagegen_shared::domain::{FailureCode, JobId, JobStatus, ProviderId};
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
    let mut inputs: Vec<(InputRole, Input)> = images
        .iter()
        .map(|b| (InputRole::Image, Input::Stored(b.clone())))
        .collect();
    inputs.extend(mask.map(|m| (InputRole::Mask, Input::Stored(m.to_vec()))));
    let options = EditOptions {
        lose_files,
        ..EditOptions::default()
    };
    run_edit_with(base_url, host, &inputs, &options)
        .await
        .record
}

/// One input of an edit job: stored with the job (as an upload is), or named by URL for the worker to fetch.
enum Input {
    Stored(Vec<u8>),
    Url(String),
}

#[derive(Default)]
struct EditOptions<'a> {
    /// Remove the stored files again before the job runs.
    lose_files: bool,
    /// More worker arguments (EDIT_*).
    args: &'a [&'a str],
}

/// How an edit job ended, with its `job_inputs` rows and the stored object each names, read before the worker's
/// files are removed.
struct Ran {
    record: JobRecord,
    inputs: Vec<JobInput>,
    objects: Vec<Option<Vec<u8>>>,
}

/// Runs one edit job with `inputs` (images then the mask) on a real worker against `base_url` until it ends.
async fn run_edit_with(
    base_url: &str,
    host: Host,
    inputs: &[(InputRole, Input)],
    options: &EditOptions<'_>,
) -> Ran {
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
    args.extend(options.args.iter().map(|a| (*a).to_owned()));
    let args = Cli::try_parse_from(args).expect("arguments").worker;
    let settings = args.settings().expect("settings");
    let backends = Backends::connect(&database_url, 2, None, "edits").expect("stores");
    db::migrate(&backends.db).await.expect("migrate");
    let id = JobId::new();
    let mut positions = [0i32; 2];
    let rows: Vec<JobInput> = inputs
        .iter()
        .map(|(role, input)| {
            let slot = &mut positions[usize::from(*role == InputRole::Mask)];
            let position = *slot;
            *slot += 1;
            match input {
                Input::Stored(bytes) => stored(&root, id, *role, position, bytes),
                Input::Url(url) => JobInput {
                    job_id: id,
                    owner: "anonymous".into(),
                    role: *role,
                    position,
                    storage_key: None,
                    source_url: Some(url.clone()),
                    source_image: None,
                    content_type: None,
                    size_bytes: None,
                    sha256: None,
                    width: None,
                    height: None,
                },
            }
        })
        .collect();
    if options.lose_files {
        std::fs::remove_dir_all(root.join("inputs")).expect("remove");
    }
    let (images, mask) = (positions[0], positions[1] > 0);
    let job = db::jobs::insert(
        &backends.db,
        &NewJob {
            provider,
            id,
            owner: "anonymous".into(),
            correlation_id: "corr-edit".into(),
            request: serde_json::from_value(serde_json::json!({"prompt": "paint it blue",
                "model": model, "size": "1024x1024", "num_images": 1, "allow_failover": false,
                "edit": {"images": images, "mask": mask, "input_fidelity": if matches!(host, Host::Kontext) { None } else { Some("high") }}}))
            .expect("valid"),
            max_attempts: 3,
            max_calls: 3,
            status: JobStatus::Queued,
            moderation: None,
            error: None,
            deadline_secs: None,
            api_key_id: None,
            reserved_usd_micros: 0,
            inputs: rows,
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
    let inputs = db::job_inputs::load(&backends.db, job.id)
        .await
        .expect("inputs");
    let objects = inputs
        .iter()
        .map(|row| {
            row.storage_key
                .as_ref()
                .and_then(|key| std::fs::read(root.join(key)).ok())
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Ran {
        record,
        inputs,
        objects,
    }
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

/// What the loopback image host answers at one path.
#[derive(Clone)]
enum Serve {
    /// 200 with these bytes as `image/png`.
    Png(Vec<u8>),
    /// 200 with a web page.
    Html,
    /// 200 with a body that never ends (64 KiB chunks, no Content-Length).
    Endless,
    /// 503 (with `Retry-After: 0`) the first `n` times, then 200 with the bytes.
    FailFirst(u32, Vec<u8>),
}

/// A loopback HTTP server standing in for the hosts clients' image URLs point at; counts every request per path.
#[derive(Clone)]
struct ImageHost {
    base: String,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl ImageHost {
    async fn start(paths: Vec<(&'static str, Serve)>) -> ImageHost {
        use axum::response::IntoResponse;
        let routes: std::collections::HashMap<String, Serve> =
            paths.into_iter().map(|(p, s)| (p.to_owned(), s)).collect();
        let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let path = uri.path().to_owned();
            let serve = routes.get(&path).cloned();
            let hit = {
                let mut hits = counted.lock().expect("hits");
                let n = hits.entry(path).or_insert(0);
                *n += 1;
                *n
            };
            async move {
                let png = |bytes: Vec<u8>| {
                    ([(axum::http::header::CONTENT_TYPE, "image/png")], bytes).into_response()
                };
                match serve {
                    None => axum::http::StatusCode::NOT_FOUND.into_response(),
                    Some(Serve::Png(bytes)) => png(bytes),
                    Some(Serve::Html) => axum::response::Html(
                        "<!doctype html><title>cat.png</title><p>Not the picture you wanted.</p>",
                    )
                    .into_response(),
                    Some(Serve::Endless) => {
                        let chunks = futures::stream::repeat_with(|| {
                            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0x89u8; 64 * 1024]))
                        });
                        (
                            [(axum::http::header::CONTENT_TYPE, "image/png")],
                            axum::body::Body::from_stream(chunks),
                        )
                            .into_response()
                    }
                    Some(Serve::FailFirst(n, _)) if hit <= n => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::RETRY_AFTER, "0")],
                        "busy",
                    )
                        .into_response(),
                    Some(Serve::FailFirst(_, bytes)) => png(bytes),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        ImageHost {
            base: format!("http://{addr}"),
            hits,
        }
    }

    fn url(&self, path: &str) -> Input {
        Input::Url(format!("{}{path}", self.base))
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Loopback image hosts are plain http: allowed only with EDIT_URL_ALLOW_INSECURE (loopback only).
const INSECURE: &[&str] = &["--edit-url-allow-insecure", "true"];

fn assert_invalid_input(ran: &Ran, says: &str) {
    let record = &ran.record;
    assert_eq!(
        record.status,
        JobStatus::Failed,
        "{:?}",
        record.error_message
    );
    assert_eq!(record.error_code, Some(FailureCode::InvalidInput));
    let message = record.error_message.clone().unwrap_or_default();
    assert!(
        message.starts_with("The edit's inputs cannot be sent: ") && message.contains(says),
        "{message}"
    );
    assert_eq!(record.attempts, 0, "no provider call");
}

/// An image URL is fetched once, stored under the job and recorded on its row; the provider gets exactly those
/// bytes, and the retry after the provider's 500 reads the stored object rather than fetching again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_image_is_fetched_once_stored_and_sent_on_every_attempt() {
    let (emu, base) = emulator(1).await;
    let image = png(64, 64, false, 77);
    let host = ImageHost::start(vec![("/cat.png", Serve::Png(image.clone()))]).await;
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[(InputRole::Image, host.url("/cat.png"))],
        &EditOptions {
            args: INSECURE,
            ..EditOptions::default()
        },
    )
    .await;
    assert_eq!(
        ran.record.status,
        JobStatus::Succeeded,
        "{:?}",
        ran.record.error_message
    );
    assert_eq!(host.hits("/cat.png"), 1, "fetched once for both calls");
    let calls = emu.edit_records();
    assert_eq!(calls.len(), 2, "a failed call and its retry: {calls:?}");
    for call in &calls {
        assert_eq!(call.images, [sha(&image)]);
    }
    let row = &ran.inputs[0];
    let key = row.storage_key.clone().expect("recorded");
    let prefix = format!("inputs/{}/image-0-{}", ran.record.id, &sha(&image)[..16]);
    assert!(key.starts_with(&prefix) && key.ends_with(".png"), "{key}");
    assert_eq!(row.sha256.as_deref(), Some(sha(&image).as_str()));
    assert_eq!(row.content_type.as_deref(), Some("image/png"));
    assert_eq!(row.size_bytes, Some(image.len() as i64));
    assert_eq!((row.width, row.height), (Some(64), Some(64)));
    assert_eq!(ran.objects[0].as_deref(), Some(image.as_slice()));
}

/// A URL that answers a web page is not an image: the job fails at once, no provider is called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_answering_html_fails_the_job_as_invalid_input() {
    let (emu, base) = emulator(0).await;
    let host = ImageHost::start(vec![("/cat.png", Serve::Html)]).await;
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[(InputRole::Image, host.url("/cat.png"))],
        &EditOptions {
            args: INSECURE,
            ..EditOptions::default()
        },
    )
    .await;
    assert_invalid_input(&ran, "image[0] is not a PNG, JPEG or WebP image");
    assert!(emu.edit_records().is_empty());
    assert_eq!(ran.inputs[0].storage_key, None, "nothing stored");
}

/// A body past EDIT_MAX_IMAGE_BYTES is refused as soon as it passes it: this one never ends, so reading it whole
/// would hang until the fetch timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_cut_off_at_the_cap() {
    let (emu, base) = emulator(0).await;
    let host = ImageHost::start(vec![("/huge.png", Serve::Endless)]).await;
    let started = Instant::now();
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[(InputRole::Image, host.url("/huge.png"))],
        &EditOptions {
            args: &[
                "--edit-url-allow-insecure",
                "true",
                "--edit-max-image-bytes",
                "1048576",
            ],
            ..EditOptions::default()
        },
    )
    .await;
    assert_invalid_input(
        &ran,
        "image[0] is larger than EDIT_MAX_IMAGE_BYTES (1048576 bytes)",
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(host.hits("/huge.png"), 1, "a final refusal is not retried");
    assert!(emu.edit_records().is_empty());
}

/// A mask URL of another size than the first image fails the job, naming the mask; the image was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mask_url_of_the_wrong_size_fails_the_job() {
    let (emu, base) = emulator(0).await;
    let host = ImageHost::start(vec![
        ("/cat.png", Serve::Png(png(64, 64, false, 5))),
        ("/mask.png", Serve::Png(png(32, 32, true, 0))),
    ])
    .await;
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[
            (InputRole::Image, host.url("/cat.png")),
            (InputRole::Mask, host.url("/mask.png")),
        ],
        &EditOptions {
            args: INSECURE,
            ..EditOptions::default()
        },
    )
    .await;
    assert_invalid_input(&ran, "mask is 32x32 but image[0] is 64x64");
    assert!(emu.edit_records().is_empty());
    assert_eq!(ran.inputs[1].storage_key, None, "the mask was not stored");
}

/// With the default policy (https only, no private or loopback address) a loopback URL is refused before any
/// connection: the host never hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_url_is_refused_by_the_default_policy_without_a_connection() {
    let (emu, base) = emulator(0).await;
    let host = ImageHost::start(vec![("/cat.png", Serve::Png(png(64, 64, false, 5)))]).await;
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[(InputRole::Image, host.url("/cat.png"))],
        &EditOptions::default(),
    )
    .await;
    assert_invalid_input(&ran, "image[0]: the URL is refused: http is not allowed");
    assert_eq!(host.hits("/cat.png"), 0);
    assert!(emu.edit_records().is_empty());
    // https to a loopback address is refused by address (the https check passes; nothing may listen there).
    let https = host.base.replace("http://", "https://");
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[(InputRole::Image, Input::Url(format!("{https}/cat.png")))],
        &EditOptions::default(),
    )
    .await;
    assert_invalid_input(&ran, "is a loopback address");
    assert_eq!(host.hits("/cat.png"), 0);
}

/// A host that answers 503 is asked again after a backoff; the job then succeeds with the bytes of the 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_image_host_is_tried_again() {
    let (emu, base) = emulator(0).await;
    let image = png(64, 64, false, 150);
    let host = ImageHost::start(vec![("/cat.png", Serve::FailFirst(1, image.clone()))]).await;
    let ran = run_edit_with(
        &base,
        Host::OpenAi,
        &[(InputRole::Image, host.url("/cat.png"))],
        &EditOptions {
            args: INSECURE,
            ..EditOptions::default()
        },
    )
    .await;
    assert_eq!(
        ran.record.status,
        JobStatus::Succeeded,
        "{:?}",
        ran.record.error_message
    );
    assert_eq!(host.hits("/cat.png"), 2, "a 503, then the picture");
    let calls = emu.edit_records();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].images, [sha(&image)]);
}
