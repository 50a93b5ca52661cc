//! Who is calling (ENABLE_AUTHENTICATION): an API key of ours (`igk_…`, from `imagegen keys create`) or a bearer
//! JWT from Entra ID / an OIDC issuer. Off, every caller is `anonymous` and may generate but not administer: keys
//! minted by anyone while the service is open would outlive the day authentication is turned on.
//!
//! `Identify` (a route layer on the owner's routes) checks the credential once and leaves the [`Principal`] in the
//! request's extensions; the extractors `Owner`, `Submitter` and `Admin` read it.

pub mod failures;
pub mod keys;
pub mod oidc;

use crate::error::ApiError;
use crate::layers::{Around, Inner};
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::{BoxFuture, Either};
use imagegen_shared::ANONYMOUS_OWNER;
use imagegen_shared::db::api_keys;
use std::future::{Ready, ready};

/// An authenticated caller and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Every job, batch, image and idempotency key is scoped to it.
    pub owner: String,
    /// May submit generation work (AUTH_GENERATE_ROLE; API keys always may).
    pub can_generate: bool,
    /// May use the admin endpoints (AUTH_ADMIN_ROLE; implies generating).
    pub is_admin: bool,
    /// The API key presented, with its own budget (`None` for tokens and anonymous callers).
    pub api_key: Option<api_keys::KeyIdentity>,
}

impl Principal {
    fn anonymous() -> Self {
        Self {
            owner: ANONYMOUS_OWNER.to_owned(),
            can_generate: true,
            is_admin: false,
            api_key: None,
        }
    }
}

/// The credential check and per-minute limit as a route layer (`AroundLayer(Identify)`; `crate::layers` says why
/// not `from_fn`).
#[derive(Clone)]
pub struct Identify(pub AppState);

impl Around for Identify {
    fn around<S: Inner>(&self, req: Request, inner: S) -> BoxFuture<'static, Response> {
        // Three steps chained, not one async fn: a waiting request (wait mode, an event stream) keeps this future for
        // its whole wait, and in the middle step it holds the handler's future and the few bytes `settle` needs,
        // not the request or the look-ups' state.
        let admitted = Box::pin(admit(self.0.clone(), req));
        Box::pin(admitted.then(move |admitted| {
            match admitted {
                Err(refusal) => Either::Left(ready(refusal)),
                Ok(Admitted {
                    req,
                    rate,
                    unidentified,
                }) => Either::Right(
                    crate::layers::call(inner, req)
                        .then(move |response| settle(response, rate, unidentified)),
                ),
            }
        }))
    }
}

/// A request `admit` lets through, with what its answer needs afterwards.
struct Admitted {
    req: Request,
    /// The owner's count this minute (`rate_limit::per_minute`), for the answer's headers.
    rate: Option<crate::rate_limit::Counted>,
    /// A request without any credential (and its client's address): its 401, if the handler gives one, counts as a
    /// failed authentication.
    unidentified: Option<(AppState, Option<std::net::IpAddr>)>,
}

/// Checks the request's credential once for the handlers behind it, then counts the request against its owner's
/// minute (`rate_limit::per_minute`). A request without any credential goes on: a signed download link needs none,
/// and the handlers' extractors answer 401 for everything else.
///
/// Failed authentications count against the client's address (`failures`); over AUTH_FAILURES_PER_MINUTE the
/// address gets 429 before its credential is looked up, unless that credential is one already known to be valid.
async fn admit(state: AppState, mut req: Request) -> Result<Admitted, Response> {
    let mut unidentified = None;
    if !state.authentication {
        req.extensions_mut().insert(Principal::anonymous());
    } else {
        let peer = req
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let client = failures::client_address(peer, req.headers(), &state.trusted_proxies);
        if credential(req.headers()).is_none() {
            if let Some(refusal) = state.auth_failures.refusal(client) {
                return Err(refusal.into_response());
            }
            unidentified = Some(client);
        } else {
            match check(req.headers(), &state, Some(client)).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                }
                Err(e @ ApiError::Unauthorized { .. }) => {
                    return Err(match state.auth_failures.failed(client).await {
                        Some(refusal) => refusal.into_response(),
                        None => e.into_response(),
                    });
                }
                Err(e) => return Err(e.into_response()),
            }
        }
    }
    let owner = req.extensions().get::<Principal>().map(|p| p.owner.clone());
    let rate = crate::rate_limit::per_minute(&state, owner).await?;
    Ok(Admitted {
        req,
        rate,
        unidentified: unidentified.map(|client| (state, client)),
    })
}

/// The handler's answer, with the owner's rate-limit headers; a 401 to a request without credentials counts as a
/// failed authentication (and may become the 429 of too many).
fn settle(
    mut response: Response,
    rate: Option<crate::rate_limit::Counted>,
    unidentified: Option<(AppState, Option<std::net::IpAddr>)>,
) -> Either<Ready<Response>, BoxFuture<'static, Response>> {
    if let Some(rate) = rate {
        rate.add_headers(response.headers_mut());
    }
    match unidentified {
        Some((state, client)) if response.status() == axum::http::StatusCode::UNAUTHORIZED => {
            Either::Right(Box::pin(async move {
                match state.auth_failures.failed(client).await {
                    Some(refusal) => refusal.into_response(),
                    None => response,
                }
            }))
        }
        _ => Either::Left(ready(response)),
    }
}

/// The principal a request's credentials stand for.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Principal, ApiError> {
    check(headers, state, None).await
}

/// `authenticate`, for a request from `client` (`Some(None)`: an unknown address) when failed authentications are
/// limited: an address over the limit is refused (429) unless its credential is cached as valid.
async fn check(
    headers: &HeaderMap,
    state: &AppState,
    client: Option<Option<std::net::IpAddr>>,
) -> Result<Principal, ApiError> {
    let throttled = || client.and_then(|c| state.auth_failures.refusal(c));
    if !state.authentication {
        return Ok(Principal::anonymous());
    }
    let Some(credential) = credential(headers) else {
        return Err(ApiError::Unauthorized {
            message: if state.oidc.is_some() {
                "Authentication required: send `Authorization: Bearer <token or API key>` or `X-API-Key`"
            } else {
                "Authentication required: send an API key as `Authorization: Bearer <key>` or `X-API-Key`"
            }
            .into(),
            invalid_token: false,
        });
    };
    // Logs say why a credential was refused; neither they nor the answer ever contain it.
    if credential.starts_with(api_keys::KEY_PREFIX) {
        return match api_key(state, credential, throttled).await? {
            Some(key) => Ok(Principal {
                owner: key.owner.clone(),
                can_generate: true,
                is_admin: false,
                api_key: Some(key),
            }),
            None => {
                tracing::info!(
                    reason = "unknown, revoked or expired API key",
                    "authentication refused"
                );
                Err(ApiError::Unauthorized {
                    message: "The API key is invalid, revoked or expired".into(),
                    invalid_token: true,
                })
            }
        };
    }
    let Some(oidc) = &state.oidc else {
        tracing::info!(
            reason = "not an API key (no token issuer configured)",
            "authentication refused"
        );
        return Err(ApiError::Unauthorized {
            message: "The credential is not an API key of this service".into(),
            invalid_token: true,
        });
    };
    if let Some(identity) = oidc.cached(credential) {
        return Ok(Principal {
            owner: identity.owner,
            can_generate: identity.can_generate,
            is_admin: identity.is_admin,
            api_key: None,
        });
    }
    if let Some(refusal) = throttled() {
        return Err(refusal);
    }
    match oidc.verify(credential).await {
        Ok(identity) => Ok(Principal {
            owner: identity.owner,
            can_generate: identity.can_generate,
            is_admin: identity.is_admin,
            api_key: None,
        }),
        Err(oidc::TokenError::KeysUnavailable) => {
            tracing::warn!(
                reason = "identity provider keys unavailable",
                "token not checked"
            );
            Err(ApiError::Unavailable(
                oidc::TokenError::KeysUnavailable.to_string(),
            ))
        }
        Err(e) => {
            tracing::info!(reason = %e, "authentication refused");
            Err(ApiError::Unauthorized {
                message: e.to_string(),
                invalid_token: true,
            })
        }
    }
}

/// The key's identity, from the cache (`keys`) or else the database; `None`: unknown, revoked or expired.
/// `throttled` is asked before the database: an address over its failure limit gets no lookup.
async fn api_key(
    state: &AppState,
    key: &str,
    throttled: impl Fn() -> Option<ApiError>,
) -> Result<Option<api_keys::KeyIdentity>, ApiError> {
    let hash = api_keys::hash(key);
    match state.key_cache.get(&hash) {
        Some(keys::Verdict::Valid(identity)) => return Ok(Some(identity)),
        Some(keys::Verdict::Refused) => return Ok(None),
        None => {}
    }
    if let Some(refusal) = throttled() {
        return Err(refusal);
    }
    let epoch = state.key_cache.epoch();
    let found = api_keys::identify_hash(&state.pool, &hash).await;
    let outcome = match &found {
        Ok(Some(_)) => "valid",
        Ok(None) => "refused",
        Err(_) => "error",
    };
    metrics::counter!("imagegen_auth_key_lookups_total", "outcome" => outcome).increment(1);
    let found = found?;
    let verdict = match &found {
        Some(identity) => keys::Verdict::Valid(identity.clone()),
        None => keys::Verdict::Refused,
    };
    state.key_cache.put(&hash, verdict, epoch);
    Ok(found)
}

/// The principal `Identify` left, else checked now (routes outside that middleware).
async fn principal(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    match parts.extensions.get::<Principal>() {
        Some(p) => Ok(p.clone()),
        // Boxed: `Identify` has almost always put the principal there, and an extractor's future is part of the
        // handler's, which a waiting request holds for the whole wait.
        None => Box::pin(authenticate(&parts.headers, state)).await,
    }
}

/// The caller's owner name: every read and write is scoped to it.
#[derive(Debug, Clone)]
pub struct Owner(pub String);

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        principal(parts, state).await.map(|p| Owner(p.owner))
    }
}

/// The caller, whoever it is (for endpoints whose answer depends on the caller's role).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        principal(parts, state).await.map(Caller)
    }
}

/// A caller allowed to generate images (403 otherwise); derefs to its owner name.
#[derive(Debug, Clone)]
pub struct Submitter(pub String, pub Option<api_keys::KeyIdentity>);

impl FromRequestParts<AppState> for Submitter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = principal(parts, state).await?;
        if !p.can_generate {
            tracing::info!(owner = %p.owner, reason = "no generate role", "request forbidden");
            return Err(ApiError::Forbidden(format!(
                "Generating images needs the role or scope {}",
                state.generate_role
            )));
        }
        Ok(Submitter(p.owner, p.api_key))
    }
}

/// A caller allowed to use the admin endpoints (403 otherwise).
#[derive(Debug, Clone)]
pub struct Admin(pub String);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = principal(parts, state).await?;
        if !state.authentication {
            return Err(ApiError::Forbidden(
                "The admin endpoints need ENABLE_AUTHENTICATION=true; `imagegen keys` manages keys meanwhile".into(),
            ));
        }
        if !p.is_admin {
            tracing::info!(owner = %p.owner, reason = "no admin role", "request forbidden");
            return Err(ApiError::Forbidden(format!(
                "This endpoint needs the role or scope {}",
                state.admin_role
            )));
        }
        Ok(Admin(p.owner))
    }
}

/// The credential a request carries: `Authorization: Bearer <x>` or `X-API-Key: <x>`.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, rest) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::credential;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_or_x_api_key() {
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer igk_a")])),
            Some("igk_a")
        );
        assert_eq!(
            credential(&headers(&[("authorization", "bearer  igk_a ")])),
            Some("igk_a")
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", " igk_b ")])),
            Some("igk_b")
        );
        // A present Authorization header decides, even when it is not a bearer.
        assert_eq!(
            credential(&headers(&[
                ("authorization", "Basic eA=="),
                ("x-api-key", "igk_b")
            ])),
            None
        );
        assert_eq!(credential(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(credential(&headers(&[])), None);
    }
}
