//! A prompt that is known to be non-empty and within the longest limit of any model.

use serde::{Deserialize, Serialize};

/// The longest prompt any model takes (GPT image models: 32,000); each model's own limit is checked against the
/// catalogue.
pub const MAX_PROMPT_CHARS: usize = 32_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prompt(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("Prompt cannot be empty")]
    Empty,
    #[error("Prompt is too long: {0} characters (at most {MAX_PROMPT_CHARS})")]
    TooLong(usize),
}

impl Prompt {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Prompt {
    type Error = PromptError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PromptError::Empty);
        }
        let chars = trimmed.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(PromptError::TooLong(chars));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

impl From<Prompt> for String {
    fn from(p: Prompt) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_rejects_blank() {
        assert_eq!(
            Prompt::try_from("  a cat \n".to_owned()).map(|p| p.0),
            Ok("a cat".to_owned())
        );
        assert_eq!(
            Prompt::try_from(" \t\n".to_owned()),
            Err(PromptError::Empty)
        );
    }

    #[test]
    fn counts_characters_not_bytes() {
        let at_limit = "é".repeat(MAX_PROMPT_CHARS);
        assert!(Prompt::try_from(at_limit).is_ok());
        let over = "a".repeat(MAX_PROMPT_CHARS + 1);
        assert_eq!(
            Prompt::try_from(over),
            Err(PromptError::TooLong(MAX_PROMPT_CHARS + 1))
        );
    }
}
