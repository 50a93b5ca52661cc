//! The input images of an edit, checked before anything is queued or stored: each a real PNG, JPEG or WebP (told by
//! its decoded header, never by a file name or a claimed content type), within the per-image and per-request byte
//! limits and the pixel limit; the mask a PNG with an alpha channel and the first image's size; the count within what
//! the model takes. Every refusal names the part it is about (`image[2]`, `mask`), for a clear 4xx.

use crate::catalogue::ModelSpec;
use std::fmt;
use std::io::Cursor;

/// Limits on edit inputs (configurable: EDIT_MAX_IMAGE_BYTES, EDIT_MAX_REQUEST_BYTES, EDIT_MAX_IMAGE_PIXELS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditLimits {
    /// Bytes of one image (or the mask).
    pub max_image_bytes: u64,
    /// Bytes of every image and the mask together.
    pub max_request_bytes: u64,
    /// Width times height of one image.
    pub max_pixels: u64,
}

impl Default for EditLimits {
    /// OpenAI's own edit limits: 50 MB an image; 16 images; our pixel bound is 4096x4096.
    fn default() -> Self {
        Self {
            max_image_bytes: 50 * 1024 * 1024,
            max_request_bytes: 64 * 1024 * 1024,
            max_pixels: 4096 * 4096,
        }
    }
}

/// Which input a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The n-th image, from 0.
    Image(usize),
    Mask,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Image(i) => write!(f, "image[{i}]"),
            Part::Mask => f.write_str("mask"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Png,
    Jpeg,
    Webp,
}

impl InputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            InputFormat::Png => "image/png",
            InputFormat::Jpeg => "image/jpeg",
            InputFormat::Webp => "image/webp",
        }
    }

    /// The format a recorded content type names (what `content_type` wrote).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        [InputFormat::Png, InputFormat::Jpeg, InputFormat::Webp]
            .into_iter()
            .find(|f| f.content_type().eq_ignore_ascii_case(content_type.trim()))
    }

    pub fn extension(self) -> &'static str {
        match self {
            InputFormat::Png => "png",
            InputFormat::Jpeg => "jpg",
            InputFormat::Webp => "webp",
        }
    }
}

/// What the decoded header of an input says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputImage {
    pub format: InputFormat,
    pub width: u32,
    pub height: u32,
    /// An alpha channel (PNG: colour type with alpha, or a tRNS chunk; WebP: the alpha flag). JPEG has none.
    pub alpha: bool,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditInputError {
    #[error("{model} does not edit images")]
    ModelDoesNotEdit { model: String },
    #[error("an edit needs at least one image")]
    NoImages,
    #[error("{model} takes at most {max} input images, got {count}")]
    TooManyImages {
        model: String,
        max: u8,
        count: usize,
    },
    #[error("{model} does not take a mask")]
    MaskNotSupported { model: String },
    #[error("{part} is empty")]
    Empty { part: Part },
    #[error("{part} is {bytes} bytes, more than the {limit} allowed for one image")]
    ImageTooLarge { part: Part, bytes: u64, limit: u64 },
    #[error("the images come to {bytes} bytes, more than the {limit} allowed for one request")]
    RequestTooLarge { bytes: u64, limit: u64 },
    #[error("{part} is not a PNG, JPEG or WebP image (by its content, whatever its name)")]
    UnsupportedFormat { part: Part },
    #[error("{part} is not a readable {format} image: {reason}")]
    Corrupt {
        part: Part,
        format: &'static str,
        reason: String,
    },
    #[error("{part} is {width}x{height}, more than the {limit} pixels allowed")]
    TooManyPixels {
        part: Part,
        width: u32,
        height: u32,
        limit: u64,
    },
    #[error("mask must be a PNG")]
    MaskNotPng,
    #[error("mask has no alpha channel (transparent pixels mark where to edit)")]
    MaskWithoutAlpha,
    #[error(
        "mask is {mask_width}x{mask_height} but image[0] is {width}x{height}: they must be the same size"
    )]
    MaskSizeMismatch {
        mask_width: u32,
        mask_height: u32,
        width: u32,
        height: u32,
    },
}

impl EditInputError {
    /// The part a refusal is about, if one: what an error body names.
    pub fn part(&self) -> Option<String> {
        match self {
            Self::Empty { part }
            | Self::ImageTooLarge { part, .. }
            | Self::UnsupportedFormat { part }
            | Self::Corrupt { part, .. }
            | Self::TooManyPixels { part, .. } => Some(part.to_string()),
            Self::MaskNotPng | Self::MaskWithoutAlpha | Self::MaskSizeMismatch { .. } => {
                Some("mask".into())
            }
            Self::MaskNotSupported { .. } => Some("mask".into()),
            Self::NoImages | Self::TooManyImages { .. } => Some("image".into()),
            Self::ModelDoesNotEdit { .. } => Some("model".into()),
            Self::RequestTooLarge { .. } => None,
        }
    }

    /// Whether the answer is 413 (too large) rather than 400.
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            Self::ImageTooLarge { .. } | Self::RequestTooLarge { .. }
        )
    }
}

/// Tells the format by the first bytes, then decodes the header: the size (and for PNG the colour type) as the file
/// says it, so a truncated or fake file is refused here rather than by the provider.
pub fn inspect(
    part: Part,
    bytes: &[u8],
    limits: &EditLimits,
) -> Result<InputImage, EditInputError> {
    let len = bytes.len() as u64;
    if len == 0 {
        return Err(EditInputError::Empty { part });
    }
    if len > limits.max_image_bytes {
        return Err(EditInputError::ImageTooLarge {
            part,
            bytes: len,
            limit: limits.max_image_bytes,
        });
    }
    let format = match crate::storage::sniff_image(bytes) {
        Some(("png", _)) => InputFormat::Png,
        Some(("jpg", _)) => InputFormat::Jpeg,
        Some(("webp", _)) => InputFormat::Webp,
        _ => return Err(EditInputError::UnsupportedFormat { part }),
    };
    let corrupt = |reason: String| EditInputError::Corrupt {
        part,
        format: format.extension(),
        reason,
    };
    let (width, height, alpha) = match format {
        InputFormat::Png => {
            // Header chunks only (up to the first IDAT); the decoder checks their CRCs.
            let mut decoder = png::Decoder::new(Cursor::new(bytes));
            decoder.set_ignore_text_chunk(true);
            let reader = decoder.read_info().map_err(|e| corrupt(e.to_string()))?;
            let info = reader.info();
            let alpha = matches!(
                info.color_type,
                png::ColorType::Rgba | png::ColorType::GrayscaleAlpha
            ) || info.trns.is_some();
            (info.width, info.height, alpha)
        }
        InputFormat::Jpeg | InputFormat::Webp => {
            let size = imagesize::blob_size(bytes).map_err(|e| corrupt(e.to_string()))?;
            let w = u32::try_from(size.width).map_err(|_| corrupt("width out of range".into()))?;
            let h =
                u32::try_from(size.height).map_err(|_| corrupt("height out of range".into()))?;
            (w, h, format == InputFormat::Webp && webp_has_alpha(bytes))
        }
    };
    if width == 0 || height == 0 {
        return Err(corrupt("zero width or height".into()));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(EditInputError::TooManyPixels {
            part,
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(InputImage {
        format,
        width,
        height,
        alpha,
        bytes: len,
    })
}

/// WebP: an extended (VP8X) file with the alpha flag, or a lossless (VP8L) one with its alpha hint.
fn webp_has_alpha(bytes: &[u8]) -> bool {
    match bytes.get(12..16) {
        Some(b"VP8X") => bytes.get(20).is_some_and(|flags| flags & 0x10 != 0),
        Some(b"VP8L") => bytes.get(24).is_some_and(|b| b & 0x10 != 0),
        _ => false,
    }
}

/// The count against the model's edit table: before any bytes are read, so a request with too many images is
/// refused without decoding them.
pub fn check_count(model: &ModelSpec, images: usize, mask: bool) -> Result<(), EditInputError> {
    let Some(edits) = &model.edits else {
        return Err(EditInputError::ModelDoesNotEdit {
            model: model.id.to_string(),
        });
    };
    if images == 0 {
        return Err(EditInputError::NoImages);
    }
    if images > usize::from(edits.max_input_images) {
        return Err(EditInputError::TooManyImages {
            model: model.id.to_string(),
            max: edits.max_input_images,
            count: images,
        });
    }
    if mask && !edits.mask {
        return Err(EditInputError::MaskNotSupported {
            model: model.id.to_string(),
        });
    }
    Ok(())
}

/// Every check on an edit's inputs: the count for the model, each image, the request's total, the mask.
pub fn check_inputs(
    model: &ModelSpec,
    images: &[&[u8]],
    mask: Option<&[u8]>,
    limits: &EditLimits,
) -> Result<(Vec<InputImage>, Option<InputImage>), EditInputError> {
    check_count(model, images.len(), mask.is_some())?;
    // Sizes first (cheap, and an oversized part is named), then the total, then the headers.
    let parts = images
        .iter()
        .enumerate()
        .map(|(i, b)| (Part::Image(i), *b))
        .chain(mask.map(|m| (Part::Mask, m)));
    let mut total = 0u64;
    for (part, bytes) in parts {
        let len = bytes.len() as u64;
        if len > limits.max_image_bytes {
            return Err(EditInputError::ImageTooLarge {
                part,
                bytes: len,
                limit: limits.max_image_bytes,
            });
        }
        total += len;
    }
    if total > limits.max_request_bytes {
        return Err(EditInputError::RequestTooLarge {
            bytes: total,
            limit: limits.max_request_bytes,
        });
    }
    let checked = images
        .iter()
        .enumerate()
        .map(|(i, b)| inspect(Part::Image(i), b, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let mask = match mask {
        None => None,
        Some(bytes) => {
            let m = inspect(Part::Mask, bytes, limits)?;
            check_mask(&m, &checked[0])?;
            Some(m)
        }
    };
    Ok((checked, mask))
}

/// The mask against the first image: a PNG, with alpha, the same size.
pub fn check_mask(mask: &InputImage, first: &InputImage) -> Result<(), EditInputError> {
    check_mask_format(mask)?;
    if (mask.width, mask.height) != (first.width, first.height) {
        return Err(EditInputError::MaskSizeMismatch {
            mask_width: mask.width,
            mask_height: mask.height,
            width: first.width,
            height: first.height,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "edit_inputs_tests.rs"]
mod tests;

/// What a mask must be whatever the first image: a PNG with an alpha channel (its size is checked against the first
/// image once both are known; `check_mask`).
pub fn check_mask_format(mask: &InputImage) -> Result<(), EditInputError> {
    if mask.format != InputFormat::Png {
        return Err(EditInputError::MaskNotPng);
    }
    if !mask.alpha {
        return Err(EditInputError::MaskWithoutAlpha);
    }
    Ok(())
}
