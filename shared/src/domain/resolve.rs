//! A checked request meets the model lifecycle: a current model is served as asked; a deprecated one too, with a
//! notice for the client (`Deprecation` / `Sunset` headers); a retired one (or one no configured provider serves
//! any more) is served by its replacement (MODEL_ALIASES, else the catalogue's) with the request translated and
//! every change recorded, or refused with `model_retired` when aliasing is off or there is none.

use super::offer::Offer;
use super::provider::ModelId;
use super::request::{GenerationRequest, ValidationErrors};
use super::translate::translate;
use crate::catalogue::{ModelSpec, ModelStatus};
use chrono::NaiveDate;

/// How far replacements are followed (a -> b -> c).
const MAX_ALIAS_HOPS: usize = 4;

/// A model the client named that is on its way out (or gone and replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleNotice {
    pub model: ModelId,
    pub status: ModelStatus,
    pub deprecated_on: Option<NaiveDate>,
    pub retires_on: Option<NaiveDate>,
    /// The model that served the request instead.
    pub served_by: Option<ModelId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub request: GenerationRequest,
    pub notices: Vec<LifecycleNotice>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("Model '{model}' was retired{}{}{}", on.map(|d| format!(" on {d}")).unwrap_or_default(),
        replacement.as_ref().map(|r| format!("; use '{r}' instead")).unwrap_or_default(),
        why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default())]
    Retired {
        model: ModelId,
        on: Option<NaiveDate>,
        replacement: Option<ModelId>,
        /// Why the replacement could not take this request.
        why: Option<String>,
    },
    #[error("{0}")]
    Invalid(ValidationErrors),
}

fn notice(model: &ModelSpec, today: NaiveDate, served_by: Option<ModelId>) -> LifecycleNotice {
    LifecycleNotice {
        model: model.id.clone(),
        status: model.status_on(today),
        deprecated_on: model.deprecated_on,
        retires_on: model.retires_on,
        served_by,
    }
}

/// The request as it will run, with what the client should be told about the model it named.
pub fn resolve(
    request: GenerationRequest,
    offer: &Offer,
    today: NaiveDate,
) -> Result<Resolved, ResolveError> {
    let catalogue = offer.catalogue.clone();
    let mut request = request;
    let mut notices = Vec::new();
    let requested = request.model.clone();
    for _ in 0..=MAX_ALIAS_HOPS {
        let Some(model) = catalogue.get(request.model.as_str()).cloned() else {
            return Err(ResolveError::Invalid(ValidationErrors::one(
                "model",
                format!("Unknown model '{}'", request.model),
            )));
        };
        let routes = offer.routes_for(&model, today);
        let retired_here = routes.is_empty()
            && (model.status_on(today) == ModelStatus::Retired
                || model
                    .serves
                    .iter()
                    .any(|(p, s)| offer.is_configured(*p) && s.retired_on(today)));
        if !retired_here && routes.is_empty() && request.via_seed_name {
            // The seed's names promised a family, not a host: `flux_schnell` on a service with only Black Forest
            // Labs configured (which does not serve schnell) is served by BFL's default FLUX model.
            if let Some(target) = offer
                .providers
                .iter()
                .filter_map(|p| p.default_model.as_ref())
                .filter_map(|m| catalogue.get(m.as_str()))
                .find(|m| m.family == model.family && !offer.routes_for(m, today).is_empty())
                .cloned()
            {
                let (next, mut changes) = translate(&request, &target, None, &catalogue)
                    .map_err(|why| ResolveError::Invalid(ValidationErrors::one("provider", why)))?;
                if let Some(first) = changes.first_mut() {
                    *first = format!("{} is not served here: served by {}", model.id, target.id);
                }
                request = next;
                request.translations.extend(changes);
                request.via_seed_name = false;
                continue;
            }
        }
        if !retired_here {
            if routes.is_empty() {
                return Err(ResolveError::Invalid(ValidationErrors::one(
                    if request.provider.is_some() || request.via_seed_name {
                        "provider"
                    } else {
                        "model"
                    },
                    format!(
                        "Model '{}' is not served by any provider configured on this service",
                        model.id
                    ),
                )));
            }
            if let Some(p) = request.provider
                && !routes.contains(&p)
            {
                return Err(ResolveError::Invalid(ValidationErrors::one(
                    "provider",
                    format!(
                        "Provider '{p}' does not serve model '{}' here (served by: {})",
                        model.id,
                        routes
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )));
            }
            if model.status_on(today) == ModelStatus::Deprecated {
                notices.push(notice(&model, today, None));
            }
            if request.model != requested {
                request.requested_model = Some(requested);
            }
            return Ok(Resolved { request, notices });
        }
        let retired_on = model
            .serves
            .iter()
            .filter(|(p, _)| offer.is_configured(**p))
            .filter_map(|(_, s)| s.retires_on)
            .max()
            .or(model.retires_on);
        let Some(replacement) = offer.replacement(&model) else {
            return Err(ResolveError::Retired {
                model: model.id.clone(),
                on: retired_on,
                replacement: model.replacement.clone(),
                why: None,
            });
        };
        let Some(target) = catalogue.get(replacement.as_str()).cloned() else {
            return Err(ResolveError::Retired {
                model: model.id.clone(),
                on: retired_on,
                replacement: None,
                why: None,
            });
        };
        // The client's provider may not serve the replacement: any provider that does will.
        if request
            .provider
            .is_some_and(|p| !offer.routes_for(&target, today).contains(&p))
        {
            request.provider = None;
        }
        let (next, mut changes) =
            translate(&request, &target, None, &catalogue).map_err(|why| {
                ResolveError::Retired {
                    model: model.id.clone(),
                    on: retired_on,
                    replacement: Some(replacement.clone()),
                    why: Some(why),
                }
            })?;
        let when = retired_on.map(|d| format!(" on {d}")).unwrap_or_default();
        if let Some(first) = changes.first_mut() {
            *first = format!("model {} retired{when}: served by {replacement}", model.id);
        }
        let mut lifecycle = notice(&model, today, Some(replacement.clone()));
        lifecycle.status = ModelStatus::Retired;
        notices.push(lifecycle);
        request = next;
        request.translations.extend(changes);
    }
    Err(ResolveError::Invalid(ValidationErrors::one(
        "model",
        format!("Model '{requested}': its replacements form a loop; check MODEL_ALIASES"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::GenerateBody;
    use crate::domain::request::tests::{offer_with, today};
    use crate::domain::{ImageSize, Quality, Size};

    fn parse(body: GenerateBody, offer: &Offer) -> GenerationRequest {
        GenerationRequest::parse(body, offer, None).expect("valid")
    }

    fn dalle3(size: &str) -> GenerateBody {
        GenerateBody {
            prompt: "a lighthouse".into(),
            provider: Some("dalle3".into()),
            size: Some(size.into()),
            quality: Some("hd".into()),
            style: Some("natural".into()),
            ..GenerateBody::default()
        }
    }

    #[test]
    fn a_retired_model_is_served_by_its_replacement_with_every_change_recorded() {
        let offer = offer_with(&["--model-aliases", "dall-e-3=gpt-image-1-mini"]);
        let resolved =
            resolve(parse(dalle3("1792x1024"), &offer), &offer, today()).expect("served");
        let r = &resolved.request;
        assert_eq!(r.model.as_str(), "gpt-image-1-mini");
        assert_eq!(
            r.requested_model.as_ref().map(ModelId::as_str),
            Some("dall-e-3")
        );
        assert_eq!(
            (r.size, r.quality, r.style),
            (
                Size::Exact(ImageSize::new(1536, 1024)),
                Some(Quality::High),
                None
            )
        );
        assert_eq!(
            r.translations,
            [
                "model dall-e-3 retired on 2026-05-12: served by gpt-image-1-mini",
                "size 1792x1024 -> 1536x1024 (nearest on gpt-image-1-mini)",
                "quality hd -> high",
                "style natural dropped (gpt-image-1-mini has none)"
            ]
        );
        // dall-e-3 (retired) then gpt-image-1-mini (deprecated) are both reported.
        assert_eq!(resolved.notices.len(), 2);
        assert_eq!(resolved.notices[0].status, ModelStatus::Retired);
        assert_eq!(resolved.notices[1].status, ModelStatus::Deprecated);
    }

    #[test]
    fn the_catalogue_replacement_is_the_default() {
        let offer = offer_with(&[]);
        let resolved =
            resolve(parse(dalle3("1024x1792"), &offer), &offer, today()).expect("served");
        assert_eq!(resolved.request.model.as_str(), "gpt-image-2");
        assert_eq!(
            resolved.request.size,
            Size::Exact(ImageSize::new(1024, 1792)),
            "gpt-image-2 takes it as is"
        );
    }

    #[test]
    fn aliasing_off_refuses_naming_the_replacement() {
        let offer = offer_with(&["--model-aliases", "none"]);
        let err =
            resolve(parse(dalle3("1024x1024"), &offer), &offer, today()).expect_err("refused");
        assert!(
            matches!(&err, ResolveError::Retired { replacement: Some(r), .. } if r.as_str() == "gpt-image-2"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("retired on 2026-05-12; use 'gpt-image-2' instead"),
            "{err}"
        );
    }

    #[test]
    fn a_model_no_configured_provider_serves_any_more_counts_as_retired() {
        // After 2026-12-01 OpenAI no longer serves gpt-image-1-mini; Azure does until 2027-04-07.
        let day: chrono::NaiveDate = "2026-12-02".parse().expect("date");
        let mut offer = offer_with(&[]);
        let body = GenerateBody {
            prompt: "a cat".into(),
            model: Some("gpt-image-1-mini".into()),
            ..GenerateBody::default()
        };
        let on_azure = resolve(parse(body.clone(), &offer), &offer, day).expect("azure serves it");
        assert_eq!(on_azure.request.model.as_str(), "gpt-image-1-mini");
        offer
            .providers
            .retain(|p| p.provider != crate::domain::ProviderId::AzureOpenAi);
        let replaced = resolve(parse(body, &offer), &offer, day).expect("replaced");
        assert_eq!(replaced.request.model.as_str(), "gpt-image-2");
    }

    #[test]
    fn deprecated_models_are_served_with_a_notice() {
        let offer = offer_with(&[]);
        let body = GenerateBody {
            prompt: "a cat".into(),
            model: Some("gpt-image-1.5".into()),
            ..GenerateBody::default()
        };
        let resolved = resolve(parse(body, &offer), &offer, today()).expect("served");
        assert_eq!(resolved.request.model.as_str(), "gpt-image-1.5");
        assert_eq!(resolved.notices[0].retires_on, "2026-12-16".parse().ok());
    }

    #[test]
    fn a_pinned_provider_must_serve_the_model() {
        let offer = offer_with(&[]);
        let body = GenerateBody {
            prompt: "a cat".into(),
            model: Some("flux-2-pro".into()),
            provider: Some("openai".into()),
            ..GenerateBody::default()
        };
        let err = resolve(parse(body, &offer), &offer, today()).expect_err("openai has no flux");
        assert!(err.to_string().contains("served by: bfl"), "{err}");
    }

    #[test]
    fn a_retired_models_replacement_must_take_the_edits_inputs() {
        let day: chrono::NaiveDate = "2026-12-02".parse().expect("date");
        let mut offer = offer_with(&["--model-aliases", "gpt-image-1-mini=flux-2-pro"]);
        offer
            .providers
            .retain(|p| p.provider != crate::domain::ProviderId::AzureOpenAi);
        let body = GenerateBody {
            prompt: "a cat".into(),
            model: Some("gpt-image-1-mini".into()),
            ..GenerateBody::default()
        };
        let edit = |mask| crate::domain::EditParams {
            images: 2,
            mask,
            input_fidelity: None,
        };
        let plain = parse(body.clone(), &offer).with_edit(edit(false));
        let served = resolve(plain, &offer, day).expect("flux-2-pro takes 2 images");
        assert_eq!(served.request.model.as_str(), "flux-2-pro");
        let masked = parse(body, &offer).with_edit(edit(true));
        let err = resolve(masked, &offer, day).expect_err("flux-2-pro takes no mask");
        assert!(
            matches!(&err, ResolveError::Retired { why: Some(w), .. } if w == "flux-2-pro takes no mask"),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with("(flux-2-pro takes no mask)"),
            "{err}"
        );
    }
}
