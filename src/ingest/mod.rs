//! HTTP ingest: `GET|POST|HEAD /postback/{source}` and `/pixel/{source}`. Checks limits, the
//! caller's IP and token, maps the parameters with the source's rule, stores the record
//! durably (group commit) and only then answers 200.

pub mod answer;
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
use crate::metrics::{self, PostbackOutcome};
use crate::rules::{Input, LiveRules, Outcome, Rule, SigLocation};
use crate::store::{ChangeRoute, Inserted, NewRecord, NewState, RawPostback, Store};
use answer::{Answer, Style};
use request::ParamsError;

/// Everything a request handler needs, shared by all connections.
pub struct Ingest {
    pub rules: Arc<LiveRules>,
    pub store: Store,
    /// The network's time zone for `timestamp` outputs.
    pub zone: TimeZone,
    pub limits: ServerConfig,
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
        let received_at = Timestamp::now();
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return Answer::new(StatusCode::OK, "ok", None);
        }
        let Some(source) = path
            .strip_prefix("/postback/")
            .or_else(|| path.strip_prefix("/pixel/"))
        else {
            return Answer::new(
                StatusCode::NOT_FOUND,
                "not_found",
                Some(format!(
                    "no endpoint {path:?}; use /postback/{{source}} or /pixel/{{source}}"
                )),
            );
        };
        let method = req.method().clone();
        if !matches!(method, Method::GET | Method::HEAD | Method::POST) {
            return Answer::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                Some(format!(
                    "method {method} is not accepted; use GET, HEAD or POST"
                )),
            );
        }
        let url_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if url_len > self.limits.max_url_bytes {
            return Answer::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                Some(format!(
                    "URL of {url_len} bytes; at most {} (server.max_url_bytes)",
                    self.limits.max_url_bytes
                )),
            );
        }
        let header_len = header_bytes(req.headers());
        if header_len > self.limits.max_header_bytes {
            return Answer::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Some(format!(
                    "headers of {header_len} bytes; at most {}",
                    self.limits.max_header_bytes
                )),
            );
        }
        let rules = self.rules.current();
        let Some(rule) = rules.get(source) else {
            return Answer::new(
                StatusCode::NOT_FOUND,
                "unknown_source",
                Some(format!("no rule file for source {source:?}")),
            );
        };
        let headers = req.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // Every X-Forwarded-For line in order: a proxy may add its own line instead of
        // appending, and the client's forged first line must not win.
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
        let (content_type, header_token) = (header("content-type"), header("x-postback-token"));
        let (user_agent, referer) = (header("user-agent"), header("referer"));
        let signature_header = match &rule.auth.signature {
            Some(crate::rules::Signature {
                location: SigLocation::Header(h),
                ..
            }) => header(h),
            _ => None,
        };
        let ip = request::client_ip(
            peer.ip(),
            forwarded.as_deref(),
            &self.limits.trusted_proxies,
        );
        if !rule.auth.allow_ips.is_empty() && !rule.auth.allow_ips.iter().any(|n| n.contains(&ip)) {
            tracing::warn!(source, client_ip = %ip, "postback refused: caller not in the allow list");
            metrics::postback(source, PostbackOutcome::Forbidden);
            return Answer::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                Some(format!(
                    "caller {ip} is not in the allow list of source {source}"
                )),
            );
        }

        let query = req.uri().query().unwrap_or("").to_string();
        let body = match self.read_body(req).await {
            Ok(b) => b,
            Err(a) => return a,
        };
        let params = match request::params(
            &query,
            &body,
            content_type.as_deref(),
            self.limits.max_params,
        ) {
            Ok(p) => p,
            Err(ParamsError::TooMany {
                count,
                max,
                in_query,
            }) => {
                let code = if in_query {
                    StatusCode::URI_TOO_LONG
                } else {
                    StatusCode::PAYLOAD_TOO_LARGE
                };
                return Answer::new(
                    code,
                    "too_many_params",
                    Some(format!(
                        "{count} parameters; at most {max} (server.max_params)"
                    )),
                );
            }
            Err(e @ ParamsError::Body(_)) => {
                return Answer::new(StatusCode::BAD_REQUEST, "bad_request", Some(e.to_string()));
            }
        };

        let auth = &rule.auth;
        let ic = rule.params_ignore_case();
        let is_token = |n: &str| mapping::is_token_param(n, &auth.token_param, ic);
        if let Some(expected) = &auth.token {
            let given = params
                .query
                .iter()
                .chain(&params.body)
                .find(|(n, _)| is_token(n))
                .map(|(_, v)| v.clone())
                .or(header_token);
            if !given.is_some_and(|g| request::token_matches(expected, &g)) {
                tracing::warn!(source, client_ip = %ip, "postback refused: token missing or wrong");
                metrics::postback(source, PostbackOutcome::Unauthorized);
                return Answer::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    Some(format!(
                        "token missing or wrong (parameter {:?} or header X-Postback-Token)",
                        auth.token_param
                    )),
                );
            }
        }
        if let Some(sig) = &auth.signature {
            let given = match &sig.location {
                SigLocation::Param(name) => params
                    .query
                    .iter()
                    .chain(&params.body)
                    .find(|(n, _)| mapping::is_token_param(n, name, ic))
                    .map(|(_, v)| v.clone()),
                SigLocation::Header(_) => signature_header,
            };
            let all: Vec<(String, String)> =
                params.query.iter().chain(&params.body).cloned().collect();
            let valid = given
                .as_deref()
                .is_some_and(|g| signature::verify(sig, &all, &body, g, ic));
            if !valid {
                let what = if given.is_some() { "wrong" } else { "missing" };
                tracing::warn!(source, client_ip = %ip, "postback refused: signature {what}");
                metrics::postback(source, PostbackOutcome::Unauthorized);
                let place = match &sig.location {
                    SigLocation::Param(p) => format!("parameter {p:?}"),
                    SigLocation::Header(h) => format!("header {h:?}"),
                };
                return Answer::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    Some(format!("signature {what} ({place})")),
                );
            }
        }
        let is_secret = |n: &str| auth.is_secret_param(n, ic);
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
            return match outcome {
                Outcome::Reject { reason } => Answer::new(reject_code, "rejected", Some(reason)),
                _ => Answer::new(StatusCode::OK, "ok", None),
            };
        }
        let success_text = rule.answer_body(&input);

        let state = mapping::new_state(rule, &input, outcome);
        let mut stored_query = if query_had_token {
            request::redact_query(&query, is_secret)
        } else {
            query
        };
        if !body_params.is_empty() {
            if !stored_query.is_empty() {
                stored_query.push('&');
            }
            stored_query.push_str(&request::encode_pairs(&body_params));
        }
        if !body_secrets.is_empty() {
            // The record shows that a token or signature came in the body, never its value.
            let redacted: Vec<(String, String)> = body_secrets
                .into_iter()
                .map(|n| (n, "***".to_string()))
                .collect();
            if !stored_query.is_empty() {
                stored_query.push('&');
            }
            stored_query.push_str(&request::encode_pairs(&redacted));
        }
        // Which stored pairs were JSON numbers, so that a replay reads them as such (a
        // sender's own pair of that name, last in its query, is kept by an empty marker).
        let ends_with_marker = stored_query.contains("json_numbers")
            && crate::rules::decode_form(stored_query.as_bytes())
                .last()
                .is_some_and(|(n, _)| n == crate::rules::JSON_NUMBERS_PARAM);
        if !body_numbers.is_empty() || ends_with_marker {
            let positions: Vec<String> = body_numbers
                .iter()
                .map(|i| (i + query_pairs).to_string())
                .collect();
            if !stored_query.is_empty() {
                stored_query.push('&');
            }
            stored_query.push_str(&request::encode_pairs(&[(
                crate::rules::JSON_NUMBERS_PARAM.to_string(),
                positions.join(","),
            )]));
        }
        let raw = RawPostback {
            method: method.to_string(),
            path: path.clone(),
            query: stored_query,
            client_ip: Some(ip_text.clone()),
            user_agent,
            referer,
            received_at,
        };
        let mut answer = self.store_record(rule, raw, state).await;
        // `[answer]`: the body a sender expects on success, and 200 for a reject.
        if answer.code == StatusCode::OK
            && matches!(answer.status, "accepted" | "duplicate" | "update" | "stale")
        {
            answer.text = success_text;
        }
        if answer.status == "rejected" && answer.id.is_some() {
            answer.code = reject_code;
        }
        answer
    }

    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Answer> {
        if req.method() != Method::POST {
            return Ok(Bytes::new());
        }
        let max = self.limits.max_body_bytes;
        let too_large = || {
            Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                Some(format!("body over {max} bytes (server.max_body_bytes)")),
            )
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let collect = Limited::new(req.into_body(), max).collect();
        let Ok(collected) = tokio::time::timeout(self.limits.read_timeout, collect).await else {
            return Err(Answer::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                Some(format!(
                    "the body did not arrive within {:?} (server.read_timeout)",
                    self.limits.read_timeout
                )),
            ));
        };
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(_) => Err(Answer::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some("the request body could not be read".to_string()),
            )),
        }
    }

    async fn store_record(&self, rule: &Rule, raw: RawPostback, state: NewState) -> Answer {
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
                metrics::postback(&source, PostbackOutcome::Rejected);
                tracing::info!(
                    source,
                    id,
                    repeats,
                    outcome = "rejected",
                    "postback: a repeat of a stored reject, counted on it"
                );
                return Answer::stored("rejected", id, Some(reason));
            }
            Err(e) => {
                metrics::postback(&source, PostbackOutcome::Unavailable);
                tracing::error!(source, error = %e, "postback not stored; answering 503");
                return Answer::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    Some("the postback could not be stored; retry later".to_string()),
                );
            }
        };
        metrics::postback(&source, label);
        tracing::info!(
            source,
            id,
            original,
            click_id = click_id.as_deref(),
            outcome = label.as_str(),
            reason = reason.as_deref(),
            "postback"
        );
        match original {
            Some(original) => Answer::of_conversion(label.as_str(), id, original, reason),
            None => Answer::stored(label.as_str(), id, reason),
        }
    }
}

fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}
