//! `GET /api/v1/usage`: what the caller's images cost, from the charges of every provider call (indexed aggregate
//! queries in the database, never a sum over job rows here). Admins may ask for any owner, or `owner=*` for all.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::AppQuery;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use imagegen_shared::cost::usd;
use imagegen_shared::db::costs::{self, GroupBy, UsageRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/usage", get(usage))
}

/// The longest range one report covers.
const MAX_RANGE_DAYS: i64 = 400;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start, inclusive: a UTC date (`2026-11-01`) or an RFC 3339 time. Default: the first of this month.
    pub from: Option<String>,
    /// End, exclusive: a UTC date (the report stops at its midnight) or an RFC 3339 time. Default: now.
    pub to: Option<String>,
    /// `day` (default), `model` or `provider`.
    pub group_by: Option<GroupBy>,
    /// Admins only: another owner's usage, or `*` for every owner's.
    pub owner: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroup {
    /// The day (`YYYY-MM-DD`, UTC), model id or provider id.
    pub key: String,
    /// Pictures the providers returned (and charged for).
    pub images: i64,
    /// Jobs with at least one charged provider call.
    pub jobs: i64,
    pub usd: f64,
    pub usd_micros: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub success: bool,
    /// Whose usage: an owner, or `*` for every owner.
    pub owner: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: GroupBy,
    pub groups: Vec<UsageGroup>,
    /// The whole range (a job charged on two providers counts once here).
    pub total: UsageGroup,
}

fn group(row: UsageRow) -> UsageGroup {
    UsageGroup {
        key: row.key,
        images: row.images,
        jobs: row.jobs,
        usd: usd(row.usd_micros),
        usd_micros: row.usd_micros,
    }
}

/// A bound: a date means its midnight UTC.
fn parse_bound(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let value = value.trim();
    if let Ok(day) = value.parse::<NaiveDate>() {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::InvalidBody(format!(
                "{name}: expected a date (YYYY-MM-DD) or an RFC 3339 time, got '{value}'"
            ))
        })
}

/// Usage and cost.
///
/// Images, jobs and USD of the caller's provider calls in a time range, grouped by day, model or provider, with a
/// total. Costs are those recorded per charged provider call (see a job's `cost` and `charges`).
#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport),
        (status = 400, description = "A bad bound, group or range (`validation_failed`)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`owner` of someone else without the admin role", body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    Caller(caller): Caller,
    AppQuery(q): AppQuery<UsageQuery>,
) -> Result<axum::Json<UsageReport>, ApiError> {
    let now = Utc::now();
    // An empty parameter is as good as none.
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let (q_from, q_to, q_owner) = (given(&q.from), given(&q.to), given(&q.owner));
    let from = match &q_from {
        Some(v) => parse_bound("from", v)?,
        None => {
            let today = now.date_naive();
            NaiveDate::from_ymd_opt(today.year(), today.month(), 1)
                .unwrap_or(today)
                .and_time(chrono::NaiveTime::MIN)
                .and_utc()
        }
    };
    let to = match &q_to {
        Some(v) => parse_bound("to", v)?,
        None => now,
    };
    if from >= to {
        return Err(ApiError::InvalidBody("from must be earlier than to".into()));
    }
    if (to - from).num_days() > MAX_RANGE_DAYS {
        return Err(ApiError::InvalidBody(format!(
            "A report covers at most {MAX_RANGE_DAYS} days"
        )));
    }
    let owner = match q_owner.as_deref() {
        None => caller.owner.clone(),
        Some(o) if o == caller.owner => caller.owner.clone(),
        Some(o) => {
            if !(state.authentication && caller.is_admin) {
                return Err(ApiError::Forbidden(format!(
                    "Another owner's usage needs the role or scope {}",
                    state.admin_role
                )));
            }
            o.to_owned()
        }
    };
    let group_by = q.group_by.unwrap_or(GroupBy::Day);
    let scope = (owner != "*").then_some(owner.as_str());
    let (rows, total) = costs::usage(&state.pool, scope, from, to, group_by).await?;
    Ok(axum::Json(UsageReport {
        success: true,
        owner,
        from,
        to,
        group_by,
        groups: rows.into_iter().map(group).collect(),
        total: group(UsageRow {
            key: "total".into(),
            ..total
        }),
    }))
}
