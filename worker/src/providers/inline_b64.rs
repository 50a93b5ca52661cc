//! Pictures decoded while the answer is read. An Images API answer is JSON whose `b64_json` strings carry the
//! pictures (4 MiB of PNG is 5.6 MiB of base64); holding the body, the JSON string and the decoded bytes together
//! costs 2.7x the picture. [`B64FieldReader`] takes the body chunk by chunk, decodes every `"b64_json": "..."` value
//! as it goes (hashing the bytes too), and keeps only the rest of the JSON (the skeleton: ids, `usage`, revised
//! prompts, urls), with each picture replaced by `"#<index>"`, for serde to parse as before.

use crate::picture_memory::PictureHold;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// The key whose string values are decoded on the fly.
const FIELD: &[u8] = b"b64_json";
/// Base64 characters gathered before a block is decoded (a multiple of 4).
const BLOCK: usize = 16 * 1024;

/// A picture decoded from an answer, with the SHA-256 of its bytes.
#[derive(Clone)]
pub struct InlineImage {
    pub bytes: Bytes,
    pub sha256: [u8; 32],
    /// Its share of WORKER_PICTURE_MEMORY_MB, given back when the last copy is dropped (after it is stored).
    pub hold: Option<PictureHold>,
}

impl std::fmt::Debug for InlineImage {
    // The bytes are megabytes: say how many, not what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineImage")
            .field("bytes", &self.bytes.len())
            .field("sha256", &hex::encode(self.sha256))
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("invalid base64 in picture {index}: {why}")]
    InvalidBase64 { index: usize, why: String },
    #[error("picture {index} is {bytes} bytes, larger than MAX_IMAGE_BYTES ({max} bytes)")]
    TooLarge { index: usize, bytes: u64, max: u64 },
    #[error("a body that ends inside a string")]
    Truncated,
}

/// The answer without its pictures, and the pictures in the order they appeared.
pub struct Extracted {
    /// The JSON with every decoded `b64_json` value replaced by `"#<index into images>"`.
    pub skeleton: Vec<u8>,
    pub images: Vec<InlineImage>,
}

/// Resolves a `b64_json` value of the skeleton to its picture's index (`"#3"` -> 3); `None` for a value that was
/// left in place (base64 never holds `#`).
pub fn placeholder_index(value: &str) -> Option<usize> {
    value.strip_prefix('#')?.parse().ok()
}

/// Where the reader is in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside strings.
    Outside,
    /// Inside a string other than a picture; `escaped` after a backslash.
    InString { escaped: bool },
    /// Just after the string `"b64_json"`: a `:` makes it a key.
    AfterKey,
    /// After `"b64_json":`: a `"` starts a picture.
    AfterColon,
    /// Inside a picture's string.
    InPicture,
    /// After a backslash inside a picture.
    PictureEscape,
    /// Inside `\uXXXX` in a picture: the hex digits read so far and their value.
    PictureUnicode { digits: u8, value: u32 },
}

/// The picture being decoded.
struct Picture {
    out: BytesMut,
    hash: Sha256,
    /// Base64 characters not decoded yet.
    pending: Vec<u8>,
    /// `=` characters seen; nothing but `=` may follow one.
    padding: usize,
    /// Base64 characters seen, padding aside: the picture's size once it has passed the limit.
    chars: u64,
    /// Past MAX_IMAGE_BYTES: the rest is only counted (to say how large it was), never decoded or kept.
    over: bool,
}

/// Reads an answer chunk by chunk (see the module's comment). `max_image_bytes` bounds each picture.
pub struct B64FieldReader {
    state: State,
    skeleton: Vec<u8>,
    /// The content of the current string, as far as it can still be `b64_json`.
    key: Vec<u8>,
    picture: Option<Picture>,
    images: Vec<InlineImage>,
    max_image_bytes: u64,
    /// A capacity hint for the next picture (from the answer's Content-Length).
    size_hint: usize,
    /// The answer's memory reservation, shared by its pictures.
    hold: Option<PictureHold>,
}

impl B64FieldReader {
    pub fn new(max_image_bytes: u64) -> Self {
        Self {
            state: State::Outside,
            skeleton: Vec::new(),
            key: Vec::with_capacity(FIELD.len()),
            picture: None,
            images: Vec::new(),
            max_image_bytes,
            size_hint: 0,
            hold: None,
        }
    }

    /// The memory reserved for this answer's pictures, kept by each until it is dropped.
    pub fn with_hold(mut self, hold: PictureHold) -> Self {
        self.hold = Some(hold);
        self
    }

    /// Sizes the first picture's buffer from the answer's length (bounded by MAX_IMAGE_BYTES), so that it is not
    /// grown by copying.
    pub fn with_length_hint(mut self, body_bytes: Option<u64>) -> Self {
        let decoded = body_bytes.unwrap_or(0) / 4 * 3;
        self.size_hint = usize::try_from(decoded.min(self.max_image_bytes)).unwrap_or(0);
        self
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ExtractError> {
        let mut i = 0;
        while i < chunk.len() {
            if self.state == State::InPicture {
                // The hot path: runs of base64 characters go straight to the pending block.
                let run = chunk[i..]
                    .iter()
                    .position(|b| !is_b64_char(*b))
                    .unwrap_or(chunk.len() - i);
                if run > 0 {
                    self.picture_run(&chunk[i..i + run])?;
                    i += run;
                    continue;
                }
            }
            self.byte(chunk[i])?;
            i += 1;
        }
        Ok(())
    }

    /// The skeleton and the pictures; a body that stops inside a string is truncated (one that stops elsewhere is
    /// caught by the JSON parser).
    pub fn finish(self) -> Result<Extracted, ExtractError> {
        match self.state {
            State::Outside | State::AfterKey | State::AfterColon => Ok(Extracted {
                skeleton: self.skeleton,
                images: self.images,
            }),
            _ => Err(ExtractError::Truncated),
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), ExtractError> {
        match self.state {
            State::Outside => {
                if b == b'"' {
                    self.key.clear();
                    self.state = State::InString { escaped: false };
                }
                self.skeleton.push(b);
            }
            State::InString { escaped } => {
                self.skeleton.push(b);
                if escaped {
                    self.key.push(0); // an escaped key is not FIELD: it stays in the skeleton
                    self.state = State::InString { escaped: false };
                } else if b == b'\\' {
                    self.state = State::InString { escaped: true };
                } else if b == b'"' {
                    self.state = if self.key == FIELD {
                        State::AfterKey
                    } else {
                        State::Outside
                    };
                } else if self.key.len() <= FIELD.len() {
                    self.key.push(b);
                }
            }
            State::AfterKey | State::AfterColon if b.is_ascii_whitespace() => self.skeleton.push(b),
            State::AfterKey if b == b':' => {
                self.skeleton.push(b);
                self.state = State::AfterColon;
            }
            State::AfterColon if b == b'"' => {
                self.skeleton
                    .extend_from_slice(format!("\"#{}", self.images.len()).as_bytes());
                self.picture = Some(Picture {
                    out: BytesMut::with_capacity(std::mem::take(&mut self.size_hint)),
                    hash: Sha256::new(),
                    pending: Vec::with_capacity(BLOCK),
                    padding: 0,
                    chars: 0,
                    over: false,
                });
                self.state = State::InPicture;
            }
            State::AfterKey | State::AfterColon => {
                // A value, not a key, or a key whose value is not a string (`null`): nothing to decode.
                self.state = State::Outside;
                return self.byte(b);
            }
            State::InPicture => match b {
                b'"' => {
                    self.end_picture()?;
                    self.skeleton.push(b'"');
                    self.state = State::Outside;
                }
                b'\\' => self.state = State::PictureEscape,
                // Line breaks some encoders put in base64 (and spaces) carry nothing.
                b if b.is_ascii_whitespace() => {}
                b'=' => self.picture_chars(&[b])?,
                other => return Err(self.invalid(format!("unexpected byte 0x{other:02x}"))),
            },
            State::PictureEscape => {
                self.state = State::InPicture;
                match b {
                    // JSON may escape `/` (PHP's json_encode does).
                    b'/' => self.picture_chars(b"/")?,
                    b'n' | b'r' | b't' => {}
                    b'u' => {
                        self.state = State::PictureUnicode {
                            digits: 0,
                            value: 0,
                        }
                    }
                    other => {
                        return Err(self.invalid(format!("unexpected escape \\{}", other as char)));
                    }
                }
            }
            State::PictureUnicode { digits, value } => {
                let digit = (b as char)
                    .to_digit(16)
                    .ok_or_else(|| self.invalid("a bad \\u escape".into()))?;
                let value = value * 16 + digit;
                if digits < 3 {
                    self.state = State::PictureUnicode {
                        digits: digits + 1,
                        value,
                    };
                } else {
                    self.state = State::InPicture;
                    let c = u8::try_from(value)
                        .ok()
                        .filter(u8::is_ascii)
                        .ok_or_else(|| self.invalid(format!("unexpected \\u{value:04x}")))?;
                    match c {
                        c if c.is_ascii_whitespace() => {}
                        c if is_b64_char(c) || c == b'=' => self.picture_chars(&[c])?,
                        c => return Err(self.invalid(format!("unexpected byte 0x{c:02x}"))),
                    }
                }
            }
        }
        Ok(())
    }

    fn invalid(&self, why: String) -> ExtractError {
        ExtractError::InvalidBase64 {
            index: self.images.len(),
            why,
        }
    }

    /// Adds base64 characters (alphabet or `=`) to the current picture, decoding whole blocks as they fill.
    fn picture_chars(&mut self, chars: &[u8]) -> Result<(), ExtractError> {
        let index = self.images.len();
        let max = self.max_image_bytes;
        let Some(p) = self.picture.as_mut() else {
            return Ok(());
        };
        for &c in chars {
            if c == b'=' {
                p.padding += 1;
            } else if p.padding > 0 {
                return Err(ExtractError::InvalidBase64 {
                    index,
                    why: "data after padding".into(),
                });
            } else {
                p.chars += 1;
            }
            if p.over {
                continue;
            }
            p.pending.push(c);
            // Padding only ever ends the picture: blocks are decoded from whole groups without it.
            if p.pending.len() >= BLOCK && p.padding == 0 {
                decode_block(p, index, max)?;
            }
        }
        Ok(())
    }

    /// Adds a run of alphabet characters (no `=`) to the current picture: whole groups are decoded straight from
    /// the answer's bytes, only a group split across chunks is copied. The hot path of a picture, where
    /// [`Self::picture_chars`] would copy and check every character.
    fn picture_run(&mut self, mut run: &[u8]) -> Result<(), ExtractError> {
        let index = self.images.len();
        let max = self.max_image_bytes;
        let Some(p) = self.picture.as_mut() else {
            return Ok(());
        };
        if p.padding > 0 {
            return Err(ExtractError::InvalidBase64 {
                index,
                why: "data after padding".into(),
            });
        }
        p.chars += run.len() as u64;
        if p.over {
            return Ok(());
        }
        if !p.pending.is_empty() {
            // Complete the group begun in an earlier chunk (or by an escaped character) first.
            let take = ((4 - p.pending.len() % 4) % 4).min(run.len());
            p.pending.extend_from_slice(&run[..take]);
            run = &run[take..];
            if p.pending.len() % 4 != 0 {
                return Ok(());
            }
            decode_block(p, index, max)?;
            if p.over {
                return Ok(());
            }
        }
        let whole = run.len() / 4 * 4;
        decode_groups(p, &run[..whole], index, max)?;
        if !p.over {
            p.pending.extend_from_slice(&run[whole..]);
        }
        Ok(())
    }

    fn end_picture(&mut self) -> Result<(), ExtractError> {
        let index = self.images.len();
        let Some(mut p) = self.picture.take() else {
            return Ok(());
        };
        if p.padding > 2 || p.pending.len() % 4 != 0 {
            return Err(ExtractError::InvalidBase64 {
                index,
                why: "its length is not a multiple of 4".into(),
            });
        }
        decode_block(&mut p, index, self.max_image_bytes)?;
        if p.over {
            return Err(ExtractError::TooLarge {
                index,
                bytes: p.chars * 6 / 8,
                max: self.max_image_bytes,
            });
        }
        let sha256 = p.hash.finalize().into();
        self.images.push(InlineImage {
            bytes: p.out.freeze(),
            sha256,
            hold: self.hold.clone(),
        });
        Ok(())
    }
}

/// Decodes the whole 4-character groups of `p.pending` onto `p.out` and the hash; the rest stays pending.
fn decode_block(p: &mut Picture, index: usize, max: u64) -> Result<(), ExtractError> {
    let whole = p.pending.len() / 4 * 4;
    if whole == 0 {
        return Ok(());
    }
    let mut pending = std::mem::take(&mut p.pending);
    decode_groups(p, &pending[..whole], index, max)?;
    if !p.over {
        pending.drain(..whole);
        p.pending = pending;
    }
    Ok(())
}

/// Decodes `groups` (whole 4-character groups) onto `p.out` and the hash; past `max`, the picture is only counted
/// from then on.
fn decode_groups(
    p: &mut Picture,
    groups: &[u8],
    index: usize,
    max: u64,
) -> Result<(), ExtractError> {
    if groups.is_empty() {
        return Ok(());
    }
    let room = groups.len() / 4 * 3;
    if (p.out.len() + room - p.padding.min(2)) as u64 > max {
        // Counted from here on, so the error can say how large it was (the answer's cap bounds the reading).
        p.over = true;
        p.out = BytesMut::new();
        p.pending = Vec::new();
        return Ok(());
    }
    let start = p.out.len();
    p.out.resize(start + room, 0);
    let written = base64::engine::general_purpose::STANDARD
        .decode_slice(groups, &mut p.out[start..])
        .map_err(|e| ExtractError::InvalidBase64 {
            index,
            why: e.to_string(),
        })?;
    p.out.truncate(start + written);
    p.hash.update(&p.out[start..]);
    Ok(())
}

/// The base64 alphabet (padding aside), as a table: the run scan looks every byte of a picture up.
const B64_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
        b += 1;
    }
    table
};

fn is_b64_char(b: u8) -> bool {
    B64_ALPHABET[usize::from(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn read(body: &[u8], splits: &[usize], max: u64) -> Result<Extracted, ExtractError> {
        let mut r = B64FieldReader::new(max);
        let mut last = 0;
        for &s in splits {
            r.feed(&body[last..s])?;
            last = s;
        }
        r.feed(&body[last..])?;
        r.finish()
    }

    /// Picture bytes that are not all alike, `n` long.
    fn picture(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn check(extracted: &Extracted, pictures: &[&[u8]]) {
        assert_eq!(extracted.images.len(), pictures.len());
        for (got, want) in extracted.images.iter().zip(pictures) {
            assert_eq!(&got.bytes[..], *want);
            assert_eq!(got.sha256, <[u8; 32]>::from(Sha256::digest(want)));
        }
    }

    #[test]
    fn every_chunk_boundary_gives_the_same_pictures_and_skeleton() {
        let (a, b) = (picture(100, 1), picture(7, 2));
        let body = format!(
            r#"{{"created":1,"data":[{{"b64_json":"{}","revised_prompt":"say \"b64_json\": \\"}},{{"b64_json" : "{}"}}],"usage":{{"total_tokens":5}}}}"#,
            b64(&a),
            b64(&b)
        );
        let whole = read(body.as_bytes(), &[], 1 << 20).expect("whole");
        check(&whole, &[&a, &b]);
        let skeleton: serde_json::Value =
            serde_json::from_slice(&whole.skeleton).expect("skeleton parses");
        assert_eq!(skeleton["data"][0]["b64_json"], "#0");
        assert_eq!(skeleton["data"][1]["b64_json"], "#1");
        assert_eq!(
            skeleton["data"][0]["revised_prompt"],
            "say \"b64_json\": \\"
        );
        assert_eq!(skeleton["usage"]["total_tokens"], 5);
        for split in 0..=body.len() {
            let got = read(body.as_bytes(), &[split], 1 << 20).expect("split");
            check(&got, &[&a, &b]);
            assert_eq!(got.skeleton, whole.skeleton, "split at {split}");
        }
        // And one byte at a time.
        let all: Vec<usize> = (1..body.len()).collect();
        let got = read(body.as_bytes(), &all, 1 << 20).expect("bytewise");
        check(&got, &[&a, &b]);
        assert_eq!(got.skeleton, whole.skeleton);
    }

    #[test]
    fn large_pictures_cross_blocks_with_every_padding() {
        for n in [BLOCK / 4 * 3 - 1, BLOCK / 4 * 3, BLOCK / 4 * 3 + 1, 100_000] {
            let p = picture(n, 9);
            let body = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, b64(&p));
            for split in [1, 17, 4095, BLOCK + 3, body.len() - 3] {
                let got = read(body.as_bytes(), &[split], 1 << 20).expect("large");
                check(&got, &[&p]);
            }
        }
    }

    #[test]
    fn escaped_slashes_whitespace_and_unicode_escapes_are_read() {
        let p = picture(3000, 5);
        let encoded = b64(&p);
        assert!(encoded.contains('/'), "the test needs a slash");
        // Lines of 76 characters (as MIME writes them), each with its slashes and pluses escaped.
        let escaped = encoded
            .as_bytes()
            .chunks(76)
            .map(|line| {
                String::from_utf8_lossy(line)
                    .replace('/', "\\/")
                    .replace('+', "\\u002B")
            })
            .collect::<Vec<_>>()
            .join("\\n");
        let body = format!("{{ \"data\" : [ {{ \"b64_json\"\n:\t\"{escaped}\" }} ] }}");
        for split in 0..body.len() {
            check(
                &read(body.as_bytes(), &[split], 1 << 20).expect("read"),
                &[&p],
            );
        }
    }

    #[test]
    fn values_named_b64_json_and_null_pictures_stay_in_the_skeleton() {
        let body =
            br#"{"response_format":"b64_json","data":[{"b64_json":null,"url":"https://x/a.png"}]}"#;
        let got = read(body, &[], 1 << 20).expect("read");
        assert!(got.images.is_empty());
        assert_eq!(got.skeleton, body.to_vec());
        // A key written with an escape is not recognised: its value stays whole, for the caller to decode.
        let body = br#"{"data":[{"b64\u005fjson":"aGk="}]}"#;
        let got = read(body, &[], 1 << 20).expect("read");
        assert!(got.images.is_empty());
        assert_eq!(got.skeleton, body.to_vec());
        assert_eq!(placeholder_index("#12"), Some(12));
        assert_eq!(placeholder_index("aGk="), None);
    }

    #[test]
    fn invalid_base64_is_refused() {
        for bad in [
            "aGk",        // not a multiple of 4
            "a===",       // too much padding
            "aG=k",       // data after padding
            "aG!k",       // not in the alphabet
            "aGk\\\"",    // an escaped quote
            "aGk\\u00e9", // not ASCII
            "aR==",       // trailing bits set
        ] {
            let body = format!(r#"{{"data":[{{"b64_json":"{bad}"}}]}}"#);
            let err = read(body.as_bytes(), &[], 1 << 20)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                matches!(err, ExtractError::InvalidBase64 { index: 0, .. }),
                "{bad}: {err:?}"
            );
        }
        // Past the first block, too.
        let mut long = b64(&picture(30_000, 1));
        long.insert(BLOCK + 10, '*');
        let body = format!(r#"{{"data":[{{"b64_json":"{long}"}}]}}"#);
        assert!(matches!(
            read(body.as_bytes(), &[], 1 << 20),
            Err(ExtractError::InvalidBase64 { .. })
        ));
    }

    #[test]
    fn truncated_bodies_are_refused() {
        let body = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, b64(&picture(50, 3)));
        let opens_picture = body.find(":\"").expect("picture") + 2;
        for cut in opens_picture..body.len() - 3 {
            assert_eq!(
                read(&body.as_bytes()[..cut], &[], 1 << 20).err(),
                Some(ExtractError::Truncated),
                "cut at {cut}"
            );
        }
        // Cut outside strings, the skeleton is not JSON: the caller's parser says so.
        let got = read(&body.as_bytes()[..body.len() - 2], &[], 1 << 20).expect("skeleton");
        assert!(serde_json::from_slice::<serde_json::Value>(&got.skeleton).is_err());
    }

    #[test]
    fn a_picture_past_max_image_bytes_is_refused_while_reading() {
        let small = picture(1000, 1);
        let body = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, b64(&small));
        check(&read(body.as_bytes(), &[], 1000).expect("fits"), &[&small]);
        assert_eq!(
            read(body.as_bytes(), &[], 999).err(),
            Some(ExtractError::TooLarge {
                index: 0,
                bytes: 1000,
                max: 999
            })
        );
        // A large one is dropped at the first block past the limit and only counted after that.
        let large = picture((1 << 20) + 2, 2);
        let body = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, b64(&large));
        let mut r = B64FieldReader::new(64 * 1024);
        let mut result = Ok(());
        for chunk in body.as_bytes().chunks(4096) {
            result = r.feed(chunk);
            if result.is_err() {
                break;
            }
            // (The buffer grows by doubling; what matters is that it stops near the limit.)
            let held = r.picture.as_ref().map_or(0, |p| p.out.capacity());
            assert!(held <= 2 * (64 * 1024 + BLOCK), "{held} bytes held");
        }
        assert_eq!(
            result.err(),
            Some(ExtractError::TooLarge {
                index: 0,
                bytes: (1 << 20) + 2,
                max: 64 * 1024
            }),
            "refused at the picture's end, with its size"
        );
    }
}
