//! Which routes may serve a job, in what order, and how a request is translated for a provider it was not written
//! for (nearest size by aspect ratio, options the target lacks dropped), every change recorded.
//!
//! A job first tries its own provider's routes (for DALL-E 3: DALLE3_BACKEND first, then the other backend), then,
//! unless the client said `allow_failover: false`, the other providers in FAILOVER_ORDER.

use crate::providers::ImageProvider;
use imagegen_shared::domain::{GenerationRequest, ImageSize, ProviderId};
use std::sync::Arc;

#[derive(Clone)]
pub struct Route {
    pub client: Arc<dyn ImageProvider>,
}

impl Route {
    pub fn key(&self) -> &str {
        self.client.route()
    }
    pub fn provider(&self) -> ProviderId {
        self.client.id()
    }
}

#[derive(Clone, Default)]
pub struct Routes {
    /// In preference order: a provider's primary route before its others.
    routes: Vec<Route>,
    /// Providers in failover order.
    order: Vec<ProviderId>,
}

impl Routes {
    pub fn new(routes: Vec<Route>, order: Vec<ProviderId>) -> Self {
        Self { routes, order }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn download_hosts(&self) -> Vec<String> {
        self.routes
            .iter()
            .flat_map(|r| r.client.download_hosts())
            .collect()
    }

    /// The routes to try for a request, in order.
    pub fn chain(&self, requested: ProviderId, allow_failover: bool) -> Vec<Route> {
        let mut chain: Vec<Route> = self
            .routes
            .iter()
            .filter(|r| r.provider() == requested)
            .cloned()
            .collect();
        if allow_failover {
            for provider in self.order.iter().filter(|p| **p != requested) {
                chain.extend(
                    self.routes
                        .iter()
                        .filter(|r| r.provider() == *provider)
                        .cloned(),
                );
            }
        }
        chain
    }
}

/// The supported size whose aspect ratio is nearest, then whose area is nearest.
pub fn nearest_size(size: ImageSize, supported: &[ImageSize]) -> ImageSize {
    let ratio = |s: ImageSize| f64::from(s.width) / f64::from(s.height);
    let area = |s: ImageSize| f64::from(s.width) * f64::from(s.height);
    let target_ratio = ratio(size).ln();
    let target_area = area(size);
    supported
        .iter()
        .copied()
        .min_by(|a, b| {
            let key = |s: ImageSize| {
                (
                    (ratio(s).ln() - target_ratio).abs(),
                    (area(s) - target_area).abs(),
                )
            };
            key(*a)
                .partial_cmp(&key(*b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or(size)
}

/// The request rewritten for `target`, with a note for every change.
pub fn translate(req: &GenerationRequest, target: ProviderId) -> (GenerationRequest, Vec<String>) {
    if req.provider == target {
        return (req.clone(), Vec::new());
    }
    let spec = target.spec();
    let mut out = req.clone();
    let mut notes = vec![format!("served by {target} instead of {}", req.provider)];
    out.provider = target;
    if !spec.supports_size(req.size) {
        out.size = nearest_size(req.size, spec.supported_sizes);
        notes.push(format!(
            "size {} -> {} (nearest aspect ratio on {target})",
            req.size, out.size
        ));
    }
    if req.num_images > spec.max_images {
        notes.push(format!(
            "num_images {} split into {} calls of {}",
            req.num_images, req.num_images, spec.max_images
        ));
    }
    if !spec.supports_quality && req.quality.is_some() {
        out.quality = None;
        notes.push(format!("quality dropped ({target} has none)"));
    }
    if !spec.supports_style && req.style.is_some() {
        out.style = None;
        notes.push(format!("style dropped ({target} has none)"));
    }
    if !spec.supports_seed && req.seed.is_some() {
        out.seed = None;
        notes.push(format!("seed dropped ({target} takes none)"));
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegen_shared::domain::{GenerateBody, GenerationLimits};

    fn request(provider: &str, size: &str, n: i64, seed: Option<i64>) -> GenerationRequest {
        let limits = GenerationLimits {
            enabled: ProviderId::ALL.to_vec(),
            configured: ProviderId::ALL.to_vec(),
            default_provider: ProviderId::Dalle3,
            max_images_per_request: 4,
        };
        let body = GenerateBody {
            prompt: "a cat".into(),
            provider: Some(provider.into()),
            size: Some(size.into()),
            quality: None,
            style: None,
            num_images: Some(n),
            seed,
            allow_failover: None,
            deadline_seconds: None,
        };
        GenerationRequest::parse(body, &limits).expect("valid")
    }

    #[test]
    fn nearest_sizes_keep_the_shape() {
        let flux = ProviderId::FluxSchnell.spec().supported_sizes;
        assert_eq!(
            nearest_size(ImageSize::new(1792, 1024), flux),
            ImageSize::new(1536, 1024)
        );
        assert_eq!(
            nearest_size(ImageSize::new(1024, 1792), flux),
            ImageSize::new(1024, 1536)
        );
        assert_eq!(
            nearest_size(ImageSize::new(1024, 1024), flux),
            ImageSize::new(1024, 1024)
        );
        let dalle = ProviderId::Dalle3.spec().supported_sizes;
        assert_eq!(
            nearest_size(ImageSize::new(512, 512), dalle),
            ImageSize::new(1024, 1024)
        );
        assert_eq!(
            nearest_size(ImageSize::new(1536, 1024), dalle),
            ImageSize::new(1792, 1024)
        );
    }

    #[test]
    fn dalle3_to_flux_drops_what_flux_lacks() {
        let (out, notes) = translate(
            &request("dalle3", "1792x1024", 1, None),
            ProviderId::FluxSchnell,
        );
        assert_eq!(
            (out.provider, out.size, out.quality, out.style),
            (
                ProviderId::FluxSchnell,
                ImageSize::new(1536, 1024),
                None,
                None
            )
        );
        assert!(
            notes.iter().any(|n| n.contains("1792x1024 -> 1536x1024")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("quality dropped"))
                && notes.iter().any(|n| n.contains("style dropped"))
        );
    }

    #[test]
    fn flux_to_dalle3_splits_images_and_drops_the_seed() {
        let (out, notes) = translate(
            &request("flux_schnell", "512x512", 3, Some(9)),
            ProviderId::Dalle3,
        );
        assert_eq!(
            (out.size, out.num_images, out.seed),
            (ImageSize::new(1024, 1024), 3, None)
        );
        assert!(
            notes.iter().any(|n| n.contains("split into 3 calls")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("seed dropped")),
            "{notes:?}"
        );
    }

    #[test]
    fn same_provider_is_untouched() {
        let req = request("dalle3", "1024x1024", 1, None);
        let (out, notes) = translate(&req, ProviderId::Dalle3);
        assert_eq!(out, req);
        assert!(notes.is_empty());
    }
}
