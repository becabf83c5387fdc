//! The ingest listener: accepts connections, serves HTTP/1.1 with header and body limits and
//! a read timeout for slow clients, and drains in-flight requests on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Ingest;

/// Serves ingest on `listener` until `shutdown`, then lets open requests finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let limits = &ingest.limits;
    // Heads between the configured limits and this buffer get our own 414/431 with a reason;
    // beyond it hyper answers 431 itself.
    let max_buf = (limits.max_url_bytes + limits.max_header_bytes)
        .saturating_mul(4)
        .max(8192);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(max_buf);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let ingest = ingest.clone();
        let service = service_fn(move |req| {
            let ingest = ingest.clone();
            async move { Ok::<_, std::convert::Infallible>(ingest.handle(req, peer).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "ingest connections still open after the grace period"
        );
    }
}

/// Binds a listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
