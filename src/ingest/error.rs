//! Why ingest refuses a request, each variant tied to one HTTP status and one `status`
//! word of the answer (as the admin API's `AdminError`); the message is the answer's
//! `reason` and never carries a secret.

use std::net::IpAddr;
use std::time::Duration;

use hyper::{Method, StatusCode};

use super::answer::Answer;
use super::outcome::PostbackOutcome;
use super::request::ParamsError;

/// A request ingest answers without storing anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("no endpoint {0:?}; use /postback/{{source}} or /pixel/{{source}}")]
    NoEndpoint(String),
    #[error("method {0} is not accepted; use GET, HEAD or POST")]
    Method(Method),
    #[error("URL of {len} bytes; at most {max} (server.max_url_bytes)")]
    UriTooLong { len: usize, max: usize },
    #[error("headers of {len} bytes; at most {max}")]
    HeadersTooLarge { len: usize, max: usize },
    #[error("no rule file for source {0:?}")]
    UnknownSource(String),
    #[error("caller {ip} is not in the allow list of source {source_id}")]
    Forbidden { ip: IpAddr, source_id: String },
    #[error("body over {0} bytes (server.max_body_bytes)")]
    BodyTooLarge(usize),
    #[error("the body did not arrive within {0:?} (server.read_timeout)")]
    BodyTimeout(Duration),
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// `in_query`: the query alone is over the limit (414); else the body's parameters
    /// pushed the count over it (413).
    #[error("{count} parameters; at most {max} (server.max_params)")]
    TooManyParams {
        count: usize,
        max: usize,
        in_query: bool,
    },
    #[error("{0}")]
    BadBody(String),
    /// The token, or the signature, is missing or wrong; the text says which and where.
    #[error("{0}")]
    Unauthorized(String),
    #[error("the postback could not be stored; retry later")]
    Unavailable,
}

impl IngestError {
    /// The HTTP status and the answer's `status` word.
    pub fn code(&self) -> (StatusCode, &'static str) {
        match self {
            IngestError::NoEndpoint(_) => (StatusCode::NOT_FOUND, "not_found"),
            IngestError::Method(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            IngestError::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            IngestError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            IngestError::UnknownSource(_) => (StatusCode::NOT_FOUND, "unknown_source"),
            IngestError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            IngestError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            IngestError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            IngestError::BodyUnreadable | IngestError::BadBody(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            IngestError::TooManyParams { in_query, .. } => {
                let code = if *in_query {
                    StatusCode::URI_TOO_LONG
                } else {
                    StatusCode::PAYLOAD_TOO_LARGE
                };
                (code, "too_many_params")
            }
            IngestError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            IngestError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// The metric outcome of a refusal that is counted per source (a known source only).
    pub fn outcome(&self) -> Option<PostbackOutcome> {
        match self {
            IngestError::Forbidden { .. } => Some(PostbackOutcome::Forbidden),
            IngestError::Unauthorized(_) => Some(PostbackOutcome::Unauthorized),
            IngestError::Unavailable => Some(PostbackOutcome::Unavailable),
            _ => None,
        }
    }
}

impl From<ParamsError> for IngestError {
    fn from(e: ParamsError) -> Self {
        match e {
            ParamsError::TooMany {
                count,
                max,
                in_query,
            } => IngestError::TooManyParams {
                count,
                max,
                in_query,
            },
            ParamsError::Body(_) => IngestError::BadBody(e.to_string()),
        }
    }
}

impl From<IngestError> for Answer {
    fn from(e: IngestError) -> Self {
        let (code, status) = e.code();
        Answer::new(code, status, Some(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_params_is_414_in_the_query_and_413_in_the_body() {
        let e = |in_query| IngestError::TooManyParams {
            count: 3,
            max: 2,
            in_query,
        };
        assert_eq!(e(true).code().0, StatusCode::URI_TOO_LONG);
        assert_eq!(e(false).code().0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            e(true).to_string(),
            "3 parameters; at most 2 (server.max_params)"
        );
    }

    #[test]
    fn refusals_counted_per_source_are_the_auth_and_store_ones() {
        assert_eq!(
            IngestError::Unauthorized("token missing or wrong".into()).outcome(),
            Some(PostbackOutcome::Unauthorized)
        );
        assert_eq!(IngestError::UnknownSource("x".into()).outcome(), None);
        let answer = Answer::from(IngestError::Unavailable);
        assert_eq!(answer.code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.status, "unavailable");
    }
}
