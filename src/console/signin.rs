//! Sign-in and sign-out: the admin token typed into a form (compared in constant time, as
//! the JSON API compares its Bearer token) starts a session; sign-out ends it.
//!
//! The sign-in form has no session to tie a CSRF token to, so it uses a double-submit
//! token: a random value both in an `HttpOnly; SameSite=Strict` cookie and in the form.

use askama::Template;
use hyper::StatusCode;
use subtle::ConstantTimeEq;

use super::layout::Page;
use super::session::{self, COOKIE, SIGNIN_COOKIE};
use super::{Answer, Ctx, field, html, redirect};
use crate::admin::Admin;

#[derive(Template)]
#[template(path = "console/signin.html")]
struct SignIn {
    page: Page,
    csrf: String,
    error: Option<&'static str>,
    /// `admin.token` is not set: nobody can sign in.
    disabled: bool,
}

/// The sign-in form, with the double-submit token of the browser's sign-in cookie when it
/// has one (another tab, or a stray request, must not invalidate an open form) or a fresh one.
pub(super) fn form(admin: &Admin, cookies: &str, error: Option<&'static str>) -> Answer {
    let token = session::cookie(cookies, SIGNIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| admin.sessions.random_token(), str::to_string);
    let page = SignIn {
        page: Page::signed_out("Sign in"),
        csrf: token.clone(),
        error,
        disabled: admin.token.is_none(),
    };
    let status = match error {
        Some(_) => StatusCode::UNAUTHORIZED,
        None => StatusCode::OK,
    };
    html(
        status,
        &page,
        &[session::set_cookie(
            SIGNIN_COOKIE,
            Some(&token),
            "/console/signin",
        )],
    )
}

/// Checks the form: the double-submit token, then the admin token.
pub(super) fn submit(admin: &Admin, cookies: &str, body: &[u8]) -> Answer {
    let fields = crate::rules::decode_form(body);
    let sent = field(&fields, "csrf").unwrap_or("");
    let kept = session::cookie(cookies, SIGNIN_COOKIE).unwrap_or("");
    if sent.is_empty() || !bool::from(sent.as_bytes().ct_eq(kept.as_bytes())) {
        return form_error(
            admin,
            cookies,
            "this sign-in form is stale or did not come from the console: try again",
            StatusCode::FORBIDDEN,
        );
    }
    let Some(expected) = &admin.token else {
        return form(
            admin,
            cookies,
            Some(
                "admin.token is not set in the service config: the console is disabled until it is",
            ),
        );
    };
    let given = field(&fields, "token").unwrap_or("").trim();
    if given.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        tracing::warn!("console: sign-in with a wrong admin token refused");
        return form(admin, cookies, Some("wrong admin token"));
    }
    let id = admin.sessions.create();
    tracing::info!("console: an operator signed in");
    redirect(
        "/",
        &[
            session::set_cookie(COOKIE, Some(&id), "/"),
            session::set_cookie(SIGNIN_COOKIE, None, "/console/signin"),
        ],
    )
}

fn form_error(admin: &Admin, cookies: &str, message: &'static str, status: StatusCode) -> Answer {
    let mut resp = form(admin, cookies, Some(message));
    *resp.status_mut() = status;
    resp
}

/// Ends the session and goes back to the sign-in form.
pub(super) fn signout(ctx: &Ctx<'_>) -> Answer {
    ctx.admin.sessions.remove(&ctx.session_id);
    redirect("/console/signin", &[session::set_cookie(COOKIE, None, "/")])
}
