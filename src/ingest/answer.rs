//! The answers ingest gives: `{"status", "id", "reason"}` JSON on `/postback`, a 1x1 GIF on
//! `/pixel`, with fixed status codes that never leak internals.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::PostbackOutcome;

/// A transparent 1x1 GIF (43 bytes).
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Which endpoint answers: JSON for `/postback`, the GIF for `/pixel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Json,
    Pixel,
}

/// The JSON of an answer, its keys in the order they always had (alphabetical); `original`
/// only when there is one. Serialized straight from this struct, without building a
/// `serde_json::Value` map for every answer.
#[derive(Serialize)]
struct JsonAnswer<'a> {
    id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original: Option<i64>,
    reason: Option<&'a str>,
    status: &'a str,
}

/// One answer before it is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: StatusCode,
    /// `accepted`, `duplicate`, `skipped`, `rejected`, `unauthorized`, ...
    pub status: &'static str,
    pub id: Option<i64>,
    pub reason: Option<String>,
    /// For `update`, `stale` and `duplicate`: the record that created the conversion.
    pub original: Option<i64>,
    /// `[answer] body`: sent as `text/plain` instead of the JSON (not on `/pixel`).
    pub text: Option<String>,
    /// What became of a stored postback (`None` when nothing was stored).
    pub outcome: Option<PostbackOutcome>,
}

impl Answer {
    pub fn new(code: StatusCode, status: &'static str, reason: impl Into<Option<String>>) -> Self {
        Self {
            code,
            status,
            id: None,
            reason: reason.into(),
            original: None,
            text: None,
            outcome: None,
        }
    }

    /// A stored postback: 422 for a reject, else 200.
    pub fn stored(outcome: PostbackOutcome, id: i64, reason: Option<String>) -> Self {
        let code = if outcome == PostbackOutcome::Rejected {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        Self {
            code,
            status: outcome.as_str(),
            id: Some(id),
            reason,
            original: None,
            text: None,
            outcome: Some(outcome),
        }
    }

    /// A stored later postback of the conversion created by record `original`.
    pub fn of_conversion(
        outcome: PostbackOutcome,
        id: i64,
        original: i64,
        reason: Option<String>,
    ) -> Self {
        Self {
            original: Some(original),
            ..Self::stored(outcome, id, reason)
        }
    }

    /// Renders the answer; `head` drops the body but keeps the headers.
    pub fn render(&self, style: Style, head: bool) -> Response<Full<Bytes>> {
        let (ctype, body) = match (style, &self.text) {
            (Style::Json, Some(text)) => ("text/plain; charset=utf-8", Bytes::from(text.clone())),
            (Style::Json, None) => {
                let body = JsonAnswer {
                    id: self.id,
                    original: self.original,
                    reason: self.reason.as_deref(),
                    status: self.status,
                };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                ("application/json", Bytes::from(body))
            }
            (Style::Pixel, _) => ("image/gif", Bytes::from_static(PIXEL_GIF)),
        };
        let len = body.len();
        let mut resp = Response::new(Full::new(if head { Bytes::new() } else { body }));
        *resp.status_mut() = self.code;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        if style == Style::Pixel {
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            h.insert(header::EXPIRES, HeaderValue::from_static("0"));
        }
        if self.code == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(answer: &Answer, head: bool) -> (StatusCode, String, String) {
        let resp = answer.render(Style::Json, head);
        let ctype = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let len = resp.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .to_string();
        let code = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            head || len == text.len().to_string(),
            "Content-Length {len} for {text}"
        );
        (code, ctype, text)
    }

    #[tokio::test]
    async fn the_json_answers_keep_their_exact_text() {
        let stored = Answer::stored(PostbackOutcome::Accepted, 42, None);
        assert_eq!(
            body_of(&stored, false).await,
            (
                StatusCode::OK,
                "application/json".into(),
                r#"{"id":42,"reason":null,"status":"accepted"}"#.into()
            )
        );
        let update = Answer::of_conversion(PostbackOutcome::Update, 43, 7, None);
        assert_eq!(
            body_of(&update, false).await.2,
            r#"{"id":43,"original":7,"reason":null,"status":"update"}"#
        );
        let refused = Answer::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
            Some("payout: \"12,5\" is not a decimal".to_string()),
        );
        assert_eq!(
            body_of(&refused, false).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "application/json".into(),
                r#"{"id":null,"reason":"payout: \"12,5\" is not a decimal","status":"rejected"}"#
                    .into()
            )
        );
        let (_, _, text) = body_of(&stored, true).await;
        assert_eq!(text, "", "HEAD keeps the headers, not the body");
    }
}
