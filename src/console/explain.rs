//! "Try a postback": a pasted URL or query explained field by field with the rules in force
//! (the same answer as `/admin/explain`), storing and forwarding nothing. The headline is the
//! outcome the postback would get, the stored conversions included: a later postback of a
//! conversion is an `update` (the change is what would be sent), a `duplicate` or `stale`
//! (nothing sent), and an update-only postback that finds none is `rejected`.

use askama::Template;
use hyper::StatusCode;
use jiff::Timestamp;
use serde_json::{Map, Value};

use super::layout::Page;
use super::{Answer, ConsoleError, Ctx, field, html};
use crate::admin::view::{self, ExplainJson};
use crate::rules::Origin;
use crate::store::Preview;

struct FieldLine {
    field: &'static str,
    when: String,
    value: String,
    origin: String,
    ignored: Vec<String>,
    error: String,
}

#[derive(Template)]
#[template(path = "console/try.html")]
struct TryPage {
    page: Page,
    source: String,
    input: String,
    /// `None` until something was submitted.
    result: Option<TryResult>,
}

/// What would be sent to Scaleo.
struct Sent {
    /// `Body that would be sent to Scaleo (a new conversion)` or the change's title.
    title: &'static str,
    /// `body` for a create, `change` for an update (the element id).
    id: &'static str,
    json: String,
}

struct TryResult {
    /// The outcome the postback would get: `forward`, `skip` or `reject` by the rule, or
    /// `update`, `duplicate`, `stale` or `rejected` by the stored conversions.
    outcome: &'static str,
    /// What that outcome does, in a sentence.
    meaning: &'static str,
    reason: String,
    /// The record that created the conversion it would change or repeat.
    original: Option<i64>,
    sent: Option<Sent>,
    /// The mapped body when nothing would be sent with it.
    unsent: Option<String>,
    skip_matched: String,
    when_matched: String,
    fields: Vec<FieldLine>,
}

/// The query part of a pasted URL, query string or `?query`.
fn query_of(input: &str) -> &str {
    let input = input.trim();
    match input.split_once('?') {
        Some((_, q)) => q,
        None if input.contains("://") || input.starts_with('/') => "",
        None => input,
    }
}

fn meaning(outcome: &str) -> &'static str {
    match outcome {
        "forward" => "It would be stored and sent to Scaleo as a new conversion.",
        "update" => {
            "It changes a stored conversion: it would be stored and the change sent to Scaleo (leads/update)."
        }
        "duplicate" => {
            "It repeats a stored conversion without a change: answered duplicate, nothing is sent."
        }
        "stale" => {
            "It would move a stored conversion back: it would be stored as stale and nothing sent."
        }
        "skip" => "A [[skip]] rule matches: it would be stored as skipped and nothing sent.",
        _ => "It would be stored as rejected (422) and nothing sent; it can be replayed later.",
    }
}

fn pretty(map: &Map<String, Value>) -> String {
    serde_json::to_string_pretty(map).unwrap_or_default()
}

/// The result shown for explanation `ex` and what the stored conversions make of it.
fn result(ex: &ExplainJson, preview: Option<Preview>) -> TryResult {
    let mapped = ex.body.as_ref().map(pretty);
    let (outcome, reason, original, sent, unsent) = match preview {
        None => (
            ex.outcome,
            ex.reason.clone().unwrap_or_default(),
            None,
            mapped.map(|json| Sent {
                title: "Body that would be sent to Scaleo (a new conversion)",
                id: "body",
                json,
            }),
            None,
        ),
        Some(p) => (
            p.outcome,
            p.reason.unwrap_or_default(),
            p.original,
            p.change.as_ref().map(|c| Sent {
                title: "Change that would be sent to Scaleo (leads/update)",
                id: "change",
                json: pretty(c),
            }),
            if p.change.is_some() { None } else { mapped },
        ),
    };
    TryResult {
        outcome,
        meaning: meaning(outcome),
        reason,
        original,
        sent,
        unsent,
        skip_matched: ex
            .skip_matched
            .map(|i| format!("[[skip]] number {}", i + 1))
            .unwrap_or_default(),
        when_matched: ex
            .when_matched
            .iter()
            .map(|i| format!("[[when]] number {}", i + 1))
            .collect::<Vec<_>>()
            .join(", "),
        fields: ex
            .fields
            .iter()
            .map(|f| FieldLine {
                field: f.field,
                when: f
                    .when
                    .map(|i| format!("[[when]] {}", i + 1))
                    .unwrap_or_default(),
                value: f
                    .value
                    .as_ref()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default(),
                origin: match &f.origin {
                    Some(Origin::Param { name }) => format!("parameter {name}"),
                    Some(Origin::Template) => "template".into(),
                    Some(Origin::Constant) => "constant".into(),
                    Some(Origin::Default) => "default".into(),
                    None => "no value".into(),
                },
                ignored: f
                    .ignored
                    .iter()
                    .map(|i| format!("{}={:?}: {}", i.param, i.value, i.why))
                    .collect(),
                error: f.error.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// `GET /console/sources/{source}/try?q=...`.
pub(super) async fn try_page(
    ctx: &Ctx<'_>,
    source: &str,
    query: &str,
) -> Result<Answer, ConsoleError> {
    let rules = ctx.admin.replayer.rules.current();
    let Some(rule) = rules.get(source) else {
        return Err(ConsoleError::NotFound(format!(
            "there is no rule file for source {source}"
        )));
    };
    let pairs = crate::rules::decode_form(query.as_bytes());
    let input = field(&pairs, "q").unwrap_or("").to_string();
    let result = if input.trim().is_empty() {
        None
    } else {
        let mut ex = view::explain(
            rule,
            query_of(&input),
            &ctx.admin.replayer.zone,
            Timestamp::now(),
        );
        let preview = match ex.state.take() {
            Some(state) => ctx.admin.store.preview(state).await?,
            None => None,
        };
        Some(result(&ex, preview))
    };
    let page = TryPage {
        page: Page::new(ctx, format!("Try a postback: {source}"), "sources"),
        source: source.to_string(),
        input,
        result,
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_url_query_or_bare_query_all_give_the_query() {
        assert_eq!(
            query_of(" https://relay.example/postback/shop?cid=1&amt=5 "),
            "cid=1&amt=5"
        );
        assert_eq!(query_of("?cid=1"), "cid=1");
        assert_eq!(query_of("cid=1&amt=5"), "cid=1&amt=5");
        assert_eq!(query_of("https://relay.example/postback/shop"), "");
    }

    fn forward() -> ExplainJson {
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"click_id": "clk1", "conv_status": "pending"}"#).unwrap();
        ExplainJson {
            source: "keitaro".into(),
            outcome: "forward",
            body: Some(body),
            reason: None,
            skip_matched: None,
            when_matched: Vec::new(),
            fields: Vec::new(),
            conversion: None,
            state: None,
        }
    }

    #[test]
    fn the_headline_is_what_the_stored_conversions_make_of_a_forward() {
        let r = result(&forward(), None);
        assert_eq!(r.outcome, "forward");
        assert_eq!(r.sent.map(|s| s.id), Some("body"));

        for outcome in ["stale", "duplicate", "rejected"] {
            let p = Preview {
                original: (outcome != "rejected").then_some(4),
                outcome,
                change: None,
                reason: Some("why".into()),
            };
            let r = result(&forward(), Some(p));
            assert_eq!(r.outcome, outcome);
            assert!(r.sent.is_none(), "{outcome}: nothing is sent");
            assert!(r.unsent.is_some_and(|b| b.contains("clk1")));
            assert_eq!(r.reason, "why");
            assert!(r.meaning.contains("nothing"), "{outcome}: {}", r.meaning);
        }

        let change: Map<String, Value> =
            serde_json::from_str(r#"{"lead_id": "L1", "conv_status": "rejected"}"#).unwrap();
        let p = Preview {
            original: Some(4),
            outcome: "update",
            change: Some(change),
            reason: None,
        };
        let r = result(&forward(), Some(p));
        assert_eq!((r.outcome, r.original), ("update", Some(4)));
        let sent = r.sent.expect("the change");
        assert_eq!(sent.id, "change");
        assert!(sent.json.contains("L1") && !sent.json.contains("clk1"));
        assert!(r.unsent.is_none());
    }
}
