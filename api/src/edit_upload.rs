//! The multipart body of an edit (`POST /api/v1/edits`, `POST /v1/images/edits`), read with limits: `image` (or
//! `image[]`, OpenAI's SDK spelling) one or more files, an optional `mask`, and the other fields as text. Each file
//! is read chunk by chunk and refused as soon as it passes the per-image limit, and the body as soon as the files
//! pass the per-request limit, so nothing unbounded is held. The images themselves are then checked
//! (`edit_inputs::check_inputs`) against the model once its field is known.
//!
//! The route needs `DefaultBodyLimit::max(request limit + FIELDS_BYTES)`: axum's default (2 MB) applies to
//! `Multipart` too.

use axum::extract::Multipart;
use axum::extract::multipart::Field;
use bytes::{Bytes, BytesMut};
use imagegen_shared::edit_inputs::{EditLimits, Part};
use std::collections::BTreeMap;

/// Bytes of all text fields together (the prompt is at most 32,000 characters).
pub const FIELDS_BYTES: usize = 256 * 1024;
/// Text fields at most (the generate fields number about twenty).
const MAX_FIELDS: usize = 64;
/// Image parts at most, before the model's own limit is known (the largest any model takes).
const MAX_IMAGE_PARTS: usize = imagegen_shared::catalogue::MAX_EDIT_INPUTS as usize;

#[derive(Debug, Default)]
pub struct EditUpload {
    pub images: Vec<Bytes>,
    pub mask: Option<Bytes>,
    /// The other fields by name (a repeated name keeps the last value).
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body is not valid multipart/form-data: {0}")]
    Malformed(String),
    #[error("{part} is more than the {limit} bytes allowed for one image")]
    PartTooLarge { part: String, limit: u64 },
    #[error("the images come to more than the {limit} bytes allowed for one request")]
    RequestTooLarge { limit: u64 },
    #[error("more than {MAX_IMAGE_PARTS} images")]
    TooManyImages,
    #[error("more than one mask")]
    TwoMasks,
    #[error("the text fields are more than {FIELDS_BYTES} bytes or {MAX_FIELDS} fields")]
    FieldsTooLarge,
    #[error("field {0} is not UTF-8 text")]
    FieldNotText(String),
    #[error("a part has no name")]
    Unnamed,
}

impl UploadError {
    /// Whether the answer is 413 rather than 400.
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            Self::PartTooLarge { .. } | Self::RequestTooLarge { .. } | Self::FieldsTooLarge
        )
    }
}

fn malformed(e: axum::extract::multipart::MultipartError) -> UploadError {
    UploadError::Malformed(e.body_text())
}

/// Reads a file part, at most `limit` bytes of it and at most `left` bytes of the request's allowance.
async fn read_file(
    field: &mut Field<'_>,
    part: Part,
    limits: &EditLimits,
    used: &mut u64,
) -> Result<Bytes, UploadError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        let len = (buf.len() + chunk.len()) as u64;
        if len > limits.max_image_bytes {
            return Err(UploadError::PartTooLarge {
                part: part.to_string(),
                limit: limits.max_image_bytes,
            });
        }
        if *used + chunk.len() as u64 > limits.max_request_bytes {
            return Err(UploadError::RequestTooLarge {
                limit: limits.max_request_bytes,
            });
        }
        *used += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub async fn read_upload(
    mut multipart: Multipart,
    limits: &EditLimits,
) -> Result<EditUpload, UploadError> {
    let mut upload = EditUpload::default();
    let mut used = 0u64;
    let mut field_bytes = 0usize;
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().ok_or(UploadError::Unnamed)?.to_owned();
        match name.as_str() {
            "image" | "image[]" => {
                if upload.images.len() >= MAX_IMAGE_PARTS {
                    return Err(UploadError::TooManyImages);
                }
                let part = Part::Image(upload.images.len());
                let bytes = read_file(&mut field, part, limits, &mut used).await?;
                upload.images.push(bytes);
            }
            "mask" => {
                if upload.mask.is_some() {
                    return Err(UploadError::TwoMasks);
                }
                upload.mask = Some(read_file(&mut field, Part::Mask, limits, &mut used).await?);
            }
            _ => {
                let mut buf = BytesMut::new();
                while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                    field_bytes += chunk.len();
                    if field_bytes > FIELDS_BYTES {
                        return Err(UploadError::FieldsTooLarge);
                    }
                    buf.extend_from_slice(&chunk);
                }
                if upload.fields.len() >= MAX_FIELDS && !upload.fields.contains_key(&name) {
                    return Err(UploadError::FieldsTooLarge);
                }
                let text = String::from_utf8(buf.to_vec())
                    .map_err(|_| UploadError::FieldNotText(name.clone()))?;
                upload.fields.insert(name, text);
            }
        }
    }
    Ok(upload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::FromRequest;
    use axum::http::Request;

    const BOUNDARY: &str = "XyZboundary";

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file, bytes) in parts {
            out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            match file {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n")
                        .as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        out
    }

    async fn read(
        parts: &[(&str, Option<&str>, &[u8])],
        limits: EditLimits,
    ) -> Result<EditUpload, UploadError> {
        let request = Request::builder()
            .method("POST")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(body(parts)))
            .expect("request");
        let multipart = Multipart::from_request(request, &())
            .await
            .expect("multipart");
        read_upload(multipart, &limits).await
    }

    fn limits(image: u64, request: u64) -> EditLimits {
        EditLimits {
            max_image_bytes: image,
            max_request_bytes: request,
            max_pixels: 1 << 24,
        }
    }

    #[tokio::test]
    async fn images_in_both_spellings_a_mask_and_fields() {
        let u = read(
            &[
                ("image[]", Some("a.png"), b"first"),
                ("image", Some("b.png"), b"second"),
                ("mask", Some("m.png"), b"mask"),
                ("prompt", None, "A red door, édité".as_bytes()),
                ("input_fidelity", None, b"high"),
            ],
            limits(100, 1000),
        )
        .await
        .expect("reads");
        assert_eq!(u.images, vec![Bytes::from("first"), Bytes::from("second")]);
        assert_eq!(u.mask, Some(Bytes::from("mask")));
        assert_eq!(u.fields["prompt"], "A red door, édité");
        assert_eq!(u.fields["input_fidelity"], "high");
    }

    #[tokio::test]
    async fn oversized_parts_and_requests_are_refused_naming_the_part() {
        let big = vec![7u8; 101];
        let e = read(
            &[
                ("image", Some("a.png"), b"ok"),
                ("image", Some("b.png"), &big),
            ],
            limits(100, 1000),
        )
        .await
        .expect_err("part");
        assert!(
            e.too_large() && e.to_string().starts_with("image[1] is more than"),
            "{e}"
        );
        let e = read(&[("mask", Some("m.png"), &big)], limits(100, 1000))
            .await
            .expect_err("mask");
        assert!(e.to_string().starts_with("mask is more than"), "{e}");
        let sixty = vec![1u8; 60];
        let e = read(
            &[
                ("image", Some("a.png"), &sixty),
                ("image", Some("b.png"), &sixty),
            ],
            limits(100, 100),
        )
        .await
        .expect_err("request");
        assert!(
            matches!(e, UploadError::RequestTooLarge { limit: 100 }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn too_many_images_two_masks_and_huge_fields_are_refused() {
        let parts: Vec<(&str, Option<&str>, &[u8])> = (0..17)
            .map(|_| ("image", Some("a.png"), &b"x"[..]))
            .collect();
        let e = read(&parts, limits(100, 1000)).await.expect_err("17");
        assert!(matches!(e, UploadError::TooManyImages), "{e}");
        let e = read(
            &[("mask", Some("m.png"), b"1"), ("mask", Some("n.png"), b"2")],
            limits(100, 1000),
        )
        .await
        .expect_err("two masks");
        assert!(matches!(e, UploadError::TwoMasks), "{e}");
        let prompt = vec![b'a'; FIELDS_BYTES + 1];
        let e = read(&[("prompt", None, &prompt)], limits(100, 1000))
            .await
            .expect_err("fields");
        assert!(e.too_large(), "{e}");
        let e = read(&[("prompt", None, &[0xFF, 0xFE])], limits(100, 1000))
            .await
            .expect_err("utf8");
        assert!(
            matches!(e, UploadError::FieldNotText(ref f) if f == "prompt"),
            "{e}"
        );
    }
}
