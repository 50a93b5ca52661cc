//! Hand-written tower layers for the per-request plumbing (`middleware::Envelope`, `middleware::HttpMetrics`,
//! `auth::Identify`), rather than axum's `from_fn`.
//!
//! Why: a waiting request (wait mode, an event stream) keeps its layers' futures for its whole wait. A `from_fn`
//! future holds the request itself twice (as its argument and as `Next::run`'s) and the next layer's call besides;
//! an `Around` holds the inner service's future and whatever small values it chose to keep. At 10,000 waiting
//! requests that was tens of MiB (docs/performance.md).

use axum::extract::Request;
use axum::response::Response;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::task::{Context, Poll};

/// The service a layer wraps: axum's routes and layers answer every request (their error type is `Infallible`).
pub trait Inner:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Send
        + 'static
{
}

/// What a layer does around the service it wraps: given the request and that service, made ready, the answer.
pub trait Around: Clone + Send + Sync + 'static {
    fn around<S: Inner>(&self, req: Request, inner: S) -> BoxFuture<'static, Response>;
}

/// The layer of an `Around`.
#[derive(Clone, Copy, Default)]
pub struct AroundLayer<A>(pub A);

impl<A: Clone, S> tower::Layer<S> for AroundLayer<A> {
    type Service = AroundService<A, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AroundService {
            around: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct AroundService<A, S> {
    around: A,
    inner: S,
}

impl<A: Around, S: Inner + Clone> tower::Service<Request> for AroundService<A, S> {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Map<
        BoxFuture<'static, Response>,
        fn(Response) -> Result<Response, Infallible>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service that was made ready is the one called; a fresh clone stays for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.around.around(req, inner).map(Ok)
    }
}

/// `inner` answers `req` (it is ready: `AroundService` made it so). Not an async fn: that would keep `inner` and the
/// request's slot beside the service's future for the whole request; this is the service's future alone.
pub fn call<S: Inner>(
    mut inner: S,
    req: Request,
) -> impl Future<Output = Response> + Send + 'static {
    inner.call(req).map(|answer| match answer {
        Ok(response) => response,
        Err(never) => match never {},
    })
}
