//! Fuzz checks: one function per fuzz target (`fuzz/fuzz_targets/`), shared with the stable
//! replay of the corpora (`tests/it/fuzz_corpus.rs`). Each feeds arbitrary bytes to the real code
//! and asserts what must hold beyond "no panic"; a failed assertion is a finding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ingest::{Ingest, request};
use crate::rules::value::{self, DecimalMode, TimeFormat};
use crate::rules::{
    BodyKind, EnvMode, Input, JSON_NUMBERS_PARAM, LiveRules, RuleFile, RuleFiles, RuleSet, compile,
    decode_body, decode_form, decode_stored,
};

/// `query_form`: query strings and form bodies as ingest decodes them.
pub fn query_form(data: &[u8]) {
    let pairs = decode_form(data);
    // One pair per non-empty `&` piece: nothing dropped, nothing doubled.
    assert_eq!(pairs.len(), request::count_pairs(data), "pairs of {data:?}");
    // A POST body's pairs are stored form-encoded and decoded again on replay.
    let stored = request::encode_pairs(&pairs);
    assert_eq!(
        decode_form(stored.as_bytes()),
        pairs,
        "stored as {stored:?}"
    );
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Redacting the token keeps every other pair as it was.
    let redacted = request::redact_query(text, |n| n == "token");
    let after = decode_form(redacted.as_bytes());
    assert_eq!(after.len(), pairs.len(), "redacted {redacted:?}");
    for (before, after) in pairs.iter().zip(&after) {
        if before.0 == "token" {
            assert_eq!(after, &("token".to_owned(), "***".to_owned()));
        } else {
            assert_eq!(before, after, "redacted {redacted:?}");
        }
    }
    // The same bytes as a query and as a form body: the limit counts both.
    match request::params(text, data, Some("application/x-www-form-urlencoded"), 64) {
        Ok(p) => {
            assert_eq!(p.query, pairs);
            assert_eq!(p.body, pairs);
            assert!(p.query.len() + p.body.len() <= 64);
        }
        Err(request::ParamsError::TooMany { count, max, .. }) => assert!(count > max),
        Err(e) => panic!("a form body cannot be refused but was: {e}"),
    }
}

/// `json_body`: a POST body read as a flat JSON object.
pub fn json_body(data: &[u8]) {
    let Ok(body) = decode_body(data, BodyKind::Json) else {
        return;
    };
    let mut names: Vec<&str> = body.pairs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a name twice in {:?}", body.pairs);
    assert!(body.numbers.windows(2).all(|w| w[0] < w[1]));
    for &i in &body.numbers {
        let text = &body.pairs[i].1;
        let d = value::parse_json_number(text)
            .unwrap_or_else(|e| panic!("number {text:?} does not read back: {e}"));
        assert_eq!(&value::format_decimal(d), text, "not canonical");
    }
    // Stored as ingest stores it (pairs, then the positions of the numbers) and read back
    // as a replay reads it.
    let positions: Vec<String> = body.numbers.iter().map(usize::to_string).collect();
    let mut stored = request::encode_pairs(&body.pairs);
    if !stored.is_empty() {
        stored.push('&');
    }
    stored.push_str(&request::encode_pairs(&[(
        JSON_NUMBERS_PARAM.to_owned(),
        positions.join(","),
    )]));
    assert_eq!(decode_stored(&stored), body, "stored as {stored:?}");
    match request::params("", data, Some("application/json"), 64) {
        Ok(p) => {
            assert_eq!(p.body, body.pairs);
            assert_eq!(p.body_numbers, body.numbers);
        }
        Err(request::ParamsError::TooMany { count, max, .. }) => assert!(count > max),
        Err(e) => panic!("decoded, then refused: {e}"),
    }
}

/// `number_time`: decimals (three separator modes), JSON numbers, times, zones, durations.
/// The first byte picks the time format and zone, the rest is the text.
pub fn number_time(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    for mode in [DecimalMode::Auto, DecimalMode::Dot, DecimalMode::Comma] {
        if let Ok(d) = value::parse_decimal(&text, mode) {
            check_canonical(d, &text);
            assert_eq!(value::scale_decimal(d, rust_decimal::Decimal::ONE), Ok(d));
        }
    }
    if let Ok(d) = value::parse_json_number(&text) {
        check_canonical(d, &text);
    }
    let _ = value::parse_duration(&text);
    let zone = match pick % 4 {
        0 => TimeZone::UTC,
        1 => TimeZone::fixed(jiff::tz::offset(8)),
        2 => TimeZone::get("America/New_York").unwrap_or(TimeZone::UTC),
        _ => value::parse_zone(&text).unwrap_or(TimeZone::UTC),
    };
    let format = match (pick / 4) % 6 {
        0 => TimeFormat::Unix,
        1 => TimeFormat::UnixMs,
        2 => TimeFormat::Rfc3339,
        3 => TimeFormat::Auto,
        4 => TimeFormat::Pattern("%d/%m/%Y %H:%M".to_owned()),
        _ => match TimeFormat::parse_spec(&text) {
            // The text is a pattern: format a sample with it and read that back.
            Ok(f @ TimeFormat::Pattern(_)) => {
                check_pattern(&f, &text);
                return;
            }
            _ => TimeFormat::Any(vec![TimeFormat::Rfc3339, TimeFormat::Unix]),
        },
    };
    let Ok(at) = value::parse_time(&text, &format, &zone) else {
        return;
    };
    assert_eq!(at.subsec_nanosecond(), 0, "fractions are truncated");
    assert!(at >= Timestamp::UNIX_EPOCH);
    if matches!(format, TimeFormat::Unix | TimeFormat::UnixMs) {
        let (from, until) = (946_684_800, 4_102_444_800);
        assert!((from..until).contains(&at.as_second()), "{at} out of range");
    }
    // What is sent to Scaleo reads back as the same instant.
    let sent = value::format_scaleo_time(at, &TimeZone::UTC);
    let pattern = TimeFormat::Pattern("%Y-%m-%d %H:%M:%S".to_owned());
    assert_eq!(
        value::parse_time(&sent, &pattern, &TimeZone::UTC),
        Ok(at),
        "sent as {sent:?}"
    );
    let unix = at.as_second().to_string();
    if (946_684_800..4_102_444_800).contains(&at.as_second()) {
        assert_eq!(value::parse_time(&unix, &TimeFormat::Unix, &zone), Ok(at));
    }
}

/// A parsed decimal's canonical text reads back as the same value, in every reading.
fn check_canonical(d: rust_decimal::Decimal, text: &str) {
    let canonical = value::format_decimal(d);
    assert_eq!(
        value::parse_decimal(&canonical, DecimalMode::Dot),
        Ok(d),
        "{text:?} -> {canonical:?}"
    );
    assert_eq!(
        value::parse_json_number(&canonical),
        Ok(d),
        "{text:?} -> {canonical:?}"
    );
    assert_eq!(
        value::parse_decimal(&canonical.replace('.', ","), DecimalMode::Comma),
        Ok(d),
        "{text:?} -> {canonical:?}"
    );
}

/// A pattern accepted at load time reads the times it writes.
fn check_pattern(format: &TimeFormat, pattern: &str) {
    let sample = Timestamp::constant(1_721_060_699, 0);
    let Ok(text) = jiff::fmt::strtime::format(pattern, &sample.to_zoned_datetime(TimeZone::UTC))
    else {
        panic!("pattern {pattern:?} accepted but cannot format");
    };
    if let Err(e) = value::parse_time(&text, format, &TimeZone::UTC) {
        panic!("pattern {pattern:?} accepted but cannot read {text:?}: {e}");
    }
}

/// `macro_detect`: "no value" detection. The first line is a placeholder, the rest the value.
pub fn macro_detect(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (placeholder, val) = text.split_once('\n').unwrap_or(("", &text));
    let found = value::no_value(val, &[]);
    if value::is_macro(val) {
        assert_eq!(found, Some(value::NoValue::Macro), "{val:?}");
    }
    if val.is_empty() {
        assert_eq!(found, Some(value::NoValue::Empty));
    }
    if value::check_placeholder(placeholder).is_ok() {
        let list = [placeholder.to_owned()];
        let with = value::no_value(val, &list);
        let matches = match placeholder.strip_suffix('*') {
            Some(prefix) => val.starts_with(prefix),
            None => val == placeholder,
        };
        if matches && !val.is_empty() {
            assert_eq!(with, Some(value::NoValue::Placeholder), "{val:?}");
        } else {
            assert_eq!(with, found, "{val:?} with placeholder {placeholder:?}");
        }
    }
    // A whole macro arriving percent-encoded in a query is still no value.
    let query = format!("v={val}");
    if let Some((_, decoded)) = decode_form(query.as_bytes()).pop()
        && value::is_macro(val.trim())
        && !val.contains(['&', '+'])
    {
        assert!(
            value::no_value(decoded.trim(), &[]).is_some(),
            "{val:?} decoded as {decoded:?}"
        );
    }
}

/// `rule_compile`: a rule file's text, then (after a NUL byte) a query it is applied to.
pub fn rule_compile(data: &[u8]) {
    let (text, query) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let text = String::from_utf8_lossy(text);
    // Without reading `${VAR}` (`check --no-env`), then as `serve` compiles.
    let _ = compile("fuzz", "fuzz.toml", &text, EnvMode::Ignore);
    let first = compile("fuzz", "fuzz.toml", &text, EnvMode::Resolve);
    let again = compile("fuzz", "fuzz.toml", &text, EnvMode::Resolve);
    let (rule, again) = match (first, again) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) => {
            assert!(!a.is_empty(), "refused without a diagnostic");
            assert_eq!(a, b, "the same text, other diagnostics");
            return;
        }
        _ => panic!("the same text compiled once and was refused once"),
    };
    let params = decode_form(query);
    let zone = TimeZone::UTC;
    let input = Input {
        params: &params,
        json_numbers: &[],
        client_ip: Some("203.0.113.9"),
        user_agent: Some("fuzz"),
        referer: None,
        received_at: Some(Timestamp::constant(1_721_060_699, 0)),
    };
    let outcome = rule.apply(&input, &zone);
    assert_eq!(
        again.apply(&input, &zone),
        outcome,
        "compiled twice, mapped apart"
    );
    let (explained, _) = rule.explain(&input, &zone);
    assert_eq!(explained, outcome, "explain and apply disagree");
    let _ = rule.answer_body(&input);
    let _ = rule.resolve_click_id(&input);
    for t in &rule.tests {
        let _ = crate::rules::testing::apply_test(&rule, t, &zone);
    }
}

/// The documented answers of ingest.
const INGEST_STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 408, 413, 414, 422, 431, 503];

/// `ingest_request`: raw bytes on a connection of the real ingest service (hyper's HTTP/1
/// parser, then [`Ingest::handle`] with the shipped rules and a real SQLite store).
pub fn ingest_request(data: &[u8]) {
    ingest_statuses(data);
}

/// [`ingest_request`], returning the status of each answer ingest gave (hyper's own answers
/// to what it cannot parse are not counted).
pub fn ingest_statuses(data: &[u8]) -> Vec<u16> {
    let h = harness();
    let ingest = h.next_ingest();
    let answers: Arc<Mutex<Vec<(StatusCode, bool, Bytes)>>> = Arc::default();
    let seen = answers.clone();
    h.runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = ([127, 0, 0, 1], 40_000).into();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (ingest, seen) = (ingest.clone(), seen.clone());
            let pixel = req.uri().path().starts_with("/pixel/");
            let head = req.method() == hyper::Method::HEAD;
            async move {
                let resp = ingest.handle(req, peer).await;
                let (parts, body) = resp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let json = !pixel
                    && !head
                    && parts.headers.get("content-type")
                        == Some(&hyper::header::HeaderValue::from_static("application/json"));
                if let Ok(mut s) = seen.lock() {
                    s.push((parts.status, json, body.clone()));
                }
                Ok::<_, std::convert::Infallible>(hyper::Response::from_parts(
                    parts,
                    Full::new(body),
                ))
            }
        });
        let mut http = crate::listener::http1(Duration::from_secs(5));
        http.max_buf_size(8192);
        // The input ends with the client's half-close: answer what was sent before it.
        http.half_close(true);
        let conn = tokio::spawn(http.serve_connection(TokioIo::new(server), service));
        let exchange = async {
            // A request may be answered before all of it is written: stop writing then.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
        };
        if tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .is_err()
        {
            panic!("ingest did not answer within 30 s (a hang)");
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
    });
    let answers = answers.lock().map(|a| a.clone()).unwrap_or_default();
    let mut statuses = Vec::with_capacity(answers.len());
    for (status, json, body) in answers {
        statuses.push(status.as_u16());
        assert!(
            INGEST_STATUSES.contains(&status.as_u16()),
            "undocumented status {status}"
        );
        assert_ne!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is healthy"
        );
        if json {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {body:?}"));
            assert!(v["status"].is_string(), "answer without a status: {v}");
            let accepted = v["status"] == "accepted";
            assert!(!accepted || status == StatusCode::OK);
            assert!(!accepted || v["id"].is_i64(), "accepted without an id: {v}");
        }
    }
    statuses
}

/// Removes the store of [`ingest_request`] (the replay test calls it when done).
pub fn cleanup() {
    if let Some(h) = HARNESS.get()
        && let Ok(mut g) = h.current.lock()
    {
        if let Some((_, dir)) = g.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The runtime and the ingest service of [`ingest_request`], shared by all inputs of a
/// process; the store is replaced every [`STORE_RUNS`] inputs so it stays small.
struct Harness {
    runtime: tokio::runtime::Runtime,
    rules: Arc<LiveRules>,
    current: Mutex<Option<(Arc<Ingest>, PathBuf)>>,
    runs: std::sync::atomic::AtomicU64,
}

const STORE_RUNS: u64 = 20_000;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Harness {
            runtime,
            rules: Arc::new(LiveRules::new(shipped_rules())),
            current: Mutex::new(None),
            runs: Default::default(),
        }
    })
}

impl Harness {
    fn next_ingest(&self) -> Arc<Ingest> {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if run % STORE_RUNS == 0
            && let Some((_, dir)) = g.take()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((ingest, _)) = g.as_ref() {
            return ingest.clone();
        }
        let dir =
            std::env::temp_dir().join(format!("postback-relay-fuzz-{}-{run}", std::process::id()));
        let mut cfg = crate::config::Config::for_local("http://127.0.0.1:9", "fuzz");
        cfg.store.path = dir.clone();
        cfg.store.timeout = Duration::from_secs(60);
        let mut limits = cfg.server.clone();
        // Small limits, so that inputs of a few KB reach every limit.
        limits.max_url_bytes = 512;
        limits.max_header_bytes = 1024;
        limits.max_body_bytes = 1024;
        limits.max_params = 16;
        limits.read_timeout = Duration::from_secs(5);
        limits.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a network")];
        let store = crate::store::Store::open(&cfg.store).expect("the fuzz store opens");
        let ingest = Arc::new(Ingest {
            rules: self.rules.clone(),
            store,
            zone: TimeZone::UTC,
            limits,
        });
        *g = Some((ingest.clone(), dir));
        ingest
    }
}

/// The shipped rule files, and one with a literal token and an allow list.
fn shipped_rules() -> RuleSet {
    let texts: [(&str, &str); 15] = [
        ("adjust", include_str!("../rules/adjust.toml")),
        ("affise", include_str!("../rules/affise.toml")),
        ("appsflyer", include_str!("../rules/appsflyer.toml")),
        ("binom", include_str!("../rules/binom.toml")),
        ("cake", include_str!("../rules/cake.toml")),
        ("chargebacks", include_str!("../rules/chargebacks.toml")),
        ("everflow", include_str!("../rules/everflow.toml")),
        ("ironsource", include_str!("../rules/ironsource.toml")),
        ("keitaro", include_str!("../rules/keitaro.toml")),
        ("pixel", include_str!("../rules/pixel.toml")),
        ("shopify", include_str!("../rules/shopify.toml")),
        ("tune", include_str!("../rules/tune.toml")),
        ("voluum", include_str!("../rules/voluum.toml")),
        ("webhook", include_str!("../rules/webhook.toml")),
        (
            "tok",
            "[auth]\ntoken = \"s3cret\"\nallow_ips = [\"127.0.0.0/8\", \"203.0.113.0/24\"]\n\
             [fields]\nclick_id = \"cid\"\namount = { from = \"amt\", decimal = \"auto\" }\n\
             timestamp = { from = \"ts\", time = \"auto\" }\n",
        ),
    ];
    let dir = PathBuf::from("rules");
    let files = RuleFiles {
        files: texts
            .iter()
            .map(|(name, text)| RuleFile {
                path: dir.join(format!("{name}.toml")),
                len: text.len() as u64,
                modified: None,
                text: Ok((*text).to_owned()),
            })
            .collect(),
        skipped: Vec::new(),
    };
    RuleSet::from_files(&dir, &files, EnvMode::Resolve).expect("the shipped rules compile")
}
