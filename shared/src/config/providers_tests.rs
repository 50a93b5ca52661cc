use super::*;
use clap::Parser;
use secrecy::ExposeSecret;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    providers: ProviderArgs,
}

fn today() -> NaiveDate {
    "2026-11-28".parse().expect("date")
}

fn settings(args: &[&str]) -> Result<ProviderSettings, ConfigError> {
    Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
        .expect("parses")
        .providers
        .settings_on(today())
}

#[test]
fn some_provider_needs_a_key() {
    assert_eq!(
        settings(&[]).expect_err("no key").variable,
        "OPENAI_API_KEY"
    );
    let s = settings(&["--openai-api-key", "sk"]).expect("configured");
    assert_eq!(s.configured(), [ProviderId::OpenAi]);
    assert_eq!(s.default_model.as_str(), "gpt-image-2");
    assert_eq!(s.enabled, ProviderId::ALL);
}

#[test]
fn seed_names_still_work() {
    let s = settings(&[
        "--openai-api-key",
        "k",
        "--flux-api-key",
        "f",
        "--enabled-providers",
        "dalle3,flux_schnell",
        "--default-provider",
        "flux_schnell",
    ])
    .expect("ok");
    assert_eq!(
        s.enabled,
        [
            ProviderId::OpenAi,
            ProviderId::AzureOpenAi,
            ProviderId::Flux,
            ProviderId::Bfl
        ]
    );
    assert_eq!(s.default_model.as_str(), "flux-schnell");
    // dalle3 is retired: as the default it means its replacement.
    let s = settings(&["--openai-api-key", "k", "--default-provider", "dalle3"]).expect("ok");
    assert_eq!(s.default_model.as_str(), "gpt-image-2");
}

#[test]
fn bad_lists_name_the_variable() {
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "--openai-api-key",
                "k",
                "--enabled-providers",
                "openai,midjourney",
            ],
            "ENABLED_PROVIDERS",
        ),
        (
            &["--openai-api-key", "k", "--default-model", "flux-schnell"],
            "DEFAULT_MODEL",
        ),
        (
            &["--openai-api-key", "k", "--default-model", "nope"],
            "DEFAULT_MODEL",
        ),
        (
            &["--openai-api-key", "k", "--model-aliases", "dall-e-3"],
            "MODEL_ALIASES",
        ),
        (
            &[
                "--openai-api-key",
                "k",
                "--model-aliases",
                "dall-e-3=gpt-image-1",
            ],
            "MODEL_ALIASES",
        ),
        (
            &["--openai-api-key", "k", "--failover-order", "openai,x"],
            "FAILOVER_ORDER",
        ),
        (
            &["--flux-api-key", "k", "--flux-model", "stable-diffusion"],
            "FLUX_MODEL",
        ),
    ];
    for (args, variable) in cases {
        assert_eq!(
            settings(args).expect_err("invalid").variable,
            variable,
            "{args:?}"
        );
    }
    let missing = std::path::Path::new("/nonexistent/models.toml")
        .display()
        .to_string();
    let err = settings(&["--openai-api-key", "k", "--model-catalog-file", &missing])
        .expect_err("no file");
    assert_eq!(err.variable, "MODEL_CATALOG_FILE");
}

#[test]
fn azure_needs_endpoint_and_deployments() {
    let err = settings(&["--azure-openai-api-key", "k"]).expect_err("no endpoint");
    assert_eq!(err.variable, "AZURE_OPENAI_ENDPOINT");
    let base = [
        "--azure-openai-api-key",
        "k",
        "--azure-openai-endpoint",
        "https://r.openai.azure.com/",
    ];
    assert_eq!(
        settings(&base).expect_err("no deployment").variable,
        "AZURE_OPENAI_DEPLOYMENTS"
    );
    let mut args = base.to_vec();
    let mut bad = args.clone();
    args.extend([
        "--azure-openai-deployment-name",
        "img2",
        "--azure-openai-deployments",
        "gpt-image-1-mini=mini",
    ]);
    let s = settings(&args).expect("configured");
    let azure = s.azure.clone().expect("azure");
    assert_eq!(azure.endpoint.as_str(), "https://r.openai.azure.com/");
    assert_eq!(azure.api_version, AZURE_DEFAULT_API_VERSION);
    assert_eq!(
        azure
            .deployments
            .get(&ModelId::new("gpt-image-2"))
            .map(String::as_str),
        Some("img2")
    );
    let offer = s.offer_on(4, today());
    let served: Vec<&str> = offer
        .provider(ProviderId::AzureOpenAi)
        .expect("azure")
        .models
        .keys()
        .map(ModelId::as_str)
        .collect();
    assert_eq!(served, ["gpt-image-1-mini", "gpt-image-2"]);
    bad.extend(["--azure-openai-deployments", "gpt-image-2=a,flux-2-pro=f"]);
    assert_eq!(
        settings(&bad).expect_err("not an azure model").variable,
        "AZURE_OPENAI_DEPLOYMENTS"
    );
}

#[test]
fn failover_order_and_the_seed_backend_choice() {
    let both = [
        "--openai-api-key",
        "sk",
        "--azure-openai-api-key",
        "k",
        "--azure-openai-endpoint",
        "https://r.openai.azure.com",
        "--azure-openai-deployment-name",
        "d",
    ];
    let s = settings(&both).expect("ok");
    assert_eq!(
        s.configured(),
        [ProviderId::OpenAi, ProviderId::AzureOpenAi]
    );
    let mut args = both.to_vec();
    args.extend(["--dalle3-backend", "azure"]);
    assert_eq!(
        settings(&args).expect("ok").configured(),
        [ProviderId::AzureOpenAi, ProviderId::OpenAi]
    );
    let s = settings(&[
        "--openai-api-key",
        "sk",
        "--flux-api-key",
        "f",
        "--failover-order",
        "flux_schnell",
    ])
    .expect("ok");
    assert_eq!(s.configured(), [ProviderId::Flux, ProviderId::OpenAi]);
    let err =
        settings(&["--openai-api-key", "sk", "--dalle3-backend", "azure"]).expect_err("no azure");
    assert_eq!(err.variable, "DALLE3_BACKEND");
}

#[test]
fn flux_protocol_follows_the_host_unless_told() {
    let s = settings(&["--flux-api-key", "f"]).expect("ok");
    assert!(s.flux.is_some() && s.bfl.is_none());
    assert_eq!(s.default_model.as_str(), "flux-schnell");
    let s = settings(&[
        "--flux-api-key",
        "f",
        "--flux-base-url",
        "https://api.bfl.ai/v1",
    ])
    .expect("ok");
    let bfl = s.bfl.clone().expect("bfl");
    assert_eq!(
        bfl.default_model.as_ref().map(ModelId::as_str),
        Some("flux-dev")
    );
    assert_eq!(bfl.api_key.expose_secret(), "f");
    assert_eq!(s.default_model.as_str(), "flux-dev");
    let s = settings(&[
        "--flux-api-key",
        "f",
        "--flux-model",
        "black-forest-labs/FLUX.1-schnell",
    ])
    .expect("ok");
    assert_eq!(
        s.flux
            .expect("flux")
            .default_model
            .as_ref()
            .map(ModelId::as_str),
        Some("flux-schnell")
    );
}

#[test]
fn bfl_region_picks_the_host() {
    let s = settings(&["--bfl-api-key", "b", "--bfl-region", "EU"]).expect("ok");
    assert_eq!(
        s.bfl.expect("bfl").base_url.as_str(),
        "https://api.eu.bfl.ai/v1"
    );
    let s = settings(&[
        "--bfl-api-key",
        "b",
        "--bfl-base-url",
        "http://127.0.0.1:9/bfl/v1",
        "--bfl-model",
        "flux-2-klein-4b",
    ])
    .expect("ok");
    assert_eq!(s.default_model.as_str(), "flux-2-klein-4b");
    assert_eq!(
        s.bfl.expect("bfl").base_url.as_str(),
        "http://127.0.0.1:9/bfl/v1"
    );
}

#[test]
fn a_catalogue_file_adds_models_without_a_rebuild() {
    let dir = std::env::temp_dir().join(format!("imagegen-catalogue-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("models.toml");
    std::fs::write(&file, "[[models]]\nid = \"flux-2-max\"\nextends = \"flux-2-pro\"\nname = \"FLUX.2 [max]\"\nserves.bfl = { model = \"flux-2-max\" }\n").expect("write");
    let path = file.display().to_string();
    let s = settings(&[
        "--bfl-api-key",
        "b",
        "--model-catalog-file",
        &path,
        "--default-model",
        "flux-2-max",
    ])
    .expect("ok");
    assert_eq!(s.default_model.as_str(), "flux-2-max");
    std::fs::write(
        &file,
        "[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\nreplacement = \"gpt-image-1\"\n",
    )
    .expect("write");
    let err =
        settings(&["--bfl-api-key", "b", "--model-catalog-file", &path]).expect_err("bad file");
    assert!(err.to_string().contains("retired itself"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn start_up_warns_of_retirements_within_thirty_days() {
    let s = settings(&["--openai-api-key", "sk"]).expect("ok");
    let warnings = s.retirement_warnings(today());
    assert!(
        warnings
            .iter()
            .any(|w| w
                .starts_with("model gpt-image-1-mini retires on openai on 2026-12-01 (in 3 days)")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("gpt-image-2 ")),
        "{warnings:?}"
    );
    assert!(
        settings(&["--flux-api-key", "f"])
            .expect("ok")
            .retirement_warnings(today())
            .is_empty()
    );
}
