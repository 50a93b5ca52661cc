//! End to end, image edits: the catalogue says which models edit (input images at most, mask) in
//! `GET /api/v1/models`.

use crate::support::{Options, start};
use serde_json::Value;
use sqlx::PgPool;

fn model<'a>(models: &'a Value, id: &str) -> &'a Value {
    models["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed: {models}"))
}

#[sqlx::test(migrations = "./migrations")]
async fn the_models_list_says_which_models_edit(pool: PgPool) {
    let stack = start(&pool, Options::default()).await;
    let r = stack.get("/api/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let gpt = &model(&r.body, "gpt-image-2")["edits"];
    assert_eq!(gpt["max_input_images"], 16, "{gpt}");
    assert_eq!(
        (gpt["mask"].as_bool(), gpt["input_fidelity"].as_bool()),
        (Some(true), Some(true))
    );
    let kontext = &model(&r.body, "flux-kontext-pro")["edits"];
    assert_eq!(
        (
            kontext["max_input_images"].as_u64(),
            kontext["mask"].as_bool()
        ),
        (Some(4), Some(false))
    );
    assert_eq!(model(&r.body, "flux-2-pro")["edits"]["max_input_images"], 8);
    for id in ["flux-schnell", "dall-e-2", "dall-e-3"] {
        assert!(
            model(&r.body, id).get("edits").is_none(),
            "{id} does not edit"
        );
    }
}
