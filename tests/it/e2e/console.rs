//! The operator console: sign-in, CSRF, security headers over plain HTTP; the pages in a real
//! headless Chromium (records, escaping of advertiser values, replay after a rule fix,
//! pause and resume, "try a postback"), each page saved as a screenshot under
//! `target/console-screenshots/`.

use std::time::Duration;

use postback_relay::store::{PauseReason, PauseScope};
use reqwest::StatusCode;
use reqwest::redirect::Policy;

use crate::e2e::admin_client::{
    ADMIN_TOKEN, admin_url, metric, poll, scrape, with_admin, write_rule,
};
use crate::e2e::browser::Browser;
use crate::e2e::support::{Env, SHOP};

/// SHOP without the `cid` alias: a postback with only `cid` is rejected (no click id).
const SHOP_NO_CID: &str = r#"
description = "Demo shop: purchases in cents"
[fields]
click_id     = "clickid"
adv_order_id = "oid"
goal_id      = { value = 7 }
revenue      = { from = "amt", scale = "0.01" }
"#;

/// The fixed rule: `cid` feeds the click id too.
const SHOP_FIXED: &str = r#"
description = "Demo shop: purchases in cents"
[fields]
click_id     = ["clickid", "cid"]
adv_order_id = "oid"
goal_id      = { value = 7 }
revenue      = { from = "amt", scale = "0.01" }
"#;

/// An HTTP client that shows redirects instead of following them.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A form body on `req`.
fn with_form(req: reqwest::RequestBuilder, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(pairs).unwrap())
}

/// The `value` of the first hidden `csrf` input of a page.
fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// The value of cookie `name` among a response's `Set-Cookie` headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, _) = v.split_once(';')?;
            let (n, val) = pair.split_once('=')?;
            (n == name && !val.is_empty()).then(|| val.to_string())
        })
}

/// Signs in over plain HTTP with `token`: the sign-in answer and the session cookie.
async fn http_sign_in(env: &Env, token: &str) -> (StatusCode, Option<String>) {
    let http = plain_client();
    let form = http
        .get(admin_url(env, "/console/signin"))
        .send()
        .await
        .unwrap();
    let pre = set_cookie(&form, "relay_signin").expect("a sign-in cookie");
    let csrf = csrf_in(&form.text().await.unwrap());
    let req = http
        .post(admin_url(env, "/console/signin"))
        .header("cookie", format!("relay_signin={pre}"));
    let resp = with_form(req, &[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    (resp.status(), set_cookie(&resp, "relay_session"))
}

async fn console_post(
    env: &Env,
    session: Option<&str>,
    path: &str,
    form: &[(&str, &str)],
) -> StatusCode {
    let mut req = with_form(plain_client().post(admin_url(env, path)), form);
    if let Some(s) = session {
        req = req.header("cookie", format!("relay_session={s}"));
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn console_refuses_a_post_without_its_csrf_token_and_leaves_the_json_api_unchanged() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let http = plain_client();

    let (status, cookie) = http_sign_in(&env, "not-the-token").await;
    assert_eq!(
        (status.as_u16(), cookie),
        (401, None),
        "a wrong token is refused"
    );
    let (status, cookie) = http_sign_in(&env, ADMIN_TOKEN).await;
    assert_eq!(status.as_u16(), 303);
    let session = cookie.expect("a session cookie");

    let resp = http
        .get(admin_url(&env, "/"))
        .header("cookie", format!("relay_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("form-action 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    let csrf = csrf_in(&resp.text().await.unwrap());

    let pause = "/console/sources/pause";
    for (label, session, form) in [
        ("no token", Some(session.as_str()), vec![("source", "shop")]),
        (
            "a wrong token",
            Some(session.as_str()),
            vec![("source", "shop"), ("csrf", "0123")],
        ),
        (
            "no session",
            None,
            vec![("source", "shop"), ("csrf", csrf.as_str())],
        ),
    ] {
        let status = console_post(&env, session, pause, &form).await;
        assert_eq!(status.as_u16(), 403, "a POST with {label} is refused");
    }
    assert!(env.relay().store.paused().await.unwrap().is_empty());
    let status = console_post(
        &env,
        Some(&session),
        pause,
        &[("source", "shop"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(status.as_u16(), 303, "with its token the POST works");
    let paused = env.relay().store.paused().await.unwrap();
    assert_eq!(paused[0].scope, PauseScope::Source("shop".into()));

    // The sign-in form itself needs its double-submit token.
    let resp = with_form(
        http.post(admin_url(&env, "/console/signin")),
        &[("token", ADMIN_TOKEN)],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(set_cookie(&resp, "relay_session"), None);

    // The session cookie opens no JSON endpoint; the Bearer token still does.
    let resp = http
        .get(admin_url(&env, "/admin/records"))
        .header("cookie", format!("relay_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .get(admin_url(&env, "/admin/records"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Signed out: the session is gone.
    let status = console_post(&env, Some(&session), "/console/signout", &[("csrf", &csrf)]).await;
    assert_eq!(status.as_u16(), 303);
    let resp = http
        .get(admin_url(&env, "/console/records"))
        .header("cookie", format!("relay_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/console/signin");
    env.stop().await;
}

/// Sends a postback with `params` (encoded properly); the stored record id.
async fn postback(env: &Env, source: &str, params: &[(&str, &str)]) -> i64 {
    let q = serde_urlencoded::to_string(params).unwrap();
    let (status, body) = env.get(&format!("/postback/{source}?{q}")).await;
    assert!(status < 500, "postback stored: {status} {body}");
    body["id"].as_i64().expect("a record id")
}

/// The record ids of the listed rows.
async fn listed(b: &Browser) -> Vec<i64> {
    let ids = b
        .eval("return Array.from(document.querySelectorAll('#records td.num a')).map(a => a.textContent)")
        .await;
    ids.as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect()
}

async fn browser_sign_in(env: &Env) -> Browser {
    let b = Browser::start(admin_url(env, "")).await;
    b.open("/").await;
    assert_eq!(
        b.path().await,
        "/console/signin",
        "signed out: the sign-in form"
    );
    b.fill("#token", "wrong-token").await;
    b.click("#signin").await;
    assert_eq!(b.text("#error").await, "wrong admin token");
    b.shot("signin-refused").await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.click("#signin").await;
    assert_eq!(b.path().await, "/", "signed in: the overview");
    b
}

#[tokio::test]
async fn console_in_a_browser_shows_records_and_renders_advertiser_markup_as_text() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let script = "<script>window.__xss=1;alert(1)</script>";
    // The `/` keeps it from reading as an unresolved `<macro>`, so it reaches the body.
    let img = "<img src=x onerror=alert(2)//>";
    let good = postback(
        &env,
        "shop",
        &[
            ("cid", "click-1"),
            ("amt", "1250"),
            ("oid", "o1"),
            ("st", "5"),
        ],
    )
    .await;
    let evil = postback(
        &env,
        "shop",
        &[("cid", script), ("oid", img), ("amt", "300")],
    )
    .await;
    let rejected = postback(&env, "shop", &[("amt", img)]).await;
    assert!(
        env.sandbox
            .wait_for_accepted(2, Duration::from_secs(10))
            .await
    );

    let b = browser_sign_in(&env).await;
    assert!(b.text("#sources").await.contains("shop"));
    b.shot("overview").await;

    b.open("/console/records").await;
    assert_eq!(listed(&b).await, vec![rejected, evil, good], "newest first");
    let list = b.text("#records").await;
    assert!(list.contains(script), "the click id shows as text: {list}");
    b.shot("records").await;

    b.open("/console/records?state=rejected").await;
    assert_eq!(listed(&b).await, vec![rejected]);
    b.open("/console/records?click_id=click-1").await;
    assert_eq!(listed(&b).await, vec![good]);

    b.open(&format!("/console/records/{evil}")).await;
    let params = b.text("#params").await;
    assert!(params.contains(script) && params.contains(img), "{params}");
    let body = b.text("#body").await;
    assert!(body.contains(img) && body.contains(script), "{body}");
    assert!(b.text("#attempts").await.contains("delivered"));
    b.shot("record-escaped").await;
    let dom = b
        .eval("return [document.scripts.length, document.images.length, typeof window.__xss]")
        .await;
    assert_eq!(
        dom,
        serde_json::json!([0, 0, "undefined"]),
        "no element was created"
    );
    assert!(b.client.get_alert_text().await.is_err(), "no alert is open");

    b.open(&format!("/console/records/{rejected}")).await;
    let reason = b.text("#reason").await;
    assert!(reason.contains("click_id"), "{reason}");
    assert!(b.text("#params").await.contains(img));
    b.shot("record-rejected").await;
    let dom = b
        .eval("return [document.scripts.length, document.images.length]")
        .await;
    assert_eq!(dom, serde_json::json!([0, 0]));

    // A later postback of the same conversion approves it: the record page shows the
    // conversion's current status and its chain.
    let update = postback(
        &env,
        "shop",
        &[
            ("cid", "click-1"),
            ("amt", "1250"),
            ("oid", "o1"),
            ("st", "1"),
        ],
    )
    .await;
    // Settled either way (this sandbox may not know leads/update): the chain is what counts.
    let store = env.relay().store.clone();
    assert!(
        poll(Duration::from_secs(10), || {
            let store = store.clone();
            async move {
                let state = store.get(update).await.unwrap().map(|r| r.summary.state);
                state.is_some_and(|s| !s.is_pending())
            }
        })
        .await,
        "the update was sent"
    );
    b.open(&format!("/console/records/{good}")).await;
    let conversion = b.text("#conversion").await;
    assert!(conversion.contains("approved"), "{conversion}");
    let chain = b
        .eval("return Array.from(document.querySelectorAll('#conversion td.num a')).map(a => a.textContent)")
        .await;
    assert_eq!(chain, serde_json::json!([update.to_string()]));
    b.shot("record").await;
    b.open(&format!("/console/records/{update}")).await;
    assert!(b.text("table.kv").await.contains("update of a conversion"));
    b.close().await;
    env.stop().await;
}

#[tokio::test]
async fn console_in_a_browser_replays_rejected_records_after_a_rule_fix() {
    let env = Env::start(&[("shop", SHOP_NO_CID)], with_admin).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let cid = format!("c{n}");
        let oid = format!("o{n}");
        ids.push(
            postback(
                &env,
                "shop",
                &[("cid", &cid), ("oid", &oid), ("amt", "500")],
            )
            .await,
        );
    }
    let b = browser_sign_in(&env).await;
    b.open("/console/problems").await;
    let groups = b.text("#rejected-groups").await;
    assert!(groups.contains("shop") && groups.contains('3'), "{groups}");
    b.shot("problems").await;

    write_rule(&env.dir.path().join("rules"), "shop", SHOP_FIXED);
    env.relay().reload().expect("the fixed rule loads");

    // One record from its page...
    b.open(&format!("/console/records/{}", ids[2])).await;
    b.click("#replay").await;
    assert!(b.text("#flash").await.contains("1 queued"));
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );

    // ...then the rest of the group, after the confirm page shows how many.
    b.open("/console/problems").await;
    b.click("#rejected-groups a.replay-group").await;
    assert!(b.text("#count").await.contains("2 record(s)"));
    b.shot("problems-confirm").await;
    b.click("#confirm").await;
    assert_eq!(b.path().await, "/console/problems");
    assert!(
        b.text("#flash").await.contains("2 queued"),
        "{}",
        b.text("#flash").await
    );
    b.shot("problems-replayed").await;
    assert!(
        env.sandbox
            .wait_for_accepted(3, Duration::from_secs(10))
            .await
    );
    let clicks: Vec<String> = env
        .sandbox
        .accepted()
        .iter()
        .map(|c| c["click_id"].as_str().unwrap_or("").to_string())
        .collect();
    for c in ["c1", "c2", "c3"] {
        assert!(
            clicks.iter().any(|x| x == c),
            "{c} reached Scaleo: {clicks:?}"
        );
    }
    b.open(&format!("/console/records/{}", ids[0])).await;
    assert!(b.text("#attempts").await.contains("delivered"));
    b.close().await;
    env.stop().await;
}

#[tokio::test]
async fn console_in_a_browser_pauses_and_resumes_a_source_and_tries_a_postback() {
    let env = Env::start(&[("shop", SHOP_FIXED)], with_admin).await;
    let b = browser_sign_in(&env).await;
    b.open("/console/sources").await;
    assert!(b.text("#source-shop").await.contains("Demo shop"));
    b.click("#source-shop button.pause").await;
    assert!(b.text("#flash").await.contains("Paused forwarding of shop"));
    let paused = env.relay().store.paused().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(
        (&paused[0].scope, paused[0].reason),
        (&PauseScope::Source("shop".into()), PauseReason::Operator)
    );
    assert!(
        b.text("#source-shop")
            .await
            .contains("paused by an operator")
    );
    b.shot("sources-paused").await;
    b.click("#source-shop button.resume").await;
    assert!(
        b.text("#flash")
            .await
            .contains("Resumed forwarding of shop")
    );
    assert!(env.relay().store.paused().await.unwrap().is_empty());
    b.shot("sources").await;

    b.fill(
        "#source-shop input[name=q]",
        "https://relay.example/postback/shop?cid=abc&amt=1250&oid=o9&clickid=",
    )
    .await;
    b.click("#source-shop form.filters button").await;
    assert!(b.path().await.starts_with("/console/sources/shop/try?"));
    assert_eq!(b.text("#outcome").await, "forward");
    let fields = b.text("#fields").await;
    assert!(
        fields.contains("parameter cid") && fields.contains("12.5"),
        "{fields}"
    );
    assert!(b.text("#body").await.contains("\"click_id\": \"abc\""));
    b.shot("try-a-postback").await;

    b.fill("#q", "amt=oops").await;
    b.click("#explain").await;
    assert_eq!(b.text("#outcome").await, "reject");
    b.shot("try-a-postback-reject").await;

    let (records, _) = env
        .relay()
        .store
        .list(Default::default(), 10, None)
        .await
        .unwrap();
    assert!(records.is_empty(), "trying stores nothing");
    assert!(env.sandbox.received().is_empty(), "and forwards nothing");
    b.close().await;
    env.stop().await;
}

#[tokio::test]
async fn console_in_a_browser_warns_of_a_silent_source_and_metrics_expose_it() {
    let quiet = format!("{SHOP_FIXED}\n[alerts]\nsilent_after = \"1s\"\n");
    let env = Env::start(&[("quiet", &quiet), ("shop", SHOP)], with_admin).await;
    postback(&env, "quiet", &[("cid", "q1"), ("oid", "o1")]).await;
    postback(&env, "shop", &[("cid", "s1"), ("oid", "o1")]).await;
    // The registry is process-wide and other tests' relays refresh it too: poll.
    let series = |name: &str, source: &str| format!("{name}{{source=\"{source}\"}}");
    let silent = series("postback_relay_source_silent", "quiet");
    let shows = |want: f64| {
        let (env, silent) = (&env, &silent);
        poll(Duration::from_secs(5), move || async move {
            metric(&scrape(env).await, silent) == want
        })
    };
    assert!(shows(0.0).await, "quiet right after its postback");
    // Polls (5 s) through the 1 s of silent_after until the gauge flips.
    assert!(shows(1.0).await, "quiet after silent_after");
    let shop_silent = series("postback_relay_source_silent", "shop");
    let last_series = series(
        "postback_relay_source_last_postback_timestamp_seconds",
        "quiet",
    );
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        poll(Duration::from_secs(5), || async {
            let text = scrape(&env).await;
            let last = metric(&text, &last_series);
            text.contains(&format!("{shop_silent} 0")) && (now - 10.0..=now).contains(&last)
        })
        .await,
        "shop has no [alerts] (never silent); quiet's last postback time is exposed"
    );

    let b = browser_sign_in(&env).await;
    let warning = b.text(".alert.silent").await;
    assert!(
        warning.contains("quiet is silent") && warning.contains("at least every 1 s"),
        "{warning}"
    );
    assert!(b.text("#row-quiet").await.contains("silent"));
    assert!(!b.text("#row-shop").await.contains("silent"));
    b.shot("overview-silent").await;
    b.close().await;
    env.stop().await;
}

#[tokio::test]
async fn console_overview_says_when_deliveries_of_a_source_are_failing() {
    // A wrong base_url: Scaleo's host answers 404 to every conversion, which goes dead.
    let env = Env::start(&[("shop", SHOP)], |cfg| {
        with_admin(cfg);
        cfg.scaleo.base_url.push_str("/wrong-prefix");
    })
    .await;
    let id = postback(&env, "shop", &[("cid", "c1"), ("oid", "o1")]).await;
    let store = env.relay().store.clone();
    assert!(
        poll(Duration::from_secs(10), || {
            let store = store.clone();
            async move {
                store.get(id).await.unwrap().map(|r| r.summary.state)
                    == Some(postback_relay::store::State::Dead)
            }
        })
        .await,
        "the 404 makes it dead"
    );
    let (_, session) = http_sign_in(&env, ADMIN_TOKEN).await;
    let page = plain_client()
        .get(admin_url(&env, "/"))
        .header("cookie", format!("relay_session={}", session.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Deliveries of shop are failing")
            && page.contains("1 went dead and 0 are retrying, none was delivered"),
        "{page}"
    );
    env.stop().await;
}

#[tokio::test]
async fn console_pages_records_by_cursor_and_keeps_the_filters() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    for n in 0..55 {
        postback(
            &env,
            "shop",
            &[("cid", &format!("c{n}")), ("oid", &format!("o{n}"))],
        )
        .await;
    }
    postback(&env, "shop", &[("oid", "no-click")]).await;
    let (_, session) = http_sign_in(&env, ADMIN_TOKEN).await;
    let cookie = format!("relay_session={}", session.unwrap());
    let get = |path: String| {
        let cookie = cookie.clone();
        let url = admin_url(&env, &path);
        async move {
            plain_client()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let rows = |page: &str| {
        page.matches("<td class=\"num\"><a href=\"/console/records/")
            .count()
    };
    let older = |page: &str| {
        let at = page.find("id=\"older\"")?;
        let href = page[..at].rfind("href=\"")? + 6;
        Some(
            page[href..]
                .split('"')
                .next()?
                .replace("&#38;", "&")
                .replace("&amp;", "&"),
        )
    };
    let first = get("/console/records?source=shop&click_id=".into()).await;
    assert_eq!(rows(&first), 50, "a page holds 50 records");
    let next = older(&first).expect("a link to older records");
    assert!(
        next.contains("source=shop") && next.contains("cursor="),
        "{next}"
    );
    let second = get(next.clone()).await;
    assert_eq!(rows(&second), 6, "the rest after {next}");
    assert!(older(&second).is_none(), "the last page has no older link");
    assert!(
        second.contains("<option value=\"shop\" selected>"),
        "the filter is kept"
    );
    let newest = href_of(&second, "« Newest").expect("a link to the newest records");
    assert!(
        newest.contains("source=shop") && !newest.contains("cursor="),
        "the newest page keeps the filters: {newest}"
    );
    assert_eq!(rows(&get(newest).await), 50);
    env.stop().await;
}

#[tokio::test]
async fn console_sends_a_retrying_record_now_instead_of_after_its_backoff() {
    let env = Env::start(&[("shop", SHOP)], |cfg| {
        with_admin(cfg);
        cfg.forward
            .retry
            .set_schedule(vec![Duration::from_secs(3600)])
            .unwrap();
    })
    .await;
    env.sandbox
        .script([postback_relay::sandbox::Step::status(500)]);
    let id = postback(&env, "shop", &[("cid", "c1"), ("oid", "o1")]).await;
    let store = env.relay().store.clone();
    let state = |store: postback_relay::store::Store| async move {
        store.get(id).await.unwrap().map(|r| r.summary.state)
    };
    use postback_relay::store::State;
    assert!(
        poll(Duration::from_secs(10), || {
            let store = store.clone();
            async move { state(store).await == Some(State::Retrying) }
        })
        .await,
        "the 500 makes it retry in an hour"
    );
    let (_, session) = http_sign_in(&env, ADMIN_TOKEN).await;
    let session = session.unwrap();
    let page = plain_client()
        .get(admin_url(&env, &format!("/console/records/{id}")))
        .header("cookie", format!("relay_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"send-now\""),
        "a retrying record offers to send it now"
    );
    let csrf = csrf_in(&page);
    let path = format!("/console/records/{id}/send");
    assert_eq!(
        console_post(&env, Some(&session), &path, &[])
            .await
            .as_u16(),
        403,
        "not without the CSRF token"
    );
    assert_eq!(
        console_post(&env, Some(&session), &path, &[("csrf", &csrf)])
            .await
            .as_u16(),
        303
    );
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await,
        "sent at once, not in an hour"
    );
    assert!(
        poll(Duration::from_secs(10), || {
            let store = store.clone();
            async move { state(store).await == Some(State::Delivered) }
        })
        .await
    );
    env.stop().await;
}

/// The repository's Keitaro rule and its update-only refunds source.
const KEITARO: &str = include_str!("../../../rules/keitaro.toml");
const CHARGEBACKS: &str = include_str!("../../../rules/chargebacks.toml");

/// A signed-in GET over plain HTTP: status and page.
async fn page_of(env: &Env, session: &str, path: &str) -> (u16, String) {
    let resp = plain_client()
        .get(admin_url(env, path))
        .header("cookie", format!("relay_session={session}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A signed-in form POST over plain HTTP: status and page.
async fn post_of(env: &Env, session: &str, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let req = with_form(plain_client().post(admin_url(env, path)), form)
        .header("cookie", format!("relay_session={session}"));
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The `href` of the link whose text is `text` (entities of `&` decoded).
fn href_of(page: &str, text: &str) -> Option<String> {
    let at = page.find(&format!(">{text}</a>"))?;
    let href = page[..at].rfind("href=\"")? + 6;
    Some(
        page[href..]
            .split('"')
            .next()?
            .replace("&#38;", "&")
            .replace("&amp;", "&"),
    )
}

/// The try page of `source` for `query`.
fn try_path(source: &str, query: &str) -> String {
    format!(
        "/console/sources/{source}/try?{}",
        serde_urlencoded::to_string([("q", query)]).unwrap()
    )
}

/// Whether an element matches `css` on the page.
async fn has(b: &Browser, css: &str) -> bool {
    b.client
        .execute(
            "return document.querySelector(arguments[0]) !== null",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap()
        .as_bool()
        .unwrap()
}

/// The try page says no body would be sent, without a stray space before punctuation.
async fn nothing_sent(b: &Browser) {
    assert!(!has(b, "#body").await, "no body is said to be sent");
    let text = b.text("main").await;
    assert!(!text.contains("would be sent to Scaleo"), "{text}");
    let result = b.text("#result").await;
    assert!(
        !result.contains(" ;") && !result.contains(" ."),
        "no stray space: {result}"
    );
}

#[tokio::test]
async fn console_try_a_postback_headlines_what_the_stored_conversions_make_of_it() {
    let env = Env::start(
        &[("keitaro", KEITARO), ("chargebacks", CHARGEBACKS)],
        with_admin,
    )
    .await;
    let sale = postback(
        &env,
        "keitaro",
        &[
            ("subid", "clk1"),
            ("status", "sale"),
            ("revenue", "25"),
            ("tid", "T-1"),
        ],
    )
    .await;
    let b = browser_sign_in(&env).await;
    // An update-only postback that finds no conversion: rejected, nothing sent.
    b.open(&try_path("chargebacks", "order=T-NOPE&amount=-5"))
        .await;
    assert_eq!(b.text("#outcome").await, "rejected");
    let reason = b.text("#reason").await;
    assert!(
        reason.contains("T-NOPE") && reason.contains("no conversion"),
        "{reason}"
    );
    nothing_sent(&b).await;
    b.shot("try-rejected").await;

    // A late lead after the sale: stale, nothing sent.
    b.open(&try_path("keitaro", "subid=clk1&status=lead&tid=T-1"))
        .await;
    assert_eq!(b.text("#outcome").await, "stale");
    assert!(b.text("#reason").await.contains("pending"));
    assert!(b.text("#result").await.contains(&format!("record {sale}")));
    nothing_sent(&b).await;
    b.shot("try-stale").await;

    // The sale again: a duplicate, nothing sent.
    b.open(&try_path(
        "keitaro",
        "subid=clk1&status=sale&revenue=25&tid=T-1",
    ))
    .await;
    assert_eq!(b.text("#outcome").await, "duplicate");
    nothing_sent(&b).await;

    // A refund of the sale: an update; the change is what would be sent, not a create body.
    b.open(&try_path("chargebacks", "order=T-1&amount=-25"))
        .await;
    assert_eq!(b.text("#outcome").await, "update");
    assert!(!has(&b, "#body").await, "no create body");
    let change = b.text("#change").await;
    assert!(
        change.contains("\"conv_status\": \"rejected\"") && change.contains("-25"),
        "{change}"
    );
    assert!(b.text("#result").await.contains(&format!("record {sale}")));
    b.shot("try-update").await;

    // A new conversion: forward, with the body that would be sent.
    b.open(&try_path("keitaro", "subid=clk2&status=lead&tid=T-2"))
        .await;
    assert_eq!(b.text("#outcome").await, "forward");
    assert!(b.text("#body").await.contains("\"click_id\": \"clk2\""));
    b.close().await;
    env.stop().await;
}

/// Fails when the page is wider than the window (it scrolls sideways).
async fn fits_the_window(b: &Browser, what: &str) {
    let w = b
        .eval("const d = document.documentElement; return [d.scrollWidth, d.clientWidth]")
        .await;
    let (scroll, client) = (w[0].as_u64().unwrap(), w[1].as_u64().unwrap());
    assert!(
        scroll <= client,
        "{what}: the page is {scroll} px wide in a {client} px window"
    );
}

/// The left and right edges of the first element matching `css` and its height in lines.
async fn place(b: &Browser, css: &str) -> (f64, f64, f64) {
    let v = b
        .client
        .execute(
            "const e = document.querySelector(arguments[0]);
             const box = e.getBoundingClientRect();
             const r = document.createRange(); r.selectNodeContents(e);
             const rects = Array.from(r.getClientRects()).filter(x => x.height > 0);
             const top = Math.min(...rects.map(x => x.top));
             const bottom = Math.max(...rects.map(x => x.bottom));
             return [box.left, box.right, (bottom - top) / parseFloat(getComputedStyle(e).lineHeight)];",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("place of {css}: {e}"));
    let n = |i: usize| v[i].as_f64().unwrap();
    (n(0), n(1), n(2))
}

#[tokio::test]
async fn console_pages_wrap_long_advertiser_values_within_the_window() {
    let env = Env::start(&[("keitaro", KEITARO)], with_admin).await;
    let long_click = "c".repeat(600);
    let long_status = "s".repeat(600);
    let clicked = postback(
        &env,
        "keitaro",
        &[("subid", &long_click), ("status", "sale"), ("tid", "T-1")],
    )
    .await;
    let rejected = postback(
        &env,
        "keitaro",
        &[("subid", "c2"), ("status", &long_status), ("tid", "T-2")],
    )
    .await;
    let b = browser_sign_in(&env).await;
    let width = || async {
        b.eval("return document.documentElement.clientWidth")
            .await
            .as_f64()
            .unwrap()
    };

    b.open("/console/records").await;
    fits_the_window(&b, "records").await;
    let (_, _, lines) = place(&b, "#records tbody tr td:nth-child(2)").await;
    assert!(lines < 1.5, "the Received time keeps one line: {lines}");
    b.shot("long-records").await;

    for (id, row) in [(clicked, "Click id"), (rejected, "Reason")] {
        b.open(&format!("/console/records/{id}")).await;
        fits_the_window(&b, &format!("record {id}")).await;
        let edges = b
            .client
            .execute(
                "const th = Array.from(document.querySelectorAll('table.kv th'))
                   .find(t => t.textContent.trim() === arguments[0]);
                 const raw = document.querySelectorAll('.grid > div')[1];
                 return [th.nextElementSibling.getBoundingClientRect().right,
                         raw.getBoundingClientRect().left];",
                vec![serde_json::json!(row)],
            )
            .await
            .unwrap();
        let (right, raw_left) = (edges[0].as_f64().unwrap(), edges[1].as_f64().unwrap());
        assert!(
            right <= raw_left,
            "record {id}: the {row} ({right}) runs under the raw postback ({raw_left})"
        );
        b.shot(&format!(
            "long-record-{}",
            row.replace(' ', "-").to_lowercase()
        ))
        .await;
    }

    b.open("/console/problems").await;
    fits_the_window(&b, "problems").await;
    let w = width().await;
    for css in ["#rejected-groups td.num", "#rejected-groups a.replay-group"] {
        let (_, right, lines) = place(&b, css).await;
        assert!(
            right <= w && lines < 1.5,
            "{css} on screen on one line: right {right} of {w}, {lines} lines"
        );
    }
    b.shot("long-problems").await;
    b.click("#rejected-groups a.replay-group").await;
    fits_the_window(&b, "the confirm page").await;
    b.shot("long-problems-confirm").await;

    b.open(&try_path(
        "keitaro",
        &format!("subid={long_click}&status={long_status}"),
    ))
    .await;
    fits_the_window(&b, "try a postback").await;
    b.shot("long-try").await;
    b.close().await;
    env.stop().await;
}

#[tokio::test]
async fn console_refuses_to_pause_an_unknown_source_and_shows_alert_times_as_utc() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let (_, session) = http_sign_in(&env, ADMIN_TOKEN).await;
    let session = session.unwrap();
    let (_, sources) = page_of(&env, &session, "/console/sources").await;
    let csrf = csrf_in(&sources);
    for action in ["pause", "resume"] {
        let (status, page) = post_of(
            &env,
            &session,
            &format!("/console/sources/{action}"),
            &[("source", "nosuch"), ("csrf", &csrf)],
        )
        .await;
        assert_eq!(status, 400, "{action} of an unknown source: {page}");
        assert!(
            page.contains("source=&quot;nosuch&quot;") || page.contains("source=&#34;nosuch&#34;"),
            "the error names the field and value: {page}"
        );
        assert!(
            page.contains("known source") && page.contains("shop"),
            "{page}"
        );
    }
    assert!(
        env.relay().store.paused().await.unwrap().is_empty(),
        "no pause was stored for it"
    );

    // A rule file that does not load: the overview says since when, as the other times.
    write_rule(&env.dir.path().join("rules"), "shop", "[fields\n");
    assert!(env.relay().reload().is_err());
    let (_, overview) = page_of(&env, &session, "/").await;
    let at = overview
        .find("do not load since ")
        .expect("the reload alert")
        + 18;
    let since = overview.get(at..at + 23).unwrap_or("");
    assert!(
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S UTC", since).is_ok(),
        "a time like the others: {}",
        &overview[at..(at + 60).min(overview.len())]
    );
    env.stop().await;
}
