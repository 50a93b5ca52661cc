//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, symmetric scheme `v1`).
//!
//! A delivery carries three headers: [`HEADER_ID`] (the message id, the same on every retry), [`HEADER_TIMESTAMP`]
//! (unix seconds of this attempt) and [`HEADER_SIGNATURE`] (one or more space-separated `v1,<base64>` signatures,
//! two during a secret rotation). Each signature is `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, where the
//! key is the secret's decoded bytes and the body is exactly the bytes sent.
//!
//! [`verify`] is the receiver's side, used by our own test receivers: constant-time comparison, any listed `v1`
//! signature may match, and the timestamp must be within a tolerance of now in both directions.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The message id header: the same on every attempt of one delivery, so receivers can deduplicate.
pub const HEADER_ID: &str = "webhook-id";
/// The attempt's unix timestamp in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Every serialised secret starts with this.
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's bounds for a symmetric secret's length in bytes.
pub const MIN_SECRET_BYTES: usize = 24;
pub const MAX_SECRET_BYTES: usize = 64;
/// What [`WebhookSecret::generate`] makes: 256 bits.
pub const GENERATED_SECRET_BYTES: usize = 32;
/// The signature scheme identifier for HMAC-SHA256.
pub const SIGNATURE_VERSION: &str = "v1";
/// The reference libraries' timestamp tolerance.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Standard base64 that accepts the trailing `=` padding or its absence, as the reference libraries do.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a string is not a webhook secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the webhook secret is empty")]
    Empty,
    #[error("the webhook secret is not base64 after its `whsec_` prefix")]
    NotBase64,
    #[error(
        "the webhook secret has {0} bytes; Standard Webhooks secrets have {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}"
    )]
    Length(usize),
}

/// A symmetric signing secret: `whsec_` + base64 of 24 to 64 random bytes. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
    /// The canonical serialisation, `whsec_` + padded standard base64.
    text: String,
}

impl WebhookSecret {
    /// A new secret of [`GENERATED_SECRET_BYTES`] bytes from the thread's CSPRNG (ChaCha, seeded by the OS).
    pub fn generate() -> Self {
        let key: [u8; GENERATED_SECRET_BYTES] = rand::random();
        Self::from_key(key.to_vec())
    }

    /// Parses `whsec_<base64>`, or the bare base64 as the reference libraries also accept; padding is optional.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = LENIENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        Self::from_bytes(&key)
    }

    /// A secret from its raw key bytes (24 to 64 of them).
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        match key.len() {
            0 => Err(SecretError::Empty),
            n if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&n) => Err(SecretError::Length(n)),
            _ => Ok(Self::from_key(key.to_vec())),
        }
    }

    fn from_key(key: Vec<u8>) -> Self {
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        Self { key, text }
    }

    /// The canonical `whsec_…` text, to show the owner once (and to store).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The HMAC key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_[REDACTED])")
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `v1,<base64(HMAC-SHA256(key, "{msg_id}.{timestamp_secs}.{body}"))>`.
///
/// `msg_id` must not contain a `.` (the spec's rule; our ids never do).
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    debug_assert!(!msg_id.contains('.'), "a webhook id may not contain '.'");
    let tag = secret
        .mac(msg_id, &timestamp_secs.to_string(), body)
        .finalize()
        .into_bytes();
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag))
}

/// The `webhook-signature` header value: one signature per secret, space-separated (two during a rotation overlap).
pub fn signature_header(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three header values a receiver got.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

impl<'a> SignedHeaders<'a> {
    /// Takes the three headers from a request's header map.
    pub fn from_header_map(headers: &'a http::HeaderMap) -> Result<Self, VerifyError> {
        let get = |name: &'static str| -> Result<&'a str, VerifyError> {
            headers
                .get(name)
                .ok_or(VerifyError::MissingHeader(name))?
                .to_str()
                .map_err(|_| VerifyError::InvalidHeader(name))
        };
        Ok(Self {
            id: get(HEADER_ID)?,
            timestamp: get(HEADER_TIMESTAMP)?,
            signature: get(HEADER_SIGNATURE)?,
        })
    }
}

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid text")]
    InvalidHeader(&'static str),
    #[error("header webhook-timestamp is not an integer unix timestamp")]
    InvalidTimestamp,
    #[error("the webhook timestamp is {0} s old, past the tolerance")]
    TooOld(i64),
    #[error("the webhook timestamp is {0} s in the future, past the tolerance")]
    TooNew(i64),
    #[error("no v1 signature matches")]
    NoMatchingSignature,
}

/// Verifies one delivery as a receiver would, at `now_secs` (unix seconds) with the given tolerance.
pub fn verify(
    secret: &WebhookSecret,
    headers: &SignedHeaders<'_>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if headers.id.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_ID));
    }
    if headers.signature.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_SIGNATURE));
    }
    let timestamp: i64 = headers
        .timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let age = now_secs.saturating_sub(timestamp);
    if age > tolerance {
        return Err(VerifyError::TooOld(age));
    }
    if -age > tolerance {
        return Err(VerifyError::TooNew(-age));
    }
    // Sign the header's own timestamp text, as it was sent.
    let expected = secret.mac(headers.id, headers.timestamp.trim(), body);
    let matched = headers
        .signature
        .split(' ')
        .filter_map(|versioned| versioned.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        // `verify_slice` compares in constant time.
        .any(|candidate| expected.clone().verify_slice(&candidate).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// [`verify`] over an HTTP header map, against the current clock and the default tolerance.
pub fn verify_now(
    secret: &WebhookSecret,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), VerifyError> {
    let headers = SignedHeaders::from_header_map(headers)?;
    verify(secret, &headers, body, unix_now(), DEFAULT_TOLERANCE)
}

/// Seconds since the unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The cross-library vector: the `sign` tests of the reference Python, JavaScript, Go, Ruby, PHP, C# and Java
    /// libraries in github.com/standard-webhooks/standard-webhooks (libraries/*/…test…).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1614265330;
    const VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, timestamp: &'a str, signature: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id,
            timestamp,
            signature,
        }
    }

    #[test]
    fn webhook_sign_matches_the_reference_libraries_vector() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        assert_eq!(
            sign(&secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY.as_bytes()),
            VECTOR_SIGNATURE
        );
        // The reference libraries also take the secret without its prefix.
        let bare = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(bare, secret);
        assert_eq!(bare.as_str(), VECTOR_SECRET);
    }

    #[test]
    fn webhook_sign_matches_the_reference_rust_vector() {
        // libraries/rust/src/lib.rs, `test_sign`.
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn webhook_verify_accepts_the_vector_within_tolerance_both_ways() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        let h = headers(VECTOR_ID, "1614265330", VECTOR_SIGNATURE);
        let body = VECTOR_BODY.as_bytes();
        for now in [
            VECTOR_TIMESTAMP,
            VECTOR_TIMESTAMP + 300,
            VECTOR_TIMESTAMP - 300,
        ] {
            assert_eq!(
                verify(&secret, &h, body, now, DEFAULT_TOLERANCE),
                Ok(()),
                "now = {now}"
            );
        }
        assert_eq!(
            verify(&secret, &h, body, VECTOR_TIMESTAMP + 301, DEFAULT_TOLERANCE),
            Err(VerifyError::TooOld(301))
        );
        assert_eq!(
            verify(&secret, &h, body, VECTOR_TIMESTAMP - 301, DEFAULT_TOLERANCE),
            Err(VerifyError::TooNew(301))
        );
    }

    #[test]
    fn webhook_verify_refuses_a_tampered_body_id_or_timestamp() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        let now = VECTOR_TIMESTAMP;
        let bad = Err(VerifyError::NoMatchingSignature);
        let h = headers(VECTOR_ID, "1614265330", VECTOR_SIGNATURE);
        assert_eq!(
            verify(
                &secret,
                &h,
                br#"{"test": 2432232315}"#,
                now,
                DEFAULT_TOLERANCE
            ),
            bad
        );
        assert_eq!(
            verify(
                &secret,
                &h,
                br#"{"test":2432232314}"#,
                now,
                DEFAULT_TOLERANCE
            ),
            bad
        );
        let other_id = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJel",
            "1614265330",
            VECTOR_SIGNATURE,
        );
        assert_eq!(
            verify(
                &secret,
                &other_id,
                VECTOR_BODY.as_bytes(),
                now,
                DEFAULT_TOLERANCE
            ),
            bad
        );
        let other_ts = headers(VECTOR_ID, "1614265331", VECTOR_SIGNATURE);
        assert_eq!(
            verify(
                &secret,
                &other_ts,
                VECTOR_BODY.as_bytes(),
                now,
                DEFAULT_TOLERANCE
            ),
            bad
        );
    }

    #[test]
    fn webhook_verify_refuses_a_wrong_secret() {
        let other = WebhookSecret::generate();
        let h = headers(VECTOR_ID, "1614265330", VECTOR_SIGNATURE);
        assert_eq!(
            verify(
                &other,
                &h,
                VECTOR_BODY.as_bytes(),
                VECTOR_TIMESTAMP,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn webhook_rotation_sends_two_signatures_and_either_secret_verifies() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let body = br#"{"type":"job.succeeded"}"#;
        let now = unix_now();
        let header = signature_header(&[&new, &old], "msg_1", now, body);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&new, "msg_1", now, body));
        assert_eq!(parts[1], sign(&old, "msg_1", now, body));
        let ts = now.to_string();
        let h = headers("msg_1", &ts, &header);
        assert_eq!(verify(&old, &h, body, now, DEFAULT_TOLERANCE), Ok(()));
        assert_eq!(verify(&new, &h, body, now, DEFAULT_TOLERANCE), Ok(()));
        let stranger = WebhookSecret::generate();
        assert_eq!(
            verify(&stranger, &h, body, now, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn webhook_verify_skips_other_versions_and_malformed_entries() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        let good = VECTOR_SIGNATURE;
        let signature = format!(
            "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg== v1, v1,%%% \
             garbage v2,{} {good}",
            &good[3..]
        );
        let h = headers(VECTOR_ID, "1614265330", &signature);
        assert_eq!(
            verify(
                &secret,
                &h,
                VECTOR_BODY.as_bytes(),
                VECTOR_TIMESTAMP,
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
        // The same signature under another version is no match, nor is a truncated one.
        let wrong_version = format!("v2,{}", &good[3..]);
        let truncated = &good[..good.len() - 4];
        for signature in [wrong_version.as_str(), truncated, "v1,", ""] {
            let h = headers(VECTOR_ID, "1614265330", signature);
            assert!(
                verify(
                    &secret,
                    &h,
                    VECTOR_BODY.as_bytes(),
                    VECTOR_TIMESTAMP,
                    DEFAULT_TOLERANCE
                )
                .is_err(),
                "{signature:?}"
            );
        }
    }

    #[test]
    fn webhook_verify_reads_header_maps_and_refuses_bad_timestamps() {
        let secret = WebhookSecret::generate();
        let body = b"{}";
        let now = unix_now();
        let mut map = http::HeaderMap::new();
        map.insert(HEADER_ID, "msg_2".parse().unwrap());
        map.insert(HEADER_TIMESTAMP, now.to_string().parse().unwrap());
        assert_eq!(
            verify_now(&secret, &map, body),
            Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
        );
        map.insert(
            HEADER_SIGNATURE,
            sign(&secret, "msg_2", now, body).parse().unwrap(),
        );
        assert_eq!(verify_now(&secret, &map, body), Ok(()));
        map.insert(HEADER_TIMESTAMP, "hello".parse().unwrap());
        assert_eq!(
            verify_now(&secret, &map, body),
            Err(VerifyError::InvalidTimestamp)
        );
        let old = now - 3600;
        map.insert(HEADER_TIMESTAMP, old.to_string().parse().unwrap());
        map.insert(
            HEADER_SIGNATURE,
            sign(&secret, "msg_2", old, body).parse().unwrap(),
        );
        assert!(matches!(
            verify_now(&secret, &map, body),
            Err(VerifyError::TooOld(_))
        ));
        let future = now + 3600;
        map.insert(HEADER_TIMESTAMP, future.to_string().parse().unwrap());
        map.insert(
            HEADER_SIGNATURE,
            sign(&secret, "msg_2", future, body).parse().unwrap(),
        );
        assert!(matches!(
            verify_now(&secret, &map, body),
            Err(VerifyError::TooNew(_))
        ));
    }

    #[test]
    fn webhook_secret_generate_parse_and_redact() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("whsec_"));
        assert_eq!(a.key().len(), GENERATED_SECRET_BYTES);
        assert_eq!(WebhookSecret::parse(a.as_str()).unwrap(), a);
        // Unpadded base64 is accepted too.
        assert_eq!(
            WebhookSecret::parse(a.as_str().trim_end_matches('=')).unwrap(),
            a
        );
        let debug = format!("{a:?}");
        assert!(!debug.contains(&a.as_str()[6..]), "{debug}");
        assert!(debug.contains("REDACTED"));

        assert_eq!(WebhookSecret::parse(""), Err(SecretError::Empty));
        assert_eq!(WebhookSecret::parse("whsec_"), Err(SecretError::Empty));
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!"),
            Err(SecretError::NotBase64)
        );
        let short = STANDARD.encode([7u8; 23]);
        assert_eq!(
            WebhookSecret::parse(&format!("whsec_{short}")),
            Err(SecretError::Length(23))
        );
        let long = STANDARD.encode([7u8; 65]);
        assert_eq!(WebhookSecret::parse(&long), Err(SecretError::Length(65)));
        assert!(WebhookSecret::from_bytes(&[1u8; 24]).is_ok());
        assert!(WebhookSecret::from_bytes(&[1u8; 64]).is_ok());
    }
}
