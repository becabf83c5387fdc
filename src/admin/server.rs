//! The admin listener: HTTP/1.1 on its own address, separate from ingest so it can stay on
//! loopback (or a private network) while ingest faces the internet.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Admin;

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open admin requests (a long replay) may run on shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let handler = move |req, _peer| {
        let admin = admin.clone();
        async move { admin.handle(req).await }
    };
    let http = crate::listener::http1(HEADER_READ_TIMEOUT);
    crate::listener::serve("admin", listener, http, handler, shutdown, GRACE, None).await;
}
