//! The HTTP side of the sandbox: accept loop, routing, body limits, answers and call logs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Received;
use super::query::{api_key, redact_query};
use super::state::{Accepted, DEFAULT_CONV_STATUS, Duplicate, State, shutdown_raised};
use super::step::Step;
use super::validate::{self, Rejection};
use crate::scaleo::envelope;

/// The Scaleo endpoints the sandbox implements.
type Endpoint = crate::scaleo::Call;

/// The hyper method of an endpoint.
fn method_of(endpoint: Endpoint) -> Method {
    match endpoint {
        Endpoint::Create => Method::POST,
        Endpoint::Update => Method::PUT,
    }
}

/// Request bodies above this size are answered 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Why a request gets no answer at all: hyper then closes the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Abort {
    /// A scripted [`Step::Drop`].
    #[error("scripted connection drop")]
    Scripted,
    /// The client went away (or broke the framing) while sending its body.
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
}

/// What the sandbox says to one call.
#[derive(Debug)]
enum Outcome {
    Reply(Reply),
    Drop,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    headers: Vec<(hyper::header::HeaderName, String)>,
    /// Waited before the answer is sent (scripted hangs).
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    fn error(status: u16, message: &str, info: Value) -> Reply {
        Reply::json(status, &envelope::error(status, message, info))
    }

    fn standard_error(status: u16) -> Reply {
        Reply::error(status, envelope::default_message(status), json!({}))
    }
}

/// One recorded call as read from the wire, before it is answered.
struct Call {
    at: Timestamp,
    method: Method,
    path: String,
    query: String,
    content_type: Option<String>,
    /// `None` when the body was over [`MAX_BODY_BYTES`].
    raw: Option<Bytes>,
}

/// How long the sandbox waits for a request's head (a generous bound: it is not under load).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves connections with the shared accept loop until the shutdown flag is raised; open
/// connections are closed then (no grace: a scripted hang does not hold a test up).
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let shutdown = CancellationToken::new();
    let signal = state.shutdown_signal();
    let raised = shutdown.clone();
    tokio::spawn(async move {
        shutdown_raised(signal).await;
        raised.cancel();
    });
    let handler = move |req, _peer| handle(Arc::clone(&state), req);
    crate::listener::serve_fallible(
        "sandbox",
        listener,
        crate::listener::http1(HEADER_READ_TIMEOUT),
        handler,
        shutdown,
        Duration::ZERO,
        None,
    )
    .await;
    tracing::info!("sandbox stopped");
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Abort> {
    match req.uri().path() {
        "/healthz" => Ok(health(req.method())),
        "/sandbox/conversions" => Ok(listing(&state, req.method())),
        _ => api_call(&state, req).await,
    }
}

fn health(method: &Method) -> Response<Full<Bytes>> {
    match *method {
        Method::GET | Method::HEAD => build(&Reply::json(200, &json!({"status": "ok"}))),
        _ => build(&allow_get()),
    }
}

fn listing(state: &State, method: &Method) -> Response<Full<Bytes>> {
    if *method != Method::GET && *method != Method::HEAD {
        return build(&allow_get());
    }
    let entries: Vec<Value> = state
        .accepted()
        .iter()
        .map(|accepted| accepted.listing_entry())
        .collect();
    build(&Reply::json(200, &Value::Array(entries)))
}

fn allow_get() -> Reply {
    let mut reply = Reply::error(405, "Method Not Allowed.", json!({}));
    reply.headers.push((ALLOW, "GET, HEAD".into()));
    reply
}

/// A call to the Scaleo side (one of its endpoints or any unknown path): decided,
/// recorded, logged, then answered.
async fn api_call(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Abort> {
    let call = read_call(req).await?;
    let outcome = decide(state, &call);
    let status = match &outcome {
        Outcome::Reply(reply) => reply.status,
        Outcome::Drop => 0,
    };
    log_and_record(state, call, status);
    match outcome {
        Outcome::Drop => Err(Abort::Scripted),
        Outcome::Reply(reply) => {
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            Ok(build(&reply))
        }
    }
}

async fn read_call(req: Request<Incoming>) -> Result<Call, Abort> {
    let at = Timestamp::now();
    let (parts, body) = req.into_parts();
    let declared_too_large = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > MAX_BODY_BYTES as u64);
    let raw = if declared_too_large {
        None
    } else {
        read_capped(body).await?
    };
    Ok(Call {
        at,
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: parts
            .headers
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
        raw,
    })
}

/// The whole body, or `None` when it grows past [`MAX_BODY_BYTES`].
async fn read_capped(body: Incoming) -> Result<Option<Bytes>, Abort> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Ok(None),
        Err(err) => Err(Abort::BodyRead(err.to_string())),
    }
}

/// The Scaleo emulation: limits, then the script, then method, key, body and the
/// endpoint's own checks (duplicates for a create, the `lead_id` for an update).
fn decide(state: &State, call: &Call) -> Outcome {
    let Some(endpoint) = Endpoint::of_path(&call.path) else {
        return Outcome::Reply(Reply::standard_error(404));
    };
    let Some(raw) = &call.raw else {
        return Outcome::Reply(Reply::standard_error(413));
    };
    if let Some(step) = state.next_step() {
        return scripted(state, endpoint, step, raw);
    }
    let allowed = method_of(endpoint);
    if call.method != allowed {
        let message = format!(
            "Method Not Allowed. This URL can only handle the following request methods: {allowed}."
        );
        let mut reply = Reply::error(405, &message, json!({}));
        reply.headers.push((ALLOW, allowed.to_string()));
        return Outcome::Reply(reply);
    }
    if api_key(&call.query).as_deref() != Some(state.api_key.as_str()) {
        return Outcome::Reply(Reply::standard_error(401));
    }
    if !is_json_content_type(call.content_type.as_deref()) {
        let message = "bad JSON: Content-Type must be application/json";
        return Outcome::Reply(Reply::error(400, message, json!({})));
    }
    Outcome::Reply(match endpoint {
        Endpoint::Create => convert(state, raw),
        Endpoint::Update => update(state, raw),
    })
}

/// Validates and accepts a conversion body.
fn convert(state: &State, raw: &[u8]) -> Reply {
    let conversion = match validate::validate(raw) {
        Ok(conversion) => conversion,
        Err(rejection) => return rejected(&rejection),
    };
    let body = Value::Object(conversion.body);
    match state.try_accept(&body, conversion.key) {
        Ok(accepted) => success(&accepted, &body),
        Err(Duplicate) => multiple_conversions(),
    }
}

/// Validates an update body and applies it to the conversion its `lead_id` names.
fn update(state: &State, raw: &[u8]) -> Reply {
    let update = match validate::validate_update(raw) {
        Ok(update) => update,
        Err(rejection) => return rejected(&rejection),
    };
    let body = Value::Object(update.body);
    match state.try_update(&update.lead_id, &body) {
        Some(conversion) => updated(&conversion),
        None => {
            let message = format!(
                "Lead not found: no conversion has lead_id \"{}\".",
                update.lead_id
            );
            Reply::error(404, &message, json!({"lead_id": update.lead_id}))
        }
    }
}

/// The success answer of an update: the conversion's ids and its status after the change.
fn updated(conversion: &Accepted) -> Reply {
    let info = json!({
        "status": "success",
        "message": "conversion updated",
        "lead_id": conversion.lead_id,
        "transaction_id": conversion.transaction_id,
        "conv_status": conversion.conv_status(),
    });
    Reply::json(200, &envelope::success(info))
}

fn rejected(rejection: &Rejection) -> Reply {
    let info = match rejection {
        Rejection::BadJson(detail) => json!({"detail": detail}),
        Rejection::UnknownParameters(names) => json!({"unknown_parameters": names}),
        Rejection::Invalid(errors) => json!({"errors": errors}),
    };
    Reply::error(rejection.status(), &rejection.to_string(), info)
}

fn multiple_conversions() -> Reply {
    let info = json!({"status": "error", "message": envelope::MULTIPLE_CONVERSIONS});
    Reply::error(400, envelope::MULTIPLE_CONVERSIONS, info)
}

fn success(accepted: &Accepted, body: &Value) -> Reply {
    let mut info = json!({
        "status": "success",
        "message": "conversion created",
        "lead_id": accepted.lead_id,
        "transaction_id": accepted.transaction_id,
        "conv_status": body
            .get("conv_status")
            .cloned()
            .unwrap_or_else(|| json!(DEFAULT_CONV_STATUS)),
        "affiliate_id": 1,
        "offer_id": 1,
        "goal_id": body.get("goal_id").cloned().unwrap_or_else(|| json!(1)),
        "additional": [],
    });
    if let Some(alias) = body.get("goal_alias") {
        info["goal_alias"] = alias.clone();
    }
    Reply::json(200, &envelope::success(info))
}

/// The answer of a scripted step; success steps record the conversion (create) or the
/// change (update) as accepted.
fn scripted(state: &State, endpoint: Endpoint, step: Step, raw: &[u8]) -> Outcome {
    let reply = match step {
        Step::Answer {
            status,
            body,
            retry_after,
        } => Reply {
            status: final_status(status),
            body,
            headers: retry_after
                .map(|value| (RETRY_AFTER, value))
                .into_iter()
                .collect(),
            delay: Duration::ZERO,
        },
        Step::Success => accept_anything(state, endpoint, raw),
        Step::Hang(delay) => Reply {
            delay,
            ..accept_anything(state, endpoint, raw)
        },
        Step::MultipleConversions => multiple_conversions(),
        Step::Unauthorized => Reply::standard_error(401),
        Step::Forbidden => Reply::standard_error(403),
        Step::Drop => return Outcome::Drop,
    };
    Outcome::Reply(reply)
}

fn accept_anything(state: &State, endpoint: Endpoint, raw: &[u8]) -> Reply {
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    match endpoint {
        Endpoint::Create => {
            let key = body.as_object().and_then(validate::duplicate_key);
            success(&state.force_accept(&body, key), &body)
        }
        Endpoint::Update => {
            let lead_id = body.get("lead_id").and_then(validate::lead_id_text);
            match state.force_update(lead_id.as_deref(), &body) {
                Some(conversion) => updated(&conversion),
                // No such conversion: success all the same, with what was sent.
                None => {
                    let info = json!({
                        "status": "success",
                        "message": "conversion updated",
                        "lead_id": body.get("lead_id").cloned().unwrap_or(Value::Null),
                        "transaction_id": Value::Null,
                        "conv_status": body.get("conv_status").cloned().unwrap_or(Value::Null),
                    });
                    Reply::json(200, &envelope::success(info))
                }
            }
        }
    }
}

fn is_json_content_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn log_and_record(state: &State, call: Call, status: u16) {
    let raw_body = call
        .raw
        .as_deref()
        .map(|raw| String::from_utf8_lossy(raw).into_owned())
        .unwrap_or_default();
    let query_redacted = redact_query(&call.query);
    let ids = ids_of(call.raw.as_deref().unwrap_or_default());
    // Bodies carry lead data (email, phone): only their size and ids are logged.
    tracing::info!(
        method = %call.method,
        path = %call.path,
        query = %query_redacted,
        status,
        click_id = ids.click_id.as_deref().unwrap_or_default(),
        lead_id = ids.lead_id.as_deref().unwrap_or_default(),
        body_bytes = raw_body.len(),
        "sandbox call"
    );
    state.record(Received {
        at: call.at,
        method: call.method.to_string(),
        path: call.path,
        query_redacted,
        body: None,
        raw_body,
        status,
    });
}

/// The ids of a call, for the log line.
#[derive(Default)]
struct Ids {
    click_id: Option<String>,
    lead_id: Option<String>,
}

/// The `click_id` (a string) and `lead_id` (a string or number) of a JSON object body.
fn ids_of(raw: &[u8]) -> Ids {
    #[derive(serde::Deserialize)]
    struct Raw {
        click_id: Option<Value>,
        lead_id: Option<Value>,
    }
    let Ok(ids) = serde_json::from_slice::<Raw>(raw) else {
        return Ids::default();
    };
    Ids {
        click_id: ids.click_id.and_then(|id| id.as_str().map(str::to_owned)),
        lead_id: ids.lead_id.as_ref().and_then(validate::lead_id_text),
    }
}

/// A scripted status that can end an HTTP/1.1 exchange: 200..=999, else 500.
fn final_status(status: u16) -> u16 {
    if (200..=999).contains(&status) {
        status
    } else {
        500
    }
}

/// Builds the HTTP response.
fn build(reply: &Reply) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if serde_json::from_str::<serde::de::IgnoredAny>(&reply.body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.body.clone())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    for (name, value) in &reply.headers {
        // A scripted header value that is not valid in HTTP is left out, not a panic.
        if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
            headers.append(name.clone(), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_json_content_types_only() {
        assert!(is_json_content_type(Some(
            "application/json; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("Application/JSON")));
        assert!(!is_json_content_type(Some("text/plain")));
        assert!(!is_json_content_type(None));
    }
}
