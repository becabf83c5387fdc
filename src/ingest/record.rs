//! The store stage of ingest: the raw postback as it is kept (credentials redacted, body
//! parameters appended, JSON number positions marked), and the record committed before the
//! answer.

use super::error::IngestError;
use super::outcome::PostbackOutcome;
use super::request;
use super::{Answer, Ingest};
use crate::metrics;
use crate::rules::{JSON_NUMBERS_PARAM, Rule, decode_form};
use crate::store::{ChangeRoute, Inserted, NewRecord, NewState, RawPostback};

/// The referer a record keeps: a credential parameter in its query (a pixel page whose own
/// URL carried the token) shown as `***`, like the postback's.
pub(crate) fn stored_referer(
    referer: Option<String>,
    is_secret: impl Fn(&str) -> bool,
) -> Option<String> {
    let r = referer?;
    let Some((page, query)) = r.split_once('?') else {
        return Some(r);
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut kept = format!("{page}?{}", request::redact_query(query, is_secret));
    if let Some(f) = fragment {
        kept.push('#');
        kept.push_str(f);
    }
    Some(kept)
}

/// The query a record keeps: the sender's query with credential values as `***`, then the
/// body's parameters, then the names of credentials that came in the body (as `***`), then
/// where the JSON numbers were (so that a replay reads them as such).
pub(crate) fn stored_query(
    query: String,
    redact: bool,
    is_secret: impl Fn(&str) -> bool,
    body_params: &[(String, String)],
    body_secrets: Vec<String>,
    body_numbers: &[usize],
    query_pairs: usize,
) -> String {
    let mut stored = if redact {
        request::redact_query(&query, is_secret)
    } else {
        query
    };
    let mut append = |pairs: &[(String, String)]| {
        if !stored.is_empty() {
            stored.push('&');
        }
        stored.push_str(&request::encode_pairs(pairs));
    };
    if !body_params.is_empty() {
        append(body_params);
    }
    if !body_secrets.is_empty() {
        // The record shows that a token or signature came in the body, never its value.
        let redacted: Vec<(String, String)> = body_secrets
            .into_iter()
            .map(|n| (n, "***".to_string()))
            .collect();
        append(&redacted);
    }
    // A sender's own pair of the marker's name, last in its query, is kept by an empty
    // marker.
    let ends_with_marker = stored.contains("json_numbers")
        && decode_form(stored.as_bytes())
            .last()
            .is_some_and(|(n, _)| n == JSON_NUMBERS_PARAM);
    if !body_numbers.is_empty() || ends_with_marker {
        let positions: Vec<String> = body_numbers
            .iter()
            .map(|i| (i + query_pairs).to_string())
            .collect();
        let marker = [(JSON_NUMBERS_PARAM.to_string(), positions.join(","))];
        if !stored.is_empty() {
            stored.push('&');
        }
        stored.push_str(&request::encode_pairs(&marker));
    }
    stored
}

impl Ingest {
    /// The store stage: commits the record and answers what became of it.
    pub(crate) async fn store_record(
        &self,
        rule: &Rule,
        raw: RawPostback,
        state: NewState,
    ) -> Result<Answer, IngestError> {
        let source = rule.source.clone();
        let (label, reason, click_id) = match &state {
            NewState::Queued { click_id, .. } => {
                (PostbackOutcome::Accepted, None, Some(click_id.clone()))
            }
            NewState::Change { click_id, .. } => (PostbackOutcome::Update, None, click_id.clone()),
            NewState::Skipped { reason } => (PostbackOutcome::Skipped, Some(reason.clone()), None),
            NewState::Rejected { reason, click_id } => (
                PostbackOutcome::Rejected,
                Some(reason.clone()),
                click_id.clone(),
            ),
        };
        let inserted = self
            .store
            .insert(NewRecord {
                source: source.clone(),
                raw,
                state,
                repeat_window: Some(rule.dedupe.window),
            })
            .await;
        let (label, id, original, reason) = match inserted {
            Ok(Inserted::Stored { id }) => (label, id, None, reason),
            Ok(Inserted::Duplicate { id, original }) => (
                PostbackOutcome::Duplicate,
                id,
                None,
                Some(format!(
                    "same dedupe key as record {original}; not forwarded again"
                )),
            ),
            Ok(Inserted::Update {
                id,
                original,
                route,
            }) => {
                let reason = match route {
                    ChangeRoute::Queued => None,
                    ChangeRoute::Merged => Some(format!(
                        "merged into record {original}, which was not sent yet"
                    )),
                    ChangeRoute::Dead(why) => Some(why),
                };
                (PostbackOutcome::Update, id, Some(original), reason)
            }
            Ok(Inserted::Stale {
                id,
                original,
                reason,
            }) => (PostbackOutcome::Stale, id, Some(original), Some(reason)),
            Ok(Inserted::Unmatched { id, reason }) => {
                (PostbackOutcome::Rejected, id, None, Some(reason))
            }
            Ok(Inserted::Repeat {
                id,
                reason,
                repeats,
            }) => {
                // The same reject as record `id`: counted on it, not stored again.
                metrics::postback(&source, PostbackOutcome::Rejected.as_str());
                tracing::info!(
                    source,
                    id,
                    repeats,
                    outcome = "rejected",
                    "postback: a repeat of a stored reject, counted on it"
                );
                return Ok(Answer::stored(PostbackOutcome::Rejected, id, Some(reason)));
            }
            Err(e) => {
                tracing::error!(source, error = %e, "postback not stored; answering 503");
                return Err(IngestError::Unavailable);
            }
        };
        metrics::postback(&source, label.as_str());
        tracing::info!(
            source,
            id,
            original,
            click_id = click_id.as_deref(),
            outcome = label.as_str(),
            reason = reason.as_deref(),
            "postback"
        );
        Ok(match original {
            Some(original) => Answer::of_conversion(label, id, original, reason),
            None => Answer::stored(label, id, reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_the_referer_query_is_kept_redacted() {
        let secret = |n: &str| n == "token";
        assert_eq!(
            stored_referer(
                Some("https://shop.example/thanks?order=9&token=s3cret#top".into()),
                secret
            )
            .as_deref(),
            Some("https://shop.example/thanks?order=9&token=***#top")
        );
        assert_eq!(
            stored_referer(Some("https://shop.example/thanks".into()), secret).as_deref(),
            Some("https://shop.example/thanks")
        );
        assert_eq!(stored_referer(None, secret), None);
    }
}
