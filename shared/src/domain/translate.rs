//! A request rewritten for another model (a retired model's replacement, or a failover target), or for a provider
//! that offers less of the same model (Azure: no webp). Everything is read from the catalogue: sizes by shape and
//! area within the target's list or rules, quality by rank, options the target lacks dropped. Every change is noted.

use super::options::{Background, ImageSize, OutputFormat, Size};
use super::provider::ProviderId;
use super::request::GenerationRequest;
use crate::catalogue::{Catalogue, ModelSpec};

/// The listed size whose aspect ratio is nearest, then whose area is nearest.
pub fn nearest_listed(size: ImageSize, list: &[ImageSize]) -> Option<ImageSize> {
    let target_ratio = size.aspect().ln();
    let target_area = size.pixels() as f64;
    list.iter().copied().min_by(|a, b| {
        let key = |s: ImageSize| {
            (
                (s.aspect().ln() - target_ratio).abs(),
                (s.pixels() as f64 - target_area).abs(),
            )
        };
        key(*a)
            .partial_cmp(&key(*b))
            .unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// The size `target` takes for `size`: itself when accepted, else the nearest by the target's rules or list.
pub fn fit_size(size: Size, target: &ModelSpec) -> Size {
    if target.accepts_size(size) {
        return size;
    }
    match size {
        Size::Auto => target.sizes.default,
        Size::Exact(s) => match &target.sizes.rules {
            Some(rules) => Size::Exact(rules.fit(s)),
            None => nearest_listed(s, &target.sizes.list).map_or(target.sizes.default, Size::Exact),
        },
    }
}

/// Why `target` cannot take an edit's inputs.
fn edit_refusal(edit: &super::EditParams, target: &ModelSpec) -> String {
    let t = &target.id;
    match &target.edits {
        None => format!("{t} does not edit images"),
        Some(e) if edit.mask && !e.mask => format!("{t} takes no mask"),
        Some(e) => format!(
            "{t} takes 1 to {} input images; this edit has {}",
            e.max_input_images, edit.images
        ),
    }
}

/// The request for `target` (served by `provider`, when known), with a note per change; `Err` when the target
/// cannot take the request at all (its prompt is too long there, or it cannot edit with the request's inputs).
pub fn translate(
    req: &GenerationRequest,
    target: &ModelSpec,
    provider: Option<ProviderId>,
    catalogue: &Catalogue,
) -> Result<(GenerationRequest, Vec<String>), String> {
    let mut out = req.clone();
    let mut notes = Vec::new();
    let t = &target.id;
    let prompt_chars = req.prompt.as_str().chars().count();
    if prompt_chars > target.max_prompt_chars as usize {
        return Err(format!(
            "{t} takes prompts of at most {} characters; this one has {prompt_chars}",
            target.max_prompt_chars
        ));
    }
    if let Some(edit) = req.edit() {
        if !edit.fits(target) {
            return Err(edit_refusal(edit, target));
        }
        if let Some(f) = edit.input_fidelity
            && !target.edits.as_ref().is_some_and(|e| e.input_fidelity)
        {
            let mut e = edit.clone();
            e.input_fidelity = None;
            out.edit = Some(e);
            notes.push(format!(
                "input_fidelity {} dropped ({t} takes none)",
                f.as_str()
            ));
        }
    }
    if req.model != target.id {
        out.model = target.id.clone();
        notes.push(format!("served by {t} instead of {}", req.model));
    }

    out.size = fit_size(req.size, target);
    if out.size != req.size {
        notes.push(format!(
            "size {} -> {} (nearest on {t})",
            req.size, out.size
        ));
    }
    // Split calls are noted when the model changes; a model's own per-call limit is its business.
    if req.model != target.id && req.num_images > target.images_per_call {
        let calls = req.num_images.div_ceil(target.images_per_call);
        notes.push(format!(
            "num_images {} split into {calls} calls of up to {}",
            req.num_images, target.images_per_call
        ));
    }

    out.quality = match req.quality {
        None => target.default_quality,
        Some(q) if target.qualities.contains(&q) => Some(q),
        Some(_) if target.qualities.is_empty() => None,
        Some(q) => match catalogue.quality_rank(q) {
            // `auto` (or an unranked level): the target's own default.
            None => target.default_quality,
            Some(rank) => target
                .qualities
                .iter()
                .copied()
                .filter_map(|c| catalogue.quality_rank(c).map(|r| (c, r)))
                // Nearest rank; on a tie the higher level.
                .min_by_key(|(_, r)| (r.abs_diff(rank), std::cmp::Reverse(*r)))
                .map(|(c, _)| c)
                .or(target.default_quality),
        },
    };
    match (req.quality, out.quality) {
        (Some(from), Some(to)) if from != to => notes.push(format!("quality {from} -> {to}")),
        (Some(from), None) => notes.push(format!("quality {from} dropped ({t} has none)")),
        _ => {}
    }

    out.style = match req.style {
        Some(s) if target.styles.contains(&s) => Some(s),
        Some(s) => {
            notes.push(format!("style {s} dropped ({t} has none)"));
            None
        }
        None => None,
    };
    if let Some(seed) = req.seed
        && !target.seed
    {
        out.seed = None;
        notes.push(format!("seed {seed} dropped ({t} takes none)"));
    }

    let formats = match provider {
        Some(p) => target.formats_on(p),
        None => &target.output_formats,
    };
    if let Some(f) = req.output_format
        && !formats.contains(&f)
    {
        let to = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp]
            .into_iter()
            .find(|c| formats.contains(c) && (c.has_alpha() || !f.has_alpha()))
            .or_else(|| formats.first().copied());
        out.output_format = to;
        match to {
            Some(to) => notes.push(format!("output_format {f} -> {to}")),
            None => notes.push(format!("output_format {f} dropped")),
        }
    }
    if let Some(c) = req.output_compression
        && (!target.output_compression || !out.output_format.is_some_and(OutputFormat::is_lossy))
    {
        out.output_compression = None;
        notes.push(format!("output_compression {c} dropped"));
    }
    if let Some(b) = req.background {
        let alpha_ok = out.output_format.is_none_or(OutputFormat::has_alpha);
        if !target.backgrounds.contains(&b) || (b == Background::Transparent && !alpha_ok) {
            out.background = target
                .backgrounds
                .contains(&Background::Auto)
                .then_some(Background::Auto);
            match out.background {
                Some(to) => notes.push(format!("background {b} -> {to}")),
                None => notes.push(format!("background {b} dropped ({t} has none)")),
            }
        }
    }
    if let Some(m) = req.moderation
        && !target.moderation.contains(&m)
    {
        out.moderation = None;
        notes.push(format!("moderation {m} dropped ({t} has no such setting)"));
    }
    Ok((out, notes))
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
