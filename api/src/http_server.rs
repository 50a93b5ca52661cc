//! The API's HTTP/1.1 server: hyper's HTTP/1 connections driven directly rather than through `axum::serve`.
//!
//! Why not `axum::serve`: it first sniffs every connection for the HTTP/2 preface (hyper-util's auto builder) and then
//! hands hyper those 24 bytes on their own, so hyper's first read lands in a buffer already holding them and grows it
//! from 8 to 16 KiB. A wait-mode request keeps its connection (and that buffer) for the whole job, so at 10,000
//! waiters the sniff cost 80 MiB. Served here, the read buffer stays at hyper's 8 KiB. We serve HTTP/1.1 only (TLS
//! and HTTP/2 belong to the load balancer in front), and add what `axum::serve` lacked: a deadline for a request's
//! header section (slow clients cannot hold a connection open forever) and TCP_NODELAY.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client has to send a request's header section, and how long an idle keep-alive connection stays open
/// (hyper starts the same clock when it waits for the next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to pause accepting after an error that is not about one connection (EMFILE: out of file descriptors),
/// so that open connections can finish and free some.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets every open request finish
/// (idle keep-alive connections are closed at once) and returns. Each request carries its connection's remote
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    pause_after(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are written whole; waiting for an ACK before the last small segment only adds latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = app
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client that goes away mid-request, a malformed request, a header deadline missed: theirs.
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors about one connection (reset or aborted before we took it) are the client's; anything else (out of file
/// descriptors) is ours, logged, and waited out briefly instead of spinning on `accept`.
async fn pause_after(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %error, "accept failed; pausing");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}
