//! A scripted stand-in for Scaleo's conv-click-id endpoint on 127.0.0.1:0 (tests only).
//!
//! Each call takes the next reply of the script of its click id (if one was set), else of
//! the shared script, else the default reply. Every call is recorded (time, query, body).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with Scaleo's success envelope and this `info.transaction_id`.
    Success(String),
    /// Any status with a body and an optional `Retry-After`.
    Status {
        code: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// Sleep this long, then answer 200 success (longer than the client timeout = no answer).
    Hang(Duration),
    /// Answer 500 with a body that echoes the request's query (to test redaction).
    EchoQuery,
}

impl Reply {
    /// A status with Scaleo's error envelope and `message`.
    pub fn error(code: u16, message: &str) -> Reply {
        Reply::Status {
            code,
            body: serde_json::json!({"status": "error", "code": code, "name": "Error", "message": message, "info": {}}).to_string(),
            retry_after: None,
        }
    }

    /// 429 with `Retry-After: value`.
    pub fn too_many(value: &str) -> Reply {
        Reply::Status {
            code: 429,
            body: String::new(),
            retry_after: Some(value.into()),
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub query: String,
    pub body: String,
    pub click_id: String,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    by_click: HashMap<String, VecDeque<Reply>>,
    default: Option<Reply>,
    received: Vec<Received>,
}

/// The running mock.
#[derive(Clone)]
pub struct Mock {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Mock {
    /// Starts the mock; unscripted calls get `default`.
    pub async fn start(default: Reply) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Mock { addr, state }
    }

    /// The base URL to put in `scaleo.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends to the shared script.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Appends to the script of one click id.
    pub fn script_for(&self, click_id: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .unwrap()
            .by_click
            .entry(click_id.into())
            .or_default()
            .extend(replies);
    }

    /// Replaces the default reply.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` requests arrived (panics after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "mock got {} of {n} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let click_id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("click_id").and_then(|c| c.as_str()).map(String::from))
        .unwrap_or_default();
    let reply = {
        let mut st = state.lock().unwrap();
        st.received.push(Received {
            at,
            path,
            query: query.clone(),
            body,
            click_id: click_id.clone(),
        });
        let scripted = st.by_click.get_mut(&click_id).and_then(VecDeque::pop_front);
        scripted
            .or_else(|| st.script.pop_front())
            .or_else(|| st.default.clone())
            .unwrap_or(Reply::error(500, "no script"))
    };
    let success = |tx: &str| {
        serde_json::json!({"status": "success", "code": 200, "name": "", "message": "",
            "info": {"status": "success", "message": "Conversion created", "transaction_id": tx}})
        .to_string()
    };
    let (code, body, retry_after) = match reply {
        Reply::Success(tx) => (200, success(&tx), None),
        Reply::Status {
            code,
            body,
            retry_after,
        } => (code, body, retry_after),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            (200, success("late"), None)
        }
        Reply::EchoQuery => (500, format!("internal error handling ?{query}"), None),
    };
    let mut resp = Response::builder()
        .status(code)
        .header("content-type", "application/json");
    if let Some(v) = retry_after {
        resp = resp.header("retry-after", v);
    }
    Ok(resp
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}
