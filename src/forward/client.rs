//! The HTTP call to Scaleo's `conv-click-id` endpoint.
//!
//! The API key travels in the query string, so it is kept out of everything this module
//! returns: reqwest errors are stripped of their URL (`without_url`) and every text that
//! leaves (error text, answer body) has the key replaced by `[redacted]`. Redirects are not
//! followed (a redirected POST becomes a GET); they come back as a 3xx answer. An answer
//! whose body breaks off keeps its status (see `send`).

use std::time::Duration;

use jiff::Timestamp;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

pub use crate::scaleo::{CONV_PATH, Call, UPDATE_PATH};

/// Most answer bytes read (Scaleo's answers are far smaller).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Errors of building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// reqwest could not build its client (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Where one postback goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub base_url: &'a str,
    pub api_key: &'a str,
}

/// One attempt's request: when it started, how long it took, and how it ended.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the request started.
    pub at: Timestamp,
    pub duration: Duration,
    pub reply: Reply,
}

/// How a request ended, with the API key already redacted from every text in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status line came back (from Scaleo or whatever answers at `base_url`).
    Answered {
        status: u16,
        /// The `Retry-After` header as sent, when there was one.
        retry_after: Option<String>,
        /// The start of the body (at most 64 KB, lossy UTF-8).
        body: String,
        /// Why the body broke off after the status line (reset, timeout), when it did.
        cut: Option<String>,
    },
    /// No answer within `scaleo.timeout`.
    TimedOut { cause: String },
    /// No connection (refused, unreachable, name or TLS failure).
    ConnectFailed { cause: String },
    /// The request failed otherwise before any answer (an invalid `base_url`, an error
    /// while sending); `cause` says what, in full.
    Failed { cause: String },
}

/// What the stored text of an answer cut short carries after the body.
const CUT_MARK: &str = "[answer cut short: ";

impl Reply {
    /// The HTTP status; `None` when no answer came.
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `Retry-After` header of an answer.
    pub fn retry_after(&self) -> Option<&str> {
        match self {
            Reply::Answered { retry_after, .. } => retry_after.as_deref(),
            _ => None,
        }
    }

    /// The text kept with the attempt (and read by the classifier): the body, with a line
    /// saying why it was cut short when it was; or the error when no answer came
    /// (`timeout: ...`, `connect error: ...`).
    pub fn text(&self) -> String {
        match self {
            Reply::Answered {
                body, cut: None, ..
            } => body.clone(),
            Reply::Answered {
                body,
                cut: Some(why),
                ..
            } => format!("{body}\n{CUT_MARK}{why}]"),
            Reply::TimedOut { cause } => format!("timeout: {cause}"),
            Reply::ConnectFailed { cause } => format!("connect error: {cause}"),
            Reply::Failed { cause } => cause.clone(),
        }
    }

    /// The same reply with `key` (and any `api-key=` value) redacted from every text.
    fn redacted(self, key: &str) -> Reply {
        match self {
            Reply::Answered {
                status,
                retry_after,
                body,
                cut,
            } => Reply::Answered {
                status,
                retry_after,
                body: redact(&body, key),
                cut: cut.map(|c| redact(&c, key)),
            },
            Reply::TimedOut { cause } => Reply::TimedOut {
                cause: redact(&cause, key),
            },
            Reply::ConnectFailed { cause } => Reply::ConnectFailed {
                cause: redact(&cause, key),
            },
            Reply::Failed { cause } => Reply::Failed {
                cause: redact(&cause, key),
            },
        }
    }
}

/// A pooled HTTP client for Scaleo.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client whose whole request (connect, send, read) is bounded by `timeout`.
    pub fn new(timeout: Duration, pool: usize) -> Result<Client, ClientError> {
        // reqwest is built without a default crypto provider; main installs ring. Installing
        // it here too (when nothing is installed yet) keeps library users and tests working.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .user_agent(concat!("postback-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.without_url().to_string()))?;
        Ok(Client { http })
    }

    /// POSTs `body` (JSON text, sent byte for byte) to `target`'s conversion endpoint.
    pub async fn post(&self, target: Target<'_>, body: &str) -> Answer {
        self.call(Call::Create, target, body).await
    }

    /// Sends `body` (JSON text, sent byte for byte) as `call` to `target`. Never fails: a
    /// request that got no answer comes back as a [`Reply`] saying why (key redacted).
    pub async fn call(&self, call: Call, target: Target<'_>, body: &str) -> Answer {
        let at = Timestamp::now();
        let start = std::time::Instant::now();
        let reply = self.send(call, target, body).await;
        Answer {
            at,
            duration: start.elapsed(),
            reply: reply.redacted(target.api_key),
        }
    }

    async fn send(&self, call: Call, target: Target<'_>, body: &str) -> Reply {
        let url = match endpoint(target, call.path()) {
            Ok(url) => url,
            Err(cause) => return Reply::Failed { cause },
        };
        let sent = self
            .http
            .request(method(call), url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => return no_answer(e),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Once the status line is in, Scaleo has answered: a body cut short (reset, timeout)
        // keeps the status and what arrived, so the answer is classified by its status and
        // never taken for "no answer" (a retry of a conversion that exists).
        let mut bytes = Vec::new();
        let mut cut = None;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    cut = Some(describe(e));
                    break;
                }
            };
            let room = MAX_ANSWER_BYTES.saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        Reply::Answered {
            status,
            retry_after,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            cut,
        }
    }
}

/// The reqwest method of a call.
fn method(call: Call) -> reqwest::Method {
    match call {
        Call::Create => reqwest::Method::POST,
        Call::Update => reqwest::Method::PUT,
    }
}

/// `{base_url}{path}?api-key=KEY` (the key percent-encoded).
fn endpoint(target: Target<'_>, path: &str) -> Result<reqwest::Url, String> {
    let base = target.base_url.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}{path}"))
        .map_err(|e| format!("invalid base_url {base:?}: {e}"))?;
    url.query_pairs_mut().append_pair("api-key", target.api_key);
    Ok(url)
}

/// The reply to a request that got no answer.
fn no_answer(e: reqwest::Error) -> Reply {
    let e = e.without_url();
    let cause = chain(&e);
    if e.is_timeout() {
        Reply::TimedOut { cause }
    } else if e.is_connect() {
        Reply::ConnectFailed { cause }
    } else {
        Reply::Failed {
            cause: format!("{}: {cause}", failure_kind(&e)),
        }
    }
}

/// A short, URL-free description of a failed request.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    format!("{}: {}", failure_kind(&e), chain(&e))
}

fn failure_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "error reading the answer"
    } else {
        "request error"
    }
}

/// The error and its sources, `: `-separated.
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Replaces every occurrence of `key` (and any `api-key=` value) in `text`: as it is, as a
/// JSON string holds it (PHP's `json_encode` also writes `/` as `\/`) and URL-encoded.
pub fn redact(text: &str, key: &str) -> String {
    let mut text = text.to_string();
    if !key.is_empty() {
        let quoted = serde_json::to_string(key).unwrap_or_default();
        let json = quoted
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or(key)
            .to_string();
        let forms = [
            key.to_string(),
            json.replace('/', "\\/"),
            json,
            form_urlencoded::byte_serialize(key.as_bytes()).collect(),
            percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        ];
        for form in forms {
            text = text.replace(&form, "[redacted]");
        }
    }
    crate::store::redact_api_key(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_redacted_however_an_answer_escapes_it() {
        let key = "Ab+cQ/dZ=e&fW%gY h\"";
        let answer = r#"{"message":"Invalid key Ab+cQ\/dZ=e&fW%gY h\"","info":{"errors":{"api_key":["Ab+cQ/dZ=e&fW%gY h\" is not valid"]}},"url":"x?k=Ab%2BcQ%2FdZ%3De%26fW%25gY+h%22 y=Ab%2BcQ%2FdZ%3De%26fW%25gY%20h%22"}"#;
        let redacted = redact(answer, key);
        assert_eq!(
            redacted,
            r#"{"message":"Invalid key [redacted]","info":{"errors":{"api_key":["[redacted] is not valid"]}},"url":"x?k=[redacted] y=[redacted]"}"#
        );
    }

    #[test]
    fn endpoint_encodes_the_key_and_trims_the_slash() {
        let target = Target {
            base_url: "http://127.0.0.1:9/",
            api_key: "a b&c",
        };
        let url = endpoint(target, CONV_PATH).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/api/v2/network/tracking/conv-click-id?api-key=a+b%26c"
        );
    }

    #[test]
    fn the_stored_text_of_each_reply() {
        let answered = |cut: Option<&str>| Reply::Answered {
            status: 200,
            retry_after: None,
            body: "{\"status\":".into(),
            cut: cut.map(String::from),
        };
        assert_eq!(answered(None).text(), "{\"status\":");
        assert_eq!(
            answered(Some("error reading the answer: reset")).text(),
            "{\"status\":\n[answer cut short: error reading the answer: reset]"
        );
        let cause = || "operation timed out".to_string();
        assert_eq!(
            Reply::TimedOut { cause: cause() }.text(),
            "timeout: operation timed out"
        );
        assert_eq!(
            Reply::ConnectFailed { cause: cause() }.text(),
            "connect error: operation timed out"
        );
        assert_eq!(
            Reply::Failed { cause: cause() }.text(),
            "operation timed out"
        );
    }

    #[test]
    fn the_key_is_redacted_from_every_text_of_a_reply() {
        let key = "SECRET-KEY-123";
        let echo = || format!("echo {key} and ?api-key=other");
        let replies = [
            Reply::Answered {
                status: 500,
                retry_after: None,
                body: echo(),
                cut: Some(echo()),
            },
            Reply::TimedOut { cause: echo() },
            Reply::ConnectFailed { cause: echo() },
            Reply::Failed { cause: echo() },
        ];
        for reply in replies {
            let text = reply.redacted(key).text();
            assert!(!text.contains(key) && !text.contains("other"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }

    #[tokio::test]
    async fn an_invalid_base_url_is_a_failed_request_not_an_answer() {
        let client = Client::new(Duration::from_secs(2), 1).unwrap();
        let a = client
            .post(
                Target {
                    base_url: "not a url",
                    api_key: "SECRET-KEY-123",
                },
                "{}",
            )
            .await;
        let Reply::Failed { cause } = &a.reply else {
            panic!("{:?}", a.reply);
        };
        assert!(cause.starts_with("invalid base_url"), "{cause}");
        assert!(!cause.contains("SECRET-KEY-123"), "{cause}");
    }

    /// A one-shot server that answers `head` and `body_start`, then closes before the
    /// announced body is complete.
    async fn cut_answer(head: &'static str, body_start: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body_start.as_bytes()).await;
            let _ = s.flush().await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_cut_short_keeps_its_status() {
        // Scaleo answered 200 (the conversion exists) and the connection broke in the body:
        // that is not "no answer", which would be retried and could pay twice.
        let base = cut_answer(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n",
            "{\"status\":\"success\",",
        )
        .await;
        let client = Client::new(Duration::from_secs(2), 1).unwrap();
        let a = client
            .post(
                Target {
                    base_url: &base,
                    api_key: "SECRET-KEY-123",
                },
                "{}",
            )
            .await;
        let text = a.reply.text();
        assert_eq!(a.reply.status(), Some(200), "{text}");
        assert!(text.starts_with("{\"status\":\"success\","), "{text}");
        assert!(text.contains(CUT_MARK), "{text}");
        assert!(!text.contains("SECRET-KEY-123"), "{text}");
        let outcome = super::super::retry::classify(&a.reply, Timestamp::now());
        assert!(
            matches!(outcome, super::super::Outcome::Dead { .. }),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn connect_error_carries_no_key() {
        let client = Client::new(Duration::from_secs(2), 1).unwrap();
        // Port 9 (discard) is closed on loopback here: a connect error.
        let a = client
            .post(
                Target {
                    base_url: "http://127.0.0.1:9",
                    api_key: "SECRET-KEY-123",
                },
                "{}",
            )
            .await;
        let Reply::ConnectFailed { cause } = &a.reply else {
            panic!("{:?}", a.reply);
        };
        assert!(!cause.is_empty());
        let text = a.reply.text();
        assert!(text.starts_with("connect error: "), "{text}");
        assert!(!text.contains("SECRET-KEY-123"), "{text}");
    }
}
