//! Faults caused for real, not simulated: the SQLite store on a filesystem frozen with
//! `fsfreeze`, on a tmpfs that fills up, and a PostgreSQL server frozen with SIGSTOP. Ingest
//! answers 503 within `store.timeout` (never 200 for what is not stored, never a hang),
//! `/readyz` answers within a second saying why, both recover by themselves when the fault
//! ends, and every acknowledged postback reaches Scaleo exactly once.
//!
//! Mounting and freezing need root: without it each test says it was skipped, unless
//! `POSTBACK_RELAY_FAULT_TESTS=require` (CI) makes that a failure. Every mount, freeze and
//! SIGSTOP is undone by a guard, also when a test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postback_relay::store::Filter;

#[cfg(feature = "postgres")]
use crate::e2e::pg;
use crate::e2e::support::{Env, SHOP};
use crate::support::wait;

/// The store bound of these tests.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether this test may cause faults (root); when not, says why it is skipped, or fails
/// when `POSTBACK_RELAY_FAULT_TESTS=require`.
fn may_cause_faults(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        return true;
    }
    let why = "it mounts filesystems, freezes them and stops processes, which needs root";
    if std::env::var("POSTBACK_RELAY_FAULT_TESTS").as_deref() == Ok("require") {
        panic!("{test}: {why}, and POSTBACK_RELAY_FAULT_TESTS=require");
    }
    eprintln!(
        "{test}: SKIPPED: {why} (run as root; POSTBACK_RELAY_FAULT_TESTS=require fails instead)"
    );
    false
}

/// Runs a command that must succeed.
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem mounted for one test: thawed and unmounted when dropped.
struct Mount {
    dir: PathBuf,
    frozen: bool,
}

impl Mount {
    /// A 64 MB ext4 image in `work`, loop-mounted.
    fn ext4(work: &Path) -> Mount {
        let (img, dir) = (work.join("fs.img"), work.join("mnt"));
        std::fs::create_dir_all(&dir).unwrap();
        sh("truncate", &["-s", "64M", img.to_str().unwrap()]);
        sh("mkfs.ext4", &["-q", img.to_str().unwrap()]);
        sh(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), dir.to_str().unwrap()],
        );
        Mount { dir, frozen: false }
    }

    /// A tmpfs of `size` (e.g. `2m`).
    fn tmpfs(work: &Path, size: &str) -> Mount {
        let dir = work.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let opts = format!("size={size}");
        sh(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        );
        Mount { dir, frozen: false }
    }

    fn freeze(&mut self) {
        sh("fsfreeze", &["-f", self.dir.to_str().unwrap()]);
        self.frozen = true;
    }

    fn thaw(&mut self) {
        sh("fsfreeze", &["-u", self.dir.to_str().unwrap()]);
        self.frozen = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap_or_default().to_owned();
        if self.frozen {
            let _ = Command::new("fsfreeze").args(["-u", &dir]).status();
        }
        // Lazily when the relay of a failed test still holds a file open.
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(&[&dir]) {
            quiet(&["-l", &dir]);
        }
    }
}

/// `/readyz`: status, body, and how long it took.
async fn readyz(env: &Env) -> (u16, serde_json::Value, Duration) {
    let start = Instant::now();
    let url = format!("http://{}/readyz", env.relay().admin_addr);
    let resp = env.client.get(url).send().await.expect("/readyz answers");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap(), start.elapsed())
}

/// What the postbacks of a test got: click id -> record id of each 200.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeMap<String, i64>,
    refused: Vec<String>,
}

impl Ledger {
    /// Sends the postback of click id `cid`; returns its status and how long it took.
    async fn send(&mut self, env: &Env, cid: &str) -> (u16, Duration) {
        let start = Instant::now();
        let (status, body) = env.get(&format!("/postback/shop?cid={cid}&amt=1")).await;
        let took = start.elapsed();
        match status {
            200 => {
                let id = body["id"].as_i64().unwrap_or_else(|| panic!("{body}"));
                self.acknowledged.insert(cid.to_owned(), id);
            }
            503 => {
                assert_eq!(body["status"], "unavailable", "{body}");
                self.refused.push(cid.to_owned());
            }
            other => panic!("postback {cid}: {other} {body}"),
        }
        (status, took)
    }

    /// The sender retries every refused postback until it is acknowledged.
    async fn retry_refused(&mut self, env: &Env) {
        let refused = std::mem::take(&mut self.refused);
        for cid in refused {
            let (status, _) = self.send(env, &cid).await;
            assert_eq!(status, 200, "retry of {cid} after recovery");
        }
    }

    /// Every acknowledged postback is in the store and reached Scaleo exactly once.
    async fn check_nothing_lost(&self, env: &Env) {
        let store = &env.relay().store;
        for (cid, id) in &self.acknowledged {
            let record = store.get(*id).await.expect("the store answers");
            assert!(record.is_some(), "acknowledged {cid} (record {id}) is gone");
            let (found, _) = store
                .list(
                    Filter {
                        click_id: Some(cid.clone()),
                        ..Filter::default()
                    },
                    10,
                    None,
                )
                .await
                .expect("the store answers");
            assert!(!found.is_empty(), "no record of acknowledged {cid}");
        }
        let n = self.acknowledged.len();
        assert!(
            env.sandbox
                .wait_for_accepted(n, Duration::from_secs(30))
                .await,
            "Scaleo did not get the {n} acknowledged conversions"
        );
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        for body in env.sandbox.accepted() {
            let cid = body["click_id"].as_str().unwrap_or_default().to_owned();
            *sent.entry(cid).or_default() += 1;
        }
        for cid in self.acknowledged.keys() {
            assert_eq!(sent.get(cid), Some(&1), "{cid} reached Scaleo {sent:?}");
        }
    }
}

/// Sends postbacks until one is acknowledged again (bounded).
async fn until_acknowledged(env: &Env, ledger: &mut Ledger, prefix: &str) {
    let mut i = 0;
    let last = wait::value_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            i += 1;
            ledger.send(env, &format!("{prefix}{i}")).await
        },
        |(status, _)| *status == 200,
    )
    .await;
    if let Err(last) = last {
        panic!("ingest did not recover after the fault ended; last answer: {last:?}");
    }
}

/// Polls `/readyz` until the store check passes again (bounded).
async fn until_store_ready(env: &Env) {
    wait::expect_value(
        Duration::from_secs(10),
        "/readyz to pass its store check after the fault ended",
        async || readyz(env).await,
        |(_, body, ..)| body["store"]["ok"] == true,
    )
    .await;
}

/// While the fault lasts: every postback answers 503 within the bound, and `/readyz`
/// answers 503 within a second naming the store.
async fn check_refusing(env: &Env, ledger: &mut Ledger, prefix: &str) {
    for i in 0..3 {
        let (status, took) = ledger.send(env, &format!("{prefix}{i}")).await;
        assert_eq!(status, 503, "acknowledged during the fault");
        assert!(
            took < STORE_TIMEOUT + Duration::from_secs(2),
            "the answer took {took:?}: ingest hung on the stalled store"
        );
    }
    let (code, ready, took) = readyz(env).await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["store"]["ok"], false, "{ready}");
    assert!(
        !ready["store"]["detail"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{ready}"
    );
    assert!(took < Duration::from_secs(2), "/readyz took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_filesystem_costs_only_503s_and_loses_nothing_acknowledged() {
    if !may_cause_faults("a_frozen_filesystem") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut mount = Mount::ext4(work.path());
    let data = mount.dir.join("data");
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.store.path = data;
        c.store.timeout = STORE_TIMEOUT;
    })
    .await;
    let mut ledger = Ledger::default();
    assert_eq!(ledger.send(&env, "before").await.0, 200);

    mount.freeze();
    check_refusing(&env, &mut ledger, "during").await;
    let (_, ready, _) = readyz(&env).await;
    assert!(
        ready["store"]["detail"]
            .to_string()
            .contains("did not answer"),
        "/readyz does not say the store stalls: {ready}"
    );

    mount.thaw();
    until_acknowledged(&env, &mut ledger, "after").await;
    until_store_ready(&env).await;
    ledger.retry_refused(&env).await;
    ledger.check_nothing_lost(&env).await;
    env.stop().await;
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_only_503s_and_recovers_when_space_is_freed() {
    if !may_cause_faults("a_full_disk") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mount = Mount::tmpfs(work.path(), "2m");
    let data = mount.dir.join("data");
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.store.path = data;
        c.store.timeout = STORE_TIMEOUT;
    })
    .await;
    let mut ledger = Ledger::default();
    assert_eq!(ledger.send(&env, "before").await.0, 200);

    // Another file takes all the space left.
    let filler = mount.dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        let mut written = 0usize;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len();
            assert!(written < 4 << 20, "a 2 MB tmpfs took 4 MB");
        }
    }
    // What still fits in the store's files may be acknowledged; then refusals.
    let mut refused_at = None;
    for i in 0..500 {
        let (status, _) = ledger.send(&env, &format!("full{i}")).await;
        if status == 503 {
            refused_at = Some(i);
            break;
        }
    }
    assert!(refused_at.is_some(), "a full disk never refused a postback");
    let (code, ready, _) = readyz(&env).await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["store"]["ok"], false, "{ready}");
    let why = ready["store"]["detail"].to_string();
    assert!(
        why.contains("full"),
        "/readyz does not say the disk is full: {ready}"
    );

    std::fs::remove_file(&filler).unwrap();
    until_acknowledged(&env, &mut ledger, "after").await;
    until_store_ready(&env).await;
    ledger.retry_refused(&env).await;
    ledger.check_nothing_lost(&env).await;
    env.stop().await;
    drop(mount);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_database_costs_only_503s_and_loses_nothing_acknowledged() {
    if !may_cause_faults("a_frozen_database") {
        return;
    }
    let server = pg::PrivateServer::new(pg::Options::default()).await;
    let url = server.fresh_db().await;
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.store.url = Some(url);
        c.store.timeout = STORE_TIMEOUT;
        c.store.connect_timeout = STORE_TIMEOUT;
    })
    .await;
    let mut ledger = Ledger::default();
    assert_eq!(ledger.send(&env, "before").await.0, 200);

    let paused = server.pause();
    check_refusing(&env, &mut ledger, "during").await;

    paused.resume();
    until_acknowledged(&env, &mut ledger, "after").await;
    until_store_ready(&env).await;
    ledger.retry_refused(&env).await;
    ledger.check_nothing_lost(&env).await;
    env.stop().await;
}
