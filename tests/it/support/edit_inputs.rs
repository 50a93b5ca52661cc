//! Edit inputs as a client sends them: PNG pictures and masks, multipart bodies, and the emulator's record of what
//! each provider call received (`GET /emulator/edits`: the sha256 of every image and mask).

use super::{Reply, Stack};

const BOUNDARY: &str = "imagegen-edit-test-boundary";

/// A `w`x`h` PNG filled with `fill` (RGBA when `alpha`, else RGB): inputs of other fills are other bytes.
pub fn filled_png(w: u32, h: u32, alpha: bool, fill: u8) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(if alpha {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("png header");
        let channels = if alpha { 4 } else { 3 };
        writer
            .write_image_data(&vec![fill; (w * h * channels) as usize])
            .expect("png data");
    }
    out
}

/// A mid-grey `w`x`h` PNG.
pub fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    filled_png(w, h, alpha, 128)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A multipart body: `files` as (part name, file name, bytes), then text `fields`.
pub fn multipart(files: &[(&str, &str, Vec<u8>)], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, bytes) in files {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                 Content-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in fields {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

impl Stack {
    /// POSTs a [`multipart`] body to `path` with `headers`.
    pub async fn post_multipart(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .http
            .post(self.url(path))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("request")).await
    }

    /// Every edit call the emulator received, oldest first.
    pub async fn emulator_edits(&self) -> Vec<serde_json::Value> {
        let edits: serde_json::Value = self
            .http
            .get(format!("{}/emulator/edits", self.emulator))
            .send()
            .await
            .expect("emulator edits")
            .json()
            .await
            .expect("edits json");
        edits.as_array().expect("a list").clone()
    }
}
