//! The stack's options for the providers and storage backends the tests point at the emulator, moto or Azurite.

use super::{API_KEY, Options, kv};

/// FLUX (`flux_schnell`) on the emulator's OpenAI-style FLUX host, beside OpenAI.
pub fn flux_options() -> Options {
    let env = vec![kv("FLUX_API_KEY", API_KEY)];
    Options {
        api_env: env.clone(),
        worker_env: env,
        flux_endpoint: true,
        ..Options::default()
    }
}

/// OpenAI (which serves the seed's `dalle3`) with FLUX beside it: the pair failover moves between. The same stack
/// as `flux_options`.
pub fn dalle3_and_flux() -> Options {
    flux_options()
}

/// Azure OpenAI instead of OpenAI: one deployment, `img2-prod`, serving gpt-image-2 (AZURE_OPENAI_DEPLOYMENT_NAME).
pub fn azure_options() -> Options {
    let env = vec![
        kv("OPENAI_API_KEY", ""),
        kv("AZURE_OPENAI_API_KEY", API_KEY),
        kv("AZURE_OPENAI_DEPLOYMENT_NAME", "img2-prod"),
    ];
    Options {
        emulator_args: vec![
            "--api-key".into(),
            API_KEY.into(),
            "--azure-deployment".into(),
            "img2-prod=gpt-image-2".into(),
        ],
        api_env: env.clone(),
        worker_env: env,
        azure_endpoint: true,
        ..Options::default()
    }
}

/// Azure OpenAI instead of OpenAI, a deployment per model (AZURE_OPENAI_DEPLOYMENTS), on the API path `path`
/// (`deployments` or `v1`).
pub fn azure(path: &str) -> Options {
    let env = vec![
        kv("OPENAI_API_KEY", ""),
        kv("AZURE_OPENAI_API_KEY", API_KEY),
        kv(
            "AZURE_OPENAI_DEPLOYMENTS",
            "gpt-image-2=img2-prod,gpt-image-1-mini=mini-prod",
        ),
        kv("AZURE_OPENAI_API_PATH", path),
    ];
    Options {
        emulator_args: vec![
            "--api-key".into(),
            API_KEY.into(),
            "--azure-deployment".into(),
            "img2-prod=gpt-image-2,mini-prod=gpt-image-1-mini".into(),
        ],
        api_env: env.clone(),
        worker_env: env,
        azure_endpoint: true,
        ..Options::default()
    }
}

/// Black Forest Labs instead of OpenAI.
pub fn bfl() -> Options {
    let env = vec![kv("OPENAI_API_KEY", ""), kv("BFL_API_KEY", API_KEY)];
    Options {
        api_env: env.clone(),
        worker_env: env,
        bfl_endpoint: true,
        ..Options::default()
    }
}

/// Storage settings for moto's S3 server or Azurite, as `scripts/services.sh` starts them.
pub fn storage_env(backend: &str) -> Vec<(String, String)> {
    match backend {
        "s3" => vec![
            kv("STORAGE_BACKEND", "s3"),
            kv("S3_BUCKET", "imagegen-test"),
            kv(
                "S3_PREFIX",
                format!("e2e-{}", uuid::Uuid::new_v4().simple()),
            ),
            kv("AWS_REGION", "us-east-1"),
            kv("AWS_ACCESS_KEY_ID", "testing"),
            kv("AWS_SECRET_ACCESS_KEY", "testing"),
            kv(
                "S3_ENDPOINT",
                std::env::var("TEST_S3_ENDPOINT")
                    .unwrap_or_else(|_| "http://127.0.0.1:5000".into()),
            ),
        ],
        _ => vec![
            kv("STORAGE_BACKEND", "azure"),
            kv(
                "AZURE_STORAGE_CONNECTION_STRING",
                format!(
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
                     AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
                     BlobEndpoint={};",
                    std::env::var("TEST_AZURITE_BLOB_ENDPOINT")
                        .unwrap_or_else(|_| "http://127.0.0.1:10000/devstoreaccount1".into())
                ),
            ),
            kv("AZURE_STORAGE_CONTAINER", "imagegen-test"),
        ],
    }
}
