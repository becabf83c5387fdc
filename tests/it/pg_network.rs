//! The PostgreSQL store behind a network that drops its connections silently: a TCP proxy
//! between the relay and the harness's server stops passing the bytes of every connection
//! open so far (no FIN, no RST), while new connections pass. The pool must stop handing out
//! the dead connections by itself, and nothing acknowledged may be missing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::pg;
use crate::support::relay_records::{queued, store_config};
use postback_relay::store::{Inserted, Store};

/// A proxy to `target` on 127.0.0.1. [`Proxy::cut`] silences every connection open so far:
/// their bytes are read and dropped, the sockets stay open.
struct Proxy {
    addr: SocketAddr,
    era: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let era = Arc::new(AtomicUsize::new(0));
        let eras = era.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let born = eras.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pass(cr, sw, eras.clone(), born));
                tokio::spawn(pass(sr, cw, eras.clone(), born));
            }
        });
        Proxy { addr, era }
    }

    fn cut(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while the era is still `born`; then reads and drops, keeping both
/// halves open (a connection the network dropped: the peer hears nothing, not even a close).
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    era: Arc<AtomicUsize>,
    born: usize,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if era.load(Ordering::SeqCst) == born && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The port of a harness URL `postgres://relay@127.0.0.1:PORT/db`.
fn port_of(url: &str) -> u16 {
    let rest = url.split("127.0.0.1:").nth(1).expect("a loopback URL");
    rest.split('/').next().unwrap().parse().expect("a port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_network_dropped_silently_are_replaced_and_nothing_acknowledged_is_lost() {
    let url = pg::fresh_db().await;
    let port = port_of(&url);
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let via = url.replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", proxy.addr.port()),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = store_config(dir.path());
    cfg.url = Some(via);
    cfg.timeout = Duration::from_secs(1);
    cfg.connect_timeout = Duration::from_secs(1);
    let store = Store::connect(&cfg).await.expect("store connects");

    let mut acknowledged = Vec::new();
    // Concurrent inserts, so that the pool holds several connections, all used just now.
    let mut first = tokio::task::JoinSet::new();
    for i in 0..32 {
        let store = store.clone();
        first.spawn(async move {
            store
                .insert(queued("acme", &format!("before{i}"), None))
                .await
        });
    }
    while let Some(r) = first.join_next().await {
        acknowledged.push(stored(r.unwrap().expect("stored before the cut")));
    }

    proxy.cut();
    // Inserts one after another: each is answered within its bound, and after a few refusals
    // (each a dead connection, found out) they are stored again. Bounded: at most 40 tries.
    let (mut refused, mut in_a_row, mut tries) = (0, 0, 0);
    while in_a_row < 5 && tries < 40 {
        tries += 1;
        let started = Instant::now();
        match store
            .insert(queued("acme", &format!("after{tries}"), None))
            .await
        {
            Ok(inserted) => {
                acknowledged.push(stored(inserted));
                in_a_row += 1;
            }
            Err(_) => {
                refused += 1;
                in_a_row = 0;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "an insert took {:?}, past store.timeout (1 s)",
            started.elapsed()
        );
    }
    assert_eq!(
        in_a_row, 5,
        "inserts were not stored again after the cut ({refused} refused in {tries} tries)"
    );

    let check = pg::sql(&url).await;
    let found: i64 = check
        .query_one(
            "SELECT count(*) FROM records WHERE id = ANY($1)",
            &[&acknowledged],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found,
        i64::try_from(acknowledged.len()).unwrap(),
        "every acknowledged insert is in the database"
    );
}

fn stored(inserted: Inserted) -> i64 {
    match inserted {
        Inserted::Stored { id } => id,
        other => panic!("expected a stored record, got {other:?}"),
    }
}
