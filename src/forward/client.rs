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

/// The answer to one attempt, with the key already redacted.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the request started.
    pub at: Timestamp,
    /// `None` when no answer came (connect error, timeout, reset).
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    /// The answer body, or the error text when none came.
    pub body: String,
    pub duration: Duration,
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
    /// request that got no answer comes back with `status: None` and the (redacted) error.
    pub async fn call(&self, call: Call, target: Target<'_>, body: &str) -> Answer {
        let at = Timestamp::now();
        let start = std::time::Instant::now();
        let result = self.send(call, target, body).await;
        let duration = start.elapsed();
        match result {
            Ok((status, retry_after, text)) => Answer {
                at,
                status: Some(status),
                retry_after,
                body: redact(&text, target.api_key),
                duration,
            },
            Err(e) => Answer {
                at,
                status: None,
                retry_after: None,
                body: redact(&e, target.api_key),
                duration,
            },
        }
    }

    async fn send(
        &self,
        call: Call,
        target: Target<'_>,
        body: &str,
    ) -> Result<(u16, Option<String>, String), String> {
        let url = endpoint(target, call.path())?;
        let mut resp = self
            .http
            .request(method(call), url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(describe)?;
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
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(e) = cut {
            text.push_str(&format!("\n{}{e}]", super::retry::CUT_MARK));
        }
        Ok((status, retry_after, text))
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

/// A short, URL-free description of a failed request.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "error reading the answer"
    } else {
        "request error"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Replaces every occurrence of `key` (and any `api-key=` value) in `text`.
pub fn redact(text: &str, key: &str) -> String {
    let text = if key.is_empty() {
        text.to_string()
    } else {
        text.replace(key, "[redacted]")
    };
    crate::store::redact_api_key(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(a.status, Some(200), "{}", a.body);
        assert!(a.body.starts_with("{\"status\":\"success\","), "{}", a.body);
        assert!(!a.body.contains("SECRET-KEY-123"), "{}", a.body);
        let outcome = super::super::retry::classify(a.status, None, &a.body, Timestamp::now());
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
        assert_eq!(a.status, None);
        assert!(!a.body.contains("SECRET-KEY-123"), "{}", a.body);
        assert!(!a.body.is_empty());
    }
}
