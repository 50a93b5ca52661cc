//! The OpenAI Images API's request body and answer, shared by OpenAI and Azure OpenAI. The fields sent depend on
//! the model's family, named as the official SDK names them (openai-python `image_generate_params.py`):
//! - GPT image models: `size` (or `auto`), `quality`, `background`, `output_format`, `output_compression`,
//!   `moderation`; never `response_format` (they always answer base64) nor `style`; the answer carries `usage`
//!   and echoes `size`, `quality`, `background` and `output_format`.
//! - DALL-E: `size`, `quality`, `style`, `response_format`.

use super::inline_b64::{B64FieldReader, ExtractError, Extracted, InlineImage, placeholder_index};
use super::{GeneratedImage, ImageSource, ProviderError};
use crate::picture_memory::PictureMemory;
use imagegen_shared::catalogue::{Family, ModelSpec};
use imagegen_shared::domain::GenerationRequest;
use serde::{Deserialize, Serialize};

/// The prefix of OpenAI's and Azure's safety rejections (older ones carry no code, only this text).
pub const SAFETY_PREFIX: &str = "Your request was rejected as a result of our safety system";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseFormat {
    /// Inline base64: one round trip, nothing to download.
    #[value(name = "b64_json")]
    B64Json,
    /// A URL on the provider's blob storage that lives 60 minutes; downloaded at once. (DALL-E and FLUX hosts only:
    /// GPT image models always answer base64.)
    Url,
}

/// The Images API body.
#[derive(Debug, Serialize)]
pub struct CreateImageRequest<'a> {
    /// Absent on Azure's deployments path (the deployment names the model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub prompt: &'a str,
    pub n: u8,
    pub size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation: Option<&'static str>,
    /// Streamed answers with partial pictures (GPT image models; see `providers::stream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_images: Option<u8>,
}

/// The body for `n` pictures of `req` on `model` (named `model_name` on the wire, when the path does not name it).
pub fn request_body<'a>(
    req: &'a GenerationRequest,
    model: &ModelSpec,
    model_name: Option<&'a str>,
    n: u8,
    format: ResponseFormat,
) -> CreateImageRequest<'a> {
    let gpt_image = model.family == Family::GptImage;
    CreateImageRequest {
        model: model_name,
        prompt: req.prompt().as_str(),
        n,
        size: req.size().to_string(),
        quality: req.quality().map(|q| q.as_str()),
        style: if gpt_image {
            None
        } else {
            req.style().map(|s| s.as_str())
        },
        response_format: (!gpt_image).then_some(match format {
            ResponseFormat::B64Json => "b64_json",
            ResponseFormat::Url => "url",
        }),
        background: req.background().filter(|_| gpt_image).map(|b| b.as_str()),
        output_format: req
            .output_format()
            .filter(|_| gpt_image)
            .map(|f| f.as_str()),
        output_compression: req.output_compression().filter(|_| gpt_image),
        moderation: req.moderation().filter(|_| gpt_image).map(|m| m.as_str()),
        stream: None,
        partial_images: None,
    }
}

#[derive(Deserialize)]
struct ImagesResponse {
    data: Vec<ImageItem>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    background: Option<String>,
    #[serde(default)]
    output_format: Option<String>,
}

#[derive(Deserialize)]
struct ImageItem {
    url: Option<String>,
    b64_json: Option<String>,
    revised_prompt: Option<String>,
    /// Azure's per-item filter annotations.
    #[serde(default)]
    prompt_filter_results: Option<serde_json::Value>,
    #[serde(default)]
    content_filter_results: Option<serde_json::Value>,
}

/// Per-item annotations some hosts add (Azure's content filters).
pub struct ImageItemMeta {
    pub prompt_filter_results: Option<serde_json::Value>,
    pub content_filter_results: Option<serde_json::Value>,
}

/// A 200 answer, read.
pub struct ParsedImages {
    pub items: Vec<(GeneratedImage, ImageItemMeta)>,
    pub usage: Option<serde_json::Value>,
    /// What the provider says it made: `size`, `quality`, `background`, `output_format` (GPT image models).
    pub echoed: serde_json::Value,
}

/// The pictures of a 200 answer read whole; an answer without the pictures asked for is worth another attempt.
pub fn parse_images(
    label: &str,
    status: u16,
    body: &[u8],
    expected: u8,
    max_image_bytes: u64,
) -> Result<ParsedImages, ProviderError> {
    let mut reader = B64FieldReader::new(max_image_bytes);
    reader
        .feed(body)
        .map_err(|e| extract_error(label, status, e))?;
    assemble(label, status, reader, expected)
}

/// Reads a 200 answer chunk by chunk, decoding and hashing its pictures as they arrive (`inline_b64`): the body is
/// never held whole. Bounded by `cap` as `http::send` bounds it.
pub async fn read_images(
    label: &str,
    response: reqwest::Response,
    cap: super::http::AnswerCap,
    expected: u8,
    max_image_bytes: u64,
    memory: &PictureMemory,
) -> Result<ParsedImages, ProviderError> {
    let status = response.status().as_u16();
    let reader = read_answer(label, response, cap, expected, max_image_bytes, memory).await?;
    assemble(label, status, reader, expected)
}

/// Feeds a 200 answer of `expected` pictures through a [`B64FieldReader`], within `cap`; the caller parses what it
/// kept (`B64FieldReader::finish`). Any host whose answer carries `b64_json` strings can use it (FLUX hosts do).
/// Before reading, the pictures' memory is reserved from `memory` (WORKER_PICTURE_MEMORY_MB): what the body's
/// base64 decodes to at most, or, without a Content-Length, `expected` pictures of MAX_IMAGE_BYTES.
pub async fn read_answer(
    label: &str,
    mut response: reqwest::Response,
    cap: super::http::AnswerCap,
    expected: u8,
    max_image_bytes: u64,
    memory: &PictureMemory,
) -> Result<B64FieldReader, ProviderError> {
    let status = response.status().as_u16();
    let limit = cap.bytes();
    let length = response.content_length();
    if length.is_some_and(|len| len > limit as u64) {
        return Err(cap.exceeded(label, status));
    }
    let needed = match length {
        Some(len) => len / 4 * 3,
        None => u64::from(expected.max(1)).saturating_mul(max_image_bytes),
    };
    let hold = memory.reserve(needed).await;
    let mut reader = B64FieldReader::new(max_image_bytes)
        .with_length_hint(length.map(|len| len / u64::from(expected.max(1))))
        .with_hold(hold);
    let mut read = 0usize;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| super::http::transport_error(label, &e))?
    {
        read = read.saturating_add(chunk.len());
        if read > limit {
            return Err(cap.exceeded(label, status));
        }
        reader
            .feed(&chunk)
            .map_err(|e| extract_error(label, status, e))?;
    }
    Ok(reader)
}

/// The failure a [`B64FieldReader`] error is: a picture past MAX_IMAGE_BYTES is final, anything else an invalid
/// (retryable) answer.
pub fn extract_error(label: &str, status: u16, e: ExtractError) -> ProviderError {
    match e {
        // As large again on another attempt: final, like an answer past the cap.
        ExtractError::TooLarge { bytes, max, .. } => ProviderError::Final {
            status: Some(status),
            code: Some("image_too_large".into()),
            message: format!(
                "{label}'s picture is {bytes} bytes, larger than MAX_IMAGE_BYTES ({max} bytes)"
            ),
        },
        other => ProviderError::invalid_response(label, status, format_args!("with {other}")),
    }
}

/// The answer from its skeleton and decoded pictures.
fn assemble(
    label: &str,
    status: u16,
    reader: B64FieldReader,
    expected: u8,
) -> Result<ParsedImages, ProviderError> {
    let Extracted { skeleton, images } = reader
        .finish()
        .map_err(|e| extract_error(label, status, e))?;
    let parsed: ImagesResponse = serde_json::from_slice(&skeleton).map_err(|e| {
        ProviderError::invalid_response(label, status, format_args!("with an unreadable body: {e}"))
    })?;
    let mut images: Vec<Option<InlineImage>> = images.into_iter().map(Some).collect();
    let items: Vec<_> = parsed
        .data
        .into_iter()
        .filter_map(|item| {
            let source = match (item.b64_json, item.url) {
                // A value the reader left in place (an escaped key) is decoded when stored.
                (Some(b64), _) => match placeholder_index(&b64) {
                    Some(i) => ImageSource::Decoded(images.get_mut(i)?.take()?),
                    None => ImageSource::Base64(b64),
                },
                (None, Some(url)) => ImageSource::Url(url),
                (None, None) => return None,
            };
            let meta = ImageItemMeta {
                prompt_filter_results: item.prompt_filter_results,
                content_filter_results: item.content_filter_results,
            };
            Some((
                GeneratedImage {
                    source,
                    revised_prompt: item.revised_prompt,
                    seed: None,
                },
                meta,
            ))
        })
        .collect();
    if items.len() != usize::from(expected) {
        return Err(ProviderError::invalid_response(
            label,
            status,
            format_args!("with {} of {expected} images", items.len()),
        ));
    }
    let echoed = serde_json::json!({
        "size": parsed.size,
        "quality": parsed.quality,
        "background": parsed.background,
        "output_format": parsed.output_format,
    });
    Ok(ParsedImages {
        items,
        usage: parsed.usage,
        echoed,
    })
}

/// Asks `body` for a streamed answer when the call wants partial pictures and has somewhere to hand them (GPT image
/// models only); returns that place.
pub fn stream_partials<'a>(
    call: &super::Call<'a>,
    body: &mut CreateImageRequest<'_>,
) -> Option<&'a super::stream::PartialSink> {
    let sink = call
        .partials
        .filter(|_| call.request.partial_images() > 0 && call.model.family == Family::GptImage)?;
    body.stream = Some(true);
    body.partial_images = Some(call.request.partial_images());
    Some(sink)
}

/// Sends an Images API call for `n` pictures: streamed to `sink` (the cap counting every partial, each a whole
/// picture) or read as it arrives, its pictures decoded on the way (`read_images`).
pub async fn send_images(
    label: &str,
    request: reqwest::RequestBuilder,
    sink: Option<&super::stream::PartialSink>,
    partials: u8,
    n: u8,
    max_image_bytes: u64,
    memory: &PictureMemory,
) -> Result<(u16, reqwest::header::HeaderMap, super::http::Answer), ProviderError> {
    use super::http::{self, AnswerCap};
    match sink {
        Some(sink) => {
            let cap = AnswerCap::images(n.saturating_mul(1 + partials), max_image_bytes);
            http::send_streaming(label, request, |response| {
                super::stream::read_image_events(label, response, cap, n, sink)
            })
            .await
        }
        None => {
            let cap = AnswerCap::images(n, max_image_bytes);
            http::send_streaming(label, request, |response| {
                read_images(label, response, cap, n, max_image_bytes, memory)
            })
            .await
        }
    }
}

/// Token usage of several calls added up, field by field (nested details too); `None` when no call reported any.
pub fn sum_usage<'a>(
    usages: impl Iterator<Item = &'a serde_json::Value>,
) -> Option<serde_json::Value> {
    fn add(into: &mut serde_json::Value, from: &serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(k) {
                        Some(existing) => add(existing, v),
                        None => {
                            a.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (a @ serde_json::Value::Number(_), serde_json::Value::Number(b)) => {
                if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                    *a = serde_json::Value::from(x + y);
                }
            }
            _ => {}
        }
    }
    let mut total: Option<serde_json::Value> = None;
    for u in usages {
        match &mut total {
            None => total = Some(u.clone()),
            Some(t) => add(t, u),
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegen_shared::catalogue::Catalogue;

    /// A stored request (as the job store reads one back) with `extra` fields.
    fn request(model: &str, extra: serde_json::Value) -> GenerationRequest {
        let mut json = serde_json::json!({"prompt": "a cat", "model": model, "size": "1536x1024",
            "num_images": 2, "allow_failover": true});
        if let (Some(j), Some(e)) = (json.as_object_mut(), extra.as_object()) {
            j.extend(e.clone());
        }
        serde_json::from_value(json).expect("request")
    }

    #[test]
    fn gpt_image_bodies_carry_its_fields_and_no_dalle_ones() {
        let catalogue = Catalogue::builtin();
        let req = request(
            "gpt-image-2",
            serde_json::json!({"quality": "high", "style": "vivid", "background": "opaque", "output_format": "jpeg",
                "output_compression": 80}),
        );
        let model = catalogue.get("gpt-image-2").expect("model");
        let body = serde_json::to_value(request_body(
            &req,
            model,
            Some("gpt-image-2"),
            2,
            ResponseFormat::Url,
        ))
        .expect("json");
        assert_eq!(
            body,
            serde_json::json!({"model": "gpt-image-2", "prompt": "a cat", "n": 2, "size": "1536x1024", "quality": "high",
                "background": "opaque", "output_format": "jpeg", "output_compression": 80})
        );
        let req = request("gpt-image-2", serde_json::json!({"size": "auto"}));
        let body =
            serde_json::to_value(request_body(&req, model, None, 1, ResponseFormat::B64Json))
                .expect("json");
        assert_eq!(body["size"], "auto");
        assert!(body.get("model").is_none());
    }

    #[test]
    fn dalle_bodies_keep_style_and_response_format() {
        let catalogue = Catalogue::builtin();
        let req = request(
            "dall-e-3",
            serde_json::json!({"style": "natural", "output_format": "png"}),
        );
        let model = catalogue.get("dall-e-3").expect("model");
        let body = serde_json::to_value(request_body(
            &req,
            model,
            Some("dall-e-3"),
            1,
            ResponseFormat::B64Json,
        ))
        .expect("json");
        assert_eq!(body["style"], "natural");
        assert_eq!(body["response_format"], "b64_json");
        assert!(body.get("output_format").is_none());
    }

    #[test]
    fn answers_give_pictures_usage_and_echoes() {
        let body = serde_json::json!({"created": 1, "data": [{"b64_json": "aGk="}], "size": "1536x1024", "quality": "high",
            "background": "opaque", "output_format": "png",
            "usage": {"input_tokens": 10, "input_tokens_details": {"image_tokens": 0, "text_tokens": 10}, "output_tokens": 6240, "total_tokens": 6250}});
        let parsed = parse_images(
            "x",
            200,
            &serde_json::to_vec(&body).expect("json"),
            1,
            1 << 20,
        )
        .expect("parsed");
        assert_eq!(parsed.echoed["quality"], "high");
        assert_eq!(parsed.usage.as_ref().expect("usage")["output_tokens"], 6240);
        assert!(
            parse_images(
                "x",
                200,
                &serde_json::to_vec(&body).expect("json"),
                2,
                1 << 20
            )
            .is_err(),
            "one of two images"
        );
        let sum = sum_usage([parsed.usage.clone().expect("u"), parsed.usage.expect("u")].iter())
            .expect("sum");
        assert_eq!(sum["input_tokens_details"]["text_tokens"], 20);
        assert_eq!(sum["total_tokens"], 12500);
    }
}
