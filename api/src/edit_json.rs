//! The JSON form of an edit (`POST /api/v1/edits` with `Content-Type: application/json`, and each item of
//! `POST /api/v1/edits/batch`): generate's fields plus `images` (1 or more) and an optional `mask`, each naming one
//! of the caller's own images already in the service (`{"image_id": ...}`, copied with the job so the edit keeps it
//! whatever happens to the original) or an https URL (`{"image_url": ...}`, checked against EDIT_URL_* now and
//! fetched by the worker). Refusals name the part (`images[1]` is `image[1]` in the error, as in the multipart form).

use crate::edits::InputSource;
use crate::error::ApiError;
use crate::routes::edits::Sources;
use crate::state::AppState;
use imagegen_shared::config::edits::check_image_url;
use imagegen_shared::db;
use imagegen_shared::domain::{GenerateBody, ImageId, InputFidelity, ValidationErrors};
use imagegen_shared::edit_inputs::Part;
use imagegen_shared::storage::StorageError;
use serde::Deserialize;

/// The JSON form carries references, not pictures: 256 KiB is room for a 32,000-character prompt and 16 URLs.
pub const MAX_JSON_BYTES: usize = 256 * 1024;

/// One input of the JSON form: exactly one of `image_id` and `image_url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRef {
    /// One of your images in the service (an `images[].id` of a job), copied with the edit.
    #[schema(value_type = Option<String>, format = Uuid)]
    #[serde(default)]
    pub image_id: Option<ImageId>,
    /// An https URL of a PNG, JPEG or WebP; it must resolve to a public address (EDIT_URL_ALLOWED_NETWORKS aside).
    #[serde(default)]
    pub image_url: Option<String>,
}

/// The JSON form of an edit (documentation only: parsed by [`parse`]): generate's fields with the inputs.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EditJson {
    /// 1 to the model's `edits.max_input_images`, in order.
    images: Vec<InputRef>,
    /// A PNG with an alpha channel, the first image's size: transparent pixels mark what to change.
    mask: Option<InputRef>,
    prompt: String,
    model: Option<String>,
    size: Option<String>,
    quality: Option<String>,
    num_images: Option<i64>,
    background: Option<String>,
    output_format: Option<String>,
    output_compression: Option<i64>,
    /// `high` or `low` (GPT image models): how closely the output keeps the inputs' details.
    input_fidelity: Option<InputFidelity>,
}

/// A parsed JSON edit, its inputs not yet looked up.
#[derive(Debug)]
pub struct ParsedEdit {
    pub body: GenerateBody,
    pub images: Vec<InputRef>,
    pub mask: Option<InputRef>,
    pub input_fidelity: Option<InputFidelity>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation(ValidationErrors::one(field, message.into()))
}

/// Parses the body: the inputs taken out, the rest read as generate's body (unknown fields refused by name).
pub fn parse(body: &[u8]) -> Result<ParsedEdit, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidBody(format!("The body is not valid JSON: {e}")))?;
    parse_value(value)
}

/// [`parse`] of an already decoded value (a batch item).
pub fn parse_value(value: serde_json::Value) -> Result<ParsedEdit, ApiError> {
    let serde_json::Value::Object(mut map) = value else {
        return Err(ApiError::InvalidBody(
            "An edit is a JSON object with prompt and images".into(),
        ));
    };
    let images = match map.remove("images") {
        None => return Err(invalid("images", "images is required: 1 or more inputs")),
        Some(v) => serde_json::from_value::<Vec<InputRef>>(v).map_err(|e| {
            invalid(
                "images",
                format!("images must be a list of {{\"image_id\"}} or {{\"image_url\"}}: {e}"),
            )
        })?,
    };
    let mask = map
        .remove("mask")
        .filter(|v| !v.is_null())
        .map(|v| {
            serde_json::from_value::<InputRef>(v).map_err(|e| {
                invalid(
                    "mask",
                    format!("mask must be {{\"image_id\"}} or {{\"image_url\"}}: {e}"),
                )
            })
        })
        .transpose()?;
    let input_fidelity = map
        .remove("input_fidelity")
        .filter(|v| !v.is_null())
        .map(|v| match v {
            serde_json::Value::String(s) => s.parse::<InputFidelity>(),
            other => Err(format!("input_fidelity must be high or low, got {other}")),
        })
        .transpose()
        .map_err(|e| invalid("input_fidelity", e))?;
    for (i, input) in images.iter().enumerate() {
        check_one(Part::Image(i), input)?;
    }
    if let Some(mask) = &mask {
        check_one(Part::Mask, mask)?;
    }
    let body: GenerateBody = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::InvalidBody(format!("Invalid edit fields: {e}")))?;
    Ok(ParsedEdit {
        body,
        images,
        mask,
        input_fidelity,
    })
}

fn check_one(part: Part, input: &InputRef) -> Result<(), ApiError> {
    match (&input.image_id, &input.image_url) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        _ => Err(invalid(
            &part.to_string(),
            format!("{part} must give exactly one of image_id and image_url"),
        )),
    }
}

/// Looks every input up: an image id among the caller's own images (its bytes read from storage), a URL checked
/// against the address policy. Nothing is written.
pub async fn resolve(
    state: &AppState,
    owner: &str,
    images: Vec<InputRef>,
    mask: Option<InputRef>,
) -> Result<Sources, ApiError> {
    let mut sources = Sources::default();
    for (i, input) in images.into_iter().enumerate() {
        sources
            .images
            .push(resolve_one(state, owner, Part::Image(i), input).await?);
    }
    if let Some(mask) = mask {
        sources.mask = Some(resolve_one(state, owner, Part::Mask, mask).await?);
    }
    Ok(sources)
}

async fn resolve_one(
    state: &AppState,
    owner: &str,
    part: Part,
    input: InputRef,
) -> Result<InputSource, ApiError> {
    if let Some(url) = input.image_url {
        let url = check_image_url(
            part,
            &url,
            &state.edits.url_policy,
            state.url_resolver.as_ref(),
        )
        .await?;
        return Ok(InputSource::Url(url));
    }
    let Some(id) = input.image_id else {
        return Err(invalid(
            &part.to_string(),
            format!("{part} must give exactly one of image_id and image_url"),
        ));
    };
    // Another owner's image looks exactly like one that does not exist.
    let record = db::images::get_image(&state.pool, owner, id)
        .await?
        .ok_or_else(|| invalid(&part.to_string(), format!("{part}: no image {id}")))?;
    if u64::try_from(record.size_bytes).unwrap_or(u64::MAX) > state.edits.limits.max_image_bytes {
        return Err(ApiError::InputTooLarge {
            message: format!(
                "{part} (image {id}) is more than the {} bytes allowed for one image",
                state.edits.limits.max_image_bytes
            ),
            part: Some(part.to_string()),
        });
    }
    let read = async {
        state
            .storage
            .get(&record.storage_key)
            .await?
            .bytes()
            .await
            .map_err(StorageError::from)
    };
    let bytes = read.await.map_err(|e| match e {
        StorageError::NotFound => invalid(
            &part.to_string(),
            format!("{part}: image {id} is no longer stored"),
        ),
        other => ApiError::Unavailable(format!(
            "Image storage cannot read image {id} for {part}: {other}"
        )),
    })?;
    Ok(InputSource::Bytes {
        bytes,
        source_image: Some(id.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_field(e: ApiError) -> String {
        match e {
            ApiError::Validation(v) => v.to_string(),
            other => other.to_string(),
        }
    }

    #[test]
    fn inputs_are_taken_out_and_the_rest_is_generate_body() {
        let id = uuid::Uuid::now_v7();
        let parsed = parse(
            serde_json::json!({
                "prompt": "a red door", "model": "gpt-image-2", "num_images": 2,
                "images": [{"image_id": id}, {"image_url": "https://images.example/a.png"}],
                "mask": {"image_url": "https://images.example/m.png"},
                "input_fidelity": "high"
            })
            .to_string()
            .as_bytes(),
        )
        .expect("parses");
        assert_eq!(parsed.body.prompt, "a red door");
        assert_eq!(parsed.body.num_images, Some(2));
        assert_eq!(parsed.images.len(), 2);
        assert_eq!(parsed.images[0].image_id.map(|i| i.0), Some(id));
        assert_eq!(
            parsed.mask.and_then(|m| m.image_url).as_deref(),
            Some("https://images.example/m.png")
        );
        assert_eq!(parsed.input_fidelity, Some(InputFidelity::High));
    }

    #[test]
    fn each_input_gives_exactly_one_source_and_unknown_fields_are_refused() {
        let both = serde_json::json!({"prompt": "x", "images": [
            {"image_url": "https://a.example/a.png"},
            {"image_id": uuid::Uuid::now_v7(), "image_url": "https://a.example/b.png"}]});
        let e = parse(both.to_string().as_bytes()).expect_err("both");
        assert!(err_field(e).contains("image[1]"));
        let neither = serde_json::json!({"prompt": "x", "images": [{}]});
        assert!(parse(neither.to_string().as_bytes()).is_err());
        let mask = serde_json::json!({"prompt": "x", "images": [{"image_url": "https://a.example/a.png"}],
            "mask": {}});
        assert!(err_field(parse(mask.to_string().as_bytes()).expect_err("mask")).contains("mask"));
        let odd = serde_json::json!({"prompt": "x", "images": [{"image_path": "/etc/passwd"}]});
        assert!(parse(odd.to_string().as_bytes()).is_err());
        let unknown = serde_json::json!({"prompt": "x", "images": [{"image_url": "https://a.example/a.png"}],
            "colour": "red"});
        assert!(
            parse(unknown.to_string().as_bytes())
                .expect_err("unknown")
                .to_string()
                .contains("colour")
        );
        let none = serde_json::json!({"prompt": "x"});
        assert!(
            err_field(parse(none.to_string().as_bytes()).expect_err("no images"))
                .contains("images")
        );
        assert!(parse(b"[1, 2]").is_err());
        assert!(parse(b"{not json").is_err());
    }
}
