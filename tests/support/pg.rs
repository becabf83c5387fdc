//! A throwaway PostgreSQL server for the tests of one test binary, and a fresh database for
//! each test.
//!
//! The server starts once per test binary from the binaries on the machine (`initdb`,
//! `pg_ctl` on PATH or under `/usr/lib/postgresql/*/bin`), on 127.0.0.1 and a free port,
//! with its data and socket in a temp directory; as the `postgres` user when the tests run
//! as root (PostgreSQL refuses root). A watchdog shell waits for the test process to end
//! (normally or by a panic) and then stops the server and removes the directory. Missing
//! binaries fail the test with what to install: a PostgreSQL test never passes silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The running server of this test binary.
struct Server {
    port: u16,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The URL of a new, empty database on this binary's server (started on first use).
pub async fn fresh_db() -> String {
    let server = match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin = format!(
        "host=127.0.0.1 port={} user=relay dbname=postgres connect_timeout=10",
        server.port
    );
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test PostgreSQL server");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    drop(client);
    let _ = conn.await;
    format!("postgres://relay@127.0.0.1:{}/{name}", server.port)
}

/// Where `initdb` and `pg_ctl` are: PATH first, then Debian's versioned directories.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .ok_or_else(|| {
            "PostgreSQL server binaries (initdb, pg_ctl) were found neither on PATH nor under \
             /usr/lib/postgresql/*/bin: install PostgreSQL to run these tests \
             (Debian/Ubuntu: apt-get install -y postgresql)"
                .to_string()
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `bin/name args...`, as the `postgres` user when we are root.
fn pg_command(bin: &Path, name: &str, root: bool) -> Command {
    let program = bin.join(name);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("relay-pg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let data = dir.join("data");
    if root {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&dir);
        run(chown, "chown of the PostgreSQL test directory to postgres")?;
    }
    watchdog(&bin, &dir, &data, root)?;
    let mut initdb = pg_command(&bin, "initdb", root);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "relay", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb")?;
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let mut ctl = pg_command(&bin, "pg_ctl", root);
        ctl.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} \
                 -c fsync=on -c max_connections=300",
                dir.display()
            ))
            .arg("start");
        match run(ctl, "pg_ctl start") {
            Ok(()) => return Ok(Server { port }),
            Err(e) => last = e,
        }
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    Err(format!("{last}\nserver.log:\n{log}"))
}

/// Stops the server and removes `dir` once this test process is gone, however it ends.
fn watchdog(bin: &Path, dir: &Path, data: &Path, root: bool) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let pg_ctl = bin.join("pg_ctl");
    let as_postgres = if root { "runuser -u postgres -- " } else { "" };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
         {as_postgres}'{pg_ctl}' -D '{data}' -m immediate -w -t 10 stop >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C to the tests does not stop the cleanup.
        .process_group(0)
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("cannot start the PostgreSQL watchdog: {e}"))
}
