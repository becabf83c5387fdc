//! Records: the list with the API's filters (source, state, click id, conversion, time
//! range) and paging by cursor; the record page (raw postback, mapped body, reason,
//! conversion and its chain, every attempt); the replay of a rejected or dead record.

use askama::Template;
use hyper::StatusCode;
use serde_json::{Map, Value};

use super::layout::{Page, ago, and_list, plural, when};
use super::{Answer, ConsoleError, Ctx, html, redirect};
use crate::admin::view::{self, ListQuery};
use crate::replay::{Report, Selection};
use crate::store::{RecordView, State, Summary};

/// Records per page of the list.
const PAGE: usize = 50;

/// One line of the list (also the conversion chain).
pub(crate) struct Row {
    pub id: i64,
    pub source: String,
    pub state: &'static str,
    pub click_id: String,
    pub received: String,
    pub ago: String,
}

impl Row {
    pub fn new(s: &Summary, now: jiff::Timestamp) -> Row {
        Row {
            id: s.id,
            source: s.source.clone(),
            state: s.state.as_str(),
            click_id: s.click_id.clone().unwrap_or_default(),
            received: when(s.received_at),
            ago: ago(s.received_at, now),
        }
    }
}

#[derive(Template)]
#[template(path = "console/records.html")]
struct List {
    page: Page,
    sources: Vec<String>,
    states: Vec<&'static str>,
    /// The filters as typed (shown again in the form).
    source: String,
    state: String,
    click_id: String,
    conversion: String,
    since: String,
    until: String,
    rows: Vec<Row>,
    /// The query string of the next page, when there is one.
    next: Option<String>,
    /// The first page with the same filters.
    newest: String,
    first_page: bool,
}

/// `datetime-local` inputs give `2026-11-30T18:00` (no offset): read as UTC.
fn as_rfc3339(value: &str) -> String {
    if value.parse::<jiff::Timestamp>().is_ok() {
        return value.to_string();
    }
    match value.parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().to_string())
            .unwrap_or_else(|_| value.to_string()),
        Err(_) => value.to_string(),
    }
}

/// `GET /console/records?source=&state=&click_id=&conversion=&since=&until=&cursor=`.
pub(super) async fn list(ctx: &Ctx<'_>, query: &str) -> Result<Answer, ConsoleError> {
    let pairs = crate::rules::decode_form(query.as_bytes());
    let typed = |name: &str| super::field(&pairs, name).unwrap_or("").trim().to_string();
    let api_pairs: Vec<(String, String)> = pairs
        .iter()
        .filter(|(n, _)| n != "limit")
        .map(|(n, v)| match n.as_str() {
            "since" | "until" => (n.clone(), as_rfc3339(v.trim())),
            _ => (n.clone(), v.trim().to_string()),
        })
        .collect();
    let ListQuery { filter, cursor, .. } = view::list_query(&api_pairs)?;
    let (summaries, next) = ctx.admin.store.list(filter, PAGE, cursor).await?;
    // The filters as typed, so the form on the next and the newest page shows them again.
    let kept: Vec<(String, String)> = pairs
        .iter()
        .filter(|(n, v)| n != "cursor" && n != "limit" && !v.trim().is_empty())
        .cloned()
        .collect();
    let next = next.map(|crate::store::Cursor(id)| {
        let mut kept = kept.clone();
        kept.push(("cursor".into(), id.to_string()));
        serde_urlencoded::to_string(&kept).unwrap_or_default()
    });
    let newest = match serde_urlencoded::to_string(&kept).unwrap_or_default() {
        q if q.is_empty() => "/console/records".to_string(),
        q => format!("/console/records?{q}"),
    };
    let page = List {
        page: Page::new(ctx, "Records", "records"),
        sources: ctx
            .admin
            .replayer
            .rules
            .current()
            .iter()
            .map(|r| r.source.clone())
            .collect(),
        states: State::ALL.iter().map(|s| s.as_str()).collect(),
        source: typed("source"),
        state: typed("state"),
        click_id: typed("click_id"),
        conversion: typed("conversion"),
        since: typed("since"),
        until: typed("until"),
        rows: summaries.iter().map(|s| Row::new(s, ctx.now)).collect(),
        next,
        newest,
        first_page: cursor.is_none(),
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

struct AttemptRow {
    at: String,
    status: String,
    answer: String,
    duration_ms: u128,
    outcome: String,
}

struct ConversionBox {
    original: i64,
    current: Vec<(String, String)>,
    lead_id: String,
    transaction_id: String,
    expires: String,
    chain: Vec<Row>,
}

#[derive(Template)]
#[template(path = "console/record.html")]
struct RecordPage {
    page: Page,
    id: i64,
    source: String,
    state: &'static str,
    click_id: String,
    received: String,
    ago: String,
    kind: &'static str,
    method: String,
    path: String,
    query: String,
    /// The query decoded, parameter by parameter.
    params: Vec<(String, String)>,
    client_ip: String,
    user_agent: String,
    referer: String,
    body: Option<String>,
    reason: Option<String>,
    transaction_id: String,
    lead_id: String,
    original_id: Option<i64>,
    attempt_count: u32,
    next_attempt: String,
    last_error: Option<String>,
    attempts: Vec<AttemptRow>,
    conversion: Option<ConversionBox>,
    replayable: bool,
    /// Retrying: it can be sent now instead of after its backoff.
    retrying: bool,
}

fn pretty(map: &Map<String, Value>) -> String {
    serde_json::to_string_pretty(map).unwrap_or_default()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Scaleo's `lead_id` as people read it: a JSON string without its quotes, a number exactly
/// as Scaleo wrote it (it is kept as the JSON text Scaleo gave).
fn lead_id_text(json: Option<&str>) -> String {
    json.map(|j| serde_json::from_str::<String>(j).unwrap_or_else(|_| j.to_string()))
        .unwrap_or_default()
}

fn record_page(ctx: &Ctx<'_>, r: RecordView) -> RecordPage {
    let s = &r.summary;
    RecordPage {
        page: Page::new(ctx, format!("Record {}", s.id), "records"),
        id: s.id,
        source: s.source.clone(),
        state: s.state.as_str(),
        click_id: s.click_id.clone().unwrap_or_default(),
        received: when(s.received_at),
        ago: ago(s.received_at, ctx.now),
        kind: if r.is_change {
            "update of a conversion"
        } else {
            "create"
        },
        method: r.raw.method.clone(),
        path: r.raw.path.clone(),
        query: r.raw.query.clone(),
        params: crate::rules::decode_form(r.raw.query.as_bytes()),
        client_ip: r.raw.client_ip.clone().unwrap_or_default(),
        user_agent: r.raw.user_agent.clone().unwrap_or_default(),
        referer: r.raw.referer.clone().unwrap_or_default(),
        body: r.body.as_ref().map(pretty),
        reason: r.reason.clone(),
        transaction_id: r.transaction_id.clone().unwrap_or_default(),
        lead_id: lead_id_text(r.lead_id.as_deref()),
        original_id: r.original_id,
        attempt_count: r.attempt_count,
        next_attempt: r.next_attempt_at.map(when).unwrap_or_default(),
        last_error: r.last_error.clone(),
        attempts: r
            .attempts
            .iter()
            .map(|a| AttemptRow {
                at: when(a.at),
                status: a
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into()),
                answer: a.answer.clone(),
                duration_ms: a.duration.as_millis(),
                outcome: a.outcome.clone(),
            })
            .collect(),
        conversion: r.conversion.as_ref().map(|c| ConversionBox {
            original: c.original,
            current: c
                .current
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect(),
            lead_id: lead_id_text(c.lead_id.as_deref()),
            transaction_id: c.transaction_id.clone().unwrap_or_default(),
            expires: when(c.expires_at),
            chain: c.chain.iter().map(|s| Row::new(s, ctx.now)).collect(),
        }),
        replayable: matches!(s.state, State::Rejected | State::Dead),
        retrying: s.state == State::Retrying,
    }
}

/// `GET /console/records/{id}`.
pub(super) async fn page(ctx: &Ctx<'_>, id: &str) -> Result<Answer, ConsoleError> {
    let id = view::record_id("id", id)?;
    match ctx.admin.store.get(id).await? {
        Some(r) => Ok(html(StatusCode::OK, &record_page(ctx, r), &[])),
        None => Err(ConsoleError::NotFound(format!("there is no record {id}"))),
    }
}

/// One line about a replay's outcome: `Replay of 3 records: 2 queued and 1 still rejected.
/// Reason: ...` (the counts that are not zero).
pub(crate) fn report_line(r: &Report) -> String {
    let total = r.queued + r.duplicate + r.rejected + r.skipped + r.not_replayed;
    if total == 0 {
        return "Nothing was replayed.".into();
    }
    let parts: Vec<String> = [
        (r.queued, "queued", "queued"),
        (r.duplicate, "duplicate", "duplicates"),
        (r.rejected, "still rejected", "still rejected"),
        (r.skipped, "skipped", "skipped"),
        (
            r.not_replayed,
            "could not be replayed",
            "could not be replayed",
        ),
    ]
    .into_iter()
    .filter(|(n, ..)| *n > 0)
    .map(|(n, one, many)| plural(n, one, many))
    .collect();
    let mut line = format!(
        "Replay of {}: {}.",
        plural(total, "record", "records"),
        and_list(&parts)
    );
    match (r.reasons.as_slice(), r.reasons_omitted) {
        ([], _) => {}
        ([only], 0) => line.push_str(&format!(" Reason: {}.", only.reason)),
        ([first, ..], _) => line.push_str(&format!(
            " Most common reason: {} ({}).",
            first.reason,
            plural(first.count, "record", "records")
        )),
    }
    line
}

/// `POST /console/records/{id}/replay`.
pub(super) async fn replay(ctx: &Ctx<'_>, id: &str) -> Result<Answer, ConsoleError> {
    let id = view::record_id("id", id)?;
    let report = ctx.admin.replayer.run(Selection::Ids(vec![id])).await?;
    tracing::info!(id, queued = report.queued, "console: record replayed");
    ctx.flash(report_line(&report));
    Ok(redirect(&format!("/console/records/{id}"), &[]))
}

/// `POST /console/records/{id}/send`: a retrying record is due now.
pub(super) async fn send_now(ctx: &Ctx<'_>, id: &str) -> Result<Answer, ConsoleError> {
    let id = view::record_id("id", id)?;
    let due = ctx.admin.store.send_now(id).await?;
    ctx.flash(if due {
        tracing::info!(id, "console: a retrying record is sent now");
        "Sending it now: the attempt shows below in a moment (reload the page).".to_string()
    } else {
        "It is not retrying any more: nothing changed.".to_string()
    });
    Ok(redirect(&format!("/console/records/{id}"), &[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::ReasonGroup;

    #[test]
    fn a_lead_id_shows_without_json_quotes_and_a_number_exactly() {
        assert_eq!(lead_id_text(Some("\"652910797\"")), "652910797");
        assert_eq!(
            lead_id_text(Some("12345678901234567890123")),
            "12345678901234567890123"
        );
        assert_eq!(lead_id_text(None), "");
    }

    fn group(outcome: &'static str, reason: &str, count: u64) -> ReasonGroup {
        ReasonGroup {
            outcome,
            reason: reason.into(),
            count,
            ids: vec![1],
        }
    }

    #[test]
    fn a_replay_reads_as_plain_counts_with_its_reason() {
        let one_left = Report {
            not_replayed: 1,
            reasons: vec![group(
                "not_replayed",
                "state delivered: only rejected or dead records can be replayed",
                1,
            )],
            ..Default::default()
        };
        assert_eq!(
            report_line(&one_left),
            "Replay of 1 record: 1 could not be replayed. Reason: state delivered: only rejected or dead records can be replayed."
        );
        let queued = Report {
            queued: 1,
            ..Default::default()
        };
        assert_eq!(report_line(&queued), "Replay of 1 record: 1 queued.");
        let mixed = Report {
            queued: 2,
            duplicate: 2,
            rejected: 3,
            reasons: vec![
                group("rejected", "click_id: no value", 2),
                group("rejected", "amt", 1),
            ],
            ..Default::default()
        };
        assert_eq!(
            report_line(&mixed),
            "Replay of 7 records: 2 queued, 2 duplicates and 3 still rejected. Most common reason: click_id: no value (2 records)."
        );
        assert_eq!(report_line(&Report::default()), "Nothing was replayed.");
    }
}
