//! Deterministic test pictures: the same prompt and seed always give the same PNG, and different prompts give
//! visibly different ones (colour bands and rings), at exactly the requested size.

use sha2::{Digest, Sha256};

/// Pictures rendered lately, so a load test that repeats one prompt measures the service, not the renderer.
type Rendered = std::collections::VecDeque<((String, u64, u32, u32), Vec<u8>)>;
static RECENT: std::sync::Mutex<Rendered> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const RECENT_CAPACITY: usize = 8;

/// Renders a `width` x `height` RGB PNG from the prompt and seed (the same picture for the same inputs).
pub fn render_png(prompt: &str, seed: u64, width: u32, height: u32) -> Vec<u8> {
    let key = (prompt.to_owned(), seed, width, height);
    {
        let recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, png)) = recent.iter().find(|(k, _)| *k == key) {
            return png.clone();
        }
    }
    let png = draw_png(prompt, seed, width, height);
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if recent.len() >= RECENT_CAPACITY {
        recent.pop_front();
    }
    recent.push_back((key, png.clone()));
    png
}

fn draw_png(prompt: &str, seed: u64, width: u32, height: u32) -> Vec<u8> {
    let digest = Sha256::new()
        .chain_update(prompt.as_bytes())
        .chain_update(seed.to_le_bytes())
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

    let mut rgb = Vec::with_capacity((width as usize) * (height as usize) * 3);
    for y in 0..height {
        let band_on = (y * bands / height.max(1)).is_multiple_of(2);
        let base = if band_on { c1 } else { c2 };
        for x in 0..width {
            let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
            let on_ring = (((dx * dx + dy * dy).sqrt() / ring_step) as u64).is_multiple_of(4);
            let px = if on_ring { ring } else { base };
            // A gentle horizontal gradient so the picture is not flat.
            let shade = (x * 64 / width.max(1)) as u8;
            rgb.extend_from_slice(&[
                px[0].saturating_add(shade),
                px[1],
                px[2].saturating_sub(shade),
            ]);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        // Writing into a Vec cannot fail for valid dimensions; an empty answer would fail the caller's checks.
        if let Ok(mut writer) = encoder.write_header() {
            let _ = writer.write_image_data(&rgb);
        }
    }
    out
}

/// Pads a PNG to at least `min_len` bytes with a private ancillary chunk (`paDd`) before its end: still a valid
/// picture of the same size, only heavier (memory and throughput tests of large images).
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
    }

    #[test]
    fn deterministic_and_sized() {
        let a = render_png("a cat", 0, 64, 32);
        assert_eq!(a, render_png("a cat", 0, 64, 32));
        assert_ne!(a, render_png("a dog", 0, 64, 32));
        assert_ne!(a, render_png("a cat", 1, 64, 32));
        assert_eq!(size(&a), (64, 32));
    }
}
