//! Scaleo networks: the base URL and API key pair a source forwards to, and which pause
//! scopes stand for a network in the store.
//!
//! The global `[scaleo]` network is one; a source whose rule file names its own `base_url`
//! or `api_key` talks to another (sources naming the same pair share it). A refused key or
//! an outage belongs to one network: the store keeps it as pauses of the scopes that cover
//! exactly that network's sources ([`Networks::scopes`]): `All` while every source uses the
//! global network, else one pause per source of the network, so other networks go on.

use std::fmt;

use super::routes::{Routes, SourceForward};
use crate::store::PauseScope;

/// One Scaleo network: where its postbacks go and with which key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Network {
    base_url: String,
    api_key: String,
}

impl Network {
    /// The tracking domain.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn api_key(&self) -> &str {
        &self.api_key
    }
}

/// The key never shows: the base URL names the network in logs.
impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::store::redact_url(&self.base_url))
    }
}

/// The global network and the sources' routes: which network each source uses.
#[derive(Clone)]
pub(crate) struct Networks {
    global: Network,
    routes: Routes,
}

impl Networks {
    pub(crate) fn new(base_url: &str, api_key: &str, routes: Routes) -> Networks {
        let global = Network {
            base_url: base_url.to_string(),
            api_key: api_key.to_string(),
        };
        Networks { global, routes }
    }

    /// The network a source with `route` forwards to.
    pub(crate) fn of(&self, route: &SourceForward) -> Network {
        Network {
            base_url: route
                .base_url
                .clone()
                .unwrap_or_else(|| self.global.base_url.clone()),
            api_key: route
                .api_key
                .clone()
                .unwrap_or_else(|| self.global.api_key.clone()),
        }
    }

    /// The network `source` forwards to now.
    pub(crate) fn of_source(&self, source: &str) -> Network {
        self.of(&self.routes.get(source))
    }

    /// The network a pause of `scope` holds.
    pub(crate) fn of_scope(&self, scope: &PauseScope) -> Network {
        match scope {
            PauseScope::All => self.global.clone(),
            PauseScope::Source(s) => self.of_source(s),
        }
    }

    /// Whether every known source uses the global network.
    pub(crate) fn single(&self) -> bool {
        self.routes
            .all()
            .values()
            .all(|r| self.of(r) == self.global)
    }

    /// The known sources whose network passes `keep`.
    pub(crate) fn sources_where(&self, keep: impl Fn(&Network) -> bool) -> Vec<String> {
        let mut sources: Vec<String> = self
            .routes
            .all()
            .iter()
            .filter(|(_, r)| keep(&self.of(r)))
            .map(|(s, _)| s.clone())
            .collect();
        sources.sort();
        sources
    }

    /// The scopes whose pauses hold `network` and nothing else, `source` (one of its
    /// sources) always among them: `All` for the global network while no source uses
    /// another, else every known source of the network.
    pub(crate) fn scopes(&self, network: &Network, source: &str) -> Vec<PauseScope> {
        if *network == self.global && self.single() {
            return vec![PauseScope::All];
        }
        let mut sources = self.sources_where(|n| n == network);
        if !sources.iter().any(|s| s == source) {
            sources.push(source.to_string());
        }
        sources.into_iter().map(PauseScope::Source).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn own(base_url: &str, api_key: &str) -> SourceForward {
        SourceForward {
            base_url: Some(base_url.into()),
            api_key: Some(api_key.into()),
            ..SourceForward::default()
        }
    }

    fn networks(routes: &[(&str, SourceForward)]) -> Networks {
        let map: HashMap<String, SourceForward> = routes
            .iter()
            .map(|(s, r)| (s.to_string(), r.clone()))
            .collect();
        Networks::new("https://global.example", "gk", Routes::new(map))
    }

    fn src(s: &str) -> PauseScope {
        PauseScope::Source(s.into())
    }

    #[test]
    fn with_one_network_a_pause_of_it_is_a_pause_of_all() {
        let rated = SourceForward {
            rate_per_second: Some(1),
            ..SourceForward::default()
        };
        let n = networks(&[("a", SourceForward::default()), ("slow", rated)]);
        let global = n.of_source("a");
        assert_eq!(n.of_source("slow"), global);
        assert_eq!(n.of_source("unknown"), global);
        assert_eq!(n.scopes(&global, "a"), [PauseScope::All]);
        assert_eq!(n.of_scope(&PauseScope::All), global);
    }

    #[test]
    fn each_network_is_paused_through_its_own_sources_only() {
        let n = networks(&[
            ("a", SourceForward::default()),
            ("b", SourceForward::default()),
            ("x", own("https://x.example", "xk")),
            ("y", own("https://x.example", "xk")),
            ("z", own("https://x.example", "other-key")),
        ]);
        let global = n.of_source("a");
        let x = n.of_source("x");
        assert_ne!(x, global);
        assert_eq!(n.of_source("y"), x);
        assert_ne!(n.of_source("z"), x, "another key is another network");
        assert_eq!(n.scopes(&global, "a"), [src("a"), src("b")]);
        assert_eq!(n.scopes(&global, "new"), [src("a"), src("b"), src("new")]);
        assert_eq!(n.scopes(&x, "x"), [src("x"), src("y")]);
        assert_eq!(n.of_scope(&src("y")), x);
        assert!(!n.single());
    }

    #[test]
    fn the_key_never_shows() {
        let n = networks(&[]);
        let shown = format!("{:?} {}", n.of_source("a"), n.of_source("a"));
        assert!(!shown.contains("gk"), "{shown}");
        assert!(shown.contains("global.example"), "{shown}");
    }
}
