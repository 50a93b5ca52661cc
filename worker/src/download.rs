//! Downloads of provider result URLs: only to the provider's hosts (an allow-list), over http(s), with a size cap
//! and a timeout, and never following redirects to somewhere else.

use crate::picture_memory::PictureMemory;
use crate::providers::inline_b64::InlineImage;
use bytes::BytesMut;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::time::Duration;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("result URL is not allowed: {0}")]
    NotAllowed(String),
    #[error("result URL answered HTTP {0}")]
    Status(u16),
    #[error("result image is larger than MAX_IMAGE_BYTES ({0} bytes)")]
    TooLarge(u64),
    #[error("downloading the result failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl DownloadError {
    /// An expired or forbidden URL will not come back; a network error might.
    pub fn is_retryable(&self) -> bool {
        match self {
            DownloadError::Transport(_) => true,
            DownloadError::Status(s) => *s == 408 || *s == 429 || *s >= 500,
            DownloadError::NotAllowed(_) | DownloadError::TooLarge(_) => false,
        }
    }
}

#[derive(Clone)]
pub struct Downloader {
    http: reqwest::Client,
    allowed: Vec<String>,
    max_bytes: u64,
    require_https: bool,
    memory: Option<PictureMemory>,
}

/// `*.example.com` matches sub-domains (not the bare domain); anything else must match exactly.
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

impl Downloader {
    pub fn new(
        allowed: Vec<String>,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            // Some CDNs refuse a blank User-Agent.
            .user_agent(concat!("imagegen/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let allowed = allowed
            .into_iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(Self {
            http,
            allowed,
            max_bytes,
            require_https: false,
            memory: None,
        })
    }

    /// MAX_IMAGE_BYTES: the largest picture accepted, downloaded or inline.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Downloads reserve their pictures' memory from `memory` (WORKER_PICTURE_MEMORY_MB) before reading.
    pub fn picture_memory(mut self, memory: PictureMemory) -> Self {
        self.memory = Some(memory);
        self
    }

    /// Refuses plain-http result URLs (production).
    pub fn require_https(mut self, yes: bool) -> Self {
        self.require_https = yes;
        self
    }

    pub fn is_allowed(&self, url: &Url) -> bool {
        let scheme_ok = match url.scheme() {
            "https" => true,
            "http" => !self.require_https,
            _ => false,
        };
        scheme_ok
            && url
                .host_str()
                .is_some_and(|host| self.allowed.iter().any(|p| host_matches(p, host)))
    }

    /// The picture at `raw`, hashed as it streams in; its buffer is sized from Content-Length so it is not grown by
    /// copying.
    pub async fn fetch(&self, raw: &str) -> Result<InlineImage, DownloadError> {
        let url =
            Url::parse(raw).map_err(|_| DownloadError::NotAllowed("unparseable URL".into()))?;
        if !self.is_allowed(&url) {
            return Err(DownloadError::NotAllowed(
                url.host_str().unwrap_or("no host").to_owned(),
            ));
        }
        let response = self.http.get(url).send().await?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(DownloadError::Status(status));
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes)
        {
            return Err(DownloadError::TooLarge(self.max_bytes));
        }
        let hold = match &self.memory {
            Some(memory) => Some(
                memory
                    .reserve(response.content_length().unwrap_or(self.max_bytes))
                    .await,
            ),
            None => None,
        };
        let expected = response.content_length().unwrap_or(0).min(self.max_bytes);
        let mut body = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
        let mut hash = Sha256::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(DownloadError::TooLarge(self.max_bytes));
            }
            hash.update(&chunk);
            body.extend_from_slice(&chunk);
        }
        Ok(InlineImage {
            bytes: body.freeze(),
            sha256: hash.finalize().into(),
            hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_hosts_not_lookalikes() {
        let d = Downloader::new(
            vec!["*.blob.core.windows.net".into(), "127.0.0.1".into()],
            10,
            Duration::from_secs(1),
        )
        .expect("client");
        let ok = |u: &str| d.is_allowed(&Url::parse(u).expect("url"));
        assert!(ok(
            "https://oaidalleapiprodscus.blob.core.windows.net/private/x.png?sig=1"
        ));
        assert!(ok("http://127.0.0.1:8090/files/a.png"));
        assert!(!ok("https://blob.core.windows.net.evil.com/x.png"));
        assert!(!ok("https://evilblob.core.windows.net/x.png"));
        assert!(!ok("https://blob.core.windows.net/x.png"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
        let strict = d.clone().require_https(true);
        assert!(!strict.is_allowed(&Url::parse("http://127.0.0.1:8090/files/a.png").expect("url")));
        assert!(
            strict.is_allowed(&Url::parse("https://x.blob.core.windows.net/a.png").expect("url"))
        );
    }
}
