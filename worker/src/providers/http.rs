//! What every provider client shares: one reqwest client per provider (timeouts, a `User-Agent`), a send that reads
//! the answer with a cap counted while it streams in, the common retry rule for hosts without their own retry
//! header, and transport errors.

use super::ProviderError;
use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;

/// Cap on an error body we read; its start is kept for the message and the rest is never read, so a misbehaving
/// server cannot make us buffer megabytes of HTML.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// Cap on a short JSON answer (BFL's submission and poll answers are a few hundred bytes).
pub const MAX_SHORT_ANSWER: usize = 64 * 1024;
/// Room an image answer gets besides its pictures' base64: ids, `usage`, echoed options.
pub const ANSWER_ALLOWANCE: u64 = 64 * 1024;
/// Room per picture besides its base64: a revised prompt (escaped), Azure's filter annotations.
pub const PICTURE_ALLOWANCE: u64 = 64 * 1024;

/// How much of a 200 answer is read before the call is given up, and what giving up says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerCap {
    /// An answer that may carry `pictures` base64 pictures of at most `max_image_bytes` (MAX_IMAGE_BYTES) each.
    Images { pictures: u8, max_image_bytes: u64 },
    /// A short JSON answer: a submission, a poll.
    Short,
}

impl AnswerCap {
    pub fn images(pictures: u8, max_image_bytes: u64) -> Self {
        AnswerCap::Images {
            pictures: pictures.max(1),
            max_image_bytes,
        }
    }

    /// The most bytes read: base64 takes 4 characters per 3 bytes, so `pictures` pictures of `max_image_bytes`
    /// and the JSON around them.
    pub fn bytes(self) -> usize {
        match self {
            AnswerCap::Images {
                pictures,
                max_image_bytes,
            } => {
                let base64 = max_image_bytes.div_ceil(3).saturating_mul(4);
                let total = base64
                    .saturating_add(PICTURE_ALLOWANCE)
                    .saturating_mul(u64::from(pictures.max(1)))
                    .saturating_add(ANSWER_ALLOWANCE);
                usize::try_from(total).unwrap_or(usize::MAX)
            }
            AnswerCap::Short => MAX_SHORT_ANSWER,
        }
    }

    /// The failure when a 200 answer passes the cap: final, since asking again would pay again for the same answer.
    pub fn exceeded(self, label: &str, status: u16) -> ProviderError {
        let cap = self.bytes();
        match self {
            AnswerCap::Images {
                pictures,
                max_image_bytes,
            } => ProviderError::Final {
                status: Some(status),
                code: Some("image_too_large".into()),
                message: format!(
                    "{label}'s answer is larger than {pictures} picture(s) within MAX_IMAGE_BYTES \
                     ({max_image_bytes} bytes each) can be (over {cap} bytes with base64 and JSON); \
                     reading stopped there"
                ),
            },
            AnswerCap::Short => ProviderError::Final {
                status: Some(status),
                code: Some("answer_too_large".into()),
                message: format!(
                    "{label} answered more than {cap} bytes where a short JSON answer was expected; \
                     the answer was not read further"
                ),
            },
        }
    }
}

/// The HTTP client every provider uses: a timeout on the whole call, a shorter one on connecting, and a
/// `User-Agent` (some CDNs refuse a blank one).
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("imagegen/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends a provider call and reads its answer, counting while it streams in: a 200 up to `cap` (past it the call
/// fails with `cap.exceeded`, final, and nothing more is read), any other status up to `MAX_ERROR_BODY` (the start
/// is kept for the error message). Transport failures are classified retryable.
pub async fn send(
    label: &str,
    request: reqwest::RequestBuilder,
    cap: AnswerCap,
) -> Result<(u16, HeaderMap, Bytes), ProviderError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(label, &e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if status != 200 {
        let (body, _) = read_capped(label, &mut response, MAX_ERROR_BODY).await?;
        return Ok((status, headers, body));
    }
    let limit = cap.bytes();
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(cap.exceeded(label, status));
    }
    match read_capped(label, &mut response, limit).await? {
        (body, true) => Ok((status, headers, body)),
        (_, false) => Err(cap.exceeded(label, status)),
    }
}

/// An answer as read: its body (an error, or a 200 to parse), or already parsed while it streamed in.
pub enum Answer<T = super::images_api::ParsedImages> {
    Body(Bytes),
    Parsed(T),
}

/// Sends a provider call whose 200 answer is a stream `read` consumes (bounding it itself); any other status is read
/// as by `send`, up to `MAX_ERROR_BODY`.
pub async fn send_streaming<T, F, Fut>(
    label: &str,
    request: reqwest::RequestBuilder,
    read: F,
) -> Result<(u16, HeaderMap, Answer<T>), ProviderError>
where
    F: FnOnce(reqwest::Response) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(label, &e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if status != 200 {
        let (body, _) = read_capped(label, &mut response, MAX_ERROR_BODY).await?;
        return Ok((status, headers, Answer::Body(body)));
    }
    let parsed = read(response).await?;
    Ok((status, headers, Answer::Parsed(parsed)))
}

/// Reads at most `limit` bytes of `response`, chunk by chunk; `false` when the body went on past `limit` (what
/// fitted is returned, the rest is never read: dropping the response closes the connection).
pub async fn read_capped(
    label: &str,
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Bytes, bool), ProviderError> {
    let expected = response
        .content_length()
        .map_or(0, |len| usize::try_from(len).unwrap_or(usize::MAX))
        .min(limit);
    let mut body = BytesMut::with_capacity(expected);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(label, &e))?
    {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body.freeze(), false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), true))
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The common rule for hosts without their own retry header: 408, 429 and 5xx are worth another attempt.
pub fn classified(
    status: u16,
    code: Option<String>,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> ProviderError {
    if matches!(status, 408 | 429) || status >= 500 {
        ProviderError::Retryable {
            status: Some(status),
            code,
            message,
            retry_after,
        }
    } else {
        ProviderError::Final {
            status: Some(status),
            code,
            message,
        }
    }
}

pub fn transport_error(label: &str, e: &reqwest::Error) -> ProviderError {
    let message = if e.is_timeout() {
        format!("{label} did not answer in time")
    } else if e.is_connect() {
        format!("could not connect to {label}")
    } else {
        format!("{label} request failed: {e}")
    };
    ProviderError::Retryable {
        status: None,
        code: Some("network_error".into()),
        message,
        retry_after: None,
    }
}

/// `base` with a trailing slash, so joining a relative path keeps its last segment (`/v1`).
pub fn as_directory(base: &url::Url) -> url::Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base
}

/// Milliseconds since `started`, for provider metadata.
pub fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    const MIB: u64 = 1024 * 1024;

    /// What a test server sent, counted as each chunk leaves, and whether it has stopped (done or hung up on).
    #[derive(Default)]
    struct Sent {
        bytes: AtomicU64,
        stopped: AtomicBool,
    }

    struct StopGuard(Arc<Sent>);

    impl Drop for StopGuard {
        fn drop(&mut self) {
            self.0.stopped.store(true, Ordering::SeqCst);
        }
    }

    impl Sent {
        /// Waits until the body's stream was dropped (the client hung up or it ended); the bytes sent by then.
        async fn after_stop(&self) -> u64 {
            for _ in 0..200 {
                if self.stopped.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                self.stopped.load(Ordering::SeqCst),
                "the server is still sending"
            );
            self.bytes.load(Ordering::SeqCst)
        }
    }

    /// A body of `prefix` and then `total` bytes of `A`, streamed in 64 KiB chunks with no length announced.
    fn streamed(prefix: &'static str, total: u64, sent: Arc<Sent>) -> axum::body::Body {
        let chunk = Bytes::from(vec![b'A'; 64 * 1024]);
        let first = Bytes::from_static(prefix.as_bytes());
        let stream = futures::stream::unfold(
            (0u64, Some(first), StopGuard(sent)),
            move |(done, first, guard)| {
                let chunk = chunk.clone();
                async move {
                    let next = match first {
                        Some(first) => first,
                        None if done < total => chunk,
                        None => return None,
                    };
                    guard.0.bytes.fetch_add(next.len() as u64, Ordering::SeqCst);
                    let done = done + next.len() as u64;
                    Some((Ok::<_, std::convert::Infallible>(next), (done, None, guard)))
                }
            },
        );
        axum::body::Body::from_stream(stream)
    }

    /// Serves `app` on 127.0.0.1; its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A server answering `status` with a 200 MiB body (the start of an Images API answer).
    async fn huge_answer(status: u16) -> (String, Arc<Sent>) {
        let sent = Arc::new(Sent::default());
        let app = axum::Router::new().route(
            "/",
            axum::routing::post({
                let sent = sent.clone();
                move || {
                    let sent = sent.clone();
                    async move {
                        axum::response::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(streamed(r#"{"data":[{"b64_json":""#, 200 * MIB, sent))
                            .expect("response")
                    }
                }
            }),
        );
        (serve(app).await, sent)
    }

    #[test]
    fn image_caps_follow_max_image_bytes_in_base64() {
        assert_eq!(
            AnswerCap::images(1, 3).bytes() as u64,
            4 + PICTURE_ALLOWANCE + ANSWER_ALLOWANCE
        );
        let four = AnswerCap::images(4, 32 * MIB).bytes() as u64;
        assert_eq!(
            four,
            4 * ((32 * MIB).div_ceil(3) * 4 + PICTURE_ALLOWANCE) + ANSWER_ALLOWANCE
        );
        assert!(four < 4 * 43 * MIB, "{four}");
        assert_eq!(AnswerCap::images(0, 3), AnswerCap::images(1, 3));
        assert_eq!(AnswerCap::Short.bytes(), MAX_SHORT_ANSWER);
        assert_eq!(
            AnswerCap::images(u8::MAX, u64::MAX).bytes(),
            usize::MAX,
            "saturates"
        );
    }

    /// A 200 far past its cap: the read stops there, so this side holds at most the cap, the server was hung up on
    /// long before its 200 MiB, and the call fails for good, naming MAX_IMAGE_BYTES.
    #[tokio::test]
    async fn an_image_answer_past_its_cap_stops_being_read_there() {
        let (url, sent) = huge_answer(200).await;
        let cap = AnswerCap::images(1, MIB);
        let client = http_client(Duration::from_secs(30)).expect("client");
        let err = send("Test host", client.post(&url), cap)
            .await
            .expect_err("too large");
        match &err {
            ProviderError::Final {
                status: Some(200),
                code: Some(code),
                message,
            } => {
                assert_eq!(code, "image_too_large");
                assert!(message.contains("MAX_IMAGE_BYTES"), "{message}");
            }
            other => panic!("expected a final failure, got {other:?}"),
        }
        let sent = sent.after_stop().await;
        // What the server got out before the hang-up: the cap plus what socket buffers hold.
        assert!(
            sent < cap.bytes() as u64 + 16 * MIB,
            "{sent} bytes sent for a cap of {}",
            cap.bytes()
        );
    }

    #[tokio::test]
    async fn a_short_answer_past_its_cap_fails_for_good() {
        let (url, sent) = huge_answer(200).await;
        let client = http_client(Duration::from_secs(30)).expect("client");
        let err = send("Test host", client.post(&url), AnswerCap::Short)
            .await
            .expect_err("too large");
        assert_eq!(err.code(), Some("answer_too_large"), "{err:?}");
        assert!(matches!(err, ProviderError::Final { .. }));
        assert!(sent.after_stop().await < 16 * MIB);
    }

    /// An error answer keeps its first MAX_ERROR_BODY bytes for the message and is not read further.
    #[tokio::test]
    async fn an_error_answer_is_read_up_to_max_error_body() {
        let (url, sent) = huge_answer(500).await;
        let client = http_client(Duration::from_secs(30)).expect("client");
        let (status, _, body) = send("Test host", client.post(&url), AnswerCap::images(1, MIB))
            .await
            .expect("an error answer");
        assert_eq!((status, body.len()), (500, MAX_ERROR_BODY));
        assert!(body.starts_with(br#"{"data":[{"b64_json":"AAAA"#));
        assert!(sent.after_stop().await < 16 * MIB);
    }

    /// A declared length past the cap is refused before a byte of the body is read.
    #[tokio::test]
    async fn a_declared_length_past_the_cap_is_refused_at_once() {
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(|| async { vec![b'A'; 200 * 1024] }),
        );
        let url = serve(app).await;
        let client = http_client(Duration::from_secs(30)).expect("client");
        let err = send("Test host", client.post(&url), AnswerCap::Short)
            .await
            .expect_err("too large");
        assert_eq!(err.code(), Some("answer_too_large"));
    }

    #[tokio::test]
    async fn answers_within_their_cap_are_read_whole() {
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(|| async { vec![b'A'; MAX_SHORT_ANSWER] }),
        );
        let url = serve(app).await;
        let client = http_client(Duration::from_secs(30)).expect("client");
        let (status, _, body) = send("Test host", client.post(&url), AnswerCap::Short)
            .await
            .expect("read");
        assert_eq!((status, body.len()), (200, MAX_SHORT_ANSWER));
        let sent = Arc::new(Sent::default());
        let app = axum::Router::new().route(
            "/",
            axum::routing::post({
                let sent = sent.clone();
                move || {
                    let sent = sent.clone();
                    async move { streamed("", 3 * 64 * 1024, sent) }
                }
            }),
        );
        let url = serve(app).await;
        let (_, _, body) = send("Test host", client.post(&url), AnswerCap::images(1, MIB))
            .await
            .expect("read");
        assert_eq!(body.len(), 3 * 64 * 1024);
    }
}
