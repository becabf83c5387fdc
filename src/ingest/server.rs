//! The ingest listener: HTTP/1.1 with header and body limits and a read timeout for slow
//! clients, on the shared accept loop ([`crate::listener`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Ingest;

/// Serves ingest on `listener` until `shutdown`, then lets open requests finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
    grace: Duration,
    max_connections: usize,
) {
    let limits = &ingest.limits;
    // Heads between the configured limits and this buffer get our own 414/431 with a reason;
    // beyond it hyper answers 431 itself.
    let max_buf = (limits.max_url_bytes + limits.max_header_bytes)
        .saturating_mul(4)
        .max(8192);
    let mut http = crate::listener::http1(limits.read_timeout);
    http.max_buf_size(max_buf);
    let handler = move |req, peer| {
        let ingest = ingest.clone();
        async move { ingest.handle(req, peer).await }
    };
    crate::listener::serve(
        "ingest",
        listener,
        http,
        handler,
        shutdown,
        grace,
        Some(max_connections),
    )
    .await;
}
