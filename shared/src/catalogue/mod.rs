//! The model catalogue as data: `shared/catalogue/models.toml` compiled in, optionally overlaid at start-up by
//! `MODEL_CATALOG_FILE` (entries with a known id replace it, new ids are added after the built-in ones). The API
//! validates requests against it, `GET /api/v1/models` and `/api/v1/providers` show it, the worker builds its routes
//! and failover translations from it.
//!
//! A file entry may say `extends = "<id>"`: it starts as a copy of that entry (top-level fields; a table such as
//! `serves` is replaced whole) and its own fields win. Snapshots and sibling models stay one line each that way.

mod model;

pub use model::{
    CreditTable, EditSpec, Family, ModelSpec, ModelStatus, Price, Serving, SizeParam, SizeRules,
    SizeSpec, TokenPrices,
};

use crate::domain::options::Quality;

/// The most input images any model takes in one edit (OpenAI's GPT image models: 16).
pub const MAX_EDIT_INPUTS: u8 = 16;
use crate::domain::prompt::MAX_PROMPT_CHARS;
use crate::domain::provider::{ModelId, ProviderId};
use chrono::NaiveDate;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The catalogue shipped in the binary.
const BUILTIN: &str = include_str!("../../catalogue/models.toml");

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: model '{id}': {message}")]
    Entry {
        origin: String,
        id: String,
        message: String,
    },
    #[error("{origin}: {message}")]
    File { origin: String, message: String },
}

#[derive(Debug)]
pub struct Catalogue {
    models: Vec<Arc<ModelSpec>>,
    index: HashMap<String, usize>,
    quality_ranks: BTreeMap<Quality, u8>,
    legacy_providers: BTreeMap<String, ModelId>,
}

/// The file's top level.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTop {
    #[serde(default)]
    quality_ranks: BTreeMap<Quality, u8>,
    #[serde(default)]
    legacy_providers: BTreeMap<String, ModelId>,
}

impl Catalogue {
    /// The built-in catalogue (its validity is a test: `builtin_catalogue_is_valid`).
    pub fn builtin() -> Arc<Catalogue> {
        static BUILT: OnceLock<Arc<Catalogue>> = OnceLock::new();
        BUILT
            .get_or_init(|| {
                #[allow(clippy::expect_used)]
                let catalogue = Catalogue::parse_layers(&[("built-in catalogue", BUILTIN)])
                    .expect("the built-in catalogue parses (tested)");
                Arc::new(catalogue)
            })
            .clone()
    }

    /// The built-in catalogue with `file` laid over it, checked as of `today`.
    pub fn load(file: Option<&Path>, today: NaiveDate) -> Result<Arc<Catalogue>, CatalogueError> {
        let Some(path) = file else {
            return Ok(Self::builtin());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let origin = path.display().to_string();
        let catalogue =
            Catalogue::parse_layers(&[("built-in catalogue", BUILTIN), (&origin, &text)])?;
        catalogue
            .validate(today)
            .map_err(|message| CatalogueError::File {
                origin: origin.clone(),
                message,
            })?;
        Ok(Arc::new(catalogue))
    }

    /// Parses each layer in order; later layers replace entries with the same id and add new ones.
    pub fn parse_layers(layers: &[(&str, &str)]) -> Result<Catalogue, CatalogueError> {
        let mut raw: Vec<(String, toml::Table)> = Vec::new();
        let mut quality_ranks = BTreeMap::new();
        let mut legacy_providers = BTreeMap::new();
        for (origin, text) in layers {
            let syntax = |message: String| CatalogueError::Syntax {
                origin: (*origin).to_owned(),
                message,
            };
            let mut table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| syntax(e.to_string()))?;
            let models = match table.remove("models") {
                None => Vec::new(),
                Some(toml::Value::Array(models)) => models,
                Some(_) => {
                    return Err(syntax(
                        "`models` must be an array of tables ([[models]])".into(),
                    ));
                }
            };
            let prices = match table.remove("prices") {
                None => Vec::new(),
                Some(toml::Value::Array(prices)) => prices,
                Some(_) => {
                    return Err(syntax(
                        "`prices` must be an array of tables ([[prices]])".into(),
                    ));
                }
            };
            let top: FileTop = from_toml(toml::Value::Table(table)).map_err(syntax)?;
            quality_ranks.extend(top.quality_ranks);
            legacy_providers.extend(top.legacy_providers);
            for entry in models {
                let toml::Value::Table(entry) = entry else {
                    return Err(syntax("each [[models]] entry must be a table".into()));
                };
                let Some(id) = entry
                    .get("id")
                    .and_then(toml::Value::as_str)
                    .map(str::to_owned)
                else {
                    return Err(syntax("a [[models]] entry has no `id`".into()));
                };
                let entry =
                    resolve_extends(&raw, entry).map_err(|message| CatalogueError::Entry {
                        origin: (*origin).to_owned(),
                        id: id.clone(),
                        message,
                    })?;
                match raw.iter_mut().find(|(known, _)| *known == id) {
                    Some(slot) => slot.1 = entry,
                    None => raw.push((id, entry)),
                }
            }
            for price in prices {
                add_price(&mut raw, price).map_err(|message| CatalogueError::File {
                    origin: (*origin).to_owned(),
                    message,
                })?;
            }
        }
        let mut models = Vec::with_capacity(raw.len());
        let mut index = HashMap::new();
        for (id, table) in raw {
            let spec: ModelSpec =
                from_toml(toml::Value::Table(table)).map_err(|message| CatalogueError::Entry {
                    origin: "catalogue".into(),
                    id: id.clone(),
                    message,
                })?;
            index.insert(id.to_ascii_lowercase(), models.len());
            models.push(Arc::new(spec));
        }
        Ok(Catalogue {
            models,
            index,
            quality_ranks,
            legacy_providers,
        })
    }

    /// Every model in file order.
    pub fn models(&self) -> impl Iterator<Item = &Arc<ModelSpec>> {
        self.models.iter()
    }

    /// A model by id (any case).
    pub fn get(&self, id: &str) -> Option<&Arc<ModelSpec>> {
        self.index
            .get(&id.trim().to_ascii_lowercase())
            .and_then(|i| self.models.get(*i))
    }

    /// The model a seed provider name (`dalle3`, `flux_schnell`) stands for.
    pub fn legacy_model(&self, name: &str) -> Option<&ModelId> {
        self.legacy_providers
            .get(&name.trim().to_ascii_lowercase().replace('-', "_"))
    }

    pub fn legacy_names(&self) -> impl Iterator<Item = (&String, &ModelId)> {
        self.legacy_providers.iter()
    }

    pub fn quality_rank(&self, quality: Quality) -> Option<u8> {
        self.quality_ranks.get(&quality).copied()
    }

    /// The models `provider` serves (today or not), in file order.
    pub fn served_by(&self, provider: ProviderId) -> impl Iterator<Item = &Arc<ModelSpec>> {
        self.models
            .iter()
            .filter(move |m| m.serves.contains_key(&provider))
    }

    /// Every rule the service relies on; the message names the entry and the rule broken.
    pub fn validate(&self, today: NaiveDate) -> Result<(), String> {
        for q in Quality::ALL {
            if q != &Quality::Auto && self.quality_rank(*q).is_none() {
                return Err(format!("[quality_ranks] has no rank for '{q}'"));
            }
        }
        for (name, model) in &self.legacy_providers {
            if self.get(model.as_str()).is_none() {
                return Err(format!(
                    "[legacy_providers] {name} names unknown model '{model}'"
                ));
            }
        }
        for m in &self.models {
            check_model(self, m, today).map_err(|e| format!("model '{}': {e}", m.id))?;
        }
        Ok(())
    }
}

/// Prices are finite and not negative, and say something.
fn check_price(p: &Price) -> Result<(), String> {
    let mut figures: Vec<f64> = Vec::new();
    if let Some(t) = &p.per_million_tokens {
        figures.extend([t.text_input, t.image_input, t.image_output]);
    }
    figures.extend(p.per_image.iter().flat_map(|t| t.values().copied()));
    figures.extend(p.per_megapixel);
    figures.extend(p.per_credit);
    if let Some(c) = &p.credits {
        figures.extend([c.first_mp, c.extra_mp]);
    }
    if figures.is_empty() {
        return Err("names no figure".into());
    }
    if figures.iter().any(|f| !f.is_finite() || *f < 0.0) {
        return Err("figures must be finite and not negative".into());
    }
    if p.credits.is_some() && p.per_credit.is_none() {
        return Err("`credits` needs `per_credit`".into());
    }
    Ok(())
}

fn check_model(catalogue: &Catalogue, m: &ModelSpec, today: NaiveDate) -> Result<(), String> {
    let id = m.id.as_str();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
    {
        return Err("ids are lowercase letters, digits, '-', '.' and '_'".into());
    }
    if m.serves.is_empty() {
        return Err("`serves` names no provider".into());
    }
    if m.max_images == 0 || m.images_per_call == 0 || m.images_per_call > m.max_images {
        return Err("need 1 <= images_per_call <= max_images".into());
    }
    if let Some(e) = &m.edits
        && (e.max_input_images == 0 || e.max_input_images > MAX_EDIT_INPUTS)
    {
        return Err(format!(
            "edits.max_input_images must be 1..={MAX_EDIT_INPUTS}"
        ));
    }
    if m.max_prompt_chars == 0 || m.max_prompt_chars > MAX_PROMPT_CHARS as u32 {
        return Err(format!("max_prompt_chars must be 1..={}", MAX_PROMPT_CHARS));
    }
    for p in &m.prices {
        check_price(p).map_err(|e| format!("price from {}: {e}", p.effective_on))?;
    }
    let dates = [
        ("released_on", m.released_on),
        ("deprecated_on", m.deprecated_on),
        ("retires_on", m.retires_on),
    ];
    let mut last: Option<(&str, NaiveDate)> = None;
    for (name, date) in dates {
        if let Some(d) = date {
            if let Some((prev, p)) = last
                && d < p
            {
                return Err(format!("{name} {d} comes before {prev} {p}"));
            }
            last = Some((name, d));
        }
    }
    for (provider, serving) in &m.serves {
        if serving.model.trim().is_empty() {
            return Err(format!("serves.{provider}.model is empty"));
        }
        if let (Some(own), Some(model)) = (serving.retires_on, m.retires_on)
            && own > model
        {
            return Err(format!(
                "serves.{provider}.retires_on {own} is after the model's retires_on {model}"
            ));
        }
        if let Some(formats) = &serving.output_formats
            && formats.iter().any(|f| !m.output_formats.contains(f))
        {
            return Err(format!(
                "serves.{provider}.output_formats must be a subset of output_formats"
            ));
        }
    }
    if m.sizes.list.is_empty() {
        return Err("sizes.list must name at least one size".into());
    }
    if !m.accepts_size(m.sizes.default) {
        return Err(format!(
            "sizes.default {} is not accepted by the model itself",
            m.sizes.default
        ));
    }
    if let Some(rules) = &m.sizes.rules {
        if rules.multiple_of == 0 || rules.min_side > rules.max_side {
            return Err("sizes.rules: need multiple_of >= 1 and min_side <= max_side".into());
        }
        if let Some(bad) = m.sizes.list.iter().find(|s| !rules.allow(**s)) {
            return Err(format!("sizes.list has {bad}, which sizes.rules refuse"));
        }
    }
    if let Some(q) = m.default_quality
        && !m.qualities.contains(&q)
    {
        return Err(format!("default_quality {q} is not in qualities"));
    }
    if let Some(s) = m.default_style
        && !m.styles.contains(&s)
    {
        return Err(format!("default_style {s} is not in styles"));
    }
    if m.output_formats.is_empty() {
        return Err("output_formats is empty".into());
    }
    if let Some(replacement) = &m.replacement {
        let Some(target) = catalogue.get(replacement.as_str()) else {
            return Err(format!(
                "replacement '{replacement}' is not in the catalogue"
            ));
        };
        if target.id == m.id {
            return Err("a model cannot replace itself".into());
        }
        if target.status_on(today) == ModelStatus::Retired {
            return Err(format!("replacement '{replacement}' is retired itself"));
        }
    }
    if m.status_on(today) == ModelStatus::Retired && m.replacement.is_none() {
        return Err("a retired model needs a replacement (or remove it)".into());
    }
    Ok(())
}

/// The entry with its `extends` base applied (top-level keys; the entry's own win).
fn resolve_extends(
    known: &[(String, toml::Table)],
    mut entry: toml::Table,
) -> Result<toml::Table, String> {
    let Some(base) = entry.remove("extends") else {
        return Ok(entry);
    };
    let base = base.as_str().ok_or("`extends` must be a model id")?;
    let Some((_, base_table)) = known.iter().find(|(id, _)| id == base) else {
        return Err(format!("extends '{base}', which is not defined before it"));
    };
    let mut merged = base_table.clone();
    merged.extend(entry);
    Ok(merged)
}

/// TOML to a typed value through JSON, so dates arrive as `YYYY-MM-DD` strings that chrono reads.
/// A `[[prices]]` entry (`model = "<id>"` and a price's fields): added to that model's price history, so a
/// negotiated price is a few lines of an override file and the list price stays for the days before it.
fn add_price(raw: &mut [(String, toml::Table)], price: toml::Value) -> Result<(), String> {
    let toml::Value::Table(mut price) = price else {
        return Err("each [[prices]] entry must be a table".into());
    };
    let Some(toml::Value::String(model)) = price.remove("model") else {
        return Err("a [[prices]] entry needs `model = \"<id>\"`".into());
    };
    let Some((_, entry)) = raw
        .iter_mut()
        .find(|(id, _)| id.eq_ignore_ascii_case(&model))
    else {
        return Err(format!("[[prices]]: no model '{model}' in the catalogue"));
    };
    let mut history = match entry.remove("price") {
        None => Vec::new(),
        Some(toml::Value::Array(list)) => list,
        Some(one) => vec![one],
    };
    history.push(toml::Value::Table(price));
    entry.insert("price".into(), toml::Value::Array(history));
    Ok(())
}

fn from_toml<T: serde::de::DeserializeOwned>(value: toml::Value) -> Result<T, String> {
    serde_json::from_value(toml_to_json(value)).map_err(|e| e.to_string())
}

fn toml_to_json(value: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests;
