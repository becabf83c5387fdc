//! The admin HTTP API, on its own listener (default `127.0.0.1:9091`): records, replay,
//! pause/resume and explain under `/admin/` (each behind `Authorization: Bearer
//! {admin.token}`), plus `/healthz`, `/readyz` and `/metrics` without a token.
//!
//! Every other path belongs to the operator [`console`](crate::console) (HTML, its own
//! sign-in and session).
//!
//! JSON in and out; times RFC 3339. Errors answer `{"error": code, "reason": text}` with a
//! few fixed status codes; a store failure is logged and answered 503 without internals.

pub mod health;
pub mod server;
pub mod view;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::metrics;
use crate::replay::{ReplayError, Replayer, Selection};
use crate::store::{PauseReason, Store, StoreError};
use health::Probes;
use view::BadParam;

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Most distinct record ids one `POST /admin/replay` takes (repeated ids count once).
pub const MAX_REPLAY_IDS: usize = 10_000;

/// Why an admin request failed; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    BadParam(#[from] BadParam),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allow}")]
    Method {
        method: Method,
        path: String,
        allow: &'static str,
    },
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the request body did not arrive within {0:?} (server.read_timeout)")]
    BodyTimeout(std::time::Duration),
    #[error("the store is unavailable; try again")]
    Store(#[from] StoreError),
}

impl AdminError {
    fn code(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::BadParam(_) | AdminError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::Method { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AdminError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            AdminError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            AdminError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl From<ReplayError> for AdminError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::State(_) => AdminError::BadRequest(e.to_string()),
            ReplayError::Store(s) => AdminError::Store(s),
        }
    }
}

/// Everything the admin handlers need.
pub struct Admin {
    /// `admin.token`; `None` refuses every `/admin/` path.
    pub token: Option<String>,
    pub store: Store,
    pub replayer: Replayer,
    pub probes: Probes,
    /// The console's signed-in sessions.
    pub sessions: crate::console::Sessions,
    /// `server.read_timeout`: the longest a request body may take to arrive.
    pub read_timeout: std::time::Duration,
}

type Answer = Response<Full<Bytes>>;

impl Admin {
    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let result = match path.as_str() {
            "/healthz" => Ok(json_answer(StatusCode::OK, &json!({"status": "ok"}))),
            "/readyz" => Ok(self.readyz().await),
            "/metrics" => Ok(self.metrics().await),
            p if p == "/admin" || p.starts_with("/admin/") => match self.authorize(&req) {
                Ok(()) => self.route(req).await,
                Err(e) => Err(e),
            },
            _ => return crate::console::handle(self, req).await,
        };
        result.unwrap_or_else(|e| {
            if let AdminError::Store(s) = &e {
                tracing::error!(%method, path, error = %s, "admin request failed in the store");
            }
            error_answer(&e)
        })
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), AdminError> {
        let Some(expected) = &self.token else {
            return Err(AdminError::Unauthorized(
                "admin.token is not set in the service config: the admin API is disabled until it is",
            ));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        match given {
            None => Err(AdminError::Unauthorized(
                "missing header Authorization: Bearer {admin.token}",
            )),
            Some(t) if bool::from(t.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
            Some(_) => Err(AdminError::Unauthorized("wrong admin token")),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Answer, AdminError> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let query = req.uri().query().unwrap_or("").to_string();
        let rest = path.strip_prefix("/admin/").unwrap_or("");
        let segments: Vec<&str> = rest.split('/').collect();
        let only = |allow: Method, allow_text: &'static str| {
            if method == allow {
                Ok(())
            } else {
                Err(AdminError::Method {
                    method: method.clone(),
                    path: path.clone(),
                    allow: allow_text,
                })
            }
        };
        match segments.as_slice() {
            ["records"] => {
                only(Method::GET, "GET")?;
                self.records(&query).await
            }
            ["records", id] => {
                only(Method::GET, "GET")?;
                self.record(id).await
            }
            ["replay"] => {
                only(Method::POST, "POST")?;
                let body = read_body(req, self.read_timeout).await?;
                self.replay(&body).await
            }
            ["pause"] => {
                only(Method::POST, "POST")?;
                let body = read_body(req, self.read_timeout).await?;
                self.pause(&body, true).await
            }
            ["resume"] => {
                only(Method::POST, "POST")?;
                let body = read_body(req, self.read_timeout).await?;
                self.pause(&body, false).await
            }
            ["explain", source] => {
                only(Method::GET, "GET")?;
                self.explain(source, &query).await
            }
            _ => Err(AdminError::NotFound(format!(
                "no admin endpoint {path:?}; see /admin/records, /admin/records/{{id}}, /admin/replay, /admin/pause, /admin/resume, /admin/explain/{{source}}"
            ))),
        }
    }

    async fn records(&self, query: &str) -> Result<Answer, AdminError> {
        let q = view::list_query(&crate::rules::decode_form(query.as_bytes()))?;
        let (page, next) = self.store.list(q.filter, q.limit, q.cursor).await?;
        Ok(json_answer(
            StatusCode::OK,
            &view::ListJson::new(&page, next),
        ))
    }

    async fn record(&self, id: &str) -> Result<Answer, AdminError> {
        let id = view::record_id("id", id)?;
        match self.store.get(id).await? {
            Some(rec) => Ok(json_answer(StatusCode::OK, &view::RecordJson::from(&rec))),
            None => Err(AdminError::NotFound(format!("no record {id}"))),
        }
    }

    async fn replay(&self, body: &[u8]) -> Result<Answer, AdminError> {
        let selection = replay_selection(body)?;
        let report = self.replayer.run(selection).await?;
        tracing::info!(
            queued = report.queued,
            duplicate = report.duplicate,
            rejected = report.rejected,
            skipped = report.skipped,
            not_replayed = report.not_replayed,
            "admin replay"
        );
        Ok(json_answer(StatusCode::OK, &report))
    }

    async fn pause(&self, body: &[u8], pause: bool) -> Result<Answer, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ScopeBody {
            source: Option<String>,
        }
        let parsed: ScopeBody = if body.iter().all(u8::is_ascii_whitespace) {
            ScopeBody { source: None }
        } else {
            serde_json::from_slice(body).map_err(|e| {
                AdminError::BadRequest(format!(
                    "body: {e}; expected nothing or {{\"source\": \"...\"}}"
                ))
            })?
        };
        let scope = view::pause_scope(parsed.source.as_deref())?;
        if let crate::store::PauseScope::Source(s) = &scope {
            self.known_source(s).await??;
        }
        let scope_text = view::scope_name(&scope);
        let answer = if pause {
            self.store.pause(scope, PauseReason::Operator).await?;
            tracing::warn!(scope = scope_text, "forwarding paused by an operator");
            json!({"paused": scope_text})
        } else {
            let removed = self.store.resume(scope).await?;
            tracing::warn!(
                scope = scope_text,
                removed,
                "forwarding resumed by an operator"
            );
            json!({"resumed": scope_text, "removed": removed})
        };
        let pauses: Vec<view::PauseJson> = self
            .store
            .paused()
            .await?
            .iter()
            .map(view::PauseJson::from)
            .collect();
        let mut answer = answer;
        answer["pauses"] = serde_json::to_value(pauses).unwrap_or(Value::Null);
        Ok(json_answer(StatusCode::OK, &answer))
    }

    /// A pause or resume names a source with a rule file, stored records or a pause (a typo
    /// must not store a pause that holds nothing): the outer error is the store's.
    pub(crate) async fn known_source(
        &self,
        source: &str,
    ) -> Result<Result<(), BadParam>, crate::store::StoreError> {
        let mut known: std::collections::BTreeSet<String> = self
            .replayer
            .rules
            .current()
            .iter()
            .map(|r| r.source.clone())
            .collect();
        known.extend(self.store.pending_sources().await?);
        for p in self.store.paused().await? {
            if let crate::store::PauseScope::Source(s) = p.scope {
                known.insert(s);
            }
        }
        let filter = crate::store::Filter {
            source: Some(source.to_string()),
            ..Default::default()
        };
        if known.contains(source) || !self.store.list(filter, 1, None).await?.0.is_empty() {
            return Ok(Ok(()));
        }
        let known: Vec<String> = known.into_iter().collect();
        Ok(Err(BadParam::new(
            "source",
            source,
            format!(
                "a known source (a rule file, stored records or a pause): {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )))
    }

    async fn explain(&self, source: &str, query: &str) -> Result<Answer, AdminError> {
        let rules = self.replayer.rules.current();
        let Some(rule) = rules.get(source) else {
            let known: Vec<&str> = rules.iter().map(|r| r.source.as_str()).collect();
            return Err(AdminError::NotFound(format!(
                "no rule file for source {source:?} (known: {})",
                known.join(", ")
            )));
        };
        let mut explained = view::explain(rule, query, &self.replayer.zone, Timestamp::now());
        if let Some(state) = explained.state.take() {
            explained.conversion = self.store.preview(state).await?.map(Into::into);
        }
        Ok(json_answer(StatusCode::OK, &explained))
    }

    async fn readyz(&self) -> Answer {
        let r = self.probes.readiness().await;
        let code = if r.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_answer(code, &r)
    }

    async fn metrics(&self) -> Answer {
        let store = &self.store;
        let rules = self.replayer.rules.current();
        let now = Timestamp::now();
        // An empty time range: only each source's last postback is read (one index probe).
        let sources = rules.iter().map(|r| r.source.clone()).collect();
        let (counts, oldest, pauses, activity) = tokio::join!(
            store.counts_by_state(),
            store.oldest_queued(),
            store.paused(),
            store.activity(sources, now, now)
        );
        match activity {
            Ok(list) => {
                let signals: Vec<metrics::SourceSignal> = list
                    .iter()
                    .map(|a| metrics::SourceSignal {
                        source: a.source.clone(),
                        last: a.last.map(|t| t.as_millisecond() as f64 / 1000.0),
                        silent: rules
                            .get(&a.source)
                            .is_some_and(|r| r.alerts.is_silent(a.last, now)),
                    })
                    .collect();
                metrics::set_sources(&signals);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the per-source gauges could not be refreshed");
            }
        }
        match (counts, oldest, pauses) {
            (Ok(counts), Ok(oldest), Ok(pauses)) => {
                let age = oldest.map(|t| Timestamp::now().duration_since(t).as_secs_f64().max(0.0));
                metrics::set_queue(&counts, age, &pauses);
            }
            (c, o, p) => {
                let e = c.err().or(o.err()).or(p.err());
                tracing::warn!(error = ?e.map(|e| e.to_string()), "metrics: the queue gauges could not be refreshed");
            }
        }
        let mut resp = Response::new(Full::new(Bytes::from(metrics::render())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        resp
    }
}

/// Parses a replay body: `{"ids": [...]}` or a filter `{"source", "state", "since", "until"}`.
pub fn replay_selection(body: &[u8]) -> Result<Selection, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReplayBody {
        ids: Option<Vec<i64>>,
        source: Option<String>,
        state: Option<String>,
        since: Option<String>,
        until: Option<String>,
    }
    let b: ReplayBody = serde_json::from_slice(body).map_err(|e| {
        AdminError::BadRequest(format!(
            "body: {e}; expected {{\"ids\": [...]}} or a filter {{\"source\", \"state\", \"since\", \"until\"}}"
        ))
    })?;
    let has_filter =
        b.source.is_some() || b.state.is_some() || b.since.is_some() || b.until.is_some();
    match (b.ids, has_filter) {
        (Some(_), true) => Err(AdminError::BadRequest(
            "give either \"ids\" or a filter (source, state, since, until), not both".into(),
        )),
        (Some(ids), false) if ids.is_empty() => {
            Err(AdminError::BadRequest("\"ids\" is empty".into()))
        }
        (Some(ids), false) => {
            // Each id once, in the order given: repeats would replay nothing new.
            let mut seen = std::collections::HashSet::with_capacity(ids.len().min(MAX_REPLAY_IDS));
            let mut unique = Vec::new();
            for id in ids {
                if seen.insert(id) {
                    if unique.len() == MAX_REPLAY_IDS {
                        return Err(AdminError::BadRequest(format!(
                            "\"ids\" holds more than {MAX_REPLAY_IDS} distinct record ids, the most one replay takes; split the list, or replay by a filter (source, state, since, until)"
                        )));
                    }
                    unique.push(id);
                }
            }
            Ok(Selection::Ids(unique))
        }
        (None, false) => Err(AdminError::BadRequest(
            "give \"ids\" or at least one filter key (source, state, since, until)".into(),
        )),
        (None, true) => {
            let state = b
                .state
                .as_deref()
                .map(|s| view::state("state", s))
                .transpose()?;
            if let Some(s) = state {
                if !matches!(s, crate::store::State::Rejected | crate::store::State::Dead) {
                    return Err(BadParam::new(
                        "state",
                        s.as_str(),
                        "rejected or dead (only those can be replayed)",
                    )
                    .into());
                }
            }
            Ok(Selection::Filter {
                source: b
                    .source
                    .as_deref()
                    .map(|s| view::source_id("source", s))
                    .transpose()?,
                state,
                since: b
                    .since
                    .as_deref()
                    .map(|t| view::time("since", t))
                    .transpose()?,
                until: b
                    .until
                    .as_deref()
                    .map(|t| view::time("until", t))
                    .transpose()?,
            })
        }
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`] within `timeout` (a slow body must
/// not hold a connection and its task open).
pub(crate) async fn read_body(
    req: Request<Incoming>,
    timeout: std::time::Duration,
) -> Result<Bytes, AdminError> {
    let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let Ok(collected) = tokio::time::timeout(timeout, collect).await else {
        return Err(AdminError::BodyTimeout(timeout));
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AdminError::TooLarge),
        Err(_) => Err(AdminError::BadRequest(
            "the request body could not be read".into(),
        )),
    }
}

fn json_answer(code: StatusCode, value: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error_answer(e: &AdminError) -> Answer {
    let (code, name) = e.code();
    let mut resp = json_answer(code, &json!({"error": name, "reason": e.to_string()}));
    match e {
        AdminError::Unauthorized(_) => {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postback-relay admin\""),
            );
        }
        AdminError::Method { allow, .. } => {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        _ => {}
    }
    resp
}
