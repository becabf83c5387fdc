//! The accept loop shared by the ingest and admin listeners and the sandbox: HTTP/1.1
//! connections served by a handler, and on shutdown no new connections while open requests
//! finish within a grace; connections still open after it are closed. Request lines pass
//! through [`crate::request_line::Lenient`] first (raw spaces in a sender's URL).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::request_line::Lenient;

/// An HTTP/1.1 connection builder with the tokio timer and a head read timeout set.
pub fn http1(read_timeout: Duration) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    http
}

/// File descriptors kept free for everything but ingest connections: the admin listener and
/// its clients, outbound sockets to Scaleo and the database, the store's files, logs.
pub const FD_RESERVE: u64 = 256;

/// The ingest connection cap actually used: `wanted`, lowered (with a warning) when the
/// process's open-file limit leaves less than [`FD_RESERVE`] besides it.
pub fn connection_cap(wanted: usize) -> usize {
    let Some(limit) = open_file_limit() else {
        return wanted;
    };
    let room = limit.saturating_sub(FD_RESERVE).max(1);
    if (wanted as u64) > room {
        tracing::warn!(
            wanted,
            cap = room,
            open_file_limit = limit,
            "server.max_connections lowered to keep {FD_RESERVE} file descriptors for the admin listener, Scaleo and the store; raise the open-file limit (ulimit -n) to allow more"
        );
        return room as usize;
    }
    wanted
}

/// The soft open-file limit of this process (`Max open files` in `/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `handler` on `listener` until `shutdown`, then lets open requests finish within
/// `grace`. `name` labels the log lines. With `max_connections`, at most that many
/// connections are open at once: the next is accepted only when one closes (until then it
/// waits in the kernel's backlog and takes no file descriptor of ours).
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    http: http1::Builder,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
    max_connections: Option<usize>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = move |req, peer| {
        let fut = handler(req, peer);
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    };
    serve_fallible(
        name,
        listener,
        http,
        handler,
        shutdown,
        grace,
        max_connections,
    )
    .await;
}

/// [`serve`] for a handler that may refuse to answer: its error closes the connection
/// without a response (the sandbox's scripted drops).
pub async fn serve_fallible<H, F, E>(
    name: &'static str,
    listener: TcpListener,
    http: http1::Builder,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
    max_connections: Option<usize>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace is over: connections still open then are closed.
    let cut = CancellationToken::new();
    let slots = max_connections.map(|n| Arc::new(Semaphore::new(n.max(1))));
    let mut full_logged = false;
    loop {
        let permit = match &slots {
            Some(slots) => {
                let permit = match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        if !full_logged {
                            tracing::warn!(
                                listener = name,
                                "connection cap reached (server.max_connections): new connections wait until one closes"
                            );
                            full_logged = true;
                        }
                        tokio::select! {
                            p = slots.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break,
                            },
                            () = shutdown.cancelled() => break,
                        }
                    }
                };
                Some(permit)
            }
            None => None,
        };
        if slots.as_ref().is_some_and(|s| s.available_permits() > 0) {
            full_logged = false;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| handler(req, peer));
        let conn =
            graceful.watch(http.serve_connection(TokioIo::new(Lenient::new(stream)), service));
        let cut = cut.clone();
        tokio::spawn(async move {
            // The slot is free again when the connection ends.
            let _permit = permit;
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(listener = name, error = %e, %peer, "connection ended with an error");
                },
                () = cut.cancelled() => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
        && !grace.is_zero()
    {
        tracing::warn!(
            listener = name,
            ?grace,
            "connections still open after the grace period"
        );
    }
    cut.cancel();
}

/// Binds a listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
