//! Helpers for the operator tests: an admin client with the test token, a metrics scrape
//! parser, atomic rule writes, and a bounded poll for async conditions.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use postback_relay::config::Config;
use reqwest::Method;
use serde_json::Value;

use crate::e2e::support::Env;

pub const ADMIN_TOKEN: &str = "adm1n-t0ken-for-tests";

/// Config tweak: sets the admin token.
pub fn with_admin(cfg: &mut Config) {
    cfg.admin.token = Some(ADMIN_TOKEN.into());
}

pub fn admin_url(env: &Env, path: &str) -> String {
    format!("http://{}{}", env.relay().admin_addr, path)
}

/// Any admin request; `auth` is the whole Authorization header value (None: no header).
pub async fn admin_call(
    env: &Env,
    method: Method,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (u16, Value) {
    let mut req = env.client.request(method, admin_url(env, path));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn admin_get(env: &Env, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin_call(env, Method::GET, path, None, Some(&auth)).await
}

pub async fn admin_post(env: &Env, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin_call(env, Method::POST, path, Some(body), Some(&auth)).await
}

/// The `/metrics` text.
pub async fn scrape(env: &Env) -> String {
    let resp = env
        .client
        .get(admin_url(env, "/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.expect("metrics text")
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare name); 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// Writes a rule file atomically (temp file, then rename), as deploy tools do.
pub fn write_rule(dir: &Path, source: &str, text: &str) {
    let tmp = dir.join(format!(".{source}.toml.tmp"));
    std::fs::write(&tmp, text).expect("write temp rule");
    std::fs::rename(&tmp, dir.join(format!("{source}.toml"))).expect("rename rule");
}

/// [`wait::until`](crate::support::wait::until) for a check that builds a new future each
/// time (one that captures what changes between polls).
pub async fn poll<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    crate::support::wait::until(timeout, async || check().await).await
}
