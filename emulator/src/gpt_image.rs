//! The GPT image models' request and answer, shared by OpenAI and Azure OpenAI (openai-python's
//! `image_generate_params.py`, `images_response.py`, `image_gen_partial_image_event.py` and
//! `image_gen_completed_event.py` name the fields).
//!
//! Request: `model`, `prompt` (1..=32,000 characters), `n` (1-10), `size` (`auto`; gpt-image-1.x and
//! chatgpt-image-latest: 1024x1024, 1536x1024, 1024x1536; gpt-image-2 and later: any `WxH`, both sides multiples of
//! 16, long:short at most 3:1, at most 3840 a side, 655,360..=8,294,400 pixels), `quality` (low, medium, high, auto;
//! the 2.5 and 2.6 series also xhigh and max), `background` (transparent, opaque, auto; transparent needs png or
//! webp and is refused by the gpt-image-2 family), `output_format` (png, jpeg, webp), `output_compression` (0-100,
//! jpeg and webp only), `moderation` (low, auto), `user`, `safety_identifier`, `complexity` (low, medium, high),
//! `stream`, `partial_images` (0-3). `style` and `response_format` are DALL-E's and refused; GIF and SVG output
//! (`output_format` gif/svg, `frame_count`, `frame_duration_ms`, `svg`) are previews the emulated account has no
//! access to (400); any other field is unrecognised. Every 400 names its `param`.
//!
//! Answer: `{"created", "data": [{"b64_json"}] x n, "background", "output_format", "quality", "size", "usage"}`
//! (`auto` quality answers `medium` on OpenAI and `high` on Azure; `auto` size answers 1024x1024; `auto`
//! background answers opaque); no `revised_prompt`. Usage is deterministic: text tokens = ceil(prompt characters /
//! 4); image tokens per picture from OpenAI's table (1024x1024 low 272 / medium 1056 / high 4160; 1536x1024 and
//! 1024x1536 408 / 1584 / 6240; other sizes scaled by pixel count from the 1024x1024 figures; xhigh 1.5x and max 2x
//! high), times n. With `stream: true`, a `text/event-stream` of `image_generation.partial_image` events
//! (`partial_images` per picture) and one `image_generation.completed` event (with that picture's usage) per
//! picture. A corrupt answer (the `corrupt_next` knob) is the same, usage included, with `crate::knobs::CORRUPT_BYTES`
//! in place of every picture (partial ones too).

use crate::knobs::{CORRUPT_BYTES, Knobs};
use crate::models::{Family, ImageModel};
use crate::openai::error;
use crate::picture::{Format, Picture};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

const FIELDS: [&str; 19] = [
    "model",
    "prompt",
    "n",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "user",
    "safety_identifier",
    "complexity",
    "stream",
    "partial_images",
    "style",
    "response_format",
    // GIF and SVG output (openai-python 3.x): previews this emulator's account has no access to.
    "frame_count",
    "frame_duration_ms",
    "svg",
];
/// Fields only the GPT image models take: with one of them and no `model`, OpenAI defaults to gpt-image-1 instead
/// of dall-e-2.
pub const GPT_ONLY_FIELDS: [&str; 6] = [
    "background",
    "moderation",
    "output_compression",
    "output_format",
    "partial_images",
    "stream",
];
pub const MAX_PROMPT: usize = 32_000;
const FIXED_SIZES: [(u32, u32); 3] = [(1024, 1024), (1536, 1024), (1024, 1536)];
const MAX_SIDE: u32 = 3840;
const MIN_PIXELS: u64 = 655_360;
const MAX_PIXELS: u64 = 8_294_400;

/// Who is answering: the rules differ a little.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    OpenAi,
    Azure,
}

/// A valid GPT image request, with every `auto` resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub prompt: String,
    pub n: u32,
    pub width: u32,
    pub height: u32,
    pub quality: &'static str,
    pub background: &'static str,
    pub format: Format,
    pub compression: Option<u8>,
    pub stream: bool,
    pub partial_images: u32,
    /// Added to each picture's seed (an edit's: derived from its inputs, `gpt_image_edit`).
    pub seed_base: u64,
    /// An edit's input image tokens, counted in `usage`.
    pub input_image_tokens: u64,
}

impl Request {
    pub fn size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

/// A 400 in OpenAI's shape, boxed (a `Response` is large and the happy path should not pay for it).
pub fn bad(message: &str, param: &str, code: &str) -> Box<Response> {
    Box::new(error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        Some(param),
        Some(code),
    ))
}

/// A field's value, with JSON `null` read as absent (as the API does for optional fields).
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(name: &str, expected: &str, got: &Value) -> Box<Response> {
    bad(
        &format!(
            "Invalid type for '{name}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        name,
        "invalid_type",
    )
}

fn int_in(
    obj: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, Box<Response>> {
    let Some(v) = field(obj, name) else {
        return Ok(None);
    };
    let Some(n) = v.as_i64() else {
        return Err(invalid_type(name, "an integer", v));
    };
    if n < min {
        return Err(bad(
            &format!(
                "Invalid '{name}': integer below minimum value. Expected a value >= {min}, but got {n} instead."
            ),
            name,
            "integer_below_min_value",
        ));
    }
    if n > max {
        return Err(bad(
            &format!(
                "Invalid '{name}': integer above maximum value. Expected a value <= {max}, but got {n} instead."
            ),
            name,
            "integer_above_max_value",
        ));
    }
    Ok(Some(n))
}

fn listed(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// One of `allowed` (returned as the static name), or a 400 naming the field.
fn choice(
    obj: &Map<String, Value>,
    name: &str,
    allowed: &[&'static str],
) -> Result<Option<&'static str>, Box<Response>> {
    let Some(v) = field(obj, name) else {
        return Ok(None);
    };
    let Some(s) = v.as_str() else {
        return Err(invalid_type(name, "a string", v));
    };
    match allowed.iter().find(|a| **a == s) {
        Some(a) => Ok(Some(a)),
        None => Err(bad(
            &format!(
                "Invalid value: '{s}'. Supported values are: {}.",
                listed(allowed)
            ),
            name,
            "invalid_value",
        )),
    }
}

fn unsupported_parameter(name: &str, why: &str) -> Box<Response> {
    bad(
        &format!("Unsupported parameter: '{name}' is not supported with this model. {why}"),
        name,
        "unsupported_parameter",
    )
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let digits = |t: &str| !t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(w) || !digits(h) {
        return None;
    }
    Some((w.parse().ok()?, h.parse().ok()?))
}

fn check_size(s: &str, family: Family) -> Result<(u32, u32), Box<Response>> {
    if s == "auto" {
        return Ok((1024, 1024));
    }
    let invalid = |why: &str| {
        bad(
            &format!("Invalid size '{s}'. {why}"),
            "size",
            "invalid_size",
        )
    };
    if !family.flexible_sizes() {
        return match parse_size(s) {
            Some(dims) if FIXED_SIZES.contains(&dims) => Ok(dims),
            _ => Err(invalid(
                "Supported sizes are 1024x1024, 1024x1536, 1536x1024, and auto.",
            )),
        };
    }
    let Some((w, h)) = parse_size(s) else {
        return Err(invalid(
            "Expected 'auto' or WIDTHxHEIGHT, for example 1536x864.",
        ));
    };
    if w == 0 || h == 0 || !w.is_multiple_of(16) || !h.is_multiple_of(16) {
        return Err(invalid("Width and height must both be multiples of 16."));
    }
    let (long, short) = (w.max(h), w.min(h));
    if long > 3 * short {
        return Err(invalid("The aspect ratio must be between 1:3 and 3:1."));
    }
    if long > MAX_SIDE {
        return Err(invalid(&format!(
            "The longest side must be at most {MAX_SIDE} pixels."
        )));
    }
    let pixels = u64::from(w) * u64::from(h);
    if !(MIN_PIXELS..=MAX_PIXELS).contains(&pixels) {
        return Err(invalid(&format!(
            "The total number of pixels must be between {MIN_PIXELS} and {MAX_PIXELS}, got {pixels}."
        )));
    }
    Ok((w, h))
}

/// Checks a GPT image request body for `model` (already looked up) on `host`. `model` itself is not checked here.
pub fn validate(
    obj: &Map<String, Value>,
    model: &ImageModel,
    host: Host,
) -> Result<Request, Box<Response>> {
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("Unrecognized request argument supplied: {unknown}"),
            "invalid_request_error",
            Some(unknown),
            None,
        )));
    }
    if field(obj, "style").is_some() {
        return Err(unsupported_parameter(
            "style",
            "It is only supported for dall-e-3.",
        ));
    }
    if field(obj, "response_format").is_some() {
        return Err(unsupported_parameter(
            "response_format",
            "GPT image models always return base64-encoded images (b64_json).",
        ));
    }
    for preview in ["frame_count", "frame_duration_ms", "svg"] {
        if field(obj, preview).is_some() {
            return Err(unsupported_parameter(
                preview,
                "It is only supported with output_format 'gif' or 'svg', previews this organization has no access to.",
            ));
        }
    }
    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => {
            return Err(bad(
                "Missing required parameter: 'prompt'.",
                "prompt",
                "missing_required_parameter",
            ));
        }
        Some(Value::String(p)) => p.clone(),
        Some(other) => return Err(invalid_type("prompt", "a string", other)),
    };
    let chars = prompt.chars().count();
    if chars == 0 {
        return Err(bad(
            "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead.",
            "prompt",
            "empty_string",
        ));
    }
    if chars > MAX_PROMPT {
        return Err(bad(
            &format!(
                "Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT}, but got a string with length {chars} instead."
            ),
            "prompt",
            "string_above_max_length",
        ));
    }
    let n = int_in(obj, "n", 1, 10)?.unwrap_or(1) as u32;
    let (width, height) = match field(obj, "size") {
        None => (1024, 1024),
        Some(Value::String(s)) => check_size(s, model.family)?,
        Some(other) => return Err(invalid_type("size", "a string", other)),
    };
    let qualities: &[&'static str] = if model.family.extra_qualities() {
        &["low", "medium", "high", "xhigh", "max", "auto"]
    } else {
        &["low", "medium", "high", "auto"]
    };
    let quality = match choice(obj, "quality", qualities)? {
        None | Some("auto") if host == Host::Azure => "high",
        None | Some("auto") => "medium",
        Some(q) => q,
    };
    let format_names: &[&'static str] = match host {
        Host::OpenAi => &["png", "jpeg", "webp"],
        Host::Azure => &["png", "jpeg"],
    };
    let format = match field(obj, "output_format") {
        Some(Value::String(f)) if f == "gif" || f == "svg" => {
            return Err(bad(
                &format!(
                    "Unsupported value: 'output_format' does not support '{f}' for this organization: {} output is in preview and requires access.",
                    f.to_uppercase()
                ),
                "output_format",
                "unsupported_value",
            ));
        }
        Some(Value::String(f)) if host == Host::Azure && f == "webp" => {
            return Err(bad(
                "Unsupported value: 'output_format' does not support 'webp' on Azure OpenAI. Supported values are: 'png' and 'jpeg'.",
                "output_format",
                "unsupported_value",
            ));
        }
        _ => choice(obj, "output_format", format_names)?
            .and_then(Format::parse)
            .unwrap_or(Format::Png),
    };
    let background = choice(obj, "background", &["transparent", "opaque", "auto"])?;
    if background == Some("transparent") {
        if !model.family.transparent_background() {
            return Err(bad(
                &format!(
                    "Unsupported value: 'background' does not support 'transparent' with this model ({}).",
                    model.id
                ),
                "background",
                "unsupported_value",
            ));
        }
        if format == Format::Jpeg {
            return Err(bad(
                "Unsupported value: 'background' does not support 'transparent' with output_format 'jpeg'. Use 'png' or 'webp'.",
                "background",
                "unsupported_value",
            ));
        }
    }
    let background = match background {
        Some("transparent") => "transparent",
        _ => "opaque",
    };
    let compression = int_in(obj, "output_compression", 0, 100)?.map(|c| c as u8);
    if compression.is_some() && format == Format::Png {
        return Err(bad(
            "Unsupported parameter: 'output_compression' is only supported for the 'jpeg' and 'webp' output formats.",
            "output_compression",
            "unsupported_parameter",
        ));
    }
    choice(obj, "moderation", &["low", "auto"])?;
    choice(obj, "complexity", &["low", "medium", "high"])?;
    for name in ["user", "safety_identifier"] {
        if let Some(u) = field(obj, name).filter(|u| !u.is_string()) {
            return Err(invalid_type(name, "a string", u));
        }
    }
    let stream = match field(obj, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    let partial_images = int_in(obj, "partial_images", 0, 3)?.unwrap_or(0) as u32;
    Ok(Request {
        prompt,
        n,
        width,
        height,
        quality,
        background,
        format,
        compression,
        stream,
        partial_images,
        seed_base: 0,
        input_image_tokens: 0,
    })
}

/// Output image tokens for one picture (OpenAI's published table, scaled by pixels off the standard sizes).
pub fn image_tokens(width: u32, height: u32, quality: &str) -> u64 {
    let (low, medium, high) = match (width, height) {
        (1024, 1024) => (272.0, 1056.0, 4160.0),
        (1024, 1536) | (1536, 1024) => (408.0, 1584.0, 6240.0),
        _ => {
            let scale = f64::from(width) * f64::from(height) / (1024.0 * 1024.0);
            (272.0 * scale, 1056.0 * scale, 4160.0 * scale)
        }
    };
    let tokens: f64 = match quality {
        "low" => low,
        "medium" => medium,
        "xhigh" => high * 1.5,
        "max" => high * 2.0,
        _ => high,
    };
    tokens.round() as u64
}

pub fn text_tokens(prompt: &str) -> u64 {
    (prompt.chars().count() as u64).div_ceil(4)
}

/// The `usage` object for `pictures` pictures of this request.
pub fn usage(req: &Request, pictures: u32) -> Value {
    let text = text_tokens(&req.prompt);
    let input = text + req.input_image_tokens;
    let output = image_tokens(req.width, req.height, req.quality) * u64::from(pictures);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"image_tokens": req.input_image_tokens, "text_tokens": text},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": input + output,
    })
}

fn picture(req: &Request, index: u32, block: u32) -> Picture {
    Picture {
        prompt: req.prompt.clone(),
        seed: req.seed_base.wrapping_add(u64::from(index)),
        width: req.width,
        height: req.height,
        format: req.format,
        quality: req.compression.unwrap_or(100).max(1),
        transparent: req.background == "transparent",
        block,
    }
}

/// Renders picture `index` (seed = index) off the async threads; `None` if the encoder failed. A corrupt answer's
/// picture is `CORRUPT_BYTES` instead.
async fn render(req: &Request, index: u32, block: u32, pad: u64, corrupt: bool) -> Option<String> {
    if corrupt {
        return Some(base64::engine::general_purpose::STANDARD.encode(CORRUPT_BYTES));
    }
    let p = picture(req, index, block);
    let bytes = tokio::task::spawn_blocking(move || {
        let bytes = crate::picture::render(&p);
        if bytes.is_empty() {
            bytes
        } else {
            crate::picture::pad(bytes, p.format, pad)
        }
    })
    .await
    .ok()
    .filter(|b| !b.is_empty())?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn render_failed() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
        None,
    )
}

/// The JSON answer; `extra` adds fields to every `data` item (Azure's filter results). `corrupt`: every picture is
/// `CORRUPT_BYTES`, the rest (usage included) as usual.
pub async fn answer(
    req: &Request,
    knobs: &Knobs,
    extra: Option<&Map<String, Value>>,
    corrupt: bool,
) -> Response {
    let mut data = Vec::with_capacity(req.n as usize);
    for index in 0..req.n {
        let Some(b64) = render(req, index, 1, knobs.image_bytes, corrupt).await else {
            return render_failed();
        };
        let mut item = Map::new();
        item.insert("b64_json".into(), Value::String(b64));
        if let Some(extra) = extra {
            item.extend(extra.clone());
        }
        data.push(Value::Object(item));
    }
    axum::Json(json!({
        "created": crate::files::now_secs(),
        "data": data,
        "background": req.background,
        "output_format": req.format.as_str(),
        "quality": req.quality,
        "size": req.size(),
        "usage": usage(req, req.n),
    }))
    .into_response()
}

/// What one server-sent event carries.
#[derive(Debug, Clone, Copy)]
enum Event {
    Partial { image: u32, index: u32 },
    Completed { image: u32 },
}

fn events(req: &Request) -> Vec<Event> {
    let mut out = Vec::new();
    for image in 0..req.n {
        for index in 0..req.partial_images {
            out.push(Event::Partial { image, index });
        }
        out.push(Event::Completed { image });
    }
    out
}

async fn event_bytes(req: &Request, event: Event, pad: u64, corrupt: bool) -> String {
    let common = |b64: String| {
        json!({
            "b64_json": b64,
            "size": req.size(),
            "quality": req.quality,
            "background": req.background,
            "output_format": req.format.as_str(),
            "created_at": crate::files::now_secs(),
        })
    };
    let (name, body) = match event {
        Event::Partial { image, index } => {
            // Coarse first, finer with each partial image.
            let block = 8u32 << (req.partial_images - 1 - index).min(8);
            let b64 = render(req, image, block, 0, corrupt)
                .await
                .unwrap_or_default();
            let mut body = common(b64);
            body["type"] = json!("image_generation.partial_image");
            body["partial_image_index"] = json!(index);
            ("image_generation.partial_image", body)
        }
        Event::Completed { image } => {
            let b64 = render(req, image, 1, pad, corrupt)
                .await
                .unwrap_or_default();
            let mut body = common(b64);
            body["type"] = json!("image_generation.completed");
            body["usage"] = usage(req, 1);
            ("image_generation.completed", body)
        }
    };
    format!("event: {name}\ndata: {body}\n\n")
}

/// The `text/event-stream` answer: each event is sent as soon as its picture is rendered. `corrupt`: every picture
/// is `CORRUPT_BYTES`.
pub fn stream(req: Request, knobs: &Knobs, corrupt: bool) -> Response {
    let pad = knobs.image_bytes;
    let queue = events(&req).into_iter();
    let body = futures::stream::unfold((req, queue), move |(req, mut queue)| async move {
        let event = queue.next()?;
        let bytes = event_bytes(&req, event, pad, corrupt).await;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(bytes)),
            (req, queue),
        ))
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{OPENAI, lookup};

    fn model(id: &str) -> ImageModel {
        match lookup(
            OPENAI,
            id,
            chrono::NaiveDate::from_ymd_opt(2026, 11, 28).expect("date"),
        ) {
            crate::models::Lookup::Serves(m) => m,
            other => panic!("{id}: {other:?}"),
        }
    }

    fn check(body: Value, id: &str, host: Host) -> Result<Request, (u16, String)> {
        let obj = body.as_object().expect("object").clone();
        validate(&obj, &model(id), host).map_err(|r| {
            let status = r.status().as_u16();
            (status, format!("{:?}", r.headers()))
        })
    }

    #[test]
    fn tokens_follow_the_table() {
        assert_eq!(image_tokens(1024, 1024, "low"), 272);
        assert_eq!(image_tokens(1024, 1024, "medium"), 1056);
        assert_eq!(image_tokens(1024, 1024, "high"), 4160);
        assert_eq!(image_tokens(1536, 1024, "high"), 6240);
        assert_eq!(image_tokens(1024, 1536, "low"), 408);
        assert_eq!(image_tokens(2048, 2048, "medium"), 4224);
        assert_eq!(image_tokens(1024, 1024, "xhigh"), 6240);
        assert_eq!(image_tokens(1024, 1024, "max"), 8320);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(text_tokens("abcd"), 1);
    }

    #[test]
    fn sizes_follow_the_family() {
        let ok =
            |size: &str, id: &str| check(json!({"prompt": "x", "size": size}), id, Host::OpenAi);
        assert!(ok("1536x1024", "gpt-image-1.5").is_ok());
        assert!(ok("auto", "gpt-image-1-mini").is_ok());
        assert!(ok("1536x864", "gpt-image-1.5").is_err());
        let r = ok("1536x864", "gpt-image-2").expect("flexible");
        assert_eq!((r.width, r.height), (1536, 864));
        assert!(ok("3840x2160", "gpt-image-2.5-flare").is_ok());
        for bad in [
            "3856x2160",
            "1000x1000",
            "3088x1024",
            "800x800",
            "3840x2176",
            "x",
            "12x",
            "-16x16",
            "1024X1024",
        ] {
            assert!(ok(bad, "gpt-image-2").is_err(), "{bad}");
        }
        assert!(ok("3072x1024", "gpt-image-2").is_ok(), "exactly 3:1");
    }

    #[test]
    fn defaults_resolve() {
        let r = check(json!({"prompt": "x"}), "gpt-image-2", Host::OpenAi).expect("ok");
        assert_eq!(
            (r.quality, r.background, r.format, r.size().as_str(), r.n),
            ("medium", "opaque", Format::Png, "1024x1024", 1)
        );
        let r = check(
            json!({"prompt": "x", "quality": "auto"}),
            "gpt-image-2",
            Host::Azure,
        )
        .expect("ok");
        assert_eq!(r.quality, "high");
        assert!(
            check(
                json!({"prompt": "x", "quality": "xhigh"}),
                "gpt-image-2",
                Host::OpenAi
            )
            .is_err()
        );
        assert!(
            check(
                json!({"prompt": "x", "quality": "max"}),
                "gpt-image-2.6-sunburst",
                Host::OpenAi
            )
            .is_ok()
        );
        assert!(
            check(
                json!({"prompt": "x", "output_format": "webp"}),
                "gpt-image-2",
                Host::Azure
            )
            .is_err()
        );
    }
}
