//! The operator console: server-rendered HTML pages on the admin listener, at `/` and under
//! `/console/`, beside the JSON API (which keeps its Bearer token and is unchanged).
//!
//! - sign-in with the admin token ([`signin`]) starts a server-side session ([`session`]):
//!   an `HttpOnly; SameSite=Strict` cookie holding a random id, and a CSRF token that every
//!   POST must carry (403 without it);
//! - one view module per page: [`overview`], [`records`] (list and record page, replay,
//!   "send now" for a retrying record),
//!   [`sources`] (rules, pause and resume), [`explain`] ("try a postback", with the outcome
//!   the stored conversions give it), [`problems`] (rejected and dead records grouped by
//!   reason, group replay after a confirm page);
//! - the pages are askama templates (`templates/console/`, checked at compile time) sharing
//!   one layout ([`layout`]); every value is escaped by the template engine; no script, no
//!   external asset: one inline stylesheet allowed by its hash in a strict
//!   Content-Security-Policy.

mod explain;
mod layout;
mod overview;
mod problems;
mod records;
pub mod session;
mod signin;
mod sources;

use askama::Template;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use subtle::ConstantTimeEq;

use crate::admin::Admin;
use crate::store::StoreError;
use session::Session;
pub use session::Sessions;

type Answer = Response<Full<Bytes>>;

/// Why a console request failed; each is shown as an error page with one status code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the store is unavailable; try again")]
    Store(#[from] StoreError),
}

impl From<crate::admin::view::BadParam> for ConsoleError {
    fn from(e: crate::admin::view::BadParam) -> Self {
        ConsoleError::BadRequest(e.to_string())
    }
}

impl From<crate::replay::ReplayError> for ConsoleError {
    fn from(e: crate::replay::ReplayError) -> Self {
        match e {
            crate::replay::ReplayError::State(_) => ConsoleError::BadRequest(e.to_string()),
            crate::replay::ReplayError::Store(s) => ConsoleError::Store(s),
        }
    }
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One signed-in request.
pub(crate) struct Ctx<'a> {
    pub admin: &'a Admin,
    pub session_id: String,
    pub session: Session,
    pub now: Timestamp,
}

impl Ctx<'_> {
    /// Leaves a message for the next page of this session.
    pub fn flash(&self, message: String) {
        self.admin.sessions.flash(&self.session_id, message);
    }
}

/// Answers a console request (any path the JSON API and the probes do not take).
pub async fn handle(admin: &Admin, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let cookies = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();

    // Browsers ask for it on their own; it must not lead to the sign-in form.
    if path == "/favicon.ico" {
        return error_page(None, &ConsoleError::NotFound("no icon".into()));
    }
    if path == "/console/signin" {
        return match method {
            Method::GET => signin::form(admin, &cookies, None),
            Method::POST => match crate::admin::read_body(req, admin.read_timeout).await {
                Ok(body) => signin::submit(admin, &cookies, &body),
                Err(_) => error_page(None, &ConsoleError::BadRequest("unreadable form".into())),
            },
            _ => method_not_allowed("GET, POST"),
        };
    }

    let session = session::cookie(&cookies, session::COOKIE)
        .and_then(|id| admin.sessions.get(id).map(|s| (id.to_string(), s)));
    let Some((session_id, session)) = session else {
        return match method {
            Method::GET | Method::HEAD => redirect("/console/signin", &[]),
            _ => error_page(
                None,
                &ConsoleError::Forbidden("not signed in: sign in again and repeat the action"),
            ),
        };
    };
    let ctx = Ctx {
        admin,
        session_id,
        session,
        now: Timestamp::now(),
    };

    let result = match method {
        Method::GET | Method::HEAD => get(&ctx, &path, &query).await,
        Method::POST => {
            let form = match crate::admin::read_body(req, admin.read_timeout).await {
                Ok(body) => crate::rules::decode_form(&body),
                Err(_) => {
                    return error_page(
                        Some(&ctx),
                        &ConsoleError::BadRequest("the form could not be read".into()),
                    );
                }
            };
            let given = field(&form, "csrf").unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(ctx.session.csrf.as_bytes())) {
                tracing::warn!(
                    path,
                    "console: a POST without a valid CSRF token was refused"
                );
                return error_page(
                    Some(&ctx),
                    &ConsoleError::Forbidden(
                        "this form is stale or did not come from the console (CSRF token missing or wrong): reload the page and try again",
                    ),
                );
            }
            post(&ctx, &path, &form).await
        }
        _ => return method_not_allowed("GET, POST"),
    };
    result.unwrap_or_else(|e| {
        if let ConsoleError::Store(s) = &e {
            tracing::error!(%method, path, error = %s, "console request failed in the store");
        }
        error_page(Some(&ctx), &e)
    })
}

async fn get(ctx: &Ctx<'_>, path: &str, query: &str) -> Result<Answer, ConsoleError> {
    let segments: Vec<&str> = path
        .strip_prefix("/console")
        .unwrap_or(path)
        .trim_matches('/')
        .split('/')
        .collect();
    if path == "/" {
        return overview::page(ctx).await;
    }
    if !path.starts_with("/console") {
        return Err(not_found(path));
    }
    match segments.as_slice() {
        [""] => Ok(redirect("/", &[])),
        ["records"] => records::list(ctx, query).await,
        ["records", id] => records::page(ctx, id).await,
        ["sources"] => sources::page(ctx).await,
        ["sources", source, "try"] => explain::try_page(ctx, source, query).await,
        ["problems"] => problems::page(ctx).await,
        ["problems", "replay"] => problems::confirm(ctx, query).await,
        _ => Err(not_found(path)),
    }
}

async fn post(
    ctx: &Ctx<'_>,
    path: &str,
    form: &[(String, String)],
) -> Result<Answer, ConsoleError> {
    let segments: Vec<&str> = path
        .strip_prefix("/console/")
        .unwrap_or("")
        .split('/')
        .collect();
    match segments.as_slice() {
        ["signout"] => Ok(signin::signout(ctx)),
        ["records", id, "replay"] => records::replay(ctx, id).await,
        ["records", id, "send"] => records::send_now(ctx, id).await,
        ["sources", "pause"] => sources::pause(ctx, form, true).await,
        ["sources", "resume"] => sources::pause(ctx, form, false).await,
        ["problems", "replay"] => problems::replay(ctx, form).await,
        _ => Err(not_found(path)),
    }
}

fn not_found(path: &str) -> ConsoleError {
    ConsoleError::NotFound(format!("there is no console page at {path}"))
}

/// The first value of form or query field `name`.
pub(crate) fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The headers every console answer carries.
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(layout::csp()).unwrap_or(HeaderValue::from_static(
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
        )),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Renders `page` with `status` (and `Set-Cookie` lines).
pub(crate) fn html(status: StatusCode, page: &impl Template, cookies: &[String]) -> Answer {
    let body = page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "console: a template failed to render");
        "<!doctype html><title>error</title><p>This page could not be rendered.</p>".into()
    });
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `303 See Other` to `location` (a path of this console).
pub(crate) fn redirect(location: &str, cookies: &[String]) -> Answer {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    secure(h);
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

fn method_not_allowed(allow: &'static str) -> Answer {
    let mut resp = error_page(
        None,
        &ConsoleError::BadRequest(format!("this page answers {allow} only")),
    );
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The error page (with the navigation when signed in).
fn error_page(ctx: Option<&Ctx<'_>>, e: &ConsoleError) -> Answer {
    let page = layout::ErrorPage {
        page: match ctx {
            Some(ctx) => layout::Page::new(ctx, "Problem", ""),
            None => layout::Page::signed_out("Problem"),
        },
        status: e.status().as_u16(),
        message: e.to_string(),
    };
    html(e.status(), &page, &[])
}
