//! An edit's shape as the job carries it: how many input images, whether a mask marks the area to change, and how
//! closely the output keeps the inputs' details. Enough to pick only models that can take the inputs (routing,
//! failover, a retired model's replacement) and to price them; the bytes themselves are stored objects named by the
//! job's `job_inputs` rows (`db::job_inputs`), so every attempt sends the same ones.

use serde::{Deserialize, Serialize};

/// `input_fidelity` (GPT image models): `high` keeps faces, logos and fine details of the inputs closer, and costs
/// more input tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFidelity {
    High,
    Low,
}

impl InputFidelity {
    pub fn as_str(self) -> &'static str {
        match self {
            InputFidelity::High => "high",
            InputFidelity::Low => "low",
        }
    }
}

impl std::str::FromStr for InputFidelity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(InputFidelity::High),
            "low" => Ok(InputFidelity::Low),
            other => Err(format!("input_fidelity must be high or low, got '{other}'")),
        }
    }
}

/// What an edit job starts from, on its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditParams {
    /// Input images (1 to the model's `edits.max_input_images`), in `job_inputs` positions 0..images.
    pub images: u8,
    /// A mask (role `mask`, position 0 in `job_inputs`), the first image's size.
    #[serde(default)]
    pub mask: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_fidelity: Option<InputFidelity>,
}

impl EditParams {
    /// Whether `model` can take these inputs (it edits, takes this many images, and a mask if one is given).
    pub fn fits(&self, model: &crate::catalogue::ModelSpec) -> bool {
        model
            .edits
            .as_ref()
            .is_some_and(|e| e.takes(usize::from(self.images), self.mask))
    }
}
