use super::*;
use crate::catalogue::Catalogue;
use crate::domain::request::GenerateBody;
use crate::domain::request::tests::offer_with;
use crate::domain::{GenerationRequest, Quality};

fn request(model: &str, size: &str, n: i64, seed: Option<i64>) -> GenerationRequest {
    let body = GenerateBody {
        prompt: "a cat".into(),
        model: Some(model.into()),
        size: Some(size.into()),
        num_images: Some(n),
        seed,
        ..GenerateBody::default()
    };
    GenerationRequest::parse(body, &offer_with(&[]), None).expect("valid")
}

fn spec(id: &str) -> std::sync::Arc<crate::catalogue::ModelSpec> {
    Catalogue::builtin().get(id).expect(id).clone()
}

#[test]
fn nearest_listed_sizes_keep_the_shape() {
    let flux = &spec("flux-kontext-pro").sizes.list;
    assert_eq!(
        nearest_listed(ImageSize::new(1792, 1024), flux),
        Some(ImageSize::new(1392, 752))
    );
    assert_eq!(
        nearest_listed(ImageSize::new(1024, 1024), flux),
        Some(ImageSize::new(1024, 1024))
    );
    let dalle = &spec("dall-e-3").sizes.list;
    assert_eq!(
        nearest_listed(ImageSize::new(512, 512), dalle),
        Some(ImageSize::new(1024, 1024))
    );
    assert_eq!(
        nearest_listed(ImageSize::new(1536, 1024), dalle),
        Some(ImageSize::new(1792, 1024))
    );
}

#[test]
fn dalle3_to_gpt_image_maps_quality_and_drops_style() {
    let mut req = request("dall-e-3", "1792x1024", 1, None);
    req.quality = Some(Quality::Hd);
    let c = Catalogue::builtin();
    let (out, notes) = translate(&req, &spec("gpt-image-1.5"), None, &c).expect("fits");
    assert_eq!(out.size, Size::Exact(ImageSize::new(1536, 1024)));
    assert_eq!(out.quality, Some(Quality::High));
    assert_eq!(out.style, None);
    for expected in [
        "served by gpt-image-1.5",
        "size 1792x1024 -> 1536x1024",
        "quality hd -> high",
        "style vivid dropped",
    ] {
        assert!(
            notes.iter().any(|n| n.contains(expected)),
            "{expected}: {notes:?}"
        );
    }
    // gpt-image-2 takes 1792x1024 as it is.
    let (out, _) = translate(&req, &spec("gpt-image-2"), None, &c).expect("fits");
    assert_eq!(out.size, Size::Exact(ImageSize::new(1792, 1024)));
}

#[test]
fn gpt_image_to_flux_fits_the_rules_and_drops_what_flux_lacks() {
    let c = Catalogue::builtin();
    let mut req = request("gpt-image-2", "3840x2160", 3, None);
    req.quality = Some(Quality::High);
    req.output_format = Some(OutputFormat::Webp);
    req.output_compression = Some(70);
    req.background = Some(Background::Opaque);
    let (out, notes) =
        translate(&req, &spec("flux-2-pro"), Some(ProviderId::Bfl), &c).expect("fits");
    let size = out.size.exact().expect("exact");
    assert!(spec("flux-2-pro").accepts_size(out.size), "{size}");
    assert_eq!(
        (
            out.quality,
            out.output_format,
            out.output_compression,
            out.background
        ),
        (None, Some(OutputFormat::Png), None, None)
    );
    assert!(
        notes.iter().any(|n| n.contains("split into 3 calls")),
        "{notes:?}"
    );
    // auto, which FLUX does not take, becomes its default size.
    let (out, _) = translate(
        &request("gpt-image-2", "auto", 1, None),
        &spec("flux-schnell"),
        None,
        &c,
    )
    .expect("fits");
    assert_eq!(out.size, Size::Exact(ImageSize::new(1024, 1024)));
}

#[test]
fn flux_to_gpt_image_drops_the_seed() {
    let c = Catalogue::builtin();
    let (out, notes) = translate(
        &request("flux-schnell", "512x512", 3, Some(9)),
        &spec("gpt-image-2"),
        None,
        &c,
    )
    .expect("fits");
    assert_eq!(out.seed, None);
    assert!(spec("gpt-image-2").accepts_size(out.size), "{}", out.size);
    assert!(
        notes.iter().any(|n| n.contains("seed 9 dropped")),
        "{notes:?}"
    );
}

#[test]
fn the_same_model_on_a_provider_with_fewer_formats() {
    let c = Catalogue::builtin();
    let mut req = request("gpt-image-2", "1024x1024", 1, None);
    req.output_format = Some(OutputFormat::Webp);
    let (out, notes) = translate(
        &req,
        &spec("gpt-image-2"),
        Some(ProviderId::AzureOpenAi),
        &c,
    )
    .expect("fits");
    assert_eq!(out.output_format, Some(OutputFormat::Png));
    assert_eq!(notes, ["output_format webp -> png"]);
    let (same, notes) =
        translate(&req, &spec("gpt-image-2"), Some(ProviderId::OpenAi), &c).expect("fits");
    assert_eq!(same, req);
    assert!(notes.is_empty());
}

#[test]
fn quality_ladders_meet_by_rank() {
    let c = Catalogue::builtin();
    let mut req = request("gpt-image-2.5-sunburst", "1024x1024", 1, None);
    req.quality = Some(Quality::Max);
    let (out, _) = translate(&req, &spec("gpt-image-2"), None, &c).expect("fits");
    assert_eq!(out.quality, Some(Quality::High));
    let (out, _) = translate(&req, &spec("dall-e-3"), None, &c).expect("fits");
    assert_eq!(out.quality, Some(Quality::Hd));
    req.quality = Some(Quality::Low);
    let (out, _) = translate(&req, &spec("dall-e-3"), None, &c).expect("fits");
    assert_eq!(out.quality, Some(Quality::Standard));
}

#[test]
fn a_prompt_too_long_for_the_target_cannot_go_there() {
    let c = Catalogue::builtin();
    let body = GenerateBody {
        prompt: "a".repeat(6000),
        model: Some("gpt-image-2".into()),
        ..GenerateBody::default()
    };
    let req = GenerationRequest::parse(body, &offer_with(&[]), None).expect("valid");
    assert!(translate(&req, &spec("flux-schnell"), None, &c).is_err());
}

fn edit(model: &str, images: u8, mask: bool, fidelity: bool) -> GenerationRequest {
    request(model, "1024x1024", 1, None).with_edit(crate::domain::EditParams {
        images,
        mask,
        input_fidelity: fidelity.then_some(crate::domain::edit::InputFidelity::High),
    })
}

#[test]
fn an_edit_goes_only_to_a_model_that_takes_its_inputs() {
    let c = Catalogue::builtin();
    let two = edit("gpt-image-2", 2, false, false);
    assert!(translate(&two, &spec("flux-kontext-pro"), None, &c).is_ok());
    let err = translate(&two, &spec("flux-schnell"), None, &c).expect_err("no edits");
    assert_eq!(err, "flux-schnell does not edit images");
    let masked = edit("gpt-image-2", 1, true, false);
    let err = translate(&masked, &spec("flux-2-pro"), None, &c).expect_err("no mask");
    assert_eq!(err, "flux-2-pro takes no mask");
    let five = edit("gpt-image-2", 5, false, false);
    let err = translate(&five, &spec("flux-kontext-pro"), None, &c).expect_err("too many");
    assert_eq!(
        err,
        "flux-kontext-pro takes 1 to 4 input images; this edit has 5"
    );
    assert!(translate(&five, &spec("flux-2-pro"), None, &c).is_ok());
}

#[test]
fn input_fidelity_is_dropped_and_noted_where_not_taken() {
    let c = Catalogue::builtin();
    let req = edit("gpt-image-2", 1, false, true);
    let (same, notes) = translate(&req, &spec("gpt-image-1.5"), None, &c).expect("fits");
    assert!(same.edit().is_some_and(|e| e.input_fidelity.is_some()));
    assert!(
        !notes.iter().any(|n| n.contains("input_fidelity")),
        "{notes:?}"
    );
    let (out, notes) = translate(&req, &spec("flux-2-pro"), None, &c).expect("fits");
    assert_eq!(
        out.edit().map(|e| (e.images, e.input_fidelity)),
        Some((1, None))
    );
    assert!(
        notes.contains(&"input_fidelity high dropped (flux-2-pro takes none)".to_string()),
        "{notes:?}"
    );
}
