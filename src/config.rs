//! Service configuration (`relay.toml` plus `RELAY__...` environment overrides), raw -> validated.
//!
//! The raw form mirrors PRODUCT.md section 5 key for key (unknown keys are errors); `load`
//! layers the file and the environment through the `config` crate, then `validate` turns it
//! into [`Config`], naming the key, the bad value and what is accepted for every problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::rules::value::{parse_duration, parse_zone};

/// Errors of loading or validating the service config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or an environment override has the wrong type.
    #[error("{0}")]
    Source(#[from] config::ConfigError),
    /// A key holds a value outside what it accepts.
    #[error("{key} = {value:?}: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
    /// A `${VAR}` reference to an environment variable that is not set.
    #[error("{key} = \"${{{var}}}\": environment variable {var} is not set (or empty)")]
    UnsetVariable { key: &'static str, var: String },
    /// A key has no value and no default.
    #[error("{key} is required: {hint}")]
    Missing {
        key: &'static str,
        hint: &'static str,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    admin: RawAdmin,
    scaleo: RawScaleo,
    forward: RawForward,
    store: RawStore,
    rules: RawRules,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    max_url_bytes: usize,
    max_body_bytes: usize,
    max_params: usize,
    max_header_bytes: usize,
    trusted_proxies: Vec<String>,
    read_timeout: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_url_bytes: 16384,
            max_body_bytes: 65536,
            max_params: 1000,
            max_header_bytes: 16384,
            trusted_proxies: Vec::new(),
            read_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
            token: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawScaleo {
    base_url: Option<String>,
    api_key: Option<String>,
    timezone: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawForward {
    rate_per_second: u32,
    burst: u32,
    concurrency: usize,
    retry_schedule: Vec<String>,
    max_age: String,
    max_attempts: u32,
    lease: String,
    pause_probe: String,
    grace: String,
    outage_after: u32,
    max_retry_after: String,
}

impl Default for RawForward {
    fn default() -> Self {
        Self {
            rate_per_second: 20,
            burst: 20,
            concurrency: 16,
            retry_schedule: ["10s", "30s", "2m", "10m", "30m", "1h", "3h", "6h", "12h"]
                .map(String::from)
                .to_vec(),
            max_age: "3d".into(),
            max_attempts: 20,
            lease: "30s".into(),
            pause_probe: "60s".into(),
            grace: "10s".into(),
            outage_after: 20,
            max_retry_after: "10m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    path: String,
    url: Option<String>,
    retention: String,
    commit_batch: usize,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: "data".into(),
            url: None,
            retention: "30d".into(),
            commit_batch: 256,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRules {
    dir: String,
}

impl Default for RawRules {
    fn default() -> Self {
        Self {
            dir: "rules".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    json: bool,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            json: false,
            level: "info".into(),
        }
    }
}

/// The validated service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub scaleo: ScaleoConfig,
    pub forward: ForwardConfig,
    pub store: StoreConfig,
    pub rules_dir: PathBuf,
    pub log: LogConfig,
}

/// `[server]`: the ingest listener and its limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_url_bytes: usize,
    pub max_body_bytes: usize,
    pub max_params: usize,
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// How long a client may take to send its request head, and then its body (408).
    pub read_timeout: Duration,
}

/// `[admin]`: the admin listener; without a token every `/admin/` path answers 401.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

/// `[scaleo]`: where conversions go.
#[derive(Clone)]
pub struct ScaleoConfig {
    pub base_url: String,
    pub api_key: String,
    pub timezone: TimeZone,
    pub timeout: Duration,
}

impl std::fmt::Debug for ScaleoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleoConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("timezone", &self.timezone.iana_name().unwrap_or("fixed"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[forward]`: rate, concurrency, retries and leases.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Requests per second across all sources; 0 turns the limit off.
    pub rate_per_second: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub retry_schedule: Vec<Duration>,
    pub max_age: Duration,
    /// Attempts in all before a record goes dead (with `max_age`, whichever comes first).
    pub max_attempts: u32,
    pub lease: Duration,
    pub pause_probe: Duration,
    /// How long in-flight forwards may run on shutdown.
    pub grace: Duration,
    /// Attempts in a row without an answer from Scaleo (no answer, 5xx, a 2xx that is not
    /// Scaleo's JSON) that start outage mode: all sending held, one probe per `pause_probe`.
    pub outage_after: u32,
    /// The longest `Retry-After` honoured; a longer one is capped to this.
    pub max_retry_after: Duration,
}

/// `[store]`: the embedded SQLite directory, or the PostgreSQL database shared by several
/// instances (`url`, which wins when set).
#[derive(Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub url: Option<String>,
    pub retention: Duration,
    /// Most records one group commit may hold.
    pub commit_batch: usize,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("retention", &self.retention)
            .field("commit_batch", &self.commit_batch)
            .finish()
    }
}

/// `[log]`: human or JSON lines, and the default level filter.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

impl Config {
    /// Reads `file` (if given) and the `RELAY__` environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(file, &[])
    }

    /// Like [`Config::load`], with `overrides` (dotted key, value) applied last.
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        Self::read(file, overrides, true)
    }

    /// Validates without reading `${VAR}` secrets (`check --no-env`): the references are
    /// kept as they are written.
    pub fn load_without_env(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::read(file, &[], false)
    }

    fn read(
        file: Option<&Path>,
        overrides: &[(&str, String)],
        resolve_env: bool,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("RELAY")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("forward.retry_schedule")
                .with_list_parse_key("server.trusted_proxies")
                .try_parsing(true),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.as_str())?;
        }
        let raw: RawConfig = builder.build()?.try_deserialize()?;
        raw.validate(resolve_env)
    }

    /// Defaults for everything, pointed at `base_url` with `api_key` (tests and the sandbox).
    pub fn for_local(base_url: &str, api_key: &str) -> Config {
        let raw = RawConfig {
            scaleo: RawScaleo {
                base_url: Some(base_url.into()),
                api_key: Some(api_key.into()),
                ..RawScaleo::default()
            },
            ..RawConfig::default()
        };
        raw.validate(true).expect("defaults are valid")
    }
}

fn invalid(
    key: &'static str,
    value: impl Into<String>,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        expected: expected.into(),
    }
}

fn duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|e| invalid(key, value, e))
}

fn addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, value, "an address and port such as 127.0.0.1:8080"))
}

impl RawConfig {
    fn validate(self, resolve_env: bool) -> Result<Config, ConfigError> {
        let expand = |key, value| expand(key, value, resolve_env);
        let s = self.server;
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .map(|p| {
                parse_cidr(p).ok_or_else(|| {
                    invalid(
                        "server.trusted_proxies",
                        p,
                        "CIDRs such as 10.0.0.0/8 or single addresses",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        for (key, v) in [
            ("server.max_url_bytes", s.max_url_bytes),
            ("server.max_body_bytes", s.max_body_bytes),
            ("server.max_params", s.max_params),
            ("server.max_header_bytes", s.max_header_bytes),
        ] {
            if v == 0 {
                return Err(invalid(key, "0", "a positive number"));
            }
        }
        let server = ServerConfig {
            listen: addr("server.listen", &s.listen)?,
            max_url_bytes: s.max_url_bytes,
            max_body_bytes: s.max_body_bytes,
            max_params: s.max_params,
            max_header_bytes: s.max_header_bytes,
            trusted_proxies,
            read_timeout: duration("server.read_timeout", &s.read_timeout)?,
        };
        let admin = AdminConfig {
            listen: addr("admin.listen", &self.admin.listen)?,
            token: expand("admin.token", self.admin.token)?.filter(|t| !t.is_empty()),
        };

        let sc = self.scaleo;
        let base_url = expand("scaleo.base_url", sc.base_url)?.ok_or(ConfigError::Missing {
            key: "scaleo.base_url",
            hint: "your network's tracking domain, e.g. https://track.example-network.com (or RELAY__SCALEO__BASE_URL)",
        })?;
        let base_url = base_url.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(
                "scaleo.base_url",
                base_url,
                "an http:// or https:// URL",
            ));
        }
        let api_key = expand("scaleo.api_key", sc.api_key)?
            .filter(|k| !k.is_empty())
            .ok_or(ConfigError::Missing {
                key: "scaleo.api_key",
                hint: "a Scaleo manager API key (set RELAY__SCALEO__API_KEY)",
            })?;
        let tz_text = sc.timezone.unwrap_or_else(|| "UTC".into());
        let timezone = parse_zone(&tz_text).map_err(|e| invalid("scaleo.timezone", &tz_text, e))?;
        let timeout = duration("scaleo.timeout", sc.timeout.as_deref().unwrap_or("10s"))?;
        let scaleo = ScaleoConfig {
            base_url,
            api_key,
            timezone,
            timeout,
        };

        let f = self.forward;
        if f.max_attempts == 0 {
            return Err(invalid("forward.max_attempts", "0", "at least 1"));
        }
        if f.concurrency == 0 {
            return Err(invalid("forward.concurrency", "0", "at least 1"));
        }
        if f.rate_per_second > 0 && f.burst == 0 {
            return Err(invalid(
                "forward.burst",
                "0",
                "at least 1 when rate_per_second is set",
            ));
        }
        let retry_schedule = f
            .retry_schedule
            .iter()
            .map(|d| duration("forward.retry_schedule", d))
            .collect::<Result<Vec<_>, _>>()?;
        if retry_schedule.is_empty() {
            return Err(invalid(
                "forward.retry_schedule",
                "[]",
                "at least one delay such as \"10s\"",
            ));
        }
        let lease = duration("forward.lease", &f.lease)?;
        if lease <= scaleo.timeout {
            return Err(invalid(
                "forward.lease",
                &f.lease,
                format!("a lease longer than scaleo.timeout ({:?})", scaleo.timeout),
            ));
        }
        let forward = ForwardConfig {
            rate_per_second: f.rate_per_second,
            burst: f.burst,
            concurrency: f.concurrency,
            retry_schedule,
            max_age: duration("forward.max_age", &f.max_age)?,
            max_attempts: f.max_attempts,
            lease,
            pause_probe: duration("forward.pause_probe", &f.pause_probe)?,
            grace: duration("forward.grace", &f.grace)?,
            outage_after: f.outage_after.max(1),
            max_retry_after: duration("forward.max_retry_after", &f.max_retry_after)?,
        };

        let st = self.store;
        if st.commit_batch == 0 {
            return Err(invalid("store.commit_batch", "0", "at least 1"));
        }
        let store = StoreConfig {
            path: PathBuf::from(st.path),
            url: expand("store.url", st.url)?,
            retention: duration("store.retention", &st.retention)?,
            commit_batch: st.commit_batch,
        };
        if let Some(url) = &store.url
            && !url.starts_with("${")
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "store.url",
                crate::store::redact_url(url),
                "a postgres://user@host:port/database URL",
            ));
        }
        let level = self.log.level;
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(invalid(
                "log.level",
                level,
                "a level such as info, debug or warn",
            ));
        }
        Ok(Config {
            server,
            admin,
            scaleo,
            forward,
            store,
            rules_dir: PathBuf::from(self.rules.dir),
            log: LogConfig {
                json: self.log.json,
                level,
            },
        })
    }
}

/// Reads `${VAR}` from the environment; other values pass through. An unset variable is an
/// error naming it (the value is a secret reference, so the error never shows a value).
fn expand(
    key: &'static str,
    value: Option<String>,
    resolve_env: bool,
) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let Some(var) = v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        return Ok(Some(v));
    };
    if !resolve_env {
        return Ok(Some(v));
    }
    match std::env::var(var) {
        Ok(val) if !val.is_empty() => Ok(Some(val)),
        _ => Err(ConfigError::UnsetVariable {
            key,
            var: var.to_string(),
        }),
    }
}

/// Parses a CIDR or a bare address (taken as a single host).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
