//! The serde mirror of a rule file: every key the format knows, unknown keys refused, spans
//! kept where `compile` needs to point at a value.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A whole rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub description: Option<String>,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub params: RawParams,
    pub fields: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawField>>>>,
    #[serde(default)]
    pub when: Vec<Spanned<RawWhen>>,
    #[serde(default)]
    pub skip: Vec<Spanned<RawSkip>>,
    pub dedupe: Option<RawDedupe>,
    pub updates: Option<Spanned<RawUpdates>>,
    pub forward: Option<RawForward>,
    pub alerts: Option<RawAlerts>,
    pub answer: Option<RawAnswer>,
    #[serde(default)]
    pub tests: Vec<Spanned<RawTest>>,
}

/// `[answer]`: what the sender expects to read back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnswer {
    pub body: Option<Spanned<String>>,
    pub reject: Option<Spanned<toml::Value>>,
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub token: Option<Spanned<String>>,
    pub token_param: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    /// `[auth.signature]`: the sender signs its calls instead of sending a token.
    pub signature: Option<Spanned<RawSignature>>,
}

/// `[auth.signature]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    pub algorithm: Spanned<String>,
    pub message: Spanned<String>,
    pub param: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
}

/// `[params]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    #[serde(default)]
    pub ignore_case: bool,
    pub repeated: Option<Spanned<String>>,
    #[serde(default)]
    pub placeholders: Vec<Spanned<String>>,
}

/// One `[fields]` entry: a parameter name, a fallback list, or a table.
#[derive(Debug)]
pub enum RawField {
    Param(String),
    List(Vec<RawAlt>),
    Spec(Box<RawSpec>),
}

/// One alternative of a list: a parameter name, `{ template = "..." }` or `{ value = ... }`.
#[derive(Debug, Clone)]
pub enum RawAlt {
    Name(String),
    Template(String),
    Value(toml::Value),
}

/// The table form of an alternative; exactly one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAltTable {
    template: Option<String>,
    value: Option<toml::Value>,
}

impl<'de> Deserialize<'de> for RawAlt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AltVisitor;
        impl<'de> Visitor<'de> for AltVisitor {
            type Value = RawAlt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a parameter name, { template = \"{a}{b}\" } or { value = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAlt, E> {
                Ok(RawAlt::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAlt, A::Error> {
                let t = RawAltTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (t.template, t.value) {
                    (Some(t), None) => Ok(RawAlt::Template(t)),
                    (None, Some(v)) => Ok(RawAlt::Value(v)),
                    _ => Err(de::Error::custom(
                        "an alternative in a list is a parameter name, { template = \"...\" } or { value = ... }: give exactly one of `template` or `value`",
                    )),
                }
            }
        }
        d.deserialize_any(AltVisitor)
    }
}

/// `from = "a"` or `from = ["a", { template = "{b}{c}" }]`.
#[derive(Debug)]
pub enum Alts {
    One(String),
    Many(Vec<RawAlt>),
}

impl<'de> Deserialize<'de> for Alts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AltsVisitor;
        impl<'de> Visitor<'de> for AltsVisitor {
            type Value = Alts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a parameter name or a list of alternatives (names, { template = \"...\" }, { value = ... })")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Alts, E> {
                Ok(Alts::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Alts, A::Error> {
                let mut alts = Vec::new();
                while let Some(a) = seq.next_element::<RawAlt>()? {
                    alts.push(a);
                }
                Ok(Alts::Many(alts))
            }
        }
        d.deserialize_any(AltsVisitor)
    }
}

/// The table form of a field.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub from: Option<Spanned<Alts>>,
    pub value: Option<Spanned<toml::Value>>,
    pub default: Option<Spanned<toml::Value>>,
    pub required: Option<bool>,
    pub template: Option<Spanned<String>>,
    /// Values are strings or numbers (`goal_id` maps read best as `{ "7" = 12 }`).
    pub map: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub ignore_case: Option<bool>,
    pub unmapped: Option<Spanned<String>>,
    pub number: Option<bool>,
    pub decimal: Option<Spanned<String>>,
    pub scale: Option<Spanned<toml::Value>>,
    /// One format or a list tried in order.
    pub time: Option<Spanned<Names>>,
    pub tz: Option<Spanned<String>>,
    pub case: Option<Spanned<String>>,
    pub json: Option<Spanned<String>>,
    /// A pattern with one capture group; the field keeps what the group matched.
    pub regex: Option<Spanned<String>>,
}

/// `from = "a"` or `from = ["a", "b"]`; also a `match` value or list of values.
#[derive(Debug)]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NamesVisitor;
        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings (quote numbers and words: \"1\", not 1)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(Names::Many(names))
            }
        }
        d.deserialize_any(NamesVisitor)
    }
}

impl Names {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Names::One(n) => vec![n],
            Names::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a parameter name, a list of parameter names, or a table such as { from = \"amt\", number = true }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawField, E> {
                Ok(RawField::Param(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawField, A::Error> {
                let mut alts = Vec::new();
                while let Some(a) = seq.next_element::<RawAlt>()? {
                    alts.push(a);
                }
                Ok(RawField::List(alts))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                RawSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|s| RawField::Spec(Box::new(s)))
            }
        }
        d.deserialize_any(FieldVisitor)
    }
}

/// A match table: parameter -> one value, a list of values, or a condition table.
pub type RawMatch = BTreeMap<String, Spanned<RawCond>>;

/// One `match` entry.
#[derive(Debug)]
pub enum RawCond {
    /// `"1"` or `["1", "true"]`: the value equals one of these.
    Values(Names),
    /// `{ absent = true }`, `{ lt = 0 }`, `{ json = "/event/type", is = "organic" }`...
    Table(Box<RawCondTable>),
}

/// The table form of a condition.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCondTable {
    pub absent: Option<bool>,
    pub lt: Option<toml::Value>,
    pub le: Option<toml::Value>,
    pub gt: Option<toml::Value>,
    pub ge: Option<toml::Value>,
    pub eq: Option<toml::Value>,
    pub json: Option<String>,
    pub is: Option<String>,
    #[serde(rename = "in")]
    pub any_of: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for RawCond {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CondVisitor;
        impl<'de> Visitor<'de> for CondVisitor {
            type Value = RawCond;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a list of strings, or a condition such as { absent = true }, { lt = 0 } or { json = \"/type\", is = \"organic\" } (quote numbers and words: \"1\", not 1)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCond, E> {
                Ok(RawCond::Values(Names::One(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCond, A::Error> {
                let mut values = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    values.push(n);
                }
                Ok(RawCond::Values(Names::Many(values)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCond, A::Error> {
                RawCondTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawCond::Table(Box::new(t)))
            }
        }
        d.deserialize_any(CondVisitor)
    }
}

/// `[[when]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    #[serde(rename = "match")]
    pub matches: RawMatch,
    pub set: BTreeMap<Spanned<String>, Spanned<RawField>>,
}

/// `[[skip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSkip {
    #[serde(rename = "match")]
    pub matches: RawMatch,
    pub reason: Option<String>,
}

/// `[dedupe]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    pub key: Option<Vec<Spanned<String>>>,
    pub window: Option<Spanned<String>>,
}

/// `[updates]`: how later postbacks of a conversion change it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpdates {
    pub enabled: Option<bool>,
    pub transitions: Option<BTreeMap<Spanned<String>, Vec<Spanned<String>>>>,
    pub only: Option<bool>,
    pub of: Option<Spanned<String>>,
    pub key: Option<Vec<Spanned<String>>>,
}

/// `[forward]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub rate_per_second: Option<u32>,
    pub burst: Option<Spanned<u32>>,
    pub base_url: Option<Spanned<String>>,
    pub api_key: Option<Spanned<String>>,
}

/// `[alerts]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub silent_after: Option<Spanned<String>>,
}

/// `[[tests]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: String,
    /// Empty for a test whose parameters all come in its `body`.
    #[serde(default)]
    pub query: String,
    pub expect: Option<toml::Table>,
    pub expect_reject: Option<String>,
    pub expect_skip: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub received_at: Option<String>,
    /// Earlier postbacks of the same conversion, applied in order before `query`.
    #[serde(default)]
    pub after: Vec<String>,
    /// `update` | `stale` | `duplicate`: what `query` is to the conversion of `after`.
    pub expect_outcome: Option<String>,
    /// A POST body (`content_type` says how it is encoded, "form" by default).
    pub body: Option<String>,
    pub content_type: Option<Spanned<String>>,
}
