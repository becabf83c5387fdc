//! Harness: a real relay (ingest, SQLite store, forwarder) on 127.0.0.1:0 in-process, pointed
//! at the scripted Scaleo sandbox, with rule files and data in a temp directory.

use std::path::PathBuf;
use std::time::Duration;

use postback_relay::config::Config;
use postback_relay::sandbox::{Sandbox, SandboxConfig};
use postback_relay::serve::{self, Running};
use tempfile::TempDir;

pub const KEY: &str = "test-key-5ecret";

/// A minimal rule used by most tests: click id, cents revenue, status map, order id.
pub const SHOP: &str = r#"
[fields]
click_id     = ["clickid", "cid"]
adv_order_id = "oid"
goal_id      = { value = 7 }
revenue      = { from = "amt", scale = "0.01" }
conv_status  = { from = "st", map = { "1" = "approved", "0" = "rejected" }, unmapped = "pending" }

[[skip]]
match = { test = "1" }
reason = "test postback"
"#;

pub struct Env {
    pub dir: TempDir,
    pub sandbox: Sandbox,
    pub relay: Option<Running>,
    pub client: reqwest::Client,
}

impl Env {
    /// Starts the sandbox and a relay with `rules` (source, text), config tweaked by `tweak`.
    pub async fn start(rules: &[(&str, &str)], tweak: impl FnOnce(&mut Config)) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&rules_dir).expect("rules dir");
        for (source, text) in rules {
            std::fs::write(rules_dir.join(format!("{source}.toml")), text).expect("write rule");
        }
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                api_key: KEY.into(),
            },
        )
        .await
        .expect("sandbox");
        let cfg = config(&sandbox, dir.path().to_path_buf(), tweak);
        let relay = serve::start(cfg).await.expect("relay starts");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Env {
            dir,
            sandbox,
            relay: Some(relay),
            client,
        }
    }

    pub fn relay(&self) -> &Running {
        self.relay.as_ref().expect("relay running")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.relay().ingest_addr, path_and_query)
    }

    /// GET and return (status, JSON body).
    pub async fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// The stored record of an ingest answer (its `id`).
    pub async fn record_of(&self, answer: &serde_json::Value) -> postback_relay::store::RecordView {
        let id = answer["id"].as_i64().expect("an answer with an id");
        self.relay()
            .store
            .get(id)
            .await
            .expect("the store answers")
            .expect("the record is stored")
    }

    /// Stops the relay (graceful) and starts a new one on the same data and rules.
    pub async fn restart(&mut self, tweak: impl FnOnce(&mut Config)) {
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
        let cfg = config(&self.sandbox, self.dir.path().to_path_buf(), tweak);
        self.relay = Some(serve::start(cfg).await.expect("relay restarts"));
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
        self.sandbox.shutdown();
    }
}

/// Test defaults: loopback, fast retries, short leases, no rate limit.
pub fn config(sandbox: &Sandbox, root: PathBuf, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::for_local(&sandbox.base_url(), KEY);
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.store.path = root.join("data");
    cfg.rules_dir = root.join("rules");
    cfg.scaleo.timeout = Duration::from_millis(500);
    cfg.forward.rate_per_second = 0;
    cfg.forward
        .retry
        .set_schedule(vec![Duration::from_millis(50)])
        .unwrap();
    cfg.forward.lease = Duration::from_secs(2);
    cfg.forward.pause_probe = Duration::from_millis(200);
    cfg.forward.grace = Duration::from_secs(2);
    tweak(&mut cfg);
    cfg
}

/// [`wait::until`](crate::support::wait::until) for a check that needs no `.await`.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    crate::support::wait::until(timeout, async || check()).await
}
