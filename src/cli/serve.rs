//! `serve` and `sandbox`: the long-running commands, and the log set-up they share.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use tracing_subscriber::fmt::writer::BoxMakeWriter;

use super::logbuf::{LogBuffer, LogGuard};
use super::{CliError, CliResult, Verdict, multi_thread_runtime};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Service config file (relay.toml); RELAY__... environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Forward to a built-in local Scaleo sandbox instead of scaleo.base_url (no account needed).
    #[arg(long)]
    pub sandbox: bool,
    /// Listen address of the built-in sandbox (with --sandbox).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub sandbox_listen: std::net::SocketAddr,
    /// Log JSON lines instead of human-readable ones.
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address and port the sandbox listens on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: std::net::SocketAddr,
    /// The API key the sandbox accepts.
    #[arg(long, default_value = SANDBOX_KEY)]
    pub api_key: String,
}

/// The admin token `serve --sandbox` uses when the config sets none.
pub const SANDBOX_ADMIN_TOKEN: &str = "sandbox-admin";

/// The API key of the built-in sandbox.
pub const SANDBOX_KEY: &str = "sandbox-key";

/// Sets up `tracing` on stderr: human lines by default (coloured only when stderr is a
/// terminal and `NO_COLOR` is unset), JSON with `json`; `RUST_LOG` overrides `level`.
///
/// Lines are gathered in a buffer that a writer thread writes out within 10 ms, many lines
/// per `write` under load ([`LogBuffer`]); none is dropped. Keep the guard alive while
/// logging, and longer than the runtime whose tasks log: dropping it writes out what is left
/// and stops the writer. Without the thread (it could not start), lines go straight to
/// stderr and there is no guard.
pub fn init_logging(json: bool, level: &str) -> Option<LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (writer, guard) = match LogBuffer::start(std::io::stderr()) {
        Ok((buffer, guard)) => (BoxMakeWriter::new(buffer), Some(guard)),
        Err(e) => {
            eprintln!("cannot start the log writer thread ({e}): logging straight to stderr");
            (BoxMakeWriter::new(std::io::stderr), None)
        }
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// `postback-relay serve`.
pub(super) fn serve(a: ServeArgs) -> CliResult {
    // Declared before the runtime so it is dropped after it: tasks that log while the
    // runtime shuts down still have a writer.
    let mut log_guard = None;
    let rt = multi_thread_runtime()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let mut overrides = Vec::new();
        let sandbox = if a.sandbox {
            let s = crate::sandbox::Sandbox::start(
                a.sandbox_listen,
                crate::sandbox::SandboxConfig {
                    api_key: SANDBOX_KEY.into(),
                },
            )
            .await
            .map_err(|e| {
                CliError::Unavailable(format!(
                    "cannot start the sandbox on {} (--sandbox-listen): {e}",
                    a.sandbox_listen
                ))
            })?;
            overrides.push(("scaleo.base_url", s.base_url()));
            overrides.push(("scaleo.api_key", SANDBOX_KEY.to_string()));
            Some(s)
        } else {
            None
        };
        let mut cfg = Config::load_with(a.config.as_deref(), &overrides)?;
        if a.sandbox {
            cfg.scaleo.sandbox = true;
            sandbox_store(&mut cfg);
            if cfg.admin.token.is_none() {
                // A local demo: the admin API works out of the box (on loopback by default).
                cfg.admin.token = Some(SANDBOX_ADMIN_TOKEN.into());
            }
        }
        // Only the demo's own token is printed; a configured one is a secret.
        let admin_token = match cfg.admin.token.as_deref() {
            Some(SANDBOX_ADMIN_TOKEN) => SANDBOX_ADMIN_TOKEN,
            _ => "<admin.token>",
        };
        let admin_addr = cfg.admin.listen;
        let store_dir = cfg.store.path.clone();
        log_guard = init_logging(a.log_json || cfg.log.json, &cfg.log.level);
        let signals = crate::serve::Signals::install()
            .map_err(|e| CliError::Internal(format!("cannot install signal handlers: {e}")))?;
        let running = crate::serve::start(cfg).await?;
        if let Some(s) = &sandbox {
            let rules = running.rules.current();
            let example = rules
                .iter()
                .flat_map(|r| r.tests.iter().map(move |t| (r, t)))
                .find(|(_, t)| matches!(t.expect, crate::rules::Expectation::Body(_)))
                .map(|(r, t)| format!("/postback/{}?{}", r.source, t.query))
                .unwrap_or_else(|| "/postback/SOURCE?clickid=abc".into());
            let port = running.ingest_addr.port();
            eprintln!(
                "\nrelay on port {port}, forwarding to the built-in Scaleo sandbox at {url}\n\
                 (the sandbox's store is {store}, apart from production's)\n\
                 send a postback:   curl 'http://127.0.0.1:{port}{example}'\n\
                 see what arrived:  curl {url}/sandbox/conversions\n\
                 the relay's view:  curl -H 'Authorization: Bearer {admin_token}' http://{admin_addr}/admin/records\n",
                url = s.base_url(),
                store = store_dir.display(),
            );
        }
        crate::serve::run_until_signal(running, signals)
            .await
            .map_err(|e| CliError::Internal(format!("{e:#}")))?;
        Ok(Verdict::Yes)
    })
}

/// The sandbox's own store: the `sandbox` directory inside `store.path` (SQLite, even when
/// `store.url` is set), so its test conversions never share a store with a real network.
fn sandbox_store(cfg: &mut Config) {
    if cfg.store.url.take().is_some() {
        eprintln!("--sandbox: store.url is ignored; the sandbox keeps its own SQLite store");
    }
    cfg.store.path = cfg.store.path.join("sandbox");
}

/// `postback-relay sandbox`.
pub(super) fn sandbox(a: SandboxArgs) -> CliResult {
    let mut log_guard = None;
    let rt = multi_thread_runtime()?;
    rt.block_on(async {
        log_guard = init_logging(false, "info");
        let s = crate::sandbox::Sandbox::start(
            a.listen,
            crate::sandbox::SandboxConfig { api_key: a.api_key },
        )
        .await
        .map_err(|e| {
            CliError::Unavailable(format!(
                "cannot start the sandbox on {} (--listen): {e}",
                a.listen
            ))
        })?;
        eprintln!(
            "Scaleo sandbox on {}; accepted conversions at {}/sandbox/conversions",
            s.base_url(),
            s.base_url()
        );
        let _ = tokio::signal::ctrl_c().await;
        s.shutdown();
        Ok(Verdict::Yes)
    })
}
