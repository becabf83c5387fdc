//! Service-level benchmarks of the relay (the performance targets in bench/README.md). Driven by `bench/run.sh`;
//! see `bench/README.md` for what each subcommand measures.
//!
//! Built with `cargo bench --bench relay --no-run` (release profile); run the binary with
//! one subcommand:
//!
//! - `bare ADDR SECS`: a bare hyper server answering 204 (the ingest baseline).
//! - `floor DIR ADDR SECS`: the durable-ingest floor: hyper plus a group-committed insert
//!   of each request's query into a one-table SQLite file under DIR, answered after COMMIT.
//! - `upstream ADDR SECS`: a fast Scaleo stand-in answering success JSON (no validation).
//! - `fill STORE N`: pauses forwarding (operator pause) in STORE and inserts N queued
//!   postbacks through `Store::insert` with many concurrent callers (group commit).
//! - `counts STORE`: records per state in STORE.
//! - `drain N CONCURRENCY [URL [analyze]]`: in-process relay (`serve::start`), N records
//!   pre-filled while paused, rate limit off; resumes and times until every record is
//!   delivered. On a temp SQLite store, or on the PostgreSQL database at URL (which should be
//!   empty); `analyze` runs `ANALYZE` after the fill (what autovacuum does within a minute).
//! - `createdb URL`: creates the (new) database named in the PostgreSQL URL, connecting to
//!   the same server's `postgres` database.
//! - `pgstat URL`: the server's committed transactions and WAL syncs so far
//!   (`pg_stat_database`, `pg_stat_wal`), for deltas around a run.
//!
//! STORE is a directory (the embedded SQLite store) or a `postgres://` URL (`Store::connect`).
//! - `rate RATE BURST SECS`: in-process relay with `forward.rate_per_second = RATE`,
//!   `burst = BURST`; the upstream counts arrivals per second and enforces the rate itself
//!   (GCRA with 5 ms delay-variation tolerance), answering 429 when it is exceeded.
//!
//! Every server stops by itself after SECS; nothing listens beyond loopback.

/// The same allocator as the `postback-relay` binary, for the in-process relay sections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use postback_relay::config::{Config, StoreConfig};
use postback_relay::mapping;
use postback_relay::rules::{EnvMode, Input, Outcome, Rule, compile, decode_form};
use postback_relay::store::{NewRecord, PauseReason, PauseScope, RawPostback, State, Store};
use tokio::net::TcpListener;

/// The shipped rule every benchmark maps with.
const RULE_FILE: &str = "keitaro.toml";
/// How many inserts `fill` keeps in flight (the group commit batches what is waiting).
const FILL_IN_FLIGHT: usize = 1024;

type Res = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, what: &str| -> String {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| usage(&format!("missing {what}")))
    };
    let num = |i: usize, what: &str| -> u64 {
        arg(i, what)
            .parse()
            .unwrap_or_else(|_| usage(&format!("{what} must be a number")))
    };
    let Some(cmd) = args.first().map(String::as_str) else {
        usage("no subcommand");
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let out: Res = match cmd {
        "bare" => {
            let (addr, secs) = (arg(1, "ADDR"), num(2, "SECS"));
            rt.block_on(serve_bounded(&addr, secs, |_| async {
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()))
                    .expect("response")
            }))
        }
        "floor" => {
            let (dir, addr, secs) = (arg(1, "DIR"), arg(2, "ADDR"), num(3, "SECS"));
            rt.block_on(floor(Path::new(&dir), &addr, secs))
        }
        "upstream" => {
            let (addr, secs) = (arg(1, "ADDR"), num(2, "SECS"));
            let seq = Arc::new(AtomicU64::new(0));
            rt.block_on(serve_bounded(&addr, secs, move |req| {
                let seq = seq.clone();
                async move { scaleo_ok(req, &seq).await }
            }))
        }
        "fill" => rt.block_on(fill_cmd(&arg(1, "STORE"), num(2, "N"))),
        "counts" => rt.block_on(counts_cmd(&arg(1, "STORE"))),
        "drain" => rt.block_on(drain(
            num(1, "N"),
            num(2, "CONCURRENCY") as usize,
            args.get(3).cloned(),
            args.get(4).is_some_and(|a| a == "analyze"),
        )),
        "createdb" => rt.block_on(createdb(&arg(1, "URL"))),
        "pgstat" => rt.block_on(pgstat(&arg(1, "URL"))),
        "rate" => rt.block_on(rate(
            num(1, "RATE") as u32,
            num(2, "BURST") as u32,
            num(3, "SECS"),
        )),
        other => usage(&format!("unknown subcommand {other:?}")),
    };
    if let Err(e) = out {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: relay bare ADDR SECS | floor DIR ADDR SECS | upstream ADDR SECS | fill STORE N | counts STORE |\n\
         \x20      drain N CONCURRENCY [URL [analyze]] | rate RATE BURST SECS | createdb URL | pgstat URL\n\
         STORE is a directory (SQLite) or a postgres:// URL"
    );
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------
// Servers

/// Serves HTTP/1.1 on `addr` with `handler` for `secs` seconds, printing the bound address
/// as `listening ADDR` on stdout first.
async fn serve_bounded<F, Fut>(addr: &str, secs: u64, handler: F) -> Res
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(secs), accept).await;
    Ok(())
}

/// The durable-ingest floor: the least any durable ingest must do here. Every request's
/// query string is inserted into a one-table SQLite store (WAL, `synchronous=FULL`, no
/// index but the rowid) by a group-commit writer thread, and answered 200 with the new id
/// only after COMMIT returned. No parsing, no mapping, no dedupe, no logging.
async fn floor(dir: &Path, addr: &str, secs: u64) -> Res {
    type Job = (String, tokio::sync::oneshot::Sender<i64>);
    std::fs::create_dir_all(dir)?;
    let conn = rusqlite::Connection::open(dir.join("floor.db"))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, query TEXT NOT NULL, at INTEGER NOT NULL)",
    )?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(4096);
    std::thread::spawn(move || {
        let mut conn = conn;
        let mut jobs = Vec::new();
        while let Some(job) = rx.blocking_recv() {
            jobs.push(job);
            while jobs.len() < 256 {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let now = Timestamp::now().as_millisecond();
            let txn = conn.transaction().expect("begin");
            let mut ids = Vec::with_capacity(jobs.len());
            {
                let mut stmt = txn
                    .prepare_cached("INSERT INTO t (query, at) VALUES (?1, ?2) RETURNING id")
                    .expect("prepare");
                for (q, _) in &jobs {
                    ids.push(
                        stmt.query_row(rusqlite::params![q, now], |r| r.get::<_, i64>(0))
                            .expect("insert"),
                    );
                }
            }
            txn.commit().expect("commit");
            for ((_, reply), id) in jobs.drain(..).zip(ids) {
                let _ = reply.send(id);
            }
        }
    });
    serve_bounded(addr, secs, move |req| {
        let tx = tx.clone();
        async move {
            let q = req.uri().query().unwrap_or("").to_string();
            let (reply, rx) = tokio::sync::oneshot::channel();
            let sent = tx.send((q, reply)).await.is_ok();
            match (sent, rx.await) {
                (true, Ok(id)) => json(
                    StatusCode::OK,
                    format!(r#"{{"status":"accepted","id":{id}}}"#),
                ),
                _ => json(StatusCode::SERVICE_UNAVAILABLE, String::new()),
            }
        }
    })
    .await
}

/// Scaleo's success answer (its API docs' envelope), read body included.
async fn scaleo_ok(req: Request<hyper::body::Incoming>, seq: &AtomicU64) -> Response<Full<Bytes>> {
    let _ = req.into_body().collect().await;
    let n = seq.fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::OK,
        format!(
            r#"{{"status":"success","code":200,"name":"","message":"","info":{{"status":"success","transaction_id":"bench-{n:016x}"}}}}"#
        ),
    )
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// A fast upstream for in-process benches, on its own runtime thread, that counts arrivals
/// and (with a rate) enforces it like a strict API would: GCRA with emission interval
/// 1/rate, burst `burst` and 5 ms delay-variation tolerance; over it, 429.
struct Upstream {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    count: Arc<AtomicU64>,
    too_many: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CDVT: Duration = Duration::from_millis(5);

impl Upstream {
    fn start(limit: Option<(u32, u32)>, keep_arrivals: bool) -> Upstream {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let too_many = Arc::new(AtomicU64::new(0));
        let (tx_addr, rx_addr) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (a, c, t) = (arrivals.clone(), count.clone(), too_many.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind upstream");
                tx_addr
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                // GCRA state: the theoretical arrival time of the next request.
                let tat: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
                let seq = Arc::new(AtomicU64::new(0));
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let (a, c, t, tat, seq) =
                            (a.clone(), c.clone(), t.clone(), tat.clone(), seq.clone());
                        tokio::spawn(async move {
                            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                                let (a, c, t, tat, seq) =
                                    (a.clone(), c.clone(), t.clone(), tat.clone(), seq.clone());
                                async move {
                                    let now = Instant::now();
                                    c.fetch_add(1, Ordering::Relaxed);
                                    if keep_arrivals {
                                        a.lock().expect("arrivals").push(now);
                                    }
                                    let refused = limit.is_some_and(|(rate, burst)| {
                                        let t_emit = Duration::from_secs_f64(1.0 / f64::from(rate));
                                        let tau = t_emit * burst.saturating_sub(1) + CDVT;
                                        let mut g = tat.lock().expect("tat");
                                        let cur = g.unwrap_or(now);
                                        if now + tau < cur {
                                            return true;
                                        }
                                        *g = Some(cur.max(now) + t_emit);
                                        false
                                    });
                                    if refused {
                                        t.fetch_add(1, Ordering::Relaxed);
                                        let _ = req.into_body().collect().await;
                                        return Ok::<_, Infallible>(json(
                                            StatusCode::TOO_MANY_REQUESTS,
                                            r#"{"status":"error","code":429}"#.into(),
                                        ));
                                    }
                                    Ok::<_, Infallible>(scaleo_ok(req, &seq).await)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = rx_addr.recv().expect("upstream address");
        Upstream {
            addr,
            arrivals,
            count,
            too_many,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Records

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn load_rule() -> Result<Rule, String> {
    let path = rules_dir().join(RULE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    compile("keitaro", RULE_FILE, &text, EnvMode::Ignore)
        .map_err(|d| format!("{RULE_FILE} does not compile: {d:?}"))
}

/// A unique postback mapped by the shipped rule, as ingest would store it.
fn record(rule: &Rule, tag: &str, i: u64) -> NewRecord {
    let query = format!("subid={tag}-{i}&status=sale&revenue=25.00&currency=usd&tid=T-{tag}-{i}");
    let params = decode_form(query.as_bytes());
    let now = Timestamp::now();
    let input = Input {
        params: &params,
        json_numbers: &[],
        client_ip: Some("127.0.0.1"),
        user_agent: Some("bench"),
        referer: None,
        received_at: Some(now),
    };
    let outcome = rule.apply(&input, &jiff::tz::TimeZone::UTC);
    assert!(
        matches!(outcome, Outcome::Forward(_)),
        "the bench postback does not map to a forward"
    );
    let state = mapping::new_state(rule, &input, outcome);
    NewRecord {
        source: rule.source.clone(),
        raw: RawPostback {
            method: "GET".into(),
            path: "/postback/keitaro".into(),
            query,
            client_ip: Some("127.0.0.1".into()),
            user_agent: Some("bench".into()),
            referer: None,
            received_at: now,
        },
        state,
        repeat_window: None,
    }
}

fn store_config(dir: &Path) -> StoreConfig {
    let mut c = Config::for_local("http://127.0.0.1:9", "bench-key").store;
    c.path = dir.to_path_buf();
    if let Ok(b) = std::env::var("EXP_BATCH") {
        c.commit_batch = b.parse().unwrap();
    }
    c
}

/// Inserts `n` records with `FILL_IN_FLIGHT` concurrent callers; returns the elapsed time.
async fn fill(store: &Store, n: u64, tag: &str) -> Result<Duration, String> {
    let rule = Arc::new(load_rule()?);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..FILL_IN_FLIGHT {
        let (store, rule, next, tag) = (store.clone(), rule.clone(), next.clone(), tag.to_string());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(());
                }
                store
                    .insert(record(&rule, &tag, i))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(start.elapsed())
}

/// The store config of a `STORE` argument: a `postgres://` URL or a SQLite directory.
fn store_config_of(target: &str) -> StoreConfig {
    if is_pg_url(target) {
        let mut c = store_config(Path::new("unused"));
        c.url = Some(target.to_string());
        c
    } else {
        store_config(Path::new(target))
    }
}

fn is_pg_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

async fn fill_cmd(target: &str, n: u64) -> Res {
    let store = Store::connect(&store_config_of(target)).await?;
    store.pause(PauseScope::All, PauseReason::Operator).await?;
    let tag = format!("fill{:x}", fastrand::u32(..));
    let took = fill(&store, n, &tag).await?;
    let queued = state_count(&store, State::Queued).await?;
    println!(
        "filled {n} in {:.2} s = {:.0} inserts/s ({FILL_IN_FLIGHT} concurrent callers); queued now {queued}; forwarding paused (operator); filler RSS {} MiB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        rss_kib("self").unwrap_or(0) / 1024
    );
    Ok(())
}

async fn counts_cmd(target: &str) -> Res {
    let store = Store::connect(&store_config_of(target)).await?;
    let counts = store.counts_by_state().await?;
    let text: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
    println!("{}", text.join(" "));
    Ok(())
}

async fn state_count(store: &Store, state: State) -> Result<u64, String> {
    Ok(store
        .counts_by_state()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| n))
}

fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User+system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // CLK_TCK on Linux
    let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (u + s) / tick
}

// ---------------------------------------------------------------------------------------
// In-process relay benches

struct Bed {
    _tmp: tempfile::TempDir,
    store_dir: PathBuf,
    cfg: Config,
}

/// A temp store dir and a config pointing at `upstream`, with only the shipped rule.
fn bed(upstream: SocketAddr) -> Result<Bed, Box<dyn std::error::Error + Send + Sync>> {
    let tmp = tempfile::Builder::new()
        .prefix("relay-bench-")
        .tempdir_in(bench_tmp())?;
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::copy(rules_dir().join(RULE_FILE), rules.join(RULE_FILE))?;
    let store_dir = tmp.path().join("store");
    let mut cfg = Config::for_local(&format!("http://{upstream}"), "bench-key");
    cfg.server.listen = "127.0.0.1:0".parse()?;
    cfg.store.path = store_dir.clone();
    cfg.rules_dir = rules;
    Ok(Bed {
        _tmp: tmp,
        store_dir,
        cfg,
    })
}

/// Where temp stores go: `$BENCH_TMP`, else the system temp dir (check it is a real disk,
/// not a tmpfs: fsync costs are the point).
fn bench_tmp() -> PathBuf {
    std::env::var_os("BENCH_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Pre-fills `n` queued records while forwarding is paused, then starts the relay on them.
async fn prefilled(
    bed: &Bed,
    n: u64,
    analyze: bool,
) -> Result<postback_relay::serve::Running, Box<dyn std::error::Error + Send + Sync>> {
    {
        let store = match &bed.cfg.store.url {
            Some(_) => Store::connect(&bed.cfg.store).await?,
            None => Store::open(&store_config(&bed.store_dir))?,
        };
        store.pause(PauseScope::All, PauseReason::Operator).await?;
        let took = fill(&store, n, "pre").await?;
        eprintln!(
            "pre-filled {n} queued records in {:.2} s ({:.0}/s)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
    if let (true, Some(url)) = (analyze, &bed.cfg.store.url) {
        pg_client(url, None).await?.batch_execute("ANALYZE").await?;
        eprintln!("ANALYZE done");
    }
    // Let the filler's writer thread finish closing its connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(postback_relay::serve::start(bed.cfg.clone()).await?)
}

async fn drain(n: u64, concurrency: usize, url: Option<String>, analyze: bool) -> Res {
    let up = Upstream::start(None, false);
    let mut bed = bed(up.addr)?;
    let backend = match url {
        Some(url) => {
            bed.cfg.store.url = Some(url);
            if analyze {
                "postgres (ANALYZE after the fill)"
            } else {
                "postgres (statistics as after the fill)"
            }
        }
        None => "sqlite",
    };
    bed.cfg.forward.rate_per_second = 0;
    bed.cfg.forward.concurrency = concurrency;
    let running = prefilled(&bed, n, analyze).await?;
    let store = running.store.clone();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    store.resume(PauseScope::All).await?;
    let deadline = t0 + Duration::from_secs(180);
    let mut sent_at = None;
    loop {
        if sent_at.is_none() && up.count.load(Ordering::Relaxed) >= n {
            sent_at = Some(t0.elapsed());
        }
        if sent_at.is_some() && state_count(&store, State::Delivered).await? >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "drain did not finish in 180 s: {} arrived upstream",
                up.count.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let sent = sent_at.unwrap_or(all);
    let arrived = up.count.load(Ordering::Relaxed);
    println!(
        "drain {backend} n={n} concurrency={concurrency} rate=off: {:.0} forwards/s (all {n} delivered and settled in {:.2} s; last upstream arrival at {:.2} s = {:.0}/s); upstream saw {arrived} requests; process CPU {:.1} s = {:.2} cores",
        n as f64 / all.as_secs_f64(),
        all.as_secs_f64(),
        sent.as_secs_f64(),
        n as f64 / sent.as_secs_f64(),
        cpu,
        cpu / all.as_secs_f64(),
    );
    running.stop().await;
    up.stop();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// PostgreSQL helpers

/// A client on the server of `url`, database `dbname` (plain TCP, as the relay connects).
async fn pg_client(
    url: &str,
    dbname: Option<&str>,
) -> Result<tokio_postgres::Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if let Some(db) = dbname {
        config.dbname(db);
    }
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn createdb(url: &str) -> Res {
    let config: tokio_postgres::Config = url.parse()?;
    let name = config
        .get_dbname()
        .ok_or("the URL names no database")?
        .to_string();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("database name {name:?}: letters, digits and _ only").into());
    }
    let client = pg_client(url, Some("postgres")).await?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    Ok(())
}

async fn pgstat(url: &str) -> Res {
    let client = pg_client(url, None).await?;
    let row = client
        .query_one(
            "SELECT (SELECT sum(xact_commit)::bigint FROM pg_stat_database),
                    (SELECT wal_sync FROM pg_stat_wal),
                    (SELECT wal_write FROM pg_stat_wal),
                    (SELECT wal_bytes::bigint FROM pg_stat_wal)",
            &[],
        )
        .await?;
    let (commits, syncs, writes, bytes): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    println!("{commits} {syncs} {writes} {bytes}");
    Ok(())
}

async fn rate(rate: u32, burst: u32, secs: u64) -> Res {
    let up = Upstream::start(Some((rate, burst)), true);
    let mut bed = bed(up.addr)?;
    bed.cfg.forward.rate_per_second = rate;
    bed.cfg.forward.burst = burst;
    let n = u64::from(rate) * (secs + 3) * 2;
    let running = prefilled(&bed, n, false).await?;
    running.store.resume(PauseScope::All).await?;
    tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(1500)).await;
    let arrivals = up.arrivals.lock().expect("arrivals").clone();
    let too_many = up.too_many.load(Ordering::Relaxed);
    running.stop().await;
    up.stop();
    let Some(&first) = arrivals.first() else {
        return Err("no request reached the upstream".into());
    };
    // Whole seconds after the first arrival (the burst, if any, lands in second 0).
    let mut per_sec = vec![0u64; secs as usize];
    for a in &arrivals {
        let k = a.duration_since(first).as_secs() as usize;
        if k < per_sec.len() {
            per_sec[k] += 1;
        }
    }
    // Most arrivals in any sliding 1 s window.
    let mut max_window = 0;
    let mut j = 0;
    for i in 0..arrivals.len() {
        while arrivals[i].duration_since(arrivals[j]) >= Duration::from_secs(1) {
            j += 1;
        }
        max_window = max_window.max(i - j + 1);
    }
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .collect();
    let min_gap = gaps.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let worst = per_sec
        .iter()
        .map(|&c| (c as i64 - i64::from(rate)).abs())
        .max()
        .unwrap_or(0);
    println!(
        "rate={rate}/s burst={burst}: arrivals per second {per_sec:?} (worst deviation {worst}); most in any sliding 1 s window {max_window}; gaps mean {mean_gap:.2} ms, min {min_gap:.2} ms; upstream 429s {too_many} (GCRA at the same rate, burst {burst}, {} ms tolerance)",
        CDVT.as_millis()
    );
    Ok(())
}
