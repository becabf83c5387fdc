//! Problems: rejected and dead records grouped by source and reason, with counts over the
//! newest [`SCAN`] records of each state; a whole group is replayed after a rule fix, with
//! the number of records that would be replayed shown on a confirm page first.

use askama::Template;
use hyper::StatusCode;

use super::layout::Page;
use super::records::report_line;
use super::{Answer, ConsoleError, Ctx, field, html, redirect};
use crate::admin::view;
use crate::replay::Selection;
use crate::store::State;

/// How many of the newest records of each state are grouped.
pub const SCAN: usize = 10_000;

struct Group {
    source: String,
    reason: String,
    count: u64,
    /// The confirm page's query string.
    replay: String,
}

struct Section {
    state: &'static str,
    title: &'static str,
    help: &'static str,
    groups: Vec<Group>,
    total: u64,
}

#[derive(Template)]
#[template(path = "console/problems.html")]
struct ProblemsPage {
    page: Page,
    scan: usize,
    sections: Vec<Section>,
}

fn group_query(state: State, source: &str, reason: &str) -> String {
    serde_urlencoded::to_string([
        ("state", state.as_str()),
        ("source", source),
        ("reason", reason),
    ])
    .unwrap_or_default()
}

/// `GET /console/problems`.
pub(super) async fn page(ctx: &Ctx<'_>) -> Result<Answer, ConsoleError> {
    let mut sections = Vec::new();
    for (state, title, help) in [
        (
            State::Rejected,
            "Rejected",
            "The rule could not map these postbacks. Fix the rule file (try a postback on the Sources page), then replay the group.",
        ),
        (
            State::Dead,
            "Dead",
            "Scaleo refused these or they ran out of retries. Fix the cause (API key, base_url, the rule), then replay the group.",
        ),
    ] {
        let groups = ctx.admin.store.reason_groups(state, SCAN).await?;
        sections.push(Section {
            state: state.as_str(),
            title,
            help,
            total: groups.iter().map(|g| g.count).sum(),
            groups: groups
                .into_iter()
                .map(|g| Group {
                    replay: group_query(state, &g.source, &g.reason),
                    source: g.source,
                    reason: g.reason,
                    count: g.count,
                })
                .collect(),
        });
    }
    let page = ProblemsPage {
        page: Page::new(ctx, "Problems", "problems"),
        scan: SCAN,
        sections,
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

/// The group named by `state`, `source` and `reason` fields.
fn group(pairs: &[(String, String)]) -> Result<(State, String, String), ConsoleError> {
    let state = view::state("state", field(pairs, "state").unwrap_or(""))?;
    if !matches!(state, State::Rejected | State::Dead) {
        return Err(ConsoleError::BadRequest(format!(
            "state {state}: only rejected or dead records can be replayed"
        )));
    }
    let source = view::source_id("source", field(pairs, "source").unwrap_or(""))?;
    let reason = field(pairs, "reason").unwrap_or("").to_string();
    Ok((state, source, reason))
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    page: Page,
    state: &'static str,
    source: String,
    reason: String,
    count: usize,
    scan: usize,
}

/// `GET /console/problems/replay?state=&source=&reason=`: how many would be replayed.
pub(super) async fn confirm(ctx: &Ctx<'_>, query: &str) -> Result<Answer, ConsoleError> {
    let pairs = crate::rules::decode_form(query.as_bytes());
    let (state, source, reason) = group(&pairs)?;
    let ids = ctx
        .admin
        .store
        .reason_ids(state, source.clone(), reason.clone(), SCAN)
        .await?;
    let page = ConfirmPage {
        page: Page::new(ctx, "Replay a group", "problems"),
        state: state.as_str(),
        source,
        reason,
        count: ids.len(),
        scan: SCAN,
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

/// `POST /console/problems/replay`: replays the group.
pub(super) async fn replay(
    ctx: &Ctx<'_>,
    form: &[(String, String)],
) -> Result<Answer, ConsoleError> {
    let (state, source, reason) = group(form)?;
    let ids = ctx
        .admin
        .store
        .reason_ids(state, source.clone(), reason, SCAN)
        .await?;
    if ids.is_empty() {
        ctx.flash("Nothing to replay: the group is empty now.".into());
        return Ok(redirect("/console/problems", &[]));
    }
    let report = ctx.admin.replayer.run(Selection::Ids(ids)).await?;
    tracing::info!(
        source,
        state = state.as_str(),
        queued = report.queued,
        rejected = report.rejected,
        "console: group replayed"
    );
    ctx.flash(report_line(&report));
    Ok(redirect("/console/problems", &[]))
}
