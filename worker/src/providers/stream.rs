//! The Images API's event stream (`stream: true` with `partial_images`): `image_generation.partial_image` events
//! go on to the job's listeners as they arrive (`PartialSink`), and the `image_generation.completed` events make
//! the same answer a plain call would (pictures, summed `usage`, echoed options). Read with a cap counted as it
//! streams in, like every provider answer.

use super::images_api::{ImageItemMeta, ParsedImages, sum_usage};
use super::{GeneratedImage, ImageSource, ProviderError};
use bytes::BytesMut;
use serde_json::Value;

/// A partial picture as the provider streamed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialPicture {
    /// Which picture of the call (0-based): the number of pictures completed before it.
    pub image_index: u32,
    pub partial_image_index: u32,
    pub b64_json: String,
}

/// Where partial pictures go while a call streams (best effort: a full channel drops a frame, never the call).
pub type PartialSink = tokio::sync::mpsc::Sender<PartialPicture>;

/// Reads the event stream of a 200 answer expecting `expected` pictures, at most `cap` in all (partials count).
pub async fn read_image_events(
    label: &str,
    mut response: reqwest::Response,
    cap: super::http::AnswerCap,
    expected: u8,
    sink: &PartialSink,
) -> Result<ParsedImages, ProviderError> {
    let limit = cap.bytes();
    let mut buffer = BytesMut::new();
    let mut read = 0usize;
    let mut state = Events::default();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| super::http::transport_error(label, &e))?
    {
        read += chunk.len();
        if read > limit {
            return Err(cap.exceeded(label, 200));
        }
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_event_end(&buffer) {
            let block = buffer.split_to(end.0);
            let _ = buffer.split_to(end.1);
            state.take(label, &block, sink)?;
        }
    }
    if !buffer.iter().all(u8::is_ascii_whitespace) {
        let block = buffer.split();
        state.take(label, &block, sink)?;
    }
    state.finish(label, expected)
}

/// The end of the first event in `buffer`: (its length, the separator's length).
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[derive(Default)]
struct Events {
    pictures: Vec<GeneratedImage>,
    usages: Vec<Value>,
    echoed: Value,
}

impl Events {
    /// One event block: `event:` and `data:` lines (data lines joined).
    fn take(&mut self, label: &str, block: &[u8], sink: &PartialSink) -> Result<(), ProviderError> {
        let text = String::from_utf8_lossy(block);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let event: Value = serde_json::from_str(&data).map_err(|e| {
            ProviderError::invalid_response(
                label,
                200,
                format_args!("with an unreadable event: {e}"),
            )
        })?;
        match event.get("type").and_then(Value::as_str) {
            Some("image_generation.partial_image") => {
                if let Some(b64) = event.get("b64_json").and_then(Value::as_str) {
                    let partial = PartialPicture {
                        image_index: u32::try_from(self.pictures.len()).unwrap_or(u32::MAX),
                        partial_image_index: event
                            .get("partial_image_index")
                            .and_then(Value::as_u64)
                            .and_then(|i| u32::try_from(i).ok())
                            .unwrap_or(0),
                        b64_json: b64.to_owned(),
                    };
                    let _ = sink.try_send(partial);
                }
            }
            Some("image_generation.completed") => {
                let b64 = event
                    .get("b64_json")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ProviderError::invalid_response(
                            label,
                            200,
                            "a completed event without b64_json",
                        )
                    })?;
                self.pictures.push(GeneratedImage {
                    source: ImageSource::Base64(b64.to_owned()),
                    revised_prompt: event
                        .get("revised_prompt")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    seed: None,
                });
                if let Some(usage) = event.get("usage").filter(|u| !u.is_null()) {
                    self.usages.push(usage.clone());
                }
                self.echoed = serde_json::json!({
                    "size": event.get("size"),
                    "quality": event.get("quality"),
                    "background": event.get("background"),
                    "output_format": event.get("output_format"),
                });
            }
            Some("error") | None if event.get("error").is_some() => {
                let message = event["error"]
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("an error event");
                return Err(ProviderError::Retryable {
                    status: Some(200),
                    code: event["error"]
                        .get("code")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    message: format!("{label} streamed an error: {message}"),
                    retry_after: None,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self, label: &str, expected: u8) -> Result<ParsedImages, ProviderError> {
        if self.pictures.len() != usize::from(expected) {
            return Err(ProviderError::invalid_response(
                label,
                200,
                format_args!("a stream with {} of {expected} images", self.pictures.len()),
            ));
        }
        Ok(ParsedImages {
            items: self
                .pictures
                .into_iter()
                .map(|p| {
                    (
                        p,
                        ImageItemMeta {
                            prompt_filter_results: None,
                            content_filter_results: None,
                        },
                    )
                })
                .collect(),
            usage: sum_usage(self.usages.iter()),
            echoed: self.echoed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_either_way() {
        assert_eq!(find_event_end(b"event: a\ndata: {}\n\nrest"), Some((17, 2)));
        assert_eq!(find_event_end(b"data: {}\r\n\r\n"), Some((8, 4)));
        assert_eq!(find_event_end(b"data: {"), None);
    }

    #[tokio::test]
    async fn partials_go_to_the_sink_and_completed_pictures_make_the_answer() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let mut events = Events::default();
        let partial = br#"event: image_generation.partial_image
data: {"type":"image_generation.partial_image","b64_json":"AAA","partial_image_index":1}"#;
        let done = br#"event: image_generation.completed
data: {"type":"image_generation.completed","b64_json":"BBB","size":"1024x1024","quality":"low","usage":{"input_tokens":1,"output_tokens":272,"total_tokens":273}}"#;
        events.take("T", partial, &tx).expect("partial");
        events.take("T", done, &tx).expect("completed");
        let frame = rx.try_recv().expect("a frame");
        assert_eq!(
            (
                frame.image_index,
                frame.partial_image_index,
                frame.b64_json.as_str()
            ),
            (0, 1, "AAA")
        );
        let parsed = events.finish("T", 1).expect("one picture");
        assert_eq!(parsed.usage.expect("usage")["output_tokens"], 272);
        assert_eq!(parsed.echoed["quality"], "low");
        let mut short = Events::default();
        short.take("T", done, &tx).expect("completed");
        assert!(
            short.finish("T", 2).is_err(),
            "one of two pictures is not an answer"
        );
    }
}
