//! Which routes may serve a job, in what order, and the request each is sent. A route is one provider serving one
//! model (`openai:gpt-image-2`). A job first tries its own model on every configured provider that serves it today
//! (the provider the client named first; only that one with `allow_failover: false`), then, unless the client said
//! `allow_failover: false`, every other provider's default model in FAILOVER_ORDER. The request is translated for
//! each route from the catalogue (`imagegen_shared::domain::translate`), every change recorded.

use crate::providers::ImageProvider;
use chrono::NaiveDate;
use imagegen_shared::catalogue::ModelSpec;
use imagegen_shared::domain::translate::translate;
use imagegen_shared::domain::{GenerationRequest, ModelId, Offer, ProviderId, route_key};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct Route {
    pub client: Arc<dyn ImageProvider>,
    pub model: Arc<ModelSpec>,
    /// The model's name at the provider (Azure: the deployment).
    pub provider_model: String,
    /// `provider:model`, the route's name in attempts, metrics and `served_by`.
    pub key: String,
    /// The request as this route is sent it, and what was changed to get there.
    pub request: GenerationRequest,
    pub translations: Vec<String>,
}

impl Route {
    pub fn provider(&self) -> ProviderId {
        self.client.id()
    }
}

/// A route that cannot take the job (its prompt is too long there), and why; recorded in the job's history.
pub struct Skipped {
    pub key: String,
    pub why: String,
}

#[derive(Clone, Default)]
pub struct Routes {
    clients: HashMap<ProviderId, Arc<dyn ImageProvider>>,
    offer: Option<Arc<Offer>>,
}

impl Routes {
    pub fn new(clients: Vec<Arc<dyn ImageProvider>>, offer: Offer) -> Self {
        Self {
            clients: clients.into_iter().map(|c| (c.id(), c)).collect(),
            offer: Some(Arc::new(offer)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn download_hosts(&self) -> Vec<String> {
        self.clients
            .values()
            .flat_map(|c| c.download_hosts())
            .collect()
    }

    /// The routes to try for `request` on `today`, in order, and the ones that cannot take it.
    pub fn chain(
        &self,
        request: &GenerationRequest,
        today: NaiveDate,
    ) -> (Vec<Route>, Vec<Skipped>) {
        let Some(offer) = &self.offer else {
            return (Vec::new(), Vec::new());
        };
        let catalogue = &offer.catalogue;
        let mut targets: Vec<(ProviderId, ModelId)> = Vec::new();
        if let Some(model) = catalogue.get(request.model().as_str()) {
            let mut own = offer.routes_for(model, today);
            if let Some(pinned) = request.provider() {
                own.sort_by_key(|p| *p != pinned);
                if !request.allow_failover() {
                    own.retain(|p| *p == pinned);
                }
            }
            targets.extend(own.into_iter().map(|p| (p, model.id.clone())));
        }
        if request.allow_failover() {
            for provider in offer.providers.iter() {
                let Some(default) = &provider.default_model else {
                    continue;
                };
                let target = (provider.provider, default.clone());
                let live = catalogue
                    .get(default.as_str())
                    .is_some_and(|m| offer.routes_for(m, today).contains(&provider.provider));
                if live && !targets.contains(&target) && default != request.model() {
                    targets.push(target);
                }
            }
        }
        let mut routes = Vec::new();
        let mut skipped = Vec::new();
        for (provider, model_id) in targets {
            let (Some(client), Some(model), Some(provider_model)) = (
                self.clients.get(&provider),
                catalogue.get(model_id.as_str()),
                offer.provider_model(provider, &model_id),
            ) else {
                continue;
            };
            let key = route_key(provider, &model_id);
            match translate(request, model, Some(provider), catalogue) {
                Ok((translated, translations)) => routes.push(Route {
                    client: client.clone(),
                    model: model.clone(),
                    provider_model: provider_model.to_owned(),
                    key,
                    request: translated,
                    translations,
                }),
                Err(why) => skipped.push(Skipped { key, why }),
            }
        }
        (routes, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Call, ProviderError, ProviderOutput};
    use async_trait::async_trait;
    use clap::Parser;
    use imagegen_shared::config::ProviderArgs;
    use imagegen_shared::domain::{GenerateBody, resolve};

    struct Fake(ProviderId);

    #[async_trait]
    impl ImageProvider for Fake {
        fn id(&self) -> ProviderId {
            self.0
        }
        fn download_hosts(&self) -> Vec<String> {
            Vec::new()
        }
        async fn generate(&self, _: &Call<'_>) -> Result<ProviderOutput, ProviderError> {
            Err(ProviderError::Final {
                status: None,
                code: None,
                message: "fake".into(),
            })
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        providers: ProviderArgs,
    }

    fn today() -> NaiveDate {
        "2026-11-28".parse().expect("date")
    }

    fn routes(extra: &[&str]) -> (Routes, Offer) {
        let mut args = vec![
            "test",
            "--openai-api-key",
            "k",
            "--flux-api-key",
            "f",
            "--bfl-api-key",
            "b",
            "--azure-openai-api-key",
            "a",
            "--azure-openai-endpoint",
            "https://r.openai.azure.com",
            "--azure-openai-deployment-name",
            "img2",
        ];
        args.extend_from_slice(extra);
        let settings = Cli::try_parse_from(args)
            .expect("parses")
            .providers
            .settings_on(today())
            .expect("valid");
        let offer = settings.offer_on(4, today());
        let clients: Vec<Arc<dyn ImageProvider>> = ProviderId::ALL
            .iter()
            .map(|p| Arc::new(Fake(*p)) as Arc<dyn ImageProvider>)
            .collect();
        (Routes::new(clients, offer.clone()), offer)
    }

    fn request(offer: &Offer, body: GenerateBody) -> GenerationRequest {
        let parsed = GenerationRequest::parse(body, offer, None).expect("valid");
        resolve(parsed, offer, today()).expect("served").request
    }

    fn keys(chain: &[Route]) -> Vec<&str> {
        chain.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn own_model_everywhere_first_then_each_providers_default() {
        let (routes, offer) = routes(&[]);
        let req = request(
            &offer,
            GenerateBody {
                prompt: "a cat".into(),
                ..GenerateBody::default()
            },
        );
        let (chain, _) = routes.chain(&req, today());
        assert_eq!(
            keys(&chain),
            [
                "openai:gpt-image-2",
                "azure_openai:gpt-image-2",
                "flux:flux-schnell",
                "bfl:flux-2-pro"
            ]
        );
        assert!(chain[0].translations.is_empty());
        assert!(
            chain[2]
                .translations
                .iter()
                .any(|t| t.contains("served by flux-schnell")),
            "{:?}",
            chain[2].translations
        );
    }

    #[test]
    fn a_pinned_provider_goes_first_and_alone_without_failover() {
        let (routes, offer) = routes(&["--failover-order", "bfl,flux"]);
        let body = GenerateBody {
            prompt: "a cat".into(),
            model: Some("gpt-image-2".into()),
            provider: Some("azure_openai".into()),
            ..GenerateBody::default()
        };
        let (chain, _) = routes.chain(&request(&offer, body.clone()), today());
        assert_eq!(
            keys(&chain),
            [
                "azure_openai:gpt-image-2",
                "openai:gpt-image-2",
                "bfl:flux-2-pro",
                "flux:flux-schnell"
            ]
        );
        let alone = GenerateBody {
            allow_failover: Some(false),
            ..body
        };
        let (chain, _) = routes.chain(&request(&offer, alone), today());
        assert_eq!(keys(&chain), ["azure_openai:gpt-image-2"]);
    }

    #[test]
    fn azure_gets_no_webp_and_flux_gets_a_fitted_size() {
        let (routes, offer) = routes(&[]);
        let body = GenerateBody {
            prompt: "a cat".into(),
            size: Some("3840x2160".into()),
            output_format: Some("webp".into()),
            ..GenerateBody::default()
        };
        let (chain, _) = routes.chain(&request(&offer, body), today());
        assert_eq!(chain[1].translations, ["output_format webp -> png"]);
        let flux = &chain[2];
        assert!(
            flux.model.accepts_size(flux.request.size()),
            "{}",
            flux.request.size()
        );
        let bfl = &chain[3];
        assert!(
            bfl.model.accepts_size(bfl.request.size()),
            "{}",
            bfl.request.size()
        );
    }

    #[test]
    fn a_prompt_too_long_for_a_target_skips_it() {
        let (routes, offer) = routes(&[]);
        let body = GenerateBody {
            prompt: "a".repeat(5000),
            ..GenerateBody::default()
        };
        let (chain, skipped) = routes.chain(&request(&offer, body), today());
        assert_eq!(
            keys(&chain),
            [
                "openai:gpt-image-2",
                "azure_openai:gpt-image-2",
                "bfl:flux-2-pro"
            ]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].key, "flux:flux-schnell");
    }

    #[test]
    fn an_edit_fails_over_only_to_models_that_take_its_inputs() {
        let (routes, offer) = routes(&["--failover-order", "flux,bfl"]);
        let body = GenerateBody {
            prompt: "a cat".into(),
            model: Some("gpt-image-2".into()),
            ..GenerateBody::default()
        };
        let edit = |images, mask| {
            request(&offer, body.clone()).with_edit(imagegen_shared::domain::EditParams {
                images,
                mask,
                input_fidelity: None,
            })
        };
        let (chain, skipped) = routes.chain(&edit(2, false), today());
        assert_eq!(
            keys(&chain),
            [
                "openai:gpt-image-2",
                "azure_openai:gpt-image-2",
                "bfl:flux-2-pro"
            ]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].key, "flux:flux-schnell");
        assert_eq!(skipped[0].why, "flux-schnell does not edit images");
        // A mask: only the GPT image models take one.
        let (chain, skipped) = routes.chain(&edit(1, true), today());
        assert_eq!(
            keys(&chain),
            ["openai:gpt-image-2", "azure_openai:gpt-image-2"]
        );
        assert_eq!(skipped.len(), 2);
    }
}
