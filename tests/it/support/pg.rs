//! A throwaway PostgreSQL server for the tests of one test binary, and a fresh database for
//! each test.
//!
//! The server starts once per test binary from the binaries on the machine (`initdb`,
//! `pg_ctl` on PATH or under `/usr/lib/postgresql/*/bin`), on 127.0.0.1 and a free port,
//! with its data and socket in a temp directory; as the `postgres` user when the tests run
//! as root (PostgreSQL refuses root). A watchdog shell waits for the test process to end
//! (normally or by a panic) and then stops the server and removes the directory. Missing
//! binaries fail the test with what to install: a PostgreSQL test never passes silently.
//!
//! A test that needs a server of its own (TLS, a password, or one it stops and starts again)
//! takes a [`PrivateServer`]: the same setup with [`Options`], stopped and removed on drop;
//! [`PrivateServer::pause`] freezes it (SIGSTOP) until its guard drops.

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
    let server = match SERVER.get_or_init(|| start(&Options::default()).map(|i| i.server)) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    create_db(server.port, None).await
}

/// A plain client on the database at `url`, for what the relay does not expose.
pub async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test database");
    tokio::spawn(conn);
    client
}

/// Creates a database on the server at `port` and returns its URL.
async fn create_db(port: u16, password: Option<&str>) -> String {
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin =
        format!("host=127.0.0.1 port={port} user=relay dbname=postgres connect_timeout=10");
    if let Some(pw) = password {
        admin.push_str(&format!(" password={pw}"));
    }
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
    match password {
        Some(pw) => format!("postgres://relay:{pw}@127.0.0.1:{port}/{name}"),
        None => format!("postgres://relay@127.0.0.1:{port}/{name}"),
    }
}

/// What a [`PrivateServer`] has beyond the shared one.
#[derive(Default, Clone)]
pub struct Options {
    /// `ssl=on` with this certificate chain and key (PEM).
    pub tls: Option<(String, String)>,
    /// TCP connections authenticate with SCRAM as `relay` with this password (else trust).
    pub password: Option<String>,
}

/// A server of one test's own: stopped and started again at will ([`PrivateServer::stop`],
/// [`PrivateServer::start`]), stopped and removed when dropped (or by the watchdog).
pub struct PrivateServer {
    port: u16,
    password: Option<String>,
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    root: bool,
    options: String,
}

impl PrivateServer {
    /// Starts a server with `opts` (initdb and pg_ctl start, off the async runtime).
    pub async fn new(opts: Options) -> PrivateServer {
        let password = opts.password.clone();
        let inst = tokio::task::spawn_blocking(move || start(&opts))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        PrivateServer {
            port: inst.server.port,
            password,
            dir: inst.dir,
            data: inst.data,
            bin: inst.bin,
            root: inst.root,
            options: inst.options,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new database on this server (its URL has the password, if any).
    pub async fn fresh_db(&self) -> String {
        create_db(self.port, self.password.as_deref()).await
    }

    /// `pg_ctl stop -m fast`: sessions are ended, the server is gone when this returns.
    pub async fn stop(&self) {
        let mut ctl = pg_command(&self.bin, "pg_ctl", self.root);
        ctl.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        tokio::task::spawn_blocking(move || run(ctl, "pg_ctl stop"))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the stopped server again on the same port.
    pub async fn start(&self) {
        let ctl = start_command(&self.bin, self.root, &self.dir, &self.data, &self.options);
        tokio::task::spawn_blocking(move || run(ctl, "pg_ctl start"))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl PrivateServer {
    /// Freezes the server with SIGSTOP, the postmaster first (so it starts no new backend),
    /// then every process it started: connections stay open and nothing answers, as with a
    /// hung database host. Resumed (SIGCONT) when the guard drops, even in a panic.
    pub fn pause(&self) -> Paused {
        let postmaster = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            .expect("the server's postmaster.pid");
        signal("STOP", &[postmaster]);
        let mut pids = vec![postmaster];
        pids.extend(children(postmaster));
        signal("STOP", &pids[1..]);
        Paused { pids }
    }
}

/// A paused server: its processes get SIGCONT when this drops.
pub struct Paused {
    pids: Vec<u32>,
}

impl Paused {
    /// Resumes the server now.
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", &self.pids);
    }
}

/// `kill -SIG pids...` (a process gone meanwhile is no error).
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // `pid (comm) state ppid ...`: comm may hold spaces, so read after the last `)`.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let mut ctl = pg_command(&self.bin, "pg_ctl", self.root);
        ctl.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = ctl.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// A port that was free a moment ago. PostgreSQL cannot be told to bind port 0 and report
/// it, so the port can be taken before the server binds it: `start` then picks another one
/// (three tries), and the server that did start owns its port for its whole life.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// A started server and where it lives.
struct Instance {
    server: Server,
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    root: bool,
    /// The `-o` options of `pg_ctl start` (with the port).
    options: String,
}

fn start(opts: &Options) -> Result<Instance, String> {
    let bin = bin_dir()?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("relay-pg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let data = dir.join("data");
    let mut extra = String::new();
    if let Some(pw) = &opts.password {
        std::fs::write(dir.join("pwfile"), pw).map_err(|e| format!("pwfile: {e}"))?;
    }
    if let Some((cert, key)) = &opts.tls {
        use std::os::unix::fs::PermissionsExt;
        let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert_file, cert).map_err(|e| format!("server.crt: {e}"))?;
        std::fs::write(&key_file, key).map_err(|e| format!("server.key: {e}"))?;
        // PostgreSQL refuses a key file others can read.
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod server.key: {e}"))?;
        extra = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert_file.display(),
            key_file.display()
        );
    }
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
        .args(["-U", "relay", "-E", "UTF8", "--no-sync"]);
    if opts.password.is_some() {
        initdb
            .arg(format!("--pwfile={}", dir.join("pwfile").display()))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
    } else {
        initdb.arg("--auth=trust");
    }
    run(initdb, "initdb")?;
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} \
             -c fsync=on -c max_connections=300{extra}",
            dir.display()
        );
        match run(
            start_command(&bin, root, &dir, &data, &options),
            "pg_ctl start",
        ) {
            Ok(()) => {
                return Ok(Instance {
                    server: Server { port },
                    dir,
                    data,
                    bin,
                    root,
                    options,
                });
            }
            Err(e) => last = e,
        }
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    Err(format!("{last}\nserver.log:\n{log}"))
}

/// `pg_ctl start` of the server in `data` with `options`, waiting until it accepts.
fn start_command(bin: &Path, root: bool, dir: &Path, data: &Path, options: &str) -> Command {
    let mut ctl = pg_command(bin, "pg_ctl", root);
    ctl.arg("-D")
        .arg(data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "30", "-o"])
        .arg(options)
        .arg("start");
    ctl
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
