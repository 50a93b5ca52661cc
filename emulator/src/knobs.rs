//! Per-protocol knobs (latency, injected errors, 429s, hangs, moderation, corrupt pictures, URL lifetime) and
//! request statistics.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Added before answering, in milliseconds.
    pub latency_ms: u64,
    /// Probability (0..1) of answering `error_status`.
    pub error_rate: f64,
    pub error_status: u16,
    /// Probability of a 429 with `retry-after: retry_after_s`.
    pub rate_limit_rate: f64,
    pub retry_after_s: u64,
    /// Probability of never answering (until the client gives up).
    pub hang_rate: f64,
    /// Probability of a content-policy rejection.
    pub moderation_rate: f64,
    /// Lifetime of result URLs, in seconds.
    pub url_ttl_s: u64,
    /// The next N requests fail with `error_status` (deterministic, for tests).
    pub fail_next: u32,
    /// The next N requests get a 429.
    pub rate_limit_next: u32,
    /// The next N requests hang.
    pub hang_next: u32,
    /// The next N requests are refused by the safety system.
    pub moderate_next: u32,
    /// The next N requests succeed as far as the provider is concerned (they are charged: a normal 200 answer with
    /// `usage` / `cost`), but every picture in the answer is not an image: base64 of `CORRUPT_BYTES`, or for URL
    /// answers a URL serving those bytes with an image content type.
    pub corrupt_next: u32,
    /// Pad each picture to at least this many bytes (0 = its natural size), for memory tests: a private PNG chunk,
    /// JPEG comment segments or a WebP XMP chunk, all skipped by decoders.
    pub image_bytes: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            error_status: 500,
            rate_limit_rate: 0.0,
            retry_after_s: 1,
            hang_rate: 0.0,
            moderation_rate: 0.0,
            url_ttl_s: 3600,
            fail_next: 0,
            rate_limit_next: 0,
            hang_next: 0,
            moderate_next: 0,
            corrupt_next: 0,
            image_bytes: 0,
        }
    }
}

/// What one request is going to get, decided once when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Hang,
    RateLimit,
    Error(u16),
    Moderate,
    /// Answered and charged like a success, but every picture is `CORRUPT_BYTES`.
    Corrupt,
    Succeed,
}

/// What a corrupt answer carries in place of each picture: a few bytes of text, no image format's signature.
pub const CORRUPT_BYTES: &[u8] = b"emulator: this is not an image\n";

/// A prompt containing this word (any case) is refused by the emulated safety system, deterministically.
pub const MODERATE_WORD: &str = "emulator-moderate";

impl Fate {
    /// Applies the trigger word at the moderation step: hangs, 429s and injected errors drawn for the request still
    /// come first, as the real services check rate limits before they look at a prompt; a refused prompt makes no
    /// picture, corrupt or not.
    pub fn moderated_if_triggered(self, prompt: &str) -> Fate {
        if matches!(self, Fate::Succeed | Fate::Corrupt)
            && prompt.to_lowercase().contains(MODERATE_WORD)
        {
            Fate::Moderate
        } else {
            self
        }
    }
}

fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

impl Knobs {
    /// Draws the fate of the next request (counters first, then probabilities), in the order a real service
    /// would fail: hang, rate limit, server error, moderation, then a corrupt answer (a request that got through).
    pub fn draw(&mut self) -> Fate {
        let roll = |p: f64| p > 0.0 && rand::random::<f64>() < p;
        if take(&mut self.hang_next) || roll(self.hang_rate) {
            Fate::Hang
        } else if take(&mut self.rate_limit_next) || roll(self.rate_limit_rate) {
            Fate::RateLimit
        } else if take(&mut self.fail_next) || roll(self.error_rate) {
            Fate::Error(self.error_status)
        } else if take(&mut self.moderate_next) || roll(self.moderation_rate) {
            Fate::Moderate
        } else if take(&mut self.corrupt_next) {
            Fate::Corrupt
        } else {
            Fate::Succeed
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub by_status: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_come_first_and_run_out() {
        let mut k = Knobs {
            fail_next: 1,
            rate_limit_next: 1,
            ..Knobs::default()
        };
        assert_eq!(k.draw(), Fate::RateLimit);
        assert_eq!(k.draw(), Fate::Error(500));
        assert_eq!(k.draw(), Fate::Succeed);
        let mut always = Knobs {
            error_rate: 1.0,
            error_status: 503,
            ..Knobs::default()
        };
        assert_eq!(always.draw(), Fate::Error(503));
    }

    #[test]
    fn corrupt_answers_come_last_and_run_out() {
        let mut k = Knobs {
            corrupt_next: 1,
            fail_next: 1,
            ..Knobs::default()
        };
        assert_eq!(k.draw(), Fate::Error(500), "a failure is not charged");
        assert_eq!(k.draw(), Fate::Corrupt);
        assert_eq!(k.draw(), Fate::Succeed);
        assert_eq!(k.corrupt_next, 0);
        assert!(
            crate::picture::dimensions(CORRUPT_BYTES).is_none(),
            "not an image"
        );
    }

    #[test]
    fn the_trigger_word_moderates_only_what_would_succeed() {
        let word = "a Emulator-Moderate scene";
        assert_eq!(Fate::Succeed.moderated_if_triggered(word), Fate::Moderate);
        assert_eq!(
            Fate::Succeed.moderated_if_triggered("a scene"),
            Fate::Succeed
        );
        assert_eq!(
            Fate::Error(500).moderated_if_triggered(word),
            Fate::Error(500)
        );
        assert_eq!(
            Fate::RateLimit.moderated_if_triggered(word),
            Fate::RateLimit
        );
        assert_eq!(Fate::Hang.moderated_if_triggered(word), Fate::Hang);
        assert_eq!(Fate::Corrupt.moderated_if_triggered(word), Fate::Moderate);
        assert_eq!(
            Fate::Corrupt.moderated_if_triggered("a scene"),
            Fate::Corrupt
        );
    }
}
