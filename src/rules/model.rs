//! The compiled form of a rule file: every name resolved, every value checked, ready to apply.

use std::collections::HashMap;
use std::time::Duration;

use ipnet::IpNet;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;

use super::value::{DecimalMode, TimeFormat};
pub use crate::lifecycle::Updates;
use crate::scaleo::FieldType;

/// One source's compiled rule file.
#[derive(Debug)]
pub struct Rule {
    /// The file stem: the `{source}` of `/postback/{source}`.
    pub source: String,
    pub description: Option<String>,
    pub auth: Auth,
    pub dedupe: Dedupe,
    /// `[updates]`: later postbacks of a conversion change it (status, money).
    pub updates: Updates,
    pub forward: ForwardOverride,
    pub alerts: Alerts,
    /// `[answer]`: the success body and the status of a reject the sender expects.
    pub answer: AnswerRule,
    pub tests: Vec<RuleTest>,
    /// Line and column of `[updates] of`, for the check that it names a loaded source.
    pub(crate) updates_of_at: Option<(usize, usize)>,
    pub(crate) params: ParamPolicy,
    pub(crate) fields: Vec<FieldRule>,
    pub(crate) whens: Vec<When>,
    pub(crate) skips: Vec<Skip>,
    /// Every parameter name the rule reads (for `repeated = "reject"`), normalised.
    pub(crate) reads: Vec<String>,
}

/// `[auth]`, with `${VAR}` already read from the environment.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `None`: no token needed.
    pub token: Option<String>,
    pub token_param: String,
    /// Empty: any caller.
    pub allow_ips: Vec<IpNet>,
    /// `[auth.signature]`; `None` when absent, or when the environment was not read.
    pub signature: Option<Signature>,
}

impl Auth {
    /// Whether a decoded parameter name carries a credential (the token parameter or the
    /// signature parameter): never mapped, stored as `***`.
    pub fn is_secret_param(&self, name: &str, ignore_case: bool) -> bool {
        let is = |p: &str| same_param(name, p, ignore_case);
        is(&self.token_param)
            || matches!(&self.signature, Some(Signature { location: SigLocation::Param(p), .. }) if is(p))
    }
}

/// Whether a decoded parameter `name` is the parameter `wanted` (the token's, the
/// signature's), ASCII case ignored when the source's `params.ignore_case` says so: the one
/// comparison every credential check uses.
pub fn same_param(name: &str, wanted: &str, ignore_case: bool) -> bool {
    if ignore_case {
        name.eq_ignore_ascii_case(wanted)
    } else {
        name == wanted
    }
}

/// `[auth.signature]`: how the sender signs a postback, with `${VAR}` already read.
#[derive(Clone)]
pub struct Signature {
    pub algorithm: SigAlgorithm,
    pub message: Vec<SigPart>,
    pub location: SigLocation,
    pub encoding: SigEncoding,
    /// The HMAC key (`hmac-*` only).
    pub secret: Option<String>,
}

impl std::fmt::Debug for Signature {
    /// Never shows a secret: the key and `${VAR}` values of the message are elided.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signature")
            .field("algorithm", &self.algorithm)
            .field("location", &self.location)
            .field("encoding", &self.encoding)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// `algorithm = "md5" | "sha1" | "sha256" | "hmac-sha1" | "hmac-sha256"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlgorithm {
    Md5,
    Sha1,
    Sha256,
    HmacSha1,
    HmacSha256,
}

impl SigAlgorithm {
    pub fn parse(text: &str) -> Option<SigAlgorithm> {
        Some(match text {
            "md5" => SigAlgorithm::Md5,
            "sha1" => SigAlgorithm::Sha1,
            "sha256" => SigAlgorithm::Sha256,
            "hmac-sha1" => SigAlgorithm::HmacSha1,
            "hmac-sha256" => SigAlgorithm::HmacSha256,
            _ => return None,
        })
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, SigAlgorithm::HmacSha1 | SigAlgorithm::HmacSha256)
    }
}

/// A piece of a signature's message.
#[derive(Clone)]
pub enum SigPart {
    Lit(String),
    /// A parameter's decoded value (names normalised for `ignore_case`); empty when absent.
    Param(String),
    /// `{@body}`: the raw POST body, byte for byte.
    Body,
    /// A `${VAR}` read from the environment.
    Secret(String),
}

/// Where the sender puts the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigLocation {
    /// A query or body parameter (decoded).
    Param(String),
    /// A request header (lower case).
    Header(String),
}

/// `encoding = "hex" | "base64"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigEncoding {
    /// Either case.
    Hex,
    /// Standard or URL-safe alphabet, padded or not.
    Base64,
}

/// `[answer]`.
#[derive(Debug, Clone, Default)]
pub struct AnswerRule {
    /// `body = "{eventId}:OK"`: sent as `text/plain` for accepted, duplicate, update and stale
    /// postbacks instead of the JSON answer.
    pub(crate) body: Option<Vec<Part>>,
    /// `reject = 200`: a reject answers 200 (it is still stored as rejected).
    pub reject_ok: bool,
}

impl AnswerRule {
    /// Whether a success body is set.
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }
}

/// `[dedupe]`: the mapped fields that identify a conversion, and how long to remember them.
#[derive(Debug, Clone)]
pub struct Dedupe {
    /// Empty: no dedupe for this source.
    pub fields: Vec<&'static str>,
    pub window: Duration,
}

/// `[forward]`: per-source overrides of the service's forwarding config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardOverride {
    pub rate_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
}

/// `[alerts]`: when the source counts as silent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alerts {
    /// No postback for longer than this: the source is silent (console warning, metric).
    pub silent_after: Option<Duration>,
}

impl Alerts {
    /// Whether a source whose last postback came at `last` is silent at `now`: only with
    /// `silent_after` set and a last postback known (a source that never sent is new, not
    /// silent).
    pub fn is_silent(&self, last: Option<jiff::Timestamp>, now: jiff::Timestamp) -> bool {
        match (self.silent_after, last) {
            (Some(after), Some(t)) => now.duration_since(t).unsigned_abs() > after,
            _ => false,
        }
    }
}

/// One `[[tests]]` case.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    pub query: String,
    pub expect: Expectation,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub received_at: Option<jiff::Timestamp>,
    /// Earlier postbacks of the same conversion (`after = [...]`), applied in order first.
    pub after: Vec<String>,
    /// A POST body and how it is encoded; its parameters follow the query's.
    pub body: Option<(super::BodyKind, String)>,
    /// 1-based line of the `[[tests]]` entry, for failure messages.
    pub line: usize,
}

/// What a test expects.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// The whole body, exactly.
    Body(serde_json::Map<String, serde_json::Value>),
    /// A reject whose reason contains this text.
    Reject(String),
    /// A skip whose reason contains this text.
    Skip(String),
    /// What the postback is to the conversion of `after` (`expect_outcome`); for an update,
    /// optionally the exact fields the change would send.
    Change {
        outcome: ChangeOutcome,
        change: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

/// `expect_outcome = "update" | "stale" | "duplicate"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOutcome {
    Update,
    Stale,
    Duplicate,
}

impl ChangeOutcome {
    pub fn parse(s: &str) -> Option<ChangeOutcome> {
        match s {
            "update" => Some(ChangeOutcome::Update),
            "stale" => Some(ChangeOutcome::Stale),
            "duplicate" => Some(ChangeOutcome::Duplicate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOutcome::Update => "update",
            ChangeOutcome::Stale => "stale",
            ChangeOutcome::Duplicate => "duplicate",
        }
    }
}

/// `[params]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParamPolicy {
    pub ignore_case: bool,
    pub repeated: Repeated,
    pub placeholders: Vec<String>,
}

/// `repeated = "first" | "last" | "reject"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Repeated {
    #[default]
    First,
    Last,
    Reject,
}

/// One output field and how it is produced.
#[derive(Debug, Clone)]
pub(crate) struct FieldRule {
    pub field: &'static str,
    pub spec: Spec,
}

/// How a field gets its value.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub ty: FieldType,
    pub source: Source,
    pub transform: Transform,
    pub default: Option<Out>,
    pub required: bool,
}

/// Where the raw text comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Const(Out),
    Params(Vec<ParamRef>),
    Template(Vec<Part>),
}

/// One alternative of a field's list: a parameter name (normalised for `ignore_case`), a
/// request attribute, or (in a list) a template or a constant.
#[derive(Debug, Clone)]
pub(crate) enum ParamRef {
    Param(String),
    Special(Special),
    /// `{ template = "{s2}{s3}" }`: no value when a name in it has none.
    Template(Vec<Part>),
    /// `{ value = ... }`: taken as it is, no transform.
    Const(Out),
}

/// `@client_ip`, `@user_agent`, `@referer`, `@received_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    ClientIp,
    UserAgent,
    Referer,
    ReceivedAt,
}

impl Special {
    pub fn parse(name: &str) -> Option<Special> {
        Some(match name {
            "@client_ip" => Special::ClientIp,
            "@user_agent" => Special::UserAgent,
            "@referer" => Special::Referer,
            "@received_at" => Special::ReceivedAt,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Special::ClientIp => "@client_ip",
            Special::UserAgent => "@user_agent",
            Special::Referer => "@referer",
            Special::ReceivedAt => "@received_at",
        }
    }
}

/// A piece of a template.
#[derive(Debug, Clone)]
pub(crate) enum Part {
    Lit(String),
    Param(String),
}

/// What happens to a present value, in this order: json, regex, map, number or time, case.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transform {
    pub json: Option<String>,
    /// One capture group; the field keeps what it matched.
    pub regex: Option<regex::Regex>,
    pub map: Option<MapRule>,
    pub number: Option<NumberRule>,
    pub time: Option<TimeRule>,
    pub case: Option<Case>,
}

/// `map = {...}` with `ignore_case` and `unmapped`.
#[derive(Debug, Clone)]
pub(crate) struct MapRule {
    pub entries: HashMap<String, Out>,
    pub ignore_case: bool,
    pub unmapped: Unmapped,
}

/// What a present value that the map lacks becomes.
#[derive(Debug, Clone)]
pub(crate) enum Unmapped {
    Reject,
    Keep,
    Value(Out),
}

/// `number = true`, `decimal`, `scale`.
#[derive(Debug, Clone)]
pub(crate) struct NumberRule {
    pub decimal: DecimalMode,
    pub scale: Option<Decimal>,
}

/// `time` and `tz`.
#[derive(Debug, Clone)]
pub(crate) struct TimeRule {
    pub format: TimeFormat,
    pub tz: TimeZone,
}

/// `case = "upper" | "lower"`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Case {
    Upper,
    Lower,
}

/// A typed output value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Out {
    Str(String),
    Num(Decimal),
    Int(i64),
}

/// `[[when]]`: if every condition matches, the `set` fields replace the mapped ones.
#[derive(Debug, Clone)]
pub(crate) struct When {
    pub conditions: Vec<Condition>,
    pub set: Vec<FieldRule>,
}

/// `[[skip]]`.
#[derive(Debug, Clone)]
pub(crate) struct Skip {
    pub conditions: Vec<Condition>,
    pub reason: String,
}

/// One `match` entry: a test on a parameter's value, or on a value inside a JSON parameter.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub param: String,
    /// A JSON pointer into the parameter's value.
    pub json: Option<String>,
    pub test: Test,
}

/// What a condition checks.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// The value equals one of these, exactly.
    OneOf(Vec<String>),
    /// `absent = true`: no value (absent, empty, a macro or a placeholder); `false`: a value.
    Absent(bool),
    /// Every comparison holds on the parsed number; a value that is not a number fails.
    Compare(Vec<(Cmp, rust_decimal::Decimal)>),
}

/// `lt`, `le`, `gt`, `ge`, `eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}
