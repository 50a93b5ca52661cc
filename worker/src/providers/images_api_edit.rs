//! The OpenAI Images API's edit call (`POST .../images/edits`), shared by OpenAI and Azure OpenAI: the same fields
//! as a generation (`images_api::request_body`) sent as multipart form parts, with the input images (`image` for
//! one, `image[]` for several, as the official SDK names them), the `mask` and `input_fidelity`. The answer is a
//! generation's (`images_api::parse_images`).

use super::images_api::CreateImageRequest;
use super::{EditInputs, InputBytes, ProviderError};
use reqwest::multipart::{Form, Part};
use url::Url;

/// The edits endpoint beside a generations endpoint (query, such as Azure's `api-version`, kept).
pub fn edits_url(generations: &Url) -> Url {
    let mut url = generations.clone();
    let path = url
        .path()
        .replacen("/images/generations", "/images/edits", 1);
    url.set_path(&path);
    url
}

/// The text fields of `body` (streaming is not asked of an edit) and the inputs, as one form.
pub fn edit_form(body: &CreateImageRequest<'_>, edit: &EditInputs) -> Result<Form, ProviderError> {
    let mut form = Form::new();
    for (name, value) in text_fields(body, edit)? {
        form = form.text(name, value);
    }
    let field = if edit.images.len() == 1 {
        "image"
    } else {
        "image[]"
    };
    for (i, image) in edit.images.iter().enumerate() {
        form = form.part(field, part(image, &format!("image-{i}"))?);
    }
    if let Some(mask) = &edit.mask {
        form = form.part("mask", part(mask, "mask")?);
    }
    Ok(form)
}

/// `(name, value)` of every text part, in the body's order, then `input_fidelity`.
fn text_fields(
    body: &CreateImageRequest<'_>,
    edit: &EditInputs,
) -> Result<Vec<(String, String)>, ProviderError> {
    let value = serde_json::to_value(body).map_err(|e| ProviderError::Final {
        status: None,
        code: None,
        message: format!("could not build the edit request: {e}"),
    })?;
    let mut fields = Vec::new();
    if let serde_json::Value::Object(map) = value {
        for (name, v) in map {
            if matches!(name.as_str(), "stream" | "partial_images") {
                continue;
            }
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            fields.push((name, text));
        }
    }
    if let Some(f) = edit.input_fidelity {
        fields.push(("input_fidelity".into(), f.as_str().into()));
    }
    Ok(fields)
}

fn part(input: &InputBytes, stem: &str) -> Result<Part, ProviderError> {
    let ext = match input.content_type.as_str() {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    };
    Part::bytes(input.bytes.to_vec())
        .file_name(format!("{stem}.{ext}"))
        .mime_str(&input.content_type)
        .map_err(|e| ProviderError::Final {
            status: None,
            code: None,
            message: format!("input {stem} has an unusable content type: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::images_api::{ResponseFormat, request_body};
    use imagegen_shared::catalogue::Catalogue;
    use imagegen_shared::domain::{GenerationRequest, InputFidelity};

    fn input() -> InputBytes {
        InputBytes {
            bytes: bytes::Bytes::from_static(b"png"),
            content_type: "image/png".into(),
            width: 1,
            height: 1,
        }
    }

    #[test]
    fn edits_sit_beside_generations_with_the_query_kept() {
        let url = Url::parse(
            "https://r.openai.azure.com/openai/deployments/d/images/generations?api-version=v",
        )
        .expect("url");
        assert_eq!(
            edits_url(&url).as_str(),
            "https://r.openai.azure.com/openai/deployments/d/images/edits?api-version=v"
        );
    }

    #[test]
    fn the_form_carries_the_generation_fields_and_input_fidelity() {
        let req: GenerationRequest =
            serde_json::from_value(serde_json::json!({"prompt": "make it blue",
            "model": "gpt-image-2", "size": "1024x1024", "num_images": 1, "allow_failover": true,
            "quality": "high", "output_format": "webp", "output_compression": 70}))
            .expect("request");
        let catalogue = Catalogue::builtin();
        let model = catalogue.get("gpt-image-2").expect("model");
        let mut body = request_body(&req, model, Some("gpt-image-2"), 2, ResponseFormat::B64Json);
        body.stream = Some(true);
        let edit = EditInputs {
            images: vec![input(), input()],
            mask: Some(input()),
            input_fidelity: Some(InputFidelity::High),
        };
        let fields = text_fields(&body, &edit).expect("fields");
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("model"), Some("gpt-image-2"));
        assert_eq!(get("prompt"), Some("make it blue"));
        assert_eq!(get("n"), Some("2"));
        assert_eq!(get("size"), Some("1024x1024"));
        assert_eq!(get("quality"), Some("high"));
        assert_eq!(get("output_format"), Some("webp"));
        assert_eq!(get("output_compression"), Some("70"));
        assert_eq!(get("input_fidelity"), Some("high"));
        assert_eq!(get("stream"), None, "edits are not streamed");
        assert!(edit_form(&body, &edit).is_ok());
    }
}
