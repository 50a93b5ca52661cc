//! What provider calls cost. Every call a provider charges for is recorded as a [`Charge`] in exact micro-dollars
//! (never a float) with how it was priced; a job's cost is the sum of its charges, failover attempts included.
//! [`pricing`] turns a provider's answer into a cost and a request into the most it can cost (what a budget
//! reserves); the figures come from the model catalogue's price of the day.

pub mod pricing;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

/// Micro-dollars in a dollar.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// How a cost was worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostBasis {
    /// The provider's reported `usage` tokens at the catalogue's per-token prices.
    Tokens,
    /// The provider's reported credits (BFL's `cost`) at the catalogue's credit price.
    Credits,
    /// The catalogue's per-image price table.
    PerImage,
    /// The catalogue's per-megapixel price.
    PerMegapixel,
    /// The catalogue's credits-per-image table (the provider did not say what it charged).
    CreditTable,
    /// The catalogue has no price for the model: counted as zero.
    Unpriced,
    /// A job whose charges were priced in more than one way (failover between providers).
    Mixed,
    /// Nothing was charged.
    None,
}

impl CostBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            CostBasis::Tokens => "tokens",
            CostBasis::Credits => "credits",
            CostBasis::PerImage => "per_image",
            CostBasis::PerMegapixel => "per_megapixel",
            CostBasis::CreditTable => "credit_table",
            CostBasis::Unpriced => "unpriced",
            CostBasis::Mixed => "mixed",
            CostBasis::None => "none",
        }
    }

    pub fn parse(s: &str) -> CostBasis {
        [
            CostBasis::Tokens,
            CostBasis::Credits,
            CostBasis::PerImage,
            CostBasis::PerMegapixel,
            CostBasis::CreditTable,
            CostBasis::Unpriced,
            CostBasis::Mixed,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
        .unwrap_or(CostBasis::None)
    }
}

/// An amount with how it was worked out. `estimated` is true when it came from a price table (or a provisional
/// price) rather than from what the provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub usd_micros: i64,
    pub basis: CostBasis,
    pub estimated: bool,
}

impl Cost {
    pub const NOTHING: Cost = Cost {
        usd_micros: 0,
        basis: CostBasis::None,
        estimated: false,
    };

    /// Several costs together (a job's charges, a batch's jobs).
    pub fn sum<'a>(costs: impl IntoIterator<Item = &'a Cost>) -> Cost {
        let mut total = Cost::NOTHING;
        for c in costs {
            total.usd_micros = total.usd_micros.saturating_add(c.usd_micros);
            total.estimated |= c.estimated;
            total.basis = match (total.basis, c.basis) {
                (CostBasis::None, b) => b,
                (a, CostBasis::None) => a,
                (a, b) if a == b => a,
                _ => CostBasis::Mixed,
            };
        }
        total
    }

    pub fn view(&self) -> CostView {
        CostView {
            usd: usd(self.usd_micros),
            usd_micros: self.usd_micros,
            basis: self.basis,
            estimated: self.estimated,
        }
    }
}

/// Micro-dollars as dollars for display (exact to six decimals: the nearest double prints as the decimal).
pub fn usd(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

/// Dollars (a configuration value, a price) as micro-dollars, rounded to the nearest.
pub fn micros(usd: f64) -> i64 {
    (usd * MICROS_PER_USD as f64).round() as i64
}

/// A cost as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CostView {
    /// US dollars (exact to the micro-dollar; `usd_micros` is the same amount as an integer).
    #[schema(example = 0.04224)]
    pub usd: f64,
    /// The same amount in micro-dollars (1 USD = 1,000,000), for exact sums.
    #[schema(example = 42240)]
    pub usd_micros: i64,
    pub basis: CostBasis,
    /// Computed from the catalogue's price tables (or a provisional price) rather than from what the provider
    /// reported.
    pub estimated: bool,
}

/// One charged provider call of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Charge {
    /// The job's attempt number (over all its routes).
    pub attempt: i32,
    /// `provider:model`.
    pub route: String,
    pub usd_micros: i64,
    pub basis: CostBasis,
    pub estimated: bool,
    /// Pictures the provider returned (and charged for) in this call.
    pub images: i32,
}

impl Charge {
    pub fn cost(&self) -> Cost {
        Cost {
            usd_micros: self.usd_micros,
            basis: self.basis,
            estimated: self.estimated,
        }
    }
}
