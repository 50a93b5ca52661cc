//! GPT image edits (`POST /v1/images/edits`, Azure's `.../images/edits`): a multipart form with the generation's
//! text fields (checked by `gpt_image::validate`), 1 to 16 `image` / `image[]` parts (PNG, JPEG or WebP), an
//! optional `mask` (a PNG with an alpha channel, the first image's size) and `input_fidelity` (`high`|`low`). The
//! pictures are derived from the inputs' bytes and the prompt, so a test can tell which inputs a call got; the
//! usage counts the input images' tokens. Every edit call is recorded (`GET /emulator/edits`) with the SHA-256 of
//! each input, so a test can check that a retry sent the same bytes.

use crate::gpt_image::{self, Request};
use axum::extract::Multipart;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Input images per request, at most (models.md).
pub const MAX_IMAGES: usize = 16;
/// Text fields that arrive as numbers or booleans in the JSON body of a generation.
const NUMBER_FIELDS: [&str; 3] = ["n", "output_compression", "partial_images"];

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct Upload {
    pub content_type: Option<String>,
    pub bytes: bytes::Bytes,
}

/// The form, read: text fields as a generation's JSON body would carry them, then the files.
#[derive(Debug, Default)]
pub struct Form {
    pub fields: Map<String, Value>,
    pub images: Vec<Upload>,
    pub mask: Option<Upload>,
}

/// The checked inputs of an edit, applied to the validated request.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// SHA-256 (hex) of each image, in order, and of the mask.
    pub images: Vec<String>,
    pub mask: Option<String>,
    pub input_fidelity: Option<String>,
    /// Width and height of each image.
    sizes: Vec<(u32, u32)>,
}

/// What one edit call received, for tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EditRecord {
    pub protocol: &'static str,
    pub correlation_id: Option<String>,
    pub model: Option<String>,
    pub prompt: String,
    pub images: Vec<String>,
    pub mask: Option<String>,
    pub input_fidelity: Option<String>,
}

fn bad(message: &str, param: &str, code: &str) -> Box<Response> {
    gpt_image::bad(message, param, code)
}

/// Reads the multipart body; a malformed one is OpenAI's 400.
pub async fn read_form(mut multipart: Multipart) -> Result<Form, Box<Response>> {
    let mut form = Form::default();
    let malformed = |e: axum::extract::multipart::MultipartError| {
        Box::new(crate::openai::error(
            StatusCode::BAD_REQUEST,
            &format!("Could not parse multipart form: {e}"),
            "invalid_request_error",
            None,
            None,
        ))
    };
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let content_type = field.content_type().map(str::to_owned);
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(malformed)?;
        match name.as_str() {
            "image" | "image[]" => form.images.push(Upload {
                content_type,
                bytes,
            }),
            "mask" => {
                form.mask = Some(Upload {
                    content_type,
                    bytes,
                })
            }
            _ if is_file => {
                return Err(bad(
                    &format!("Unrecognized file argument supplied: {name}"),
                    &name,
                    "unknown_parameter",
                ));
            }
            _ => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let value = if NUMBER_FIELDS.contains(&name.as_str()) {
                    text.parse::<i64>().map_or(Value::String(text), Value::from)
                } else if name == "stream" {
                    Value::Bool(text == "true")
                } else {
                    Value::String(text)
                };
                form.fields.insert(name, value);
            }
        }
    }
    Ok(form)
}

/// Whether a PNG carries an alpha channel (colour type 4 or 6, or a tRNS chunk).
fn png_has_alpha(bytes: &[u8]) -> Option<bool> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.len() < 26 {
        return None;
    }
    let colour = bytes[25];
    Some(matches!(colour, 4 | 6) || bytes.windows(4).any(|w| w == b"tRNS"))
}

fn mode(bytes: &[u8]) -> &'static str {
    match bytes.get(25) {
        Some(0) => "L",
        Some(3) => "P",
        _ => "RGB",
    }
}

/// Checks the files and takes `input_fidelity` out of the fields (the generation's check does not know it).
pub fn check(form: &mut Form) -> Result<Inputs, Box<Response>> {
    if form.images.is_empty() {
        return Err(bad(
            "Missing required parameter: 'image'.",
            "image",
            "missing_required_parameter",
        ));
    }
    if form.images.len() > MAX_IMAGES {
        return Err(bad(
            &format!(
                "Too many images provided: {}. The maximum number of images is {MAX_IMAGES}.",
                form.images.len()
            ),
            "image",
            "too_many_images",
        ));
    }
    let mut sizes = Vec::new();
    for (i, image) in form.images.iter().enumerate() {
        let mime = image
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        if !matches!(mime, "image/png" | "image/jpeg" | "image/webp") {
            return Err(bad(
                &format!(
                    "Invalid file 'image': unsupported mimetype ('{mime}'). Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'."
                ),
                "image",
                "unsupported_file_mimetype",
            ));
        }
        let Some(size) = crate::picture::dimensions(&image.bytes) else {
            return Err(bad(
                &format!(
                    "Invalid image file or mode for image {}, please check your image file.",
                    i + 1
                ),
                "image",
                "invalid_image_file",
            ));
        };
        sizes.push(size);
    }
    if let Some(mask) = &form.mask {
        match png_has_alpha(&mask.bytes) {
            None => {
                return Err(bad(
                    "Invalid mask image: the mask must be a PNG file.",
                    "mask",
                    "invalid_image_format",
                ));
            }
            Some(false) => {
                return Err(bad(
                    &format!(
                        "Invalid input image - format must be in ['RGBA', 'LA'], got {}.",
                        mode(&mask.bytes)
                    ),
                    "mask",
                    "invalid_image_format",
                ));
            }
            Some(true) => {}
        }
        let got = crate::picture::dimensions(&mask.bytes).unwrap_or_default();
        if got != sizes[0] {
            return Err(bad(
                &format!(
                    "Invalid mask image: the mask ({}x{}) must be the same size as the image ({}x{}).",
                    got.0, got.1, sizes[0].0, sizes[0].1
                ),
                "mask",
                "invalid_mask_size",
            ));
        }
    }
    let input_fidelity = match form.fields.remove("input_fidelity") {
        None => None,
        Some(Value::String(f)) if f == "high" || f == "low" => Some(f),
        Some(other) => {
            return Err(bad(
                &format!(
                    "Invalid value: '{}'. Supported values are: 'high' and 'low'.",
                    other.as_str().unwrap_or_default()
                ),
                "input_fidelity",
                "invalid_value",
            ));
        }
    };
    let digest = |b: &[u8]| hex::encode(Sha256::digest(b));
    Ok(Inputs {
        images: form.images.iter().map(|u| digest(&u.bytes)).collect(),
        mask: form.mask.as_ref().map(|m| digest(&m.bytes)),
        input_fidelity,
        sizes,
    })
}

impl Inputs {
    /// The request's pictures derive from the inputs (their digests) and the prompt; the input images' tokens are
    /// counted (as a vision input: 85 plus 170 per 512-pixel tile, twice for high fidelity).
    pub fn apply(&self, req: &mut Request) {
        let mut hasher = Sha256::new();
        for d in self.images.iter().chain(self.mask.iter()) {
            hasher.update(d.as_bytes());
        }
        hasher.update(req.prompt.as_bytes());
        let sum = hasher.finalize();
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&sum[..8]);
        req.seed_base = u64::from_be_bytes(seed);
        let per = |(w, h): (u32, u32)| 85 + 170 * u64::from(w.div_ceil(512) * h.div_ceil(512));
        let factor = if self.input_fidelity.as_deref() == Some("high") {
            2
        } else {
            1
        };
        req.input_image_tokens = self.sizes.iter().map(|s| per(*s) * factor).sum();
        // Edits are answered whole (the emulator does not stream them).
        req.stream = false;
        req.partial_images = 0;
    }

    pub fn record(
        &self,
        protocol: &'static str,
        correlation_id: Option<String>,
        fields: &Map<String, Value>,
    ) -> EditRecord {
        EditRecord {
            protocol,
            correlation_id,
            model: fields
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
            prompt: fields
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            images: self.images.clone(),
            mask: self.mask.clone(),
            input_fidelity: self.input_fidelity.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32, alpha: bool) -> bytes::Bytes {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(if alpha {
                png::ColorType::Rgba
            } else {
                png::ColorType::Rgb
            });
            let mut writer = enc.write_header().expect("header");
            let px = if alpha { 4 } else { 3 };
            writer
                .write_image_data(&vec![0u8; (w * h * px) as usize])
                .expect("data");
        }
        out.into()
    }

    fn upload(bytes: bytes::Bytes, mime: &str) -> Upload {
        Upload {
            content_type: Some(mime.into()),
            bytes,
        }
    }

    fn form(images: Vec<Upload>, mask: Option<Upload>) -> Form {
        Form {
            fields: Map::new(),
            images,
            mask,
        }
    }

    async fn message(r: Box<Response>) -> (u16, Value) {
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn faithful_errors_for_bad_inputs() {
        let cases: Vec<(Form, &str, &str)> = vec![
            (
                form(vec![], None),
                "missing_required_parameter",
                "Missing required parameter: 'image'.",
            ),
            (
                form(vec![upload(png(8, 8, false), "image/png"); 17], None),
                "too_many_images",
                "Too many images provided: 17. The maximum number of images is 16.",
            ),
            (
                form(
                    vec![upload(bytes::Bytes::from_static(b"hello"), "text/plain")],
                    None,
                ),
                "unsupported_file_mimetype",
                "Invalid file 'image': unsupported mimetype ('text/plain'). Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
            ),
            (
                form(
                    vec![upload(bytes::Bytes::from_static(b"not a png"), "image/png")],
                    None,
                ),
                "invalid_image_file",
                "Invalid image file or mode for image 1, please check your image file.",
            ),
            (
                form(
                    vec![upload(png(8, 8, false), "image/png")],
                    Some(upload(png(8, 8, false), "image/png")),
                ),
                "invalid_image_format",
                "Invalid input image - format must be in ['RGBA', 'LA'], got RGB.",
            ),
            (
                form(
                    vec![upload(png(8, 8, false), "image/png")],
                    Some(upload(png(4, 8, true), "image/png")),
                ),
                "invalid_mask_size",
                "Invalid mask image: the mask (4x8) must be the same size as the image (8x8).",
            ),
        ];
        for (mut f, code, text) in cases {
            let (status, body) = message(check(&mut f).expect_err(code)).await;
            assert_eq!(status, 400, "{code}");
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["message"], text);
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn pictures_derive_from_the_inputs_and_the_prompt() {
        let valid = |image: bytes::Bytes| {
            let mut f = form(
                vec![upload(image, "image/png")],
                Some(upload(png(8, 8, true), "image/png")),
            );
            f.fields.insert("input_fidelity".into(), "high".into());
            check(&mut f).expect("valid")
        };
        let a = valid(png(8, 8, false));
        let b = valid(png(8, 8, true));
        assert_eq!(a.input_fidelity.as_deref(), Some("high"));
        let seed = |inputs: &Inputs, prompt: &str| {
            let mut req = Request {
                prompt: prompt.into(),
                ..Request::default()
            };
            inputs.apply(&mut req);
            (req.seed_base, req.input_image_tokens)
        };
        assert_eq!(seed(&a, "blue"), seed(&a, "blue"));
        assert_ne!(seed(&a, "blue").0, seed(&b, "blue").0);
        assert_ne!(seed(&a, "blue").0, seed(&a, "red").0);
        assert_eq!(seed(&a, "blue").1, 2 * 255);
    }
}
