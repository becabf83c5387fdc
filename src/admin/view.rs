//! The JSON shapes of the admin API (shared with the CLI's `--json` output) and the parsing
//! of its query parameters: records, listings, explain traces, filters.
//!
//! Times are RFC 3339 in and out. A bad parameter is a [`BadParam`] naming the parameter,
//! the value and what is accepted.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::rules::{FieldTrace, Input, Outcome, Rule, decode_form, valid_source_id};
use crate::store::{
    AttemptView, Cursor, Filter, NewState, PauseScope, Paused, Preview, RecordView, State, Summary,
};

/// Default and largest page size of a listing.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// A parameter value that is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: expected {expected}")]
pub struct BadParam {
    pub name: String,
    pub value: String,
    pub expected: String,
}

impl BadParam {
    pub fn new(name: &str, value: &str, expected: impl Into<String>) -> BadParam {
        BadParam {
            name: name.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryJson {
    pub id: i64,
    pub source: String,
    pub state: &'static str,
    pub click_id: Option<String>,
    pub received_at: String,
}

impl From<&Summary> for SummaryJson {
    fn from(s: &Summary) -> Self {
        SummaryJson {
            id: s.id,
            source: s.source.clone(),
            state: s.state.as_str(),
            click_id: s.click_id.clone(),
            received_at: s.received_at.to_string(),
        }
    }
}

/// `GET /admin/records`: a page, newest first, and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListJson {
    pub records: Vec<SummaryJson>,
    pub next: Option<String>,
}

impl ListJson {
    pub fn new(page: &[Summary], next: Option<Cursor>) -> ListJson {
        ListJson {
            records: page.iter().map(SummaryJson::from).collect(),
            next: next.map(|Cursor(id)| id.to_string()),
        }
    }
}

/// The raw postback as stored (the source token already redacted by ingest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RawJson {
    pub method: String,
    pub path: String,
    pub query: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub received_at: String,
}

/// One forward attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptJson {
    pub at: String,
    pub status: Option<u16>,
    /// The first few KB of Scaleo's answer (the API key redacted by the store).
    pub answer: String,
    pub duration_ms: u64,
    pub outcome: String,
}

impl From<&AttemptView> for AttemptJson {
    fn from(a: &AttemptView) -> Self {
        AttemptJson {
            at: a.at.to_string(),
            status: a.status,
            answer: a.answer.clone(),
            duration_ms: u64::try_from(a.duration.as_millis()).unwrap_or(u64::MAX),
            outcome: a.outcome.clone(),
        }
    }
}

/// `GET /admin/records/{id}`: the whole record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordJson {
    #[serde(flatten)]
    pub summary: SummaryJson,
    pub raw: RawJson,
    /// The mapped body; absent when rejected or skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Map<String, Value>>,
    pub reason: Option<String>,
    pub transaction_id: Option<String>,
    /// For a `duplicate`: the record it repeats.
    pub original_id: Option<i64>,
    /// Attempts counted by the retry schedule.
    pub attempt_count: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub attempts: Vec<AttemptJson>,
    /// `create` (a new conversion) or `update` (a change of the conversion `original_id`).
    pub kind: &'static str,
    /// Scaleo's `lead_id` from this record's delivery, as Scaleo gave it.
    pub lead_id: Option<Value>,
    /// The conversion this record created or belongs to (when its changes are tracked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<ConversionJson>,
}

/// A conversion: its original record, current status and money, Scaleo's ids, and its
/// later postbacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversionJson {
    pub original: i64,
    pub current: Map<String, Value>,
    pub lead_id: Option<Value>,
    pub transaction_id: Option<String>,
    pub expires_at: String,
    pub changes: Vec<SummaryJson>,
}

/// A stored `lead_id` (JSON text) as the JSON value Scaleo gave.
fn lead_json(text: &Option<String>) -> Option<Value> {
    text.as_deref()
        .map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())))
}

impl From<&RecordView> for RecordJson {
    fn from(r: &RecordView) -> Self {
        RecordJson {
            summary: SummaryJson::from(&r.summary),
            raw: RawJson {
                method: r.raw.method.clone(),
                path: r.raw.path.clone(),
                query: r.raw.query.clone(),
                client_ip: r.raw.client_ip.clone(),
                user_agent: r.raw.user_agent.clone(),
                referer: r.raw.referer.clone(),
                received_at: r.raw.received_at.to_string(),
            },
            body: r.body.clone(),
            reason: r.reason.clone(),
            transaction_id: r.transaction_id.clone(),
            original_id: r.original_id,
            attempt_count: r.attempt_count,
            next_attempt_at: r.next_attempt_at.map(|t| t.to_string()),
            last_error: r.last_error.clone(),
            attempts: r.attempts.iter().map(AttemptJson::from).collect(),
            kind: if r.is_change { "update" } else { "create" },
            lead_id: lead_json(&r.lead_id),
            conversion: r.conversion.as_ref().map(|c| ConversionJson {
                original: c.original,
                current: c.current.clone(),
                lead_id: lead_json(&c.lead_id),
                transaction_id: c.transaction_id.clone(),
                expires_at: c.expires_at.to_string(),
                changes: c.chain.iter().map(SummaryJson::from).collect(),
            }),
        }
    }
}

/// One persisted pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseJson {
    /// `all` or the source id.
    pub scope: String,
    /// `operator` or `upstream_auth`.
    pub reason: &'static str,
    pub since: String,
}

impl From<&Paused> for PauseJson {
    fn from(p: &Paused) -> Self {
        PauseJson {
            scope: scope_name(&p.scope),
            reason: p.reason.as_str(),
            since: p.since.to_string(),
        }
    }
}

/// `all` or the source id.
pub fn scope_name(scope: &PauseScope) -> String {
    match scope {
        PauseScope::All => "all".to_string(),
        PauseScope::Source(s) => s.clone(),
    }
}

/// The scope of a pause or resume: all forwarding, or one (valid) source id.
pub fn pause_scope(source: Option<&str>) -> Result<PauseScope, BadParam> {
    match source {
        None => Ok(PauseScope::All),
        Some(s) => Ok(PauseScope::Source(source_id("source", s)?)),
    }
}

/// A listing's filter, page size and cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: Filter,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// Parses `source=&state=&click_id=&since=&until=&limit=&cursor=`; an empty value counts as
/// absent, an unknown name is refused.
pub fn list_query(pairs: &[(String, String)]) -> Result<ListQuery, BadParam> {
    let mut q = ListQuery {
        filter: Filter::default(),
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "source" => q.filter.source = Some(source_id(name, value)?),
            "state" => q.filter.state = Some(state(name, value)?),
            "click_id" => q.filter.click_id = Some(value.clone()),
            "conversion" => q.filter.conversion = Some(record_id(name, value)?),
            "since" => q.filter.since = Some(time(name, value)?),
            "until" => q.filter.until = Some(time(name, value)?),
            "limit" => q.limit = limit(name, value)?,
            "cursor" => q.cursor = Some(cursor(name, value)?),
            other => {
                return Err(BadParam::new(
                    other,
                    value,
                    "one of the parameters source, state, click_id, conversion, since, until, limit, cursor",
                ));
            }
        }
    }
    Ok(q)
}

/// A source id as rule files are named.
pub fn source_id(name: &str, value: &str) -> Result<String, BadParam> {
    if valid_source_id(value) {
        Ok(value.to_string())
    } else {
        Err(BadParam::new(
            name,
            value,
            "a source id (the rule file's name without .toml)",
        ))
    }
}

/// A record state by its stored name.
pub fn state(name: &str, value: &str) -> Result<State, BadParam> {
    State::parse(value).ok_or_else(|| {
        let all: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        BadParam::new(name, value, format!("one of {}", all.join(", ")))
    })
}

/// An RFC 3339 time with an offset (`2025-03-01T00:00:00Z`).
pub fn time(name: &str, value: &str) -> Result<Timestamp, BadParam> {
    value.parse::<Timestamp>().map_err(|_| {
        BadParam::new(
            name,
            value,
            "an RFC 3339 time with an offset, like 2025-03-01T12:00:00Z",
        )
    })
}

fn limit(name: &str, value: &str) -> Result<usize, BadParam> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(BadParam::new(
            name,
            value,
            format!("a whole number from 1 to {MAX_LIMIT}"),
        )),
    }
}

fn cursor(name: &str, value: &str) -> Result<Cursor, BadParam> {
    match value.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Cursor(n)),
        _ => Err(BadParam::new(
            name,
            value,
            "the \"next\" value of a previous page",
        )),
    }
}

/// A record id.
pub fn record_id(name: &str, value: &str) -> Result<i64, BadParam> {
    match value.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(BadParam::new(
            name,
            value,
            "a record id (a positive number)",
        )),
    }
}

/// `explain`: how a rule maps one query string.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainJson {
    pub source: String,
    /// `forward`, `skip` or `reject`.
    pub outcome: &'static str,
    pub body: Option<Map<String, Value>>,
    pub reason: Option<String>,
    /// 0-based index (file order) of the `[[skip]]` that matched.
    pub skip_matched: Option<usize>,
    /// 0-based indexes (file order) of the `[[when]]` blocks that matched.
    pub when_matched: Vec<usize>,
    /// Per field: where its value came from (`origin`), values treated as no value and why
    /// (`ignored`), and any error.
    pub fields: Vec<FieldTrace>,
    /// What the postback would be to a conversion stored now (filled where the store is at
    /// hand): absent when it would create a new conversion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<PreviewJson>,
    /// The record state the mapping gives (what the store would be asked to keep).
    #[serde(skip)]
    pub state: Option<NewState>,
}

/// `explain`'s view of a later postback of a stored conversion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewJson {
    /// `duplicate`, `update`, `stale`, or `rejected` (an update-only postback finding none).
    pub outcome: &'static str,
    /// The record that created the conversion.
    pub original: Option<i64>,
    /// For an update: the fields `leads/update` would send (with Scaleo's `lead_id`).
    pub change: Option<Map<String, Value>>,
    pub reason: Option<String>,
}

impl From<Preview> for PreviewJson {
    fn from(p: Preview) -> Self {
        PreviewJson {
            outcome: p.outcome,
            original: p.original,
            change: p.change,
            reason: p.reason,
        }
    }
}

/// Explains `query` (as the advertiser sends it; a leading `?` is ignored) with `rule`. The
/// token parameter is dropped first, as ingest does; no auth check is made.
pub fn explain(rule: &Rule, query: &str, zone: &TimeZone, received_at: Timestamp) -> ExplainJson {
    let ic = rule.params_ignore_case();
    let token = rule.auth.token_param.as_str();
    let params: Vec<(String, String)> =
        decode_form(query.strip_prefix('?').unwrap_or(query).as_bytes())
            .into_iter()
            .filter(|(n, _)| {
                if ic {
                    !n.eq_ignore_ascii_case(token)
                } else {
                    n != token
                }
            })
            .collect();
    let input = Input {
        params: &params,
        json_numbers: &[],
        client_ip: None,
        user_agent: None,
        referer: None,
        received_at: Some(received_at),
    };
    let (outcome, trace) = rule.explain(&input, zone);
    let state = crate::mapping::new_state(rule, &input, outcome.clone());
    let (outcome, body, reason) = match outcome {
        Outcome::Forward(m) => ("forward", Some(m.body), None),
        Outcome::Skip { reason } => ("skip", None, Some(reason)),
        Outcome::Reject { reason } => ("reject", None, Some(reason)),
    };
    ExplainJson {
        source: rule.source.clone(),
        outcome,
        body,
        reason,
        skip_matched: trace.skip_matched,
        when_matched: trace.when_matched,
        fields: trace.fields,
        conversion: None,
        state: Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn list_query_reads_every_filter_and_skips_empty_values() {
        let q = list_query(&pairs(&[
            ("source", "shop"),
            ("state", "rejected"),
            ("click_id", ""),
            ("since", "2025-03-01T00:00:00Z"),
            ("limit", "5"),
            ("cursor", "42"),
        ]))
        .unwrap();
        assert_eq!(q.filter.source.as_deref(), Some("shop"));
        assert_eq!(q.filter.state, Some(State::Rejected));
        assert_eq!(q.filter.click_id, None);
        assert_eq!(q.filter.since.unwrap().as_second(), 1_740_787_200);
        assert_eq!((q.limit, q.cursor), (5, Some(Cursor(42))));
    }

    #[test]
    fn bad_values_name_the_parameter_the_value_and_what_is_expected() {
        let e = list_query(&pairs(&[("since", "yesterday")])).unwrap_err();
        assert_eq!((e.name.as_str(), e.value.as_str()), ("since", "yesterday"));
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        let e = list_query(&pairs(&[("state", "lost")])).unwrap_err();
        assert!(e.expected.contains("duplicate_upstream"), "{e}");
        let e = list_query(&pairs(&[("limit", "0")])).unwrap_err();
        assert!(e.expected.contains("1 to 1000"), "{e}");
        let e = list_query(&pairs(&[("colour", "red")])).unwrap_err();
        assert_eq!(e.name, "colour");
    }
}
