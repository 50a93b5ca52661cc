use super::*;
use crate::config::ProviderArgs;
use crate::domain::{ImageSize, Offer, Quality, Size, Style};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    providers: ProviderArgs,
}

pub(crate) fn today() -> chrono::NaiveDate {
    "2026-11-28".parse().expect("date")
}

/// Every provider configured (as the sandbox does), as of 2026-11-28.
pub(crate) fn offer_with(extra: &[&str]) -> Offer {
    let mut args = vec![
        "test",
        "--openai-api-key",
        "sk",
        "--flux-api-key",
        "f",
        "--bfl-api-key",
        "b",
        "--azure-openai-api-key",
        "a",
        "--azure-openai-endpoint",
        "https://r.openai.azure.com",
        "--azure-openai-deployments",
        "gpt-image-2=img2,gpt-image-1-mini=mini",
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).expect("parses");
    cli.providers
        .settings_on(today())
        .expect("valid")
        .offer_on(4, today())
}

fn body(prompt: &str) -> GenerateBody {
    GenerateBody {
        prompt: prompt.to_owned(),
        ..GenerateBody::default()
    }
}

fn fields(err: ValidationErrors) -> Vec<String> {
    err.0.into_iter().map(|e| e.field).collect()
}

#[test]
fn defaults_fill_what_is_missing() {
    let req = GenerationRequest::parse(body(" a cat "), &offer_with(&[]), None).expect("valid");
    assert_eq!(req.prompt.as_str(), "a cat");
    assert_eq!(req.model.as_str(), "gpt-image-2");
    assert_eq!(req.provider, None);
    assert_eq!(req.size, Size::Exact(ImageSize::new(1024, 1024)));
    assert_eq!(
        (req.num_images, req.quality, req.style),
        (1, Some(Quality::Auto), None)
    );
}

#[test]
fn gpt_image_takes_every_field() {
    let mut b = body("a fox");
    b.model = Some("gpt-image-2".into());
    b.size = Some("1792x1024".into());
    b.quality = Some("high".into());
    b.background = Some("opaque".into());
    b.output_format = Some("webp".into());
    b.output_compression = Some(80);
    b.moderation = Some("low".into());
    b.num_images = Some(3);
    let req = GenerationRequest::parse(b, &offer_with(&[]), None).expect("valid");
    assert_eq!(req.output_compression, Some(80));
    assert_eq!(req.output_format, Some(crate::domain::OutputFormat::Webp));

    let mut b = body("a fox");
    b.model = Some("gpt-image-2".into());
    b.output_format = Some("png".into());
    b.output_compression = Some(50);
    b.background = Some("transparent".into());
    b.style = Some("vivid".into());
    b.seed = Some(1);
    assert_eq!(
        fields(GenerationRequest::parse(b, &offer_with(&[]), None).expect_err("invalid")),
        ["style", "background", "output_compression", "seed"]
    );
}

#[test]
fn flux_takes_seed_and_several_images_but_no_quality() {
    let mut b = body("waves");
    b.provider = Some("flux_schnell".into());
    b.size = Some("1536x1024".into());
    b.num_images = Some(4);
    b.seed = Some(42);
    let req = GenerationRequest::parse(b, &offer_with(&[]), None).expect("valid");
    assert_eq!(req.model.as_str(), "flux-schnell");
    assert_eq!(
        (req.num_images, req.seed, req.quality, req.style),
        (4, Some(42), None, None)
    );

    let mut b = body("waves");
    b.model = Some("flux-schnell".into());
    b.quality = Some("hd".into());
    b.style = Some("vivid".into());
    assert_eq!(
        fields(GenerationRequest::parse(b, &offer_with(&[]), None).expect_err("invalid")),
        ["quality", "style"]
    );
}

#[test]
fn dalle3_checks_its_own_rules_before_any_replacement() {
    let mut b = body("a cat");
    b.provider = Some("dalle3".into());
    b.size = Some("512x512".into());
    b.num_images = Some(2);
    b.seed = Some(1);
    b.quality = Some("ultra".into());
    b.style = Some("noir".into());
    let errs = GenerationRequest::parse(b, &offer_with(&[]), None).expect_err("invalid");
    assert!(
        errs.0[1].message.contains("makes one image per request"),
        "{errs}"
    );
    assert_eq!(
        fields(errs),
        ["size", "num_images", "quality", "style", "seed"]
    );

    let mut b = body("a cat");
    b.provider = Some("dalle3".into());
    let req = GenerationRequest::parse(b, &offer_with(&[]), None).expect("valid");
    assert_eq!(
        (req.model.as_str(), req.quality, req.style),
        ("dall-e-3", Some(Quality::Standard), Some(Style::Vivid))
    );
}

#[test]
fn service_limit_caps_num_images() {
    let mut offer = offer_with(&[]);
    offer.max_images_per_request = 2;
    let mut b = body("waves");
    b.model = Some("flux-schnell".into());
    b.num_images = Some(3);
    let errs = GenerationRequest::parse(b, &offer, None).expect_err("over the service limit");
    assert!(errs.0[0].message.contains("between 1 and 2"), "{errs}");
}

#[test]
fn provider_must_be_known_enabled_and_configured() {
    let offer = offer_with(&["--enabled-providers", "openai,azure_openai,flux"]);
    let mut b = body("a cat");
    b.provider = Some("bfl".into());
    let e = GenerationRequest::parse(b.clone(), &offer, None)
        .expect_err("disabled")
        .to_string();
    assert!(e.contains("not enabled"), "{e}");
    let mut offer = offer_with(&[]);
    offer
        .providers
        .retain(|p| p.provider != crate::domain::ProviderId::Bfl);
    let e = GenerationRequest::parse(b.clone(), &offer, None)
        .expect_err("unconfigured")
        .to_string();
    assert!(e.contains("not configured"), "{e}");
    b.provider = Some("midjourney".into());
    let e = GenerationRequest::parse(b.clone(), &offer, None)
        .expect_err("unknown")
        .to_string();
    assert!(
        e.contains("Unknown provider") && e.contains("dalle3"),
        "{e}"
    );
    b.provider = None;
    b.model = Some("midjourney-v7".into());
    let e = GenerationRequest::parse(b, &offer, None)
        .expect_err("unknown model")
        .to_string();
    assert!(e.contains("Unknown model"), "{e}");
}

#[test]
fn a_provider_alone_gets_its_default_model() {
    let mut b = body("a cat");
    b.provider = Some("bfl".into());
    let req = GenerationRequest::parse(b, &offer_with(&[]), None).expect("valid");
    assert_eq!(
        (req.model.as_str(), req.provider),
        ("flux-2-pro", Some(crate::domain::ProviderId::Bfl))
    );
}

#[test]
fn prompt_length_is_the_models() {
    let long = "a".repeat(5000);
    let mut b = body(&long);
    b.model = Some("gpt-image-2".into());
    assert!(GenerationRequest::parse(b.clone(), &offer_with(&[]), None).is_ok());
    b.model = Some("dall-e-3".into());
    let e = GenerationRequest::parse(b, &offer_with(&[]), None)
        .expect_err("too long")
        .to_string();
    assert!(e.contains("at most 4000"), "{e}");
}

#[test]
fn empty_prompt_and_negative_seed_reported_together() {
    let mut b = body("   ");
    b.provider = Some("flux_schnell".into());
    b.seed = Some(-1);
    let errs = GenerationRequest::parse(b, &offer_with(&[]), None).expect_err("invalid");
    assert_eq!(fields(errs.clone()), ["prompt", "seed"]);
    assert_eq!(fields(errs.in_item(3)), ["[3].prompt", "[3].seed"]);
}

/// The documented ranges are the ones `parse` enforces whatever the model (schemathesis sends values outside them
/// and expects a 400).
#[test]
fn documented_ranges_match_the_checks() {
    let schema =
        serde_json::to_value(<GenerateBody as utoipa::PartialSchema>::schema()).expect("schema");
    let props = &schema["properties"];
    let max_images = crate::catalogue::Catalogue::builtin()
        .models()
        .map(|m| m.max_images)
        .max();
    assert_eq!(
        props["num_images"]["maximum"].as_u64(),
        max_images.map(u64::from)
    );
    assert_eq!(props["seed"]["maximum"].as_u64(), Some(u64::from(u32::MAX)));
    assert_eq!(
        props["deadline_seconds"]["maximum"].as_i64(),
        Some(MAX_DEADLINE_SECS)
    );
    assert_eq!(props["output_compression"]["maximum"].as_i64(), Some(100));
}

#[test]
fn unknown_fields_are_rejected() {
    let err = serde_json::from_str::<GenerateBody>(r#"{"prompt": "x", "colour": "red"}"#)
        .expect_err("unknown");
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");
}

#[test]
fn stored_request_round_trips_and_old_rows_still_read() {
    let req = GenerationRequest::parse(body("a cat"), &offer_with(&[]), None).expect("valid");
    let json = serde_json::to_value(&req).expect("serialise");
    assert_eq!(json["size"], "1024x1024");
    let back: GenerationRequest = serde_json::from_value(json).expect("deserialise");
    assert_eq!(back, req);
    // A row written before the catalogue: the seed provider stands for its model.
    let old = serde_json::json!({"prompt": "a cat", "provider": "dalle3", "size": "1792x1024", "num_images": 1,
        "quality": "hd", "style": "vivid", "allow_failover": true});
    let old: GenerationRequest = serde_json::from_value(old).expect("old row");
    assert_eq!((old.model.as_str(), old.provider), ("dall-e-3", None));
}
