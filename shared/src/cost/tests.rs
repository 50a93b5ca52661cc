use super::pricing::{Answer, input_image_tokens, max_cost, max_input_cost, price_answer};
use super::{Cost, CostBasis};
use crate::catalogue::{Catalogue, ModelSpec};
use crate::domain::request::tests::{offer_with, today};
use crate::domain::{GenerateBody, GenerationRequest, ImageSize, Quality};
use serde_json::json;
use std::sync::Arc;

fn model(id: &str) -> Arc<ModelSpec> {
    Catalogue::builtin()
        .get(id)
        .expect("in the catalogue")
        .clone()
}

fn size(w: u32, h: u32) -> ImageSize {
    ImageSize::new(w, h)
}

/// A GPT image `usage` block as OpenAI (and our emulator) sends it.
fn usage(text_in: u64, output: u64) -> serde_json::Value {
    json!({"input_tokens": text_in, "input_tokens_details": {"image_tokens": 0, "text_tokens": text_in},
        "output_tokens": output, "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": text_in + output})
}

fn tokens_cost(id: &str, text_in: u64, output: u64) -> Cost {
    let u = usage(text_in, output);
    price_answer(
        &model(id),
        today(),
        &Answer {
            usage: Some(&u),
            ..Answer::default()
        },
    )
}

fn request(body: serde_json::Value) -> GenerationRequest {
    let body: GenerateBody = serde_json::from_value(body).expect("body");
    GenerationRequest::parse(body, &offer_with(&[]), None).expect("valid request")
}

/// OpenAI's published output tokens per picture (low, medium, high) for gpt-image-1, and its published per-image
/// prices: tokens at the per-token price give the published figure (OpenAI rounds to the tenth of a cent).
#[test]
fn tokens_price_to_openais_published_per_image_figures() {
    let published = [
        ((1024, 1024), [(272, 0.011), (1056, 0.042), (4160, 0.167)]),
        ((1024, 1536), [(408, 0.016), (1584, 0.063), (6240, 0.25)]),
        ((1536, 1024), [(400, 0.016), (1568, 0.063), (6208, 0.25)]),
    ];
    for ((w, h), per_quality) in published {
        for (output_tokens, usd) in per_quality {
            let cost = tokens_cost("gpt-image-1", 0, output_tokens);
            assert_eq!(cost.basis, CostBasis::Tokens);
            assert!(!cost.estimated, "usage is what the provider reported");
            let got = super::usd(cost.usd_micros);
            assert!(
                (got - usd).abs() <= usd * 0.01 + 0.0005,
                "{w}x{h} {output_tokens} tokens: {got} vs published {usd}"
            );
        }
    }
    // Exactly: 4160 output tokens at $40/1M and 10 text tokens at $5/1M.
    assert_eq!(tokens_cost("gpt-image-1", 10, 4160).usd_micros, 166_450);
    assert_eq!(tokens_cost("gpt-image-1-mini", 10, 4160).usd_micros, 33_300);
}

#[test]
fn image_input_tokens_have_their_own_price() {
    let u = json!({"input_tokens": 1000, "input_tokens_details": {"image_tokens": 800, "text_tokens": 200},
        "output_tokens": 0, "total_tokens": 1000});
    let cost = price_answer(
        &model("gpt-image-1"),
        today(),
        &Answer {
            usage: Some(&u),
            ..Answer::default()
        },
    );
    // 200 x $5/1M + 800 x $10/1M = $0.001 + $0.008.
    assert_eq!(cost.usd_micros, 9_000);
}

/// An edit's budget reservation counts its input images at the image-input price: as many tokens as the provider
/// may count them as (so the reservation is not below the cost the usage later reports).
#[test]
fn an_edits_input_images_are_reserved_at_the_image_input_price() {
    // 1024x1024: 4 tiles, 85 + 4 x 170 = 765 tokens, as the emulator's usage reports it; twice with high fidelity.
    assert_eq!(input_image_tokens(1024, 1024, false), 765);
    assert_eq!(input_image_tokens(1024, 1024, true), 1530);
    assert_eq!(input_image_tokens(64, 64, false), 255);
    let gpt = model("gpt-image-1");
    // 765 + 255 tokens at $10/1M = $0.0102.
    let two = [Some((1024, 1024)), Some((64, 64))];
    assert_eq!(
        max_input_cost(&gpt, today(), &two, false, 4096 * 4096),
        10_200
    );
    assert_eq!(
        max_input_cost(&gpt, today(), &two, true, 4096 * 4096),
        20_400
    );
    // A URL input not fetched yet counts as the largest allowed: 4096x4096 is 64 tiles, 10,965 tokens.
    assert_eq!(
        max_input_cost(&gpt, today(), &[None], false, 4096 * 4096),
        109_650
    );
    // gpt-image-1-mini's image input is $2.50/1M.
    assert_eq!(
        max_input_cost(
            &model("gpt-image-1-mini"),
            today(),
            &[Some((1024, 1024))],
            false,
            1
        ),
        1_913
    );
    // Not priced by tokens (BFL's credits): nothing added here.
    assert_eq!(
        max_input_cost(
            &model("flux-kontext-pro"),
            today(),
            &two,
            false,
            4096 * 4096
        ),
        0
    );
}

#[test]
fn provisional_prices_mark_costs_estimated() {
    let cost = tokens_cost("gpt-image-2", 10, 4160);
    assert_eq!(cost.usd_micros, 166_450);
    assert!(cost.estimated, "gpt-image-2's price is provisional");
    assert!(tokens_cost("gpt-image-2.6-flare", 1, 1).estimated);
}

/// Every catalogue model a provider still serves is priced at every listed size and quality, and where the
/// catalogue holds the provider's published per-image figure, the estimate is that figure.
#[test]
fn every_served_model_is_priced_at_each_size_and_quality() {
    let day = today();
    for m in Catalogue::builtin().models() {
        if m.serves.values().all(|s| s.retired_on(day)) && m.retires_on.is_some_and(|d| d <= day) {
            continue;
        }
        let price = m
            .price_on(day)
            .unwrap_or_else(|| panic!("{} has no price", m.id));
        let qualities: Vec<Option<Quality>> = if m.qualities.is_empty() {
            vec![None]
        } else {
            m.qualities.iter().map(|q| Some(*q)).collect()
        };
        for s in &m.sizes.list {
            for q in &qualities {
                let answer = Answer {
                    quality: *q,
                    sizes: vec![*s],
                    ..Answer::default()
                };
                let cost = price_answer(m, day, &answer);
                assert!(
                    cost.usd_micros > 0 && cost.estimated && cost.basis != CostBasis::Unpriced,
                    "{} {s} {q:?}: {cost:?}",
                    m.id
                );
                if let (Some(table), Some(q)) = (&price.per_image, q)
                    && let Some(published) = table.get(&format!("{q}/{s}"))
                {
                    assert_eq!(
                        cost.usd_micros,
                        super::micros(*published),
                        "{} {q}/{s}",
                        m.id
                    );
                }
            }
        }
    }
}

#[test]
fn dall_e_prices_per_image_by_quality_and_size() {
    let cost = |q, w, h| {
        price_answer(
            &model("dall-e-3"),
            today(),
            &Answer {
                quality: Some(q),
                sizes: vec![size(w, h)],
                ..Answer::default()
            },
        )
    };
    assert_eq!(cost(Quality::Standard, 1024, 1024).usd_micros, 40_000);
    assert_eq!(cost(Quality::Hd, 1792, 1024).usd_micros, 120_000);
    assert_eq!(cost(Quality::Hd, 1024, 1024).basis, CostBasis::PerImage);
}

#[test]
fn bfl_reported_credits_are_exact_and_the_table_estimates_without_them() {
    let reported = price_answer(
        &model("flux-2-pro"),
        today(),
        &Answer {
            credits: Some(4.5),
            sizes: vec![size(1536, 1024)],
            ..Answer::default()
        },
    );
    assert_eq!(
        reported,
        Cost {
            usd_micros: 45_000,
            basis: CostBasis::Credits,
            estimated: false
        }
    );
    // 1536x1024 is 1.5 MP: the first at 3 credits, one more started at 1.5 (the emulator's table).
    let estimated = price_answer(
        &model("flux-2-pro"),
        today(),
        &Answer {
            sizes: vec![size(1536, 1024)],
            ..Answer::default()
        },
    );
    assert_eq!(estimated.usd_micros, 45_000);
    assert_eq!(estimated.basis, CostBasis::CreditTable);
    assert!(estimated.estimated);
}

#[test]
fn together_prices_per_megapixel() {
    let cost = price_answer(
        &model("flux-schnell"),
        today(),
        &Answer {
            sizes: vec![size(1000, 1000), size(1000, 1000)],
            ..Answer::default()
        },
    );
    assert_eq!(cost.usd_micros, 5_400, "two 1 MP pictures at $0.0027");
    assert_eq!(cost.basis, CostBasis::PerMegapixel);
}

#[test]
fn the_most_a_request_can_cost_bounds_what_it_is_charged() {
    // gpt-image-1-mini at its default size, quality auto: the dearest published figure (high, 1024x1024) per
    // picture, plus the prompt's characters as text tokens (9 at $2/1M).
    let req = request(json!({"prompt": "a red fox", "model": "gpt-image-1-mini", "num_images": 2}));
    let max = max_cost(&model("gpt-image-1-mini"), today(), &req).expect("priced");
    assert_eq!(max.usd_micros, 2 * 36_000 + 18);
    let auto = request(json!({"prompt": "a red fox", "model": "gpt-image-1-mini", "size": "auto"}));
    let max_auto = max_cost(&model("gpt-image-1-mini"), today(), &auto).expect("priced");
    assert_eq!(max_auto.usd_micros, 52_000 + 18, "auto may make 1536x1024");
    // Any quality at 1024x1024 is charged less than the bound of `auto`.
    let charged = tokens_cost("gpt-image-1-mini", 3, 2 * 4160);
    assert!(charged.usd_micros < max.usd_micros);

    let req =
        request(json!({"prompt": "x", "model": "dall-e-3", "quality": "hd", "size": "1792x1024"}));
    assert_eq!(
        max_cost(&model("dall-e-3"), today(), &req).map(|c| c.usd_micros),
        Some(120_000)
    );
}

#[test]
fn a_job_sums_its_charges_across_bases() {
    let a = Cost {
        usd_micros: 10,
        basis: CostBasis::Tokens,
        estimated: false,
    };
    let b = Cost {
        usd_micros: 5,
        basis: CostBasis::Credits,
        estimated: true,
    };
    assert_eq!(
        Cost::sum([&a, &b]),
        Cost {
            usd_micros: 15,
            basis: CostBasis::Mixed,
            estimated: true
        }
    );
    assert_eq!(Cost::sum([&a, &a]).basis, CostBasis::Tokens);
    assert_eq!(Cost::sum(std::iter::empty()), Cost::NOTHING);
    assert_eq!(super::usd(42_240), 0.04224);
}

#[test]
fn an_override_files_negotiated_price_takes_over_from_its_date() {
    let overlay = r#"
[[prices]]
model = "gpt-image-1-mini"
effective_on = 2026-11-01
per_million_tokens = { text_input = 1.0, image_input = 1.0, image_output = 4.0 }
"#;
    let catalogue = Catalogue::parse_layers(&[
        ("built-in", include_str!("../../catalogue/models.toml")),
        ("override", overlay),
    ])
    .expect("parses");
    let mini = catalogue.get("gpt-image-1-mini").expect("mini");
    let u = usage(0, 1_000_000);
    let answer = Answer {
        usage: Some(&u),
        ..Answer::default()
    };
    let before = "2026-10-31".parse().expect("date");
    assert_eq!(price_answer(mini, before, &answer).usd_micros, 8_000_000);
    assert_eq!(price_answer(mini, today(), &answer).usd_micros, 4_000_000);
    let unknown = Catalogue::parse_layers(&[
        ("built-in", include_str!("../../catalogue/models.toml")),
        (
            "override",
            "[[prices]]\nmodel = \"nope\"\neffective_on = 2026-01-01\nper_credit = 1.0\n",
        ),
    ]);
    assert!(unknown.is_err(), "a price for an unknown model is refused");
}
