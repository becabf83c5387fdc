//! Sources: each rule file's description, auth summary, dedupe, updates and forwarding
//! limits, and its pause state with pause and resume buttons (refused for a source that is
//! not known, as the JSON API does). Its "try a postback" box leads to [`super::explain`].

use askama::Template;
use hyper::StatusCode;

use super::layout::{Page, when};
use super::{Answer, ConsoleError, Ctx, field, html, redirect};
use crate::admin::view;
use crate::rules::Rule;
use crate::store::{PauseReason, PauseScope, Paused};

struct PauseLine {
    reason: &'static str,
    since: String,
}

fn pause_lines(pauses: &[Paused], scope: &PauseScope) -> Vec<PauseLine> {
    pauses
        .iter()
        .filter(|p| &p.scope == scope)
        .map(|p| PauseLine {
            reason: match p.reason {
                PauseReason::Operator => "paused by an operator",
                PauseReason::UpstreamAuth => "paused: Scaleo refused the API key (401/403)",
                PauseReason::MissingRule => "paused: its rule file was missing",
                PauseReason::Outage => "held: Scaleo is not answering (outage mode)",
            },
            since: when(p.since),
        })
        .collect()
}

struct SourceBox {
    source: String,
    description: String,
    token: String,
    allow: String,
    dedupe: String,
    updates: String,
    rate: String,
    target: String,
    silent_after: String,
    pauses: Vec<PauseLine>,
}

fn source_box(rule: &Rule, pauses: &[Paused]) -> SourceBox {
    let f = &rule.forward;
    let rate = match (f.rate_per_second, f.burst) {
        (None, None) => "the global [forward] rate".to_string(),
        (r, b) => format!(
            "{} per second, burst {}",
            r.map_or("global".into(), |r| r.to_string()),
            b.map_or("global".into(), |b| b.to_string())
        ),
    };
    let target = match (&f.base_url, &f.api_key) {
        (None, None) => "the global [scaleo] network".to_string(),
        (url, key) => format!(
            "{}{}",
            url.as_deref().unwrap_or("the global base_url"),
            if key.is_some() {
                " with its own API key"
            } else {
                " with the global API key"
            }
        ),
    };
    let dedupe = if rule.dedupe.fields.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} for {}",
            rule.dedupe.fields.join(" + "),
            super::layout::age(rule.dedupe.window)
        )
    };
    let updates = match (&rule.updates.only, rule.updates.enabled) {
        (Some(_), _) => "only changes conversions of another source".to_string(),
        (None, true) => "later postbacks of a conversion update it".to_string(),
        (None, false) => "a repeat of a conversion is a duplicate".to_string(),
    };
    SourceBox {
        source: rule.source.clone(),
        description: rule.description.clone().unwrap_or_default(),
        token: match &rule.auth.token {
            Some(_) => format!("required (parameter {}, value set)", rule.auth.token_param),
            None => "none: anyone who knows the URL can post".to_string(),
        },
        allow: if rule.auth.allow_ips.is_empty() {
            "any caller".to_string()
        } else {
            rule.auth
                .allow_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        dedupe,
        updates,
        rate,
        target,
        silent_after: match rule.alerts.silent_after {
            Some(d) => format!("warn when no postback comes for {}", super::layout::age(d)),
            None => "not set ([alerts] silent_after)".to_string(),
        },
        pauses: pause_lines(pauses, &PauseScope::Source(rule.source.clone())),
    }
}

#[derive(Template)]
#[template(path = "console/sources.html")]
struct SourcesPage {
    page: Page,
    all_pauses: Vec<PauseLine>,
    sources: Vec<SourceBox>,
}

/// `GET /console/sources`.
pub(super) async fn page(ctx: &Ctx<'_>) -> Result<Answer, ConsoleError> {
    let pauses = ctx.admin.store.paused().await?;
    let rules = ctx.admin.replayer.rules.current();
    let page = SourcesPage {
        page: Page::new(ctx, "Sources", "sources"),
        all_pauses: pause_lines(&pauses, &PauseScope::All),
        sources: rules.iter().map(|r| source_box(r, &pauses)).collect(),
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

/// `POST /console/sources/pause|resume` with `source` (empty: all forwarding).
pub(super) async fn pause(
    ctx: &Ctx<'_>,
    form: &[(String, String)],
    pause: bool,
) -> Result<Answer, ConsoleError> {
    let source = field(form, "source").filter(|s| !s.is_empty());
    let scope = view::pause_scope(source)?;
    if let PauseScope::Source(s) = &scope {
        ctx.admin.known_source(s).await??;
    }
    let what = match &scope {
        PauseScope::All => "all forwarding".to_string(),
        PauseScope::Source(s) => format!("forwarding of {s}"),
    };
    if pause {
        ctx.admin
            .store
            .pause(scope.clone(), PauseReason::Operator)
            .await?;
        tracing::warn!(scope = %scope, "forwarding paused by an operator (console)");
        ctx.flash(format!(
            "Paused {what}: postbacks are still accepted and stored."
        ));
    } else {
        let removed = ctx.admin.store.resume(scope.clone()).await?;
        tracing::warn!(scope = %scope, removed, "forwarding resumed by an operator (console)");
        ctx.flash(format!("Resumed {what} ({removed} pause(s) lifted)."));
    }
    Ok(redirect("/console/sources", &[]))
}
