//! Keyword moderation for prompts (BLOCKED_WORDS, on with ENABLE_CONTENT_MODERATION).
//!
//! Both the terms and the prompt are normalised the same way: zero-width characters and soft hyphens removed,
//! NFKC (fullwidth and compatibility forms), accents folded (NFD without combining marks), Unicode lowercase.
//! A term then matches only as whole words, which keeps false positives low ("class" never matches "ass",
//! "badge" never matches "bad"). Simple evasions are caught:
//! - punctuation inside a word: "b.a.d", "b-a-d", "ba.d", "b*a*d" (a whitespace-delimited chunk whose letters and
//!   digits, punctuation removed, spell the term);
//! - spacing: "b a d", "B . A . D" (a run of single-character tokens whose letters, joined, spell the term,
//!   aligned to the tokens);
//! - phrases ("bad thing") match their words in order whatever separates them.
//!
//! Deliberately not attempted: leetspeak tables, fuzzy matching, or matches inside longer words. The matched term
//! is for logs only; responses never echo the list.

use std::collections::HashSet;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

#[derive(Debug, Clone, Default)]
pub struct KeywordFilter {
    /// Single-word terms, normalised.
    words: HashSet<String>,
    /// Multi-word terms, as normalised word sequences.
    phrases: Vec<Vec<String>>,
    /// The longest single-word term, in characters (bounds the spacing-evasion search).
    longest: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordMatch {
    /// The normalised blocked term that matched (for logs only, never for responses).
    pub term: String,
}

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// Zero-width out, NFKC, accents folded, lowercase.
fn normalise(text: &str) -> String {
    let visible: String = text.chars().filter(|c| !is_invisible(*c)).collect();
    let compatible: String = visible.nfkc().collect();
    let folded: String = compatible
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .collect();
    folded.to_lowercase()
}

/// Words: maximal runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

impl KeywordFilter {
    pub fn new<I, S>(terms: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut filter = Self::default();
        for term in terms {
            let parts = words(&normalise(term.as_ref()));
            match parts.len() {
                0 => {}
                1 => {
                    let word = parts.into_iter().next().unwrap_or_default();
                    filter.longest = filter.longest.max(word.chars().count());
                    filter.words.insert(word);
                }
                _ => filter.phrases.push(parts),
            }
        }
        filter
    }

    /// BLOCKED_WORDS is comma-separated; entries are trimmed and empty ones ignored.
    pub fn from_csv(list: &str) -> Self {
        Self::new(list.split(',').map(str::trim).filter(|t| !t.is_empty()))
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.phrases.is_empty()
    }

    pub fn len(&self) -> usize {
        self.words.len() + self.phrases.len()
    }

    fn hit(term: &str) -> Option<KeywordMatch> {
        Some(KeywordMatch {
            term: term.to_owned(),
        })
    }

    /// The first blocked term found in the prompt, if any.
    pub fn check(&self, prompt: &str) -> Option<KeywordMatch> {
        if self.is_empty() {
            return None;
        }
        let text = normalise(prompt);
        let tokens = words(&text);

        // Whole words.
        if let Some(t) = tokens.iter().find(|t| self.words.contains(*t)) {
            return Self::hit(t);
        }
        // Punctuation inside a whitespace-delimited chunk: "b.a.d", "ba.d".
        for chunk in text.split_whitespace() {
            let joined: String = chunk.chars().filter(|c| c.is_alphanumeric()).collect();
            if joined.chars().count() != chunk.chars().count() && self.words.contains(&joined) {
                return Self::hit(&joined);
            }
        }
        // Spacing: runs of single-character tokens, joined, aligned to the tokens.
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i].chars().count() != 1 {
                i += 1;
                continue;
            }
            let start = i;
            while i < tokens.len() && tokens[i].chars().count() == 1 {
                i += 1;
            }
            let run = &tokens[start..i];
            for from in 0..run.len() {
                let mut joined = String::new();
                for (len, t) in run[from..].iter().enumerate() {
                    if len >= self.longest {
                        break;
                    }
                    joined.push_str(t);
                    if len >= 1 && self.words.contains(&joined) {
                        return Self::hit(&joined);
                    }
                }
            }
        }
        // Phrases: word sequences (each word may itself hide punctuation, so compare against chunk-joined words too).
        let chunk_words: Vec<String> = text
            .split_whitespace()
            .map(|c| {
                c.chars()
                    .filter(|ch| ch.is_alphanumeric())
                    .collect::<String>()
            })
            .filter(|w| !w.is_empty())
            .collect();
        for phrase in &self.phrases {
            for seq in [&tokens, &chunk_words] {
                if seq.windows(phrase.len()).any(|w| w == phrase.as_slice()) {
                    return Self::hit(&phrase.join(" "));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(terms: &str, prompt: &str) -> bool {
        KeywordFilter::from_csv(terms).check(prompt).is_some()
    }

    #[test]
    fn whole_words_any_case() {
        for p in ["bad", "Bad!", "(BAD)", "a bad day", "bad-ass", "so... bad."] {
            assert!(blocks("bad", p), "{p}");
        }
        for p in ["badge", "abad", "Sinbad", "badly"] {
            assert!(!blocks("bad", p), "{p}");
        }
        assert!(!blocks("ass", "a class act"));
    }

    #[test]
    fn unicode_is_normalised() {
        assert!(blocks("bad", "Bád idea"));
        assert!(blocks("bád", "bad idea"));
        assert!(blocks("bad", "ｂａｄ idea"), "fullwidth");
        assert!(blocks("bad", "b\u{200B}ad idea"), "zero-width");
        assert!(blocks("bad", "b\u{00AD}ad idea"), "soft hyphen");
    }

    #[test]
    fn punctuation_and_spacing_evasions() {
        for p in [
            "b.a.d",
            "b-a-d",
            "b_a_d",
            "ba.d",
            "b*a*d",
            "b'a'd",
            "b a d",
            "b  a  d",
            "B . A . D",
            "x b a d y",
        ] {
            assert!(blocks("bad", p), "{p}");
        }
        assert!(!blocks("bad", "a b c"));
        assert!(!blocks("bad", "b a"));
    }

    #[test]
    fn phrases_match_word_sequences() {
        assert!(blocks("bad thing", "a bad, thing here"));
        assert!(blocks("bad thing", "bad   thing"));
        assert!(blocks("bad thing", "b.a.d thing"));
        assert!(!blocks("bad thing", "bad things"));
        assert!(!blocks("bad thing", "thing bad"));
    }

    #[test]
    fn lists_are_parsed_leniently() {
        let f = KeywordFilter::from_csv(" one , ,two words,  ");
        assert_eq!(f.len(), 2);
        assert!(KeywordFilter::from_csv("").is_empty());
        assert!(
            KeywordFilter::from_csv("")
                .check("anything at all")
                .is_none()
        );
        assert_eq!(f.check("say ONE").map(|m| m.term), Some("one".to_owned()));
    }

    #[test]
    fn long_prompts_are_cheap_enough() {
        let terms: Vec<String> = (0..200).map(|i| format!("term{i}")).collect();
        let f = KeywordFilter::new(&terms);
        let prompt = "a b c d e f g ".repeat(280);
        assert!(f.check(&prompt).is_none());
    }
}
