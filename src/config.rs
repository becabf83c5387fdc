//! Service configuration (`relay.toml` plus `RELAY__...` environment overrides), raw -> validated.
//!
//! The raw form mirrors `relay.example.toml` key for key (unknown keys are errors); `load`
//! layers the file and the environment through the `config` crate, then `validate` turns it
//! into [`Config`], collecting every problem at once, each naming the key, where it is set
//! (the file's line or the environment variable), the bad value and what is accepted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::forward::retry::{PolicyError, RetryPolicy};
pub use crate::parse::parse_cidr;
use crate::parse::{parse_duration, parse_zone};
/// `[store]`, defined with the store (kept here so `config::StoreConfig` still resolves).
pub use crate::store::StoreConfig;

/// Errors of loading or validating the service config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or an environment override has the wrong type.
    /// The message is redacted ([`redact_secrets`]): a syntax error never shows the line.
    #[error("{0}")]
    Source(String),
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
    /// The config file given does not exist.
    #[error("no config file {}: copy relay.example.toml to it, or give the path of yours with --config", .0.display())]
    NoFile(PathBuf),
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Source(redact_secrets(&e.to_string()))
    }
}

/// Removes what a parse error may quote of the file: the offending line of a TOML syntax
/// error (it may hold a secret written inline: `url = "postgres://relay:PW@..."`,
/// `api_key = "..."`, `token = "..."`) keeps only its key, the caret lines go, and any
/// `user:password@` left in the text is masked.
pub fn redact_secrets(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
        let rest = &trimmed[digits..];
        if digits > 0 && rest.starts_with(" |") {
            // `3 | api_key = "k` -> `3 | api_key = [redacted]`
            let indent = &line[..line.len() - trimmed.len()];
            let content = rest[2..].trim_start();
            let shown = match content.split_once('=') {
                Some((key, _)) => format!("{} = [redacted]", key.trim_end()),
                None => "[redacted]".to_string(),
            };
            out.push(format!("{indent}{} | {shown}", &trimmed[..digits]));
        } else if trimmed.starts_with('|') {
            // Gutter and caret lines point into the removed text.
            continue;
        } else {
            out.push(mask_userinfo(line));
        }
    }
    out.join("\n")
}

/// `scheme://user:password@host` -> `scheme://user:***@host`, anywhere in `line`.
fn mask_userinfo(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out.push_str(&rest[..colon]);
            out.push_str(":***");
            rest = &rest[at..];
        }
    }
    out.push_str(rest);
    out
}

impl ConfigError {
    /// The dotted key the problem is about, if it is about one.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. }
            | ConfigError::UnsetVariable { key, .. }
            | ConfigError::Missing { key, .. } => Some(key),
            ConfigError::Source(_) | ConfigError::NoFile(_) => None,
        }
    }
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
    max_connections: usize,
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
            max_connections: 10_000,
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
    timeout: String,
    pool_size: usize,
    connect_timeout: String,
    /// Unset: `store.timeout` plus a second.
    statement_timeout: Option<String>,
    ca_file: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: "data".into(),
            url: None,
            retention: "30d".into(),
            timeout: "2s".into(),
            commit_batch: 256,
            pool_size: 16,
            connect_timeout: "5s".into(),
            statement_timeout: None,
            ca_file: None,
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
    /// Most ingest connections open at once; more wait in the listen backlog (their file
    /// descriptors are not taken), so the admin listener and outbound sockets keep a reserve.
    pub max_connections: usize,
}

/// The environment variable that holds the admin token when the config sets none.
pub const ADMIN_TOKEN_VAR: &str = "RELAY_ADMIN_TOKEN";

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
    /// Set by `serve --sandbox` (never by the file): every source is forwarded to `base_url`
    /// with `api_key`, and a rule file's `[forward]` `base_url`/`api_key` are ignored, so
    /// nothing a demo stores can reach a real network.
    pub sandbox: bool,
}

impl std::fmt::Debug for ScaleoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleoConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("timezone", &self.timezone.iana_name().unwrap_or("fixed"))
            .field("timeout", &self.timeout)
            .field("sandbox", &self.sandbox)
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
    /// `retry_schedule`, `max_age` and `max_attempts` (attempts in all before a record goes
    /// dead, with `max_age`, whichever comes first), validated at load.
    pub retry: RetryPolicy,
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

/// `[log]`: human or JSON lines, and the default level filter.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

/// What a command needs from the config: everything (`serve`, `check`), or only the store,
/// the rules and the time zone (the operator commands, which never talk to Scaleo and never
/// check the admin token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Every key validated, `${VAR}` secrets read (an unset one is an error).
    All,
    /// Like `All`, but `${VAR}` secrets are kept as written (`check --no-env`).
    AllWithoutEnv,
    /// `scaleo.base_url`, `scaleo.api_key` and `admin.token` are neither required nor read
    /// (`ScaleoConfig::base_url` and `api_key` are then empty); everything else is validated.
    Operator,
}

/// Every problem of a service config at once, each with where it was found (the file's line,
/// or the environment variable that set it).
#[derive(Debug)]
pub struct ConfigErrors {
    /// The config file, if one was given.
    pub file: Option<PathBuf>,
    /// The problems, in the order of the keys.
    pub problems: Vec<Located>,
}

/// One problem and where its key is set.
#[derive(Debug)]
pub struct Located {
    /// `relay.toml:12`, `environment RELAY__FORWARD__BURST`, or the file (or nothing) when
    /// the key is set nowhere.
    pub at: Option<String>,
    pub error: ConfigError,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{at}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        let n = self.problems.len();
        match &self.file {
            Some(file) => write!(f, "{n} problem(s) in the service config {}", file.display()),
            None => write!(f, "{n} problem(s) in the service config"),
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The problems TOML found in `file` (its `text`), each at its `file:line:col`.
    fn at_positions(file: &Path, text: &str, problems: Vec<crate::toml_check::Problem>) -> Self {
        let problems = problems
            .into_iter()
            .map(|p| {
                let (line, col) = crate::toml_check::line_col(text, p.span.map_or(0, |s| s.start));
                Located {
                    at: Some(format!("{}:{line}:{col}", file.display())),
                    error: ConfigError::Source(redact_secrets(&p.message)),
                }
            })
            .collect();
        ConfigErrors {
            file: Some(file.to_path_buf()),
            problems,
        }
    }

    fn new(file: Option<&Path>, errors: Vec<ConfigError>) -> ConfigErrors {
        let text = file.and_then(|f| std::fs::read_to_string(f).ok());
        let mut problems: Vec<Located> = errors
            .into_iter()
            .map(|error| Located {
                at: locate(file, text.as_deref(), &error),
                error,
            })
            .collect();
        // In the file's order; problems without a line (environment, missing keys) last.
        let line = |l: &Located| {
            l.at.as_deref()
                .and_then(|at| at.rsplit_once(':'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        };
        problems.sort_by_key(line);
        ConfigErrors {
            file: file.map(Path::to_path_buf),
            problems,
        }
    }
}

impl Config {
    /// Reads `file` (if given) and the `RELAY__` environment, then validates everything.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigErrors> {
        Self::read(file, &[], Need::All)
    }

    /// Like [`Config::load`], with `overrides` (dotted key, value) applied last.
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigErrors> {
        Self::read(file, overrides, Need::All)
    }

    /// Validates without reading `${VAR}` secrets (`check --no-env`): the references are
    /// kept as they are written.
    pub fn load_without_env(file: Option<&Path>) -> Result<Config, ConfigErrors> {
        Self::read(file, &[], Need::AllWithoutEnv)
    }

    /// Loads what `need` asks for.
    pub fn load_for(file: Option<&Path>, need: Need) -> Result<Config, ConfigErrors> {
        Self::read(file, &[], need)
    }

    fn read(
        file: Option<&Path>,
        overrides: &[(&str, String)],
        need: Need,
    ) -> Result<Config, ConfigErrors> {
        let one = |e: ConfigError| ConfigErrors::new(file, vec![e]);
        if let Some(f) = file
            && !f.is_file()
        {
            return Err(one(ConfigError::NoFile(f.to_path_buf())));
        }
        // The file alone first, with TOML's own positions: every unknown key at once, or the
        // value of the wrong type, each at its file:line:col (the config crate names one
        // problem at a time, without a position).
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                one(ConfigError::Source(format!(
                    "cannot read {}: {e}",
                    f.display()
                )))
            })?;
            if let Err(problems) = crate::toml_check::parse::<RawConfig>(&text) {
                return Err(ConfigErrors::at_positions(f, &text, problems));
            }
        }
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
            builder = builder
                .set_override(*key, value.as_str())
                .map_err(|e| one(e.into()))?;
        }
        let raw: RawConfig = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| one(e.into()))?;
        raw.validate(need)
            .map_err(|errors| ConfigErrors::new(file, errors))
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
        raw.validate(Need::All).expect("defaults are valid")
    }
}

/// The `rules.dir` of a config file (and the environment), even when other keys are
/// invalid: `check` still checks the right rules when the config has problems.
pub fn rules_dir(file: &Path) -> Option<PathBuf> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        rules: Option<OnlyRules>,
    }
    #[derive(Deserialize)]
    struct OnlyRules {
        dir: Option<String>,
    }
    let only: Only = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("RELAY")
                .prefix_separator("__")
                .separator("__"),
        )
        .build()
        .ok()?
        .try_deserialize()
        .ok()?;
    only.rules?.dir.map(PathBuf::from)
}

/// Where `error`'s key is set: the environment variable that overrides it, else the line of
/// the file that sets it, else the file.
fn locate(file: Option<&Path>, text: Option<&str>, error: &ConfigError) -> Option<String> {
    let file_name = file.map(|f| f.display().to_string());
    let key = error.key()?;
    let var = format!("RELAY__{}", key.replace('.', "__").to_ascii_uppercase());
    if std::env::var_os(&var).is_some() {
        return Some(format!("environment {var}"));
    }
    match (file_name, text.and_then(|t| line_of(t, key))) {
        (Some(f), Some(line)) => Some(format!("{f}:{line}")),
        (Some(f), None) => Some(f),
        (None, _) => None,
    }
}

/// The 1-based line of `section.key = ...` in a TOML text (under its `[section]` header, or
/// written dotted at the top level).
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        if (current == section && name == key) || (current.is_empty() && name == dotted) {
            return Some(i + 1);
        }
    }
    None
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

/// Collects problems while validation goes on with a stand-in value.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value, or the stand-in `or` with the problem kept.
    fn take<T>(&mut self, r: Result<T, ConfigError>, or: T) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(e);
            or
        })
    }

    fn push(&mut self, e: ConfigError) {
        self.0.push(e);
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

/// Most PostgreSQL connections one instance may hold (`store.pool_size`).
const MAX_POOL_SIZE: usize = 1000;
/// `store.statement_timeout` when unset: this much above `store.timeout`, so the server never
/// cancels a statement the relay still waits for, and stops one it gave up on soon after.
const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

const ANY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl RawConfig {
    fn validate(self, need: Need) -> Result<Config, Vec<ConfigError>> {
        let mut p = Problems::default();
        let resolve_env = need != Need::AllWithoutEnv;
        let expand = |key, value| expand(key, value, resolve_env);
        let s = self.server;
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .filter_map(|text| {
                let net = parse_cidr(text).ok_or_else(|| {
                    invalid(
                        "server.trusted_proxies",
                        text,
                        "CIDRs such as 10.0.0.0/8 or single addresses",
                    )
                });
                p.take(net.map(Some), None)
            })
            .collect();
        for (key, v) in [
            ("server.max_url_bytes", s.max_url_bytes),
            ("server.max_body_bytes", s.max_body_bytes),
            ("server.max_params", s.max_params),
            ("server.max_header_bytes", s.max_header_bytes),
            ("server.max_connections", s.max_connections),
        ] {
            if v == 0 {
                p.push(invalid(key, "0", "a positive number"));
            }
        }
        let server = ServerConfig {
            listen: p.take(addr("server.listen", &s.listen), ANY_ADDR),
            max_url_bytes: s.max_url_bytes,
            max_body_bytes: s.max_body_bytes,
            max_params: s.max_params,
            max_header_bytes: s.max_header_bytes,
            trusted_proxies,
            read_timeout: p.take(
                duration("server.read_timeout", &s.read_timeout),
                Duration::from_secs(10),
            ),
            max_connections: s.max_connections,
        };
        // The default is `${RELAY_ADMIN_TOKEN}`, when that variable is set (unset: no token,
        // and every /admin/ path answers 401).
        let admin_token = self.admin.token.or_else(|| {
            std::env::var_os(ADMIN_TOKEN_VAR)
                .filter(|v| !v.is_empty())
                .map(|_| format!("${{{ADMIN_TOKEN_VAR}}}"))
        });
        let token = match need {
            // The operator commands never serve the admin API: its token is not read.
            Need::Operator => None,
            _ => p
                .take(expand("admin.token", admin_token), None)
                .filter(|t| !t.is_empty()),
        };
        let admin = AdminConfig {
            listen: p.take(addr("admin.listen", &self.admin.listen), ANY_ADDR),
            token,
        };

        let sc = self.scaleo;
        let (base_url, api_key) = if need == Need::Operator {
            (String::new(), String::new())
        } else {
            // An unset ${VAR} is reported once, not also as a missing key.
            let missing = ConfigError::Missing {
                key: "scaleo.base_url",
                hint: "your network's tracking domain, e.g. https://track.example-network.com (or RELAY__SCALEO__BASE_URL)",
            };
            let base_url = match expand("scaleo.base_url", sc.base_url) {
                Err(e) => {
                    p.push(e);
                    String::new()
                }
                Ok(None) => {
                    p.push(missing);
                    String::new()
                }
                Ok(Some(url)) if url.trim().is_empty() => {
                    p.push(missing);
                    String::new()
                }
                // `check --no-env` keeps the reference as written.
                Ok(Some(url)) if url.starts_with("${") => url,
                Ok(Some(url)) => {
                    let url = url.trim().trim_end_matches('/').to_string();
                    if let Some(expected) = base_url_problem(&url) {
                        p.push(invalid("scaleo.base_url", &url, expected));
                    }
                    url
                }
            };
            let api_key = match expand("scaleo.api_key", sc.api_key) {
                Ok(key) => key.filter(|k| !k.is_empty()),
                Err(e) => {
                    p.push(e);
                    Some(String::new())
                }
            };
            let api_key = api_key.unwrap_or_else(|| {
                p.push(ConfigError::Missing {
                    key: "scaleo.api_key",
                    hint: "a Scaleo manager API key (set RELAY__SCALEO__API_KEY, or api_key = \"${SCALEO_API_KEY}\" in the file)",
                });
                String::new()
            });
            (base_url, api_key)
        };
        let tz_text = sc.timezone.unwrap_or_else(|| "UTC".into());
        let timezone = p.take(
            parse_zone(&tz_text).map_err(|e| invalid("scaleo.timezone", &tz_text, e)),
            TimeZone::UTC,
        );
        let timeout = p.take(
            duration("scaleo.timeout", sc.timeout.as_deref().unwrap_or("10s")),
            Duration::from_secs(10),
        );
        let scaleo = ScaleoConfig {
            base_url,
            api_key,
            timezone,
            timeout,
            sandbox: false,
        };

        let f = self.forward;
        if f.concurrency == 0 {
            p.push(invalid("forward.concurrency", "0", "at least 1"));
        }
        if f.rate_per_second > 0 && f.burst == 0 {
            p.push(invalid(
                "forward.burst",
                "0",
                "at least 1 when rate_per_second is set",
            ));
        }
        let retry_schedule: Vec<Duration> = f
            .retry_schedule
            .iter()
            .filter_map(|d| p.take(duration("forward.retry_schedule", d).map(Some), None))
            .collect();
        let schedule_parsed = retry_schedule.len() == f.retry_schedule.len();
        let max_age = p.take(duration("forward.max_age", &f.max_age), Duration::ZERO);
        let retry =
            RetryPolicy::new(retry_schedule, max_age, f.max_attempts).unwrap_or_else(|problems| {
                for e in problems {
                    // A schedule left empty by delays that do not parse is reported by them.
                    if e != PolicyError::EmptySchedule || schedule_parsed {
                        p.push(invalid(e.key(), e.value(), e.expected()));
                    }
                }
                RetryPolicy::stand_in()
            });
        let lease = p.take(duration("forward.lease", &f.lease), Duration::MAX);
        if lease <= scaleo.timeout {
            p.push(invalid(
                "forward.lease",
                &f.lease,
                format!("a lease longer than scaleo.timeout ({:?})", scaleo.timeout),
            ));
        }
        let forward = ForwardConfig {
            rate_per_second: f.rate_per_second,
            burst: f.burst,
            concurrency: f.concurrency,
            retry,
            lease,
            pause_probe: p.take(
                duration("forward.pause_probe", &f.pause_probe),
                Duration::ZERO,
            ),
            grace: p.take(duration("forward.grace", &f.grace), Duration::ZERO),
            outage_after: f.outage_after.max(1),
            max_retry_after: p.take(
                duration("forward.max_retry_after", &f.max_retry_after),
                Duration::from_secs(600),
            ),
        };

        let st = self.store;
        if st.commit_batch == 0 {
            p.push(invalid("store.commit_batch", "0", "at least 1"));
        }
        // The operator commands need the store: its URL is read in every mode.
        let url = p.take(expand("store.url", st.url), None);
        if let Some(url) = &url
            && !url.starts_with("${")
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            p.push(invalid(
                "store.url",
                crate::store::redact_url(url),
                "a postgres://user@host:port/database URL",
            ));
        }
        let timeout = p.take(
            duration("store.timeout", &st.timeout),
            Duration::from_secs(2),
        );
        if !(1..=MAX_POOL_SIZE).contains(&st.pool_size) {
            p.push(invalid(
                "store.pool_size",
                st.pool_size.to_string(),
                format!(
                    "between 1 and {MAX_POOL_SIZE} connections (each instance holds up to \
                     this many; keep the sum over instances under PostgreSQL's max_connections)"
                ),
            ));
        }
        let connect_timeout = p.take(
            duration("store.connect_timeout", &st.connect_timeout),
            Duration::from_secs(5),
        );
        if connect_timeout.is_zero() {
            p.push(invalid(
                "store.connect_timeout",
                &st.connect_timeout,
                "a duration above zero such as \"5s\"",
            ));
        }
        let statement_timeout = match &st.statement_timeout {
            None => timeout + STATEMENT_TIMEOUT_MARGIN,
            Some(text) => {
                let d = p.take(duration("store.statement_timeout", text), Duration::ZERO);
                if d.is_zero() {
                    p.push(invalid(
                        "store.statement_timeout",
                        text,
                        "a duration above zero such as \"3s\" (PostgreSQL's 0 would let an \
                         abandoned statement run forever), or leave it unset for store.timeout \
                         plus 1s",
                    ));
                } else if d.as_millis() > i32::MAX as u128 {
                    p.push(invalid(
                        "store.statement_timeout",
                        text,
                        "at most 24 days (PostgreSQL's limit)",
                    ));
                }
                d
            }
        };
        let ca_file = st.ca_file.map(PathBuf::from);
        if let Some(url) = &url
            && (url.starts_with("postgres://") || url.starts_with("postgresql://"))
            && let Err(message) = crate::store::check_url(url, ca_file.as_deref())
        {
            p.push(invalid("store.url", crate::store::redact_url(url), message));
        }
        let store = StoreConfig {
            path: PathBuf::from(st.path),
            url,
            retention: p.take(duration("store.retention", &st.retention), Duration::ZERO),
            commit_batch: st.commit_batch,
            timeout,
            pool_size: st.pool_size,
            connect_timeout,
            statement_timeout,
            ca_file,
        };
        let level = self.log.level;
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            p.push(invalid(
                "log.level",
                &level,
                "a level such as info, debug or warn",
            ));
        }
        if !p.0.is_empty() {
            return Err(p.0);
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

/// What is wrong with a Scaleo base URL, as the text of what is expected; `None` when it is
/// a plain `http(s)://host[:port]`. The relay appends the API path itself, so a path, a
/// query or the Scaleo admin panel's host would make every conversion fail.
pub fn base_url_problem(url: &str) -> Option<String> {
    const EXAMPLE: &str = "e.g. https://track.example-network.com";
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Some(format!(
            "an http:// or https:// URL of your network's tracking domain, {EXAMPLE}"
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    let scheme = &url[..url.len() - rest.len()];
    let bare = format!("{scheme}{host}");
    if host.is_empty() {
        return Some(format!("a URL with a host, {EXAMPLE}"));
    }
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    if path.contains("/api/") || path.ends_with("/api") || path.contains("conv-click-id") {
        return Some(format!(
            "only the scheme and host: the relay appends {} itself; use {bare}",
            crate::scaleo::CONV_PATH
        ));
    }
    if !path.is_empty() && path != "/" {
        return Some(format!(
            "only the scheme and host, without a path; use {bare}"
        ));
    }
    if tail.contains('?') || tail.contains('#') {
        return Some(format!(
            "only the scheme and host, without a query (the API key goes in scaleo.api_key); use {bare}"
        ));
    }
    let hostname = host
        .rsplit('@')
        .next()
        .unwrap_or(host)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if hostname == "scaleo.io" || hostname.ends_with(".scaleo.io") {
        return Some(
            "your network's tracking domain, not the Scaleo panel's address (*.scaleo.io): the \
             tracking domain is the one in your offers' tracking links, e.g. https://track.example-network.com"
                .into(),
        );
    }
    None
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
