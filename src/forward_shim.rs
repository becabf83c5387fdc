//! TEMPORARY: placeholder until the forwarder lands (removed on merge).
#![allow(missing_docs, dead_code)]
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
#[derive(Debug, Clone, Default)]
pub struct SourceForward {
    pub rate_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
}
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<RwLock<HashMap<String, SourceForward>>>);
impl Routes {
    pub fn new(m: HashMap<String, SourceForward>) -> Self {
        Self(Arc::new(RwLock::new(m)))
    }
    pub fn replace(&self, m: HashMap<String, SourceForward>) {
        *self.0.write().unwrap() = m;
    }
}
pub struct Forwarder;
impl Forwarder {
    pub fn spawn(
        _: crate::store::Store,
        _: crate::config::ScaleoConfig,
        _: crate::config::ForwardConfig,
        _: Routes,
        _: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
}
