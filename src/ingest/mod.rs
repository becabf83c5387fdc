//! HTTP ingest: `GET|POST|HEAD /postback/{source}` and `/pixel/{source}`. One request goes
//! through typed stages, each either passing its result on or refusing with an
//! [`IngestError`] (which carries the status code and the reason):
//!
//! route (path, method) -> limits (URL, headers) -> rule (the source's) -> authorise the IP
//! (`auth.rs`) -> read the body -> decode the parameters ([`request`]) -> authorise the
//! token and signature (`auth.rs`) -> map (the rule) -> store (durably, group commit:
//! `record.rs`) -> answer ([`answer`]), 200 only once stored.

pub mod answer;
mod auth;
mod error;
mod outcome;
mod record;
pub mod request;
pub mod server;
pub mod signature;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::config::ServerConfig;
use crate::mapping;
use crate::metrics;
use crate::rules::{Input, LiveRules, Outcome, SigLocation};
use crate::store::RawPostback;
use answer::{Answer, Style};
pub use error::IngestError;
pub use outcome::PostbackOutcome;

/// Everything a request handler needs, shared by all connections.
pub struct Ingest {
    pub rules: Arc<LiveRules>,
    pub store: crate::store::Store,
    /// The network's time zone for `timestamp` outputs.
    pub zone: TimeZone,
    pub limits: ServerConfig,
}

/// The route stage: the source a path names.
fn route<'p>(path: &'p str, method: &Method) -> Result<&'p str, IngestError> {
    let source = path
        .strip_prefix("/postback/")
        .or_else(|| path.strip_prefix("/pixel/"))
        .ok_or_else(|| IngestError::NoEndpoint(path.to_string()))?;
    if !matches!(*method, Method::GET | Method::HEAD | Method::POST) {
        return Err(IngestError::Method(method.clone()));
    }
    Ok(source)
}

/// The header named `name` as text, if it is some.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Ingest {
    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let style = if req.uri().path().starts_with("/pixel/") {
            Style::Pixel
        } else {
            Style::Json
        };
        let head = req.method() == Method::HEAD;
        self.answer(req, peer).await.render(style, head)
    }

    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Answer {
        if req.uri().path() == "/healthz" {
            return Answer::new(StatusCode::OK, "ok", None);
        }
        let mut source = None;
        match self.postback(req, peer, &mut source).await {
            Ok(answer) => answer,
            Err(e) => {
                if let (Some(source), Some(outcome)) = (source, e.outcome()) {
                    metrics::postback(&source, outcome.as_str());
                }
                e.into()
            }
        }
    }

    /// The limits stage: the URL and the headers within `server.max_url_bytes` and
    /// `server.max_header_bytes`.
    fn within_limits(&self, req: &Request<Incoming>) -> Result<(), IngestError> {
        let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        let max = self.limits.max_url_bytes;
        if len > max {
            return Err(IngestError::UriTooLong { len, max });
        }
        let len = header_bytes(req.headers());
        let max = self.limits.max_header_bytes;
        if len > max {
            return Err(IngestError::HeadersTooLarge { len, max });
        }
        Ok(())
    }

    /// Every stage of one postback; `counted` is set to the source once it is known to have
    /// a rule, so that a refusal past that point is counted on it.
    async fn postback(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        counted: &mut Option<String>,
    ) -> Result<Answer, IngestError> {
        let received_at = Timestamp::now();
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let source = route(&path, &method)?;
        self.within_limits(&req)?;
        let rules = self.rules.current();
        let rule = rules
            .get(source)
            .ok_or_else(|| IngestError::UnknownSource(source.to_string()))?;
        *counted = Some(rule.source.clone());

        let headers = req.headers();
        // Every X-Forwarded-For line in order: a proxy may add its own line instead of
        // appending, and the client's forged first line must not win.
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
        let content_type = header(headers, "content-type");
        let (user_agent, referer) = (header(headers, "user-agent"), header(headers, "referer"));
        let credentials = auth::Credentials {
            header_token: header(headers, "x-postback-token"),
            signature_header: match &rule.auth.signature {
                Some(crate::rules::Signature {
                    location: SigLocation::Header(h),
                    ..
                }) => header(headers, h),
                _ => None,
            },
        };
        let ip = request::client_ip(
            peer.ip(),
            forwarded.as_deref(),
            &self.limits.trusted_proxies,
        );
        auth::allow_ip(rule, ip)?;

        let query = req.uri().query().unwrap_or("").to_string();
        let body = self.read_body(req).await?;
        let params = request::params(
            &query,
            &body,
            content_type.as_deref(),
            self.limits.max_params,
        )?;
        auth::credentials(rule, &params, &body, credentials, ip)?;

        // Map: the credentials never reach the rule; the body's pairs follow the query's.
        let ic = rule.params_ignore_case();
        let is_secret = |n: &str| rule.auth.is_secret_param(n, ic);
        let query_had_token = params.query.iter().any(|(n, _)| is_secret(n));
        let body_secrets: Vec<String> = params
            .body
            .iter()
            .filter(|(n, _)| is_secret(n))
            .map(|(n, _)| n.clone())
            .collect();
        let query_pairs = params.query.len();
        let (body_params, body_numbers) =
            mapping::without_token_marked(rule, params.body, &params.body_numbers);
        let mut params = mapping::without_token(rule, params.query);
        let json_numbers: Vec<usize> = body_numbers.iter().map(|i| i + params.len()).collect();
        params.extend(body_params.iter().cloned());
        let ip_text = ip.to_string();
        let input = Input {
            params: &params,
            json_numbers: &json_numbers,
            client_ip: Some(&ip_text),
            user_agent: user_agent.as_deref(),
            referer: referer.as_deref(),
            received_at: Some(received_at),
        };
        let outcome = rule.apply(&input, &self.zone);
        let reject_code = if rule.answer.reject_ok {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        if method == Method::HEAD {
            // The head a GET would get: its code, and the `[answer]` text's type and length.
            return Ok(match outcome {
                Outcome::Reject { reason } => Answer::new(reject_code, "rejected", Some(reason)),
                _ => {
                    let mut answer = Answer::new(StatusCode::OK, "ok", None);
                    answer.text = rule.answer_body(&input);
                    answer
                }
            });
        }
        let success_text = rule.answer_body(&input);
        let state = mapping::new_state(rule, &input, outcome);

        // Store.
        let raw = RawPostback {
            method: method.to_string(),
            path: path.clone(),
            query: record::stored_query(
                query,
                query_had_token,
                is_secret,
                &body_params,
                body_secrets,
                &body_numbers,
                query_pairs,
            ),
            client_ip: Some(ip_text.clone()),
            user_agent,
            referer: record::stored_referer(referer, is_secret),
            received_at,
        };
        let mut answer = self.store_record(rule, raw, state).await?;

        // Answer: `[answer]`, the body a sender expects on success, and 200 for a reject.
        if answer.code == StatusCode::OK && answer.outcome.is_some_and(PostbackOutcome::is_taken) {
            answer.text = success_text;
        }
        if answer.outcome == Some(PostbackOutcome::Rejected) {
            answer.code = reject_code;
        }
        Ok(answer)
    }

    /// The read stage: a POST's body, within `server.max_body_bytes` and
    /// `server.read_timeout`.
    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, IngestError> {
        if req.method() != Method::POST {
            return Ok(Bytes::new());
        }
        let max = self.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(IngestError::BodyTooLarge(max));
        }
        let collect = Limited::new(req.into_body(), max).collect();
        let Ok(collected) = tokio::time::timeout(self.limits.read_timeout, collect).await else {
            return Err(IngestError::BodyTimeout(self.limits.read_timeout));
        };
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(IngestError::BodyTooLarge(max))
            }
            Err(_) => Err(IngestError::BodyUnreadable),
        }
    }
}

fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}
