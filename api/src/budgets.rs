//! Budgets at submission: which limits apply to a caller (its owner's, from the admin API or the defaults, and
//! its API key's own), what a request may cost at most, and the reservation of that amount in the fleet's
//! counters (`imagegen_shared::budget`). Over a budget the answer is 402 `budget_exceeded`, not 429: a 429 is
//! retried automatically by the OpenAI SDKs and most HTTP clients, and a budget does not come back in seconds,
//! only at midnight UTC or on the first of the month, which the answer names.

use crate::error::{ApiError, BudgetDetail};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use imagegen_shared::budget::{Exceeded, Limit, Period};
use imagegen_shared::cost::{pricing, usd};
use imagegen_shared::db::Session;
use imagegen_shared::db::api_keys::KeyIdentity;
use imagegen_shared::db::budgets::{GroupReads, OwnerBudget};
use imagegen_shared::db::costs::Spender;
use imagegen_shared::domain::GenerationRequest;

/// A reservation made for a submission, to give back if its jobs are not recorded after all.
#[derive(Debug, Clone)]
pub struct Reservation {
    limits: Vec<Limit>,
    amount: i64,
    at: DateTime<Utc>,
}

/// The limits that apply to `owner` submitting with `key`: the owner's budget row (read now, so an admin's
/// change holds at once on every API process) or the defaults, and the key's own.
pub async fn limits_for(
    state: &AppState,
    owner: &str,
    key: Option<&KeyIdentity>,
) -> Result<Vec<Limit>, ApiError> {
    limits_in(state, &mut state.pool.session().await?, owner, key).await
}

/// [`limits_for`] read on a connection the caller holds (a submission's).
pub async fn limits_in(
    state: &AppState,
    session: &mut Session,
    owner: &str,
    key: Option<&KeyIdentity>,
) -> Result<Vec<Limit>, ApiError> {
    let row = imagegen_shared::db::budgets::get_in(session, owner).await?;
    Ok(limits_from(state, owner, row.as_ref(), key))
}

/// Whether nothing but `owner`'s budget row could limit a submission made with `key` (no default budget, no budget
/// on the key). Then the row need not be read before the insert: group commit's insert checks it itself
/// (`Check::UnlessBudgeted`) and hands the job back if the owner has a budget after all.
pub fn only_owner_row_limits(state: &AppState, key: Option<&KeyIdentity>) -> bool {
    state.default_budget_per_day.is_none()
        && state.default_budget_per_month.is_none()
        && key.is_none_or(|k| {
            k.budget_usd_micros_per_day.is_none() && k.budget_usd_micros_per_month.is_none()
        })
}

/// [`limits_for`] with the owner's row read together with the other submissions' of this moment (group commit's
/// plain path, which holds no connection of its own).
pub async fn limits_gathered(
    state: &AppState,
    reads: &GroupReads,
    owner: &str,
    key: Option<&KeyIdentity>,
) -> Result<Vec<Limit>, ApiError> {
    let row = reads.get(&state.pool, owner).await?;
    Ok(limits_from(state, owner, row.as_ref(), key))
}

fn limits_from(
    state: &AppState,
    owner: &str,
    row: Option<&OwnerBudget>,
    key: Option<&KeyIdentity>,
) -> Vec<Limit> {
    let (day, month) = match row {
        Some(r) => (
            r.usd_micros_per_day.or(state.default_budget_per_day),
            r.usd_micros_per_month.or(state.default_budget_per_month),
        ),
        None => (state.default_budget_per_day, state.default_budget_per_month),
    };
    let mut limits = Vec::new();
    let mut add = |spender: Spender, period, limit: Option<i64>| {
        if let Some(usd_micros) = limit {
            limits.push(Limit {
                spender,
                period,
                usd_micros,
            });
        }
    };
    add(Spender::Owner(owner.to_owned()), Period::Day, day);
    add(Spender::Owner(owner.to_owned()), Period::Month, month);
    if let Some(k) = key {
        add(Spender::Key(k.id), Period::Day, k.budget_usd_micros_per_day);
        add(
            Spender::Key(k.id),
            Period::Month,
            k.budget_usd_micros_per_month,
        );
    }
    limits
}

/// The most each request may cost, in micro-dollars (0 for a model the catalogue does not price); an edit's input
/// images count too (`inputs`, by request; shorter than `requests` when the rest are no edits).
pub fn estimates(
    state: &AppState,
    requests: &[&GenerationRequest],
    inputs: &[&crate::edits::StagedEdit],
) -> Vec<i64> {
    let offer = state.offer();
    let today = imagegen_shared::domain::today();
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let Some(model) = offer.catalogue.get(r.model().as_str()) else {
                return 0;
            };
            let output = pricing::max_cost(model, today, r).map_or(0, |c| c.usd_micros);
            let input = match (inputs.get(i), r.edit()) {
                (Some(staged), Some(edit)) => pricing::max_input_cost(
                    model,
                    today,
                    &staged.sizes(),
                    edit.input_fidelity == Some(imagegen_shared::domain::InputFidelity::High),
                    state.edits.limits.max_pixels,
                ),
                _ => 0,
            };
            output.saturating_add(input)
        })
        .collect()
}

/// Reserves `amount` against every limit that applies; `None` when none does.
pub async fn reserve(
    state: &AppState,
    owner: &str,
    key: Option<&KeyIdentity>,
    amount: i64,
) -> Result<Option<Reservation>, ApiError> {
    reserve_within(state, limits_for(state, owner, key).await?, amount).await
}

/// Reserves `amount` against `limits` (read by [`limits_in`]); `None` when there are none.
pub async fn reserve_within(
    state: &AppState,
    limits: Vec<Limit>,
    amount: i64,
) -> Result<Option<Reservation>, ApiError> {
    if limits.is_empty() {
        return Ok(None);
    }
    let at = Utc::now();
    match state
        .budgets
        .reserve(&state.pool, &limits, amount, at)
        .await
    {
        Ok(Ok(())) => Ok(Some(Reservation { limits, amount, at })),
        Ok(Err(exceeded)) => Err(refusal(&exceeded)),
        Err(e) => {
            tracing::warn!(error = %e, "budget store unavailable");
            Err(ApiError::Unavailable(
                "The budget store is unavailable; try again shortly".into(),
            ))
        }
    }
}

/// Gives back a reservation whose jobs were not recorded (a replay, a limit, an error).
pub async fn release(state: &AppState, reservation: Option<&Reservation>) {
    let Some(r) = reservation else { return };
    if let Err(e) = state.budgets.release(&r.limits, r.amount, r.at).await {
        // Counted as spent until the window ends: the safe side of a budget.
        tracing::warn!(error = %e, usd_micros = r.amount, "could not give back a budget reservation");
    }
}

fn refusal(e: &Exceeded) -> ApiError {
    let scope = match e.limit.spender {
        Spender::Owner(_) => "owner",
        Spender::Key(_) => "api_key",
    };
    let period = match e.limit.period {
        Period::Day => "daily",
        Period::Month => "monthly",
    };
    let whose = if scope == "owner" {
        ""
    } else {
        " of this API key"
    };
    tracing::info!(
        scope,
        period,
        limit = e.limit.usd_micros,
        spent = e.spent_usd_micros,
        "budget exceeded"
    );
    metrics::counter!("imagegen_budget_refusals_total", "scope" => scope, "period" => period)
        .increment(1);
    ApiError::BudgetExceeded {
        message: format!(
            "The {period} budget{whose} of ${} is spent (${} so far); it resets at {}",
            usd(e.limit.usd_micros),
            usd(e.spent_usd_micros),
            e.resets_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        detail: BudgetDetail {
            scope,
            period: e.limit.period,
            limit_usd: usd(e.limit.usd_micros),
            spent_usd: usd(e.spent_usd_micros),
            resets_at: e.resets_at,
        },
    }
}

/// Gives back `amount` of a reservation (the blocked items of a batch), keeping the rest.
pub async fn shrink(
    state: &AppState,
    reservation: Option<Reservation>,
    amount: i64,
) -> Option<Reservation> {
    let mut r = reservation?;
    if amount > 0 {
        let part = Reservation {
            amount: amount.min(r.amount),
            ..r.clone()
        };
        release(state, Some(&part)).await;
        r.amount -= part.amount;
    }
    Some(r)
}
