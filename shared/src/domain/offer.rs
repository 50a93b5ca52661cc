//! What this service offers, as configured: the catalogue, the providers that can run (with the models each serves
//! here), the default model, and how retired models are handled. The API checks requests against it; the worker
//! builds its routes from the same facts (`ProviderSettings::offer`).

use super::provider::{ModelId, ProviderId};
use crate::catalogue::{Catalogue, ModelSpec, ModelStatus};
use chrono::NaiveDate;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Offer {
    pub catalogue: Arc<Catalogue>,
    /// Providers the operator allows (ENABLED_PROVIDERS), configured or not.
    pub enabled: Vec<ProviderId>,
    /// Enabled providers that can run, in failover order, each with the models it serves here and under which
    /// provider-side name (Azure: the deployment).
    pub providers: Vec<ProviderModels>,
    /// The model of requests that name neither a model nor a provider.
    pub default_model: ModelId,
    /// Retired (or no longer served) model -> what serves its requests: MODEL_ALIASES over the catalogue's
    /// replacements. Keys are lowercase.
    pub aliases: BTreeMap<String, ModelId>,
    /// False (MODEL_ALIASES=none): requests for a retired model are refused with `model_retired`.
    pub aliasing: bool,
    pub max_images_per_request: u8,
    /// Providers answered by the built-in emulator.
    pub sandbox: Vec<ProviderId>,
}

/// One configured provider and the models it serves here.
#[derive(Debug, Clone)]
pub struct ProviderModels {
    pub provider: ProviderId,
    /// Model -> provider-side name. Only models the catalogue says it serves.
    pub models: BTreeMap<ModelId, String>,
    /// Its default model (FLUX_MODEL for the FLUX hosts), else its first current model in catalogue order.
    pub default_model: Option<ModelId>,
}

impl Offer {
    pub fn is_configured(&self, provider: ProviderId) -> bool {
        self.providers.iter().any(|p| p.provider == provider)
    }

    pub fn provider(&self, provider: ProviderId) -> Option<&ProviderModels> {
        self.providers.iter().find(|p| p.provider == provider)
    }

    /// The configured providers that serve `model` on `today`, in failover order.
    pub fn routes_for(&self, model: &ModelSpec, today: NaiveDate) -> Vec<ProviderId> {
        if model.status_on(today) == ModelStatus::Retired {
            return Vec::new();
        }
        self.providers
            .iter()
            .filter(|p| p.models.contains_key(&model.id))
            .filter(|p| {
                model
                    .serves
                    .get(&p.provider)
                    .is_some_and(|s| !s.retired_on(today))
            })
            .map(|p| p.provider)
            .collect()
    }

    /// The provider-side name of `model` on `provider`.
    pub fn provider_model(&self, provider: ProviderId, model: &ModelId) -> Option<&str> {
        self.provider(provider)
            .and_then(|p| p.models.get(model))
            .map(String::as_str)
    }

    pub fn provider_default(&self, provider: ProviderId) -> Option<&ModelId> {
        self.provider(provider)
            .and_then(|p| p.default_model.as_ref())
    }

    /// What serves requests for `model` once no route here serves it: MODEL_ALIASES, else the catalogue's
    /// replacement. `None` when aliasing is off or nothing is named.
    pub fn replacement(&self, model: &ModelSpec) -> Option<ModelId> {
        if !self.aliasing {
            return None;
        }
        self.aliases
            .get(model.id.as_str())
            .cloned()
            .or_else(|| model.replacement.clone())
    }

    pub fn is_sandbox(&self, provider: ProviderId) -> bool {
        self.sandbox.contains(&provider)
    }
}

/// Today in UTC: model lifecycles turn at midnight UTC.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}
