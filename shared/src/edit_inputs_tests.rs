use super::*;
use crate::catalogue::Catalogue;

fn png(width: u32, height: u32, color: png::ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let channels = match color {
            png::ColorType::Rgba => 4,
            png::ColorType::Rgb => 3,
            png::ColorType::GrayscaleAlpha => 2,
            _ => 1,
        };
        let mut writer = encoder.write_header().expect("header");
        writer
            .write_image_data(&vec![128u8; (width * height) as usize * channels])
            .expect("data");
    }
    out
}

/// A JPEG header (SOI, APP0, SOF0) that says `width`x`height`: enough for the header check.
fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    b.extend_from_slice(b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00");
    b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&width.to_be_bytes());
    b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
    b
}

/// An extended WebP header (VP8X), with the alpha flag or not.
fn webp(width: u32, height: u32, alpha: bool) -> Vec<u8> {
    let mut b = b"RIFF\x16\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
    b.push(if alpha { 0x10 } else { 0 });
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    b.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    b
}

fn limits() -> EditLimits {
    EditLimits::default()
}

#[test]
fn formats_are_told_by_their_headers() {
    let p = inspect(Part::Image(0), &png(8, 6, png::ColorType::Rgb), &limits()).expect("png");
    assert_eq!(
        (p.format, p.width, p.height, p.alpha),
        (InputFormat::Png, 8, 6, false)
    );
    let p = inspect(Part::Image(0), &png(8, 6, png::ColorType::Rgba), &limits()).expect("png");
    assert!(p.alpha);
    let j = inspect(Part::Image(1), &jpeg(640, 480), &limits()).expect("jpeg");
    assert_eq!(
        (j.format, j.width, j.height, j.alpha),
        (InputFormat::Jpeg, 640, 480, false)
    );
    let w = inspect(Part::Image(2), &webp(300, 200, true), &limits()).expect("webp");
    assert_eq!(
        (w.format, w.width, w.height, w.alpha),
        (InputFormat::Webp, 300, 200, true)
    );
}

#[test]
fn a_text_file_or_a_broken_image_is_refused_naming_the_part() {
    let e = inspect(Part::Image(1), b"just some text, named cat.png", &limits()).expect_err("text");
    assert_eq!(
        e,
        EditInputError::UnsupportedFormat {
            part: Part::Image(1)
        }
    );
    assert!(e.to_string().starts_with("image[1] is not a PNG"), "{e}");
    let mut truncated = png(8, 8, png::ColorType::Rgb);
    truncated.truncate(20);
    let e = inspect(Part::Mask, &truncated, &limits()).expect_err("truncated");
    assert!(
        matches!(
            e,
            EditInputError::Corrupt {
                part: Part::Mask,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.part().as_deref(), Some("mask"));
    let e = inspect(Part::Image(0), b"", &limits()).expect_err("empty");
    assert_eq!(
        e,
        EditInputError::Empty {
            part: Part::Image(0)
        }
    );
}

#[test]
fn byte_and_pixel_limits_hold() {
    let small = EditLimits {
        max_image_bytes: 100,
        max_request_bytes: 150,
        max_pixels: 64 * 64,
    };
    let big = png(64, 64, png::ColorType::Rgb);
    assert!(big.len() > 100);
    let e = inspect(Part::Image(0), &big, &small).expect_err("too large");
    assert!(e.too_large(), "{e}");
    let e = inspect(Part::Image(0), &jpeg(65, 64), &small).expect_err("pixels");
    assert!(
        matches!(e, EditInputError::TooManyPixels { width: 65, .. }),
        "{e}"
    );
    let gpt = Catalogue::builtin()
        .get("gpt-image-2")
        .expect("gpt")
        .clone();
    let one = jpeg(64, 64);
    let one: &[u8] = &one;
    let e = check_inputs(&gpt, &[one; 7], None, &small).expect_err("total");
    assert!(
        matches!(e, EditInputError::RequestTooLarge { .. }) && e.too_large(),
        "{e}"
    );
}

#[test]
fn the_mask_is_a_png_with_alpha_of_the_first_images_size() {
    let gpt = Catalogue::builtin()
        .get("gpt-image-2")
        .expect("gpt")
        .clone();
    let image = png(32, 24, png::ColorType::Rgb);
    let image: &[u8] = &image;
    let good = png(32, 24, png::ColorType::Rgba);
    let (images, mask) = check_inputs(&gpt, &[image], Some(&good), &limits()).expect("ok");
    assert_eq!(images.len(), 1);
    assert!(mask.is_some_and(|m| m.alpha));
    let e = check_inputs(
        &gpt,
        &[image],
        Some(&png(24, 32, png::ColorType::Rgba)),
        &limits(),
    )
    .expect_err("size");
    assert!(
        e.to_string()
            .contains("mask is 24x32 but image[0] is 32x24"),
        "{e}"
    );
    let e = check_inputs(
        &gpt,
        &[image],
        Some(&png(32, 24, png::ColorType::Rgb)),
        &limits(),
    )
    .expect_err("alpha");
    assert_eq!(e, EditInputError::MaskWithoutAlpha);
    let e = check_inputs(&gpt, &[image], Some(&webp(32, 24, true)), &limits()).expect_err("webp");
    assert_eq!(e, EditInputError::MaskNotPng);
}

#[test]
fn the_count_and_the_mask_follow_the_models_edit_table() {
    let c = Catalogue::builtin();
    let one = jpeg(64, 64);
    let one: &[u8] = &one;
    let kontext = c.get("flux-kontext-pro").expect("kontext");
    check_inputs(kontext, &[one, one], None, &limits()).expect("two references");
    let e = check_inputs(kontext, &[one; 5], None, &limits()).expect_err("five");
    assert!(
        e.to_string().contains("at most 4 input images, got 5"),
        "{e}"
    );
    assert_eq!(e.part().as_deref(), Some("image"));
    let mask = png(64, 64, png::ColorType::Rgba);
    let e = check_inputs(kontext, &[one], Some(&mask), &limits()).expect_err("mask");
    assert!(matches!(e, EditInputError::MaskNotSupported { .. }), "{e}");
    let e = check_inputs(
        c.get("flux-schnell").expect("schnell"),
        &[one],
        None,
        &limits(),
    )
    .expect_err("no edits");
    assert!(matches!(e, EditInputError::ModelDoesNotEdit { .. }), "{e}");
    let e = check_inputs(kontext, &[], None, &limits()).expect_err("none");
    assert_eq!(e, EditInputError::NoImages);
    let gpt = c.get("gpt-image-2").expect("gpt");
    check_inputs(gpt, &[one; 16], None, &limits()).expect("sixteen");
    assert!(check_count(gpt, 17, true).is_err());
}
