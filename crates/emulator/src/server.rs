//! The accept loop: HTTP/1.1 with hyper, one task per connection, each closed when its client
//! takes longer than [`HEADER_READ_TIMEOUT`] to send a request's head (slowloris). Each request
//! carries a [`Conn`] extension with the peer address (for the admin API's loopback rule) and a
//! switch that drops the connection without an answer (for the connection-drop fault).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower_service::Service;

/// Per-connection facts handed to handlers.
#[derive(Clone)]
pub(crate) struct Conn {
    pub peer: SocketAddr,
    abort: Arc<Notify>,
}

impl Conn {
    /// Closes the connection without writing a response. The caller should then never
    /// complete (the connection task drops it).
    pub(crate) fn drop_connection(&self) {
        self.abort.notify_one();
    }
}

/// How long a graceful shutdown waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a connection may take to send a request's line and headers (and how long an
/// idle keep-alive connection stays open): a slow or stalled client is disconnected then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    header_read_timeout: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        // Only latency is at stake: small answers may wait for Nagle.
                        tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
                    }
                    conns.spawn(connection(stream, peer, router.clone(), shutdown.clone(), header_read_timeout));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    header_read_timeout: Duration,
) {
    let abort = Arc::new(Notify::new());
    let info = Conn { peer, abort: Arc::clone(&abort) };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        () = abort.notified() => {
            tracing::debug!(%peer, "connection dropped on purpose");
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = abort.notified() => {}
            }
        }
    }
}
