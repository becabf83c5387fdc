//! Per-source forward overrides (a rule file's `[forward]`), replaceable at runtime.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ratelimit::Rate;

/// A source's `[forward]` overrides of the service config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceForward {
    /// Requests per second for this source alone (0 or absent = only the global limit).
    pub rate_per_second: Option<u32>,
    /// Burst of this source's limit (default: its rate).
    pub burst: Option<u32>,
    /// Another Scaleo network's tracking domain.
    pub base_url: Option<String>,
    /// That network's API key.
    pub api_key: Option<String>,
}

impl SourceForward {
    /// The source's own rate limit, if any.
    pub fn rate(&self) -> Option<Rate> {
        let per_second = self.rate_per_second.filter(|r| *r > 0)?;
        Some(Rate {
            per_second,
            burst: self.burst.unwrap_or(per_second),
        })
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

/// A cheap, clonable handle on the current per-source overrides; the rules loader replaces
/// the whole set on reload, the forwarder reads it for every postback.
#[derive(Clone, Default)]
pub struct Routes {
    current: Arc<ArcSwap<HashMap<String, SourceForward>>>,
}

impl Routes {
    /// Routes holding `map`.
    pub fn new(map: HashMap<String, SourceForward>) -> Routes {
        Routes {
            current: Arc::new(ArcSwap::from_pointee(map)),
        }
    }

    /// Installs a reloaded set of overrides at once (postbacks already sending finish with the
    /// old ones). A source missing from `map` keeps its last overrides: its rule file was
    /// removed, but its stored records must still go to its own network with its own key.
    pub fn replace(&self, map: HashMap<String, SourceForward>) {
        self.current.rcu(|old| {
            let mut map = map.clone();
            for (source, kept) in old.iter() {
                map.entry(source.clone()).or_insert_with(|| kept.clone());
            }
            map
        });
    }

    /// The overrides of `source` (all `None` when it has none).
    pub fn get(&self, source: &str) -> SourceForward {
        self.current.load().get(source).cloned().unwrap_or_default()
    }

    /// Every source's overrides, as installed now.
    pub(crate) fn all(&self) -> Arc<HashMap<String, SourceForward>> {
        self.current.load_full()
    }
}
