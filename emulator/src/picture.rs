//! Deterministic test pictures: the same prompt and seed always give the same picture, and different prompts give
//! visibly different ones (colour bands and rings), at exactly the requested size, as PNG (RGB, or RGBA with a
//! transparent background), JPEG (`output_compression` as its quality) or lossless WebP. Partial images (streaming)
//! are the same picture, pixelated. `image_bytes` pads any of them with data the decoders skip.

use sha2::{Digest, Sha256};

/// An encoding the providers answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "png" => Some(Format::Png),
            "jpeg" => Some(Format::Jpeg),
            "webp" => Some(Format::Webp),
            _ => None,
        }
    }

    /// The name the APIs use (`output_format`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Webp => "webp",
        }
    }

    /// The file extension of a served picture.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpg",
            Format::Webp => "webp",
        }
    }
}

/// Everything a rendered picture depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Picture {
    pub prompt: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub format: Format,
    /// JPEG quality, 1..=100 (ignored by PNG and the lossless WebP encoder).
    pub quality: u8,
    /// An alpha channel, the background bands see-through (PNG and WebP only).
    pub transparent: bool,
    /// Pixel block size: 1 is the sharp picture, larger values a coarse preview (partial images).
    pub block: u32,
}

impl Picture {
    /// The sharp, opaque picture in `format` (JPEG at quality 100).
    pub fn new(prompt: &str, seed: u64, width: u32, height: u32, format: Format) -> Self {
        Self {
            prompt: prompt.to_owned(),
            seed,
            width,
            height,
            format,
            quality: 100,
            transparent: false,
            block: 1,
        }
    }
}

/// Pictures rendered lately, so a load test that repeats one prompt measures the service, not the renderer.
type Rendered = std::collections::VecDeque<(Picture, Vec<u8>)>;
static RECENT: std::sync::Mutex<Rendered> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const RECENT_CAPACITY: usize = 8;

/// Renders a `width` x `height` RGB PNG from the prompt and seed (the same picture for the same inputs).
pub fn render_png(prompt: &str, seed: u64, width: u32, height: u32) -> Vec<u8> {
    render(&Picture::new(prompt, seed, width, height, Format::Png))
}

/// Renders and encodes a picture (the same bytes for the same inputs). An empty answer means the encoder refused
/// the size (JPEG stops at 65,535 pixels a side).
pub fn render(picture: &Picture) -> Vec<u8> {
    {
        let recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, bytes)) = recent.iter().find(|(k, _)| k == picture) {
            return bytes.clone();
        }
    }
    let pixels = draw(picture);
    let bytes = encode(picture, &pixels).unwrap_or_default();
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if recent.len() >= RECENT_CAPACITY {
        recent.pop_front();
    }
    recent.push_back((picture.clone(), bytes.clone()));
    bytes
}

/// The raw pixels: RGB, or RGBA when transparent.
fn draw(p: &Picture) -> Vec<u8> {
    let (width, height) = (p.width, p.height);
    let digest = Sha256::new()
        .chain_update(p.prompt.as_bytes())
        .chain_update(p.seed.to_le_bytes())
        .finalize();
    let c1 = [digest[0], digest[1], digest[2]];
    let c2 = [digest[3], digest[4], digest[5]];
    let ring = [digest[6], digest[7], digest[8]];
    let bands = u32::from(digest[9] % 12) + 4;
    let (cx, cy) = (
        f64::from(width) * (0.25 + f64::from(digest[10]) / 512.0),
        f64::from(height) * (0.25 + f64::from(digest[11]) / 512.0),
    );
    let ring_step = 24.0 + f64::from(digest[12] % 64);
    let block = p.block.max(1);
    let channels = if p.transparent { 4 } else { 3 };

    let mut out = Vec::with_capacity((width as usize) * (height as usize) * channels);
    for y in 0..height {
        let y = y - y % block;
        let band_on = (y * bands / height.max(1)).is_multiple_of(2);
        let base = if band_on { c1 } else { c2 };
        for x in 0..width {
            let x = x - x % block;
            let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
            let on_ring = (((dx * dx + dy * dy).sqrt() / ring_step) as u64).is_multiple_of(4);
            let px = if on_ring { ring } else { base };
            // A gentle horizontal gradient so the picture is not flat.
            let shade = (x * 64 / width.max(1)) as u8;
            out.extend_from_slice(&[
                px[0].saturating_add(shade),
                px[1],
                px[2].saturating_sub(shade),
            ]);
            if p.transparent {
                // The second band colour is the background: see-through.
                out.push(if on_ring || band_on { 255 } else { 0 });
            }
        }
    }
    out
}

fn encode(p: &Picture, pixels: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match p.format {
        Format::Png => {
            let mut encoder = png::Encoder::new(&mut out, p.width, p.height);
            encoder.set_color(if p.transparent {
                png::ColorType::Rgba
            } else {
                png::ColorType::Rgb
            });
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            let mut writer = encoder.write_header().ok()?;
            writer.write_image_data(pixels).ok()?;
            writer.finish().ok()?;
        }
        Format::Jpeg => {
            let (w, h) = (u16::try_from(p.width).ok()?, u16::try_from(p.height).ok()?);
            let colour = if p.transparent {
                jpeg_encoder::ColorType::Rgba
            } else {
                jpeg_encoder::ColorType::Rgb
            };
            jpeg_encoder::Encoder::new(&mut out, p.quality.clamp(1, 100))
                .encode(pixels, w, h, colour)
                .ok()?;
        }
        Format::Webp => {
            let colour = if p.transparent {
                image_webp::ColorType::Rgba8
            } else {
                image_webp::ColorType::Rgb8
            };
            image_webp::WebPEncoder::new(&mut out)
                .encode(pixels, p.width, p.height, colour)
                .ok()?;
        }
    }
    Some(out)
}

/// Pads a picture to at least `min_len` bytes with data its decoders skip: still a valid picture of the same size,
/// only heavier (memory and throughput tests of large images).
pub fn pad(bytes: Vec<u8>, format: Format, min_len: u64) -> Vec<u8> {
    match format {
        Format::Png => pad_png(bytes, min_len),
        Format::Jpeg => pad_jpeg(bytes, min_len),
        Format::Webp => pad_webp(bytes, min_len),
    }
}

/// Pads a PNG with a private ancillary chunk (`paDd`) before its end.
pub fn pad_png(mut png: Vec<u8>, min_len: u64) -> Vec<u8> {
    const IEND_LEN: usize = 12;
    let min_len = usize::try_from(min_len).unwrap_or(usize::MAX);
    if png.len() >= min_len || png.len() < IEND_LEN {
        return png;
    }
    let data_len = min_len
        .saturating_sub(png.len() + 12)
        .min(u32::MAX as usize);
    let iend = png.split_off(png.len() - IEND_LEN);
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"paDd");
    let zeros = vec![0u8; data_len];
    crc.update(&zeros);
    png.extend_from_slice(&(data_len as u32).to_be_bytes());
    png.extend_from_slice(b"paDd");
    png.extend_from_slice(&zeros);
    png.extend_from_slice(&crc.finalize().to_be_bytes());
    png.extend_from_slice(&iend);
    png
}

/// Pads a JPEG with comment (`COM`) segments right after its start marker.
fn pad_jpeg(jpeg: Vec<u8>, min_len: u64) -> Vec<u8> {
    let min_len = usize::try_from(min_len).unwrap_or(usize::MAX);
    if jpeg.len() >= min_len || jpeg.len() < 2 {
        return jpeg;
    }
    let mut missing = min_len - jpeg.len();
    let mut out = Vec::with_capacity(min_len + 4);
    out.extend_from_slice(&jpeg[..2]);
    while missing > 0 {
        // A segment is its marker (2), its length field (2, counting itself) and up to 65,533 bytes of data.
        let data = missing.saturating_sub(4).min(65_533);
        out.extend_from_slice(&[0xFF, 0xFE]);
        out.extend_from_slice(&((data + 2) as u16).to_be_bytes());
        out.resize(out.len() + data, b' ');
        missing = missing.saturating_sub(data + 4);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Pads a simple (`VP8L`) WebP by turning it into the extended format with an `XMP ` chunk of spaces.
fn pad_webp(webp: Vec<u8>, min_len: u64) -> Vec<u8> {
    let min_len = usize::try_from(min_len).unwrap_or(usize::MAX);
    if webp.len() >= min_len || webp.len() < 25 || &webp[12..16] != b"VP8L" {
        return webp;
    }
    let frame = &webp[12..];
    // The VP8L header: a signature byte, then 14 bits width-1, 14 bits height-1 and the alpha bit.
    let bits = u32::from_le_bytes([webp[21], webp[22], webp[23], webp[24]]);
    let width_1 = bits & 0x3FFF;
    let height_1 = (bits >> 14) & 0x3FFF;
    let alpha = (bits >> 28) & 1 == 1;
    let mut out = Vec::with_capacity(min_len + 16);
    out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
    out.extend_from_slice(b"VP8X");
    out.extend_from_slice(&10u32.to_le_bytes());
    out.push(0x04 | if alpha { 0x10 } else { 0 });
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&width_1.to_le_bytes()[..3]);
    out.extend_from_slice(&height_1.to_le_bytes()[..3]);
    out.extend_from_slice(frame);
    let xmp = (min_len.saturating_sub(out.len() + 8) + 1) & !1;
    out.extend_from_slice(b"XMP ");
    out.extend_from_slice(&(xmp as u32).to_le_bytes());
    out.resize(out.len() + xmp, b' ');
    let riff = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    out
}

/// The width and height a PNG, JPEG or WebP says it has (tests and input images).
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() >= 24 {
        let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
        let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
        return Some((w, h));
    }
    if bytes.starts_with(b"RIFF") && bytes.len() >= 16 && &bytes[8..12] == b"WEBP" {
        let decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).ok()?;
        return Some(decoder.dimensions());
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        // Walk the segments to the first start-of-frame.
        let mut i = 2;
        while i + 9 < bytes.len() {
            if bytes[i] != 0xFF {
                return None;
            }
            let marker = bytes[i + 1];
            let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
            if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
                let h = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]);
                let w = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]);
                return Some((u32::from(w), u32::from(h)));
            }
            i += 2 + len;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(bytes: &[u8]) -> (u32, u32) {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png");
        (reader.info().width, reader.info().height)
    }

    #[test]
    fn padding_keeps_a_valid_picture() {
        let small = render_png("a cat", 0, 64, 32);
        let big = pad_png(small.clone(), 100_000);
        assert!(big.len() >= 100_000);
        assert_eq!(size(&big), (64, 32));
        let mut reader = png::Decoder::new(std::io::Cursor::new(&big))
            .read_info()
            .expect("png");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        reader
            .next_frame(&mut buf)
            .expect("decodes with the padding chunk");
        assert_eq!(pad_png(small.clone(), 10), small);

        for format in [Format::Jpeg, Format::Webp] {
            let small = render(&Picture::new("a cat", 0, 64, 32, format));
            let big = pad(small.clone(), format, 200_000);
            assert!(big.len() >= 200_000, "{format:?}: {}", big.len());
            assert_eq!(dimensions(&big), Some((64, 32)), "{format:?}");
            assert_eq!(pad(small.clone(), format, 10), small);
        }
        let webp = pad(
            render(&Picture::new("a cat", 0, 64, 32, Format::Webp)),
            Format::Webp,
            5_000,
        );
        let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&webp)).expect("webp");
        let mut buf = vec![0; decoder.output_buffer_size().expect("size")];
        decoder
            .read_image(&mut buf)
            .expect("decodes with the XMP chunk");
    }

    #[test]
    fn deterministic_and_sized() {
        let a = render_png("a cat", 0, 64, 32);
        assert_eq!(a, render_png("a cat", 0, 64, 32));
        assert_ne!(a, render_png("a dog", 0, 64, 32));
        assert_ne!(a, render_png("a cat", 1, 64, 32));
        assert_eq!(size(&a), (64, 32));
    }

    #[test]
    fn every_format_decodes_at_its_size() {
        for format in [Format::Png, Format::Jpeg, Format::Webp] {
            for transparent in [false, true] {
                if format == Format::Jpeg && transparent {
                    continue;
                }
                let picture = Picture {
                    transparent,
                    quality: 80,
                    ..Picture::new("formats", 3, 96, 48, format)
                };
                let bytes = render(&picture);
                assert_eq!(dimensions(&bytes), Some((96, 48)), "{picture:?}");
                let coarse = render(&Picture {
                    block: 16,
                    ..picture.clone()
                });
                assert_ne!(coarse, bytes, "a partial image differs");
                assert_eq!(dimensions(&coarse), Some((96, 48)));
            }
        }
        let webp = render(&Picture {
            transparent: true,
            ..Picture::new("alpha", 0, 32, 32, Format::Webp)
        });
        let decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&webp)).expect("webp");
        assert!(decoder.has_alpha());
    }
}
