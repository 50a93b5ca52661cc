use super::*;
use crate::domain::{ImageSize, Quality, Size};

fn day(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

#[test]
fn builtin_catalogue_is_valid() {
    let catalogue = Catalogue::builtin();
    // Today's date and the day the catalogue was written: replacements must be live on both.
    for today in [crate::domain::today(), day("2026-11-28")] {
        catalogue
            .validate(today)
            .unwrap_or_else(|e| panic!("{today}: {e}"));
    }
    for (name, model) in catalogue.legacy_names() {
        assert!(catalogue.get(model.as_str()).is_some(), "{name}");
    }
    // Every entry shows every field it must, through the JSON the models endpoint serves.
    for m in catalogue.models() {
        let json = serde_json::to_value(m.as_ref()).expect("json");
        assert!(
            json["serves"].as_object().is_some_and(|s| !s.is_empty()),
            "{}",
            m.id
        );
    }
}

#[test]
fn lifecycle_follows_the_dates() {
    let c = Catalogue::builtin();
    let on = day("2026-11-28");
    let status = |id: &str| c.get(id).expect(id).status_on(on);
    assert_eq!(status("dall-e-3"), ModelStatus::Retired);
    assert_eq!(status("gpt-image-1"), ModelStatus::Retired);
    assert_eq!(status("gpt-image-2"), ModelStatus::Ga);
    assert_eq!(status("gpt-image-1.5"), ModelStatus::Deprecated);
    assert_eq!(status("gpt-image-1-mini"), ModelStatus::Deprecated);
    let mini = c.get("gpt-image-1-mini").expect("mini");
    assert!(mini.serves[&ProviderId::OpenAi].retired_on(day("2026-12-01")));
    assert!(!mini.serves[&ProviderId::AzureOpenAi].retired_on(day("2026-12-01")));
    assert_eq!(
        c.get("dall-e-3")
            .expect("d3")
            .replacement
            .as_ref()
            .map(ModelId::as_str),
        Some("gpt-image-2")
    );
}

#[test]
fn extends_copies_then_overrides() {
    let c = Catalogue::builtin();
    let base = c.get("gpt-image-2").expect("base");
    let snap = c
        .get("GPT-Image-2-2026-04-21")
        .expect("lookup ignores case");
    assert_eq!(snap.sizes, base.sizes);
    assert_eq!(
        snap.serves.keys().collect::<Vec<_>>(),
        [&ProviderId::OpenAi]
    );
    assert_eq!(
        snap.serves[&ProviderId::OpenAi].model,
        "gpt-image-2-2026-04-21"
    );
    let sunburst = c.get("gpt-image-2.5-sunburst").expect("2.5");
    assert!(sunburst.qualities.contains(&Quality::Xhigh));
    assert!(!base.qualities.contains(&Quality::Xhigh));
}

#[test]
fn size_rules_accept_and_fit() {
    let c = Catalogue::builtin();
    let gpt2 = c.get("gpt-image-2").expect("gpt-image-2");
    assert!(gpt2.accepts_size(Size::Auto));
    assert!(gpt2.accepts_size(Size::Exact(ImageSize::new(1792, 1024))));
    assert!(gpt2.accepts_size(Size::Exact(ImageSize::new(3840, 2160))));
    assert!(
        !gpt2.accepts_size(Size::Exact(ImageSize::new(1000, 1000))),
        "not a multiple of 16"
    );
    assert!(
        !gpt2.accepts_size(Size::Exact(ImageSize::new(3840, 1024))),
        "aspect over 3:1"
    );
    assert!(
        !gpt2.accepts_size(Size::Exact(ImageSize::new(512, 512))),
        "under the pixel minimum"
    );
    let flux2 = c.get("flux-2-pro").expect("flux-2-pro");
    let rules = flux2.sizes.rules.as_ref().expect("rules");
    let fitted = rules.fit(ImageSize::new(3840, 2160));
    assert!(rules.allow(fitted), "{fitted}");
    assert!(
        fitted.pixels() <= 4_194_304 && (fitted.aspect() - 16.0 / 9.0).abs() < 0.02,
        "{fitted}"
    );
    let dalle = c.get("dall-e-3").expect("dall-e-3");
    assert!(!dalle.accepts_size(Size::Auto));
    assert!(dalle.describe_sizes().contains("1792x1024"));
}

#[test]
fn an_override_file_replaces_and_adds_entries() {
    let extra = r#"
[[models]]
id = "flux-schnell"
extends = "flux-schnell"
typical_generation_time = "1-3 seconds"

[[models]]
id = "my-flux"
extends = "flux-2-pro"
name = "Our fine-tune"
serves.bfl = { model = "flux-2-pro-finetuned" }
"#;
    let c =
        Catalogue::parse_layers(&[("built-in", BUILTIN), ("extra.toml", extra)]).expect("parses");
    c.validate(day("2026-11-28")).expect("valid");
    assert_eq!(
        c.get("flux-schnell").expect("kept").typical_generation_time,
        "1-3 seconds"
    );
    assert_eq!(
        c.get("flux-schnell").expect("kept").max_images,
        4,
        "the rest of the entry stays"
    );
    let mine = c.get("my-flux").expect("added");
    assert_eq!(mine.serves[&ProviderId::Bfl].model, "flux-2-pro-finetuned");
    assert_eq!(c.models().last().map(|m| m.id.as_str()), Some("my-flux"));
}

#[test]
fn bad_files_name_the_entry_and_the_rule() {
    let check = |extra: &str| {
        Catalogue::parse_layers(&[("built-in", BUILTIN), ("extra.toml", extra)])
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate(day("2026-11-28")))
            .expect_err("invalid")
    };
    let e = check("[[models]]\nid = \"x\"\nextends = \"nope\"\n");
    assert!(e.contains("'x'") && e.contains("nope"), "{e}");
    let e = check("[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\nreplacement = \"dall-e-2\"\n");
    assert!(e.contains("retired itself"), "{e}");
    let e = check("[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\nreplacement = \"nowhere\"\n");
    assert!(e.contains("not in the catalogue"), "{e}");
    let e = check(
        "[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\nreleased_on = 2026-01-02\ndeprecated_on = 2026-01-01\n",
    );
    assert!(e.contains("comes before"), "{e}");
    let e = check("[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\ncolour = \"red\"\n");
    assert!(e.contains("colour"), "{e}");
    let e = check(
        "[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\nsizes = { default = \"100x100\", list = [\"1024x1024\"] }\n",
    );
    assert!(e.contains("sizes.default"), "{e}");
    let e = check("not toml [");
    assert!(e.contains("extra.toml"), "{e}");
}

#[test]
fn the_catalogue_says_which_models_edit_with_how_many_inputs_and_a_mask() {
    let c = Catalogue::builtin();
    for id in [
        "gpt-image-2",
        "gpt-image-2.5-flare",
        "gpt-image-1.5",
        "gpt-image-1-mini",
    ] {
        let m = c.get(id).expect(id);
        assert!(m.edits_with(16, true), "{id}");
        assert!(!m.edits_with(17, false), "{id}");
        assert!(m.edits.as_ref().is_some_and(|e| e.input_fidelity), "{id}");
    }
    let kontext = c.get("flux-kontext-pro").expect("kontext");
    assert!(kontext.edits_with(4, false));
    assert!(!kontext.edits_with(5, false));
    assert!(!kontext.edits_with(1, true), "no mask on Kontext");
    for id in ["flux-2-pro", "flux-2-flex", "flux-2-klein-4b"] {
        let m = c.get(id).expect(id);
        assert!(m.edits_with(8, false) && !m.edits_with(9, false) && !m.edits_with(1, true));
    }
    for id in [
        "dall-e-2",
        "dall-e-3",
        "flux-schnell",
        "flux-pro-1.1",
        "flux-dev",
    ] {
        assert!(c.get(id).expect(id).edits.is_none(), "{id} does not edit");
    }
    assert!(!c.get("gpt-image-2").expect("m").edits_with(0, false));
}

#[test]
fn an_edit_table_out_of_range_is_refused() {
    let e = Catalogue::parse_layers(&[
        ("built-in", BUILTIN),
        (
            "extra.toml",
            "[[models]]\nid = \"x\"\nextends = \"flux-2-pro\"\nedits = { max_input_images = 17 }\n",
        ),
    ])
    .map_err(|e| e.to_string())
    .and_then(|c| c.validate(day("2026-11-28")))
    .expect_err("invalid");
    assert!(e.contains("max_input_images"), "{e}");
}
