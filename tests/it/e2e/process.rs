//! The real binary as its own process, listening on ports the kernel chose (`:0`): the
//! addresses come from its "relay started" log line, so no test races another for a port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `postback-relay serve` and the addresses it bound.
pub struct RelayProcess {
    pub child: Child,
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
}

/// How long a start may take before the test gives up (a debug build on a loaded machine).
const START_WAIT: Duration = Duration::from_secs(30);

impl RelayProcess {
    /// `serve --config CONFIG` of the binary under test.
    pub fn serve(config: &std::path::Path) -> RelayProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
        cmd.args(["serve", "--config"]).arg(config);
        RelayProcess::start(cmd)
    }

    /// Starts `cmd` (a relay `serve`, possibly wrapped by a shell that `exec`s it) with its
    /// log on a pipe, and waits for the line that names the bound addresses. The rest of the
    /// log is read and dropped so the relay never blocks on a full pipe. Panics with the log
    /// when the relay exits or stays silent instead.
    pub fn start(mut cmd: Command) -> RelayProcess {
        let mut child = cmd
            .env("RUST_LOG", "warn,postback_relay::serve=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the relay binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains("relay started") {
                    let _ = tx.send(Ok(line));
                    break;
                }
                seen.push(line);
            }
            // EOF before the line: the relay exited.
            let _ = tx.send(Err(seen.join("\n")));
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_WAIT) {
            Ok(Ok(line)) => line,
            Ok(Err(log)) => {
                let status = child.wait().ok();
                panic!("the relay exited before it started ({status:?}):\n{log}")
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the relay did not start within {START_WAIT:?}")
            }
        };
        RelayProcess {
            ingest: addr_after(&line, "ingest_addr="),
            admin: addr_after(&line, "admin_addr="),
            child,
        }
    }

    /// `http://INGEST{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingest)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// kill -9, and the exit reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The socket address written after `key` in a plain log line.
fn addr_after(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in the start line: {line}"))
        + key.len();
    let text = line[start..].split_whitespace().next().unwrap_or_default();
    text.parse()
        .unwrap_or_else(|e| panic!("{key}{text} in the start line is not an address ({e})"))
}
