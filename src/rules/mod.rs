//! Rule files: a serde mirror of the TOML (`raw`), a validating `compile` step that resolves
//! every name and reports `file:line:col` problems, and a pure `apply` that maps a postback
//! into Scaleo's body. Nothing here does I/O except [`RuleSet::load_dir`] reading the files.

mod apply;
mod compile;
mod diag;
mod model;
mod raw;
pub mod testing;
pub mod value;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use apply::{FieldTrace, Ignored, Input, Mapped, Origin, Outcome, Trace, decimal_json};
pub use compile::{EnvMode, compile, valid_source_id};
pub use diag::Diagnostic;
pub use model::{
    Alerts, AnswerRule, Auth, ChangeOutcome, Dedupe, Expectation, ForwardOverride, Rule, RuleTest,
    SigAlgorithm, SigEncoding, SigLocation, SigPart, Signature, Updates, same_param,
};

/// Every source's compiled rule, keyed by source id.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    rules: BTreeMap<String, Arc<Rule>>,
}

impl RuleSet {
    /// Loads and compiles every `*.toml` in `dir`; all problems of all files, or the set.
    /// Files that are not regular files (a FIFO, a device) are skipped with a warning: reading
    /// them could block forever.
    pub fn load_dir(dir: &Path, env: EnvMode) -> Result<RuleSet, Vec<Diagnostic>> {
        let files = RuleFiles::read(dir)?;
        for s in &files.skipped {
            tracing::warn!(file = %s, "rules: skipped, not a regular file");
        }
        RuleSet::from_files(dir, &files, env)
    }

    /// Compiles files already read by [`RuleFiles::read`] (no I/O).
    pub fn from_files(
        dir: &Path,
        files: &RuleFiles,
        env: EnvMode,
    ) -> Result<RuleSet, Vec<Diagnostic>> {
        let mut rules = BTreeMap::new();
        let mut problems = Vec::new();
        for f in &files.files {
            let file = f.path.display().to_string();
            let source = f
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = match &f.text {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Diagnostic {
                        file,
                        line: 1,
                        col: 1,
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            match compile(&source, &file, text, env) {
                Ok(rule) => {
                    rules.insert(source, Arc::new(rule));
                }
                Err(mut d) => problems.append(&mut d),
            }
        }
        problems.extend(update_targets(&rules, dir));
        if problems.is_empty() {
            Ok(RuleSet { rules })
        } else {
            Err(problems)
        }
    }

    /// The rule of one source.
    pub fn get(&self, source: &str) -> Option<&Arc<Rule>> {
        self.rules.get(source)
    }

    /// All rules in source order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.values()
    }

    /// The lookup indexes the update-only sources of this set need, each once.
    pub fn lookup_indexes(&self) -> Vec<crate::lifecycle::LookupIndex> {
        let wanted: std::collections::BTreeSet<_> = self
            .iter()
            .filter_map(|r| r.updates.only.as_ref().map(|o| o.index()))
            .collect();
        wanted.into_iter().collect()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One `*.toml` file of a rules directory as read: its size and modification time (taken
/// from the open file, so they describe what was read) and its text or read error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFile {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub text: Result<String, String>,
}

/// The rule files of a directory, read without ever blocking on a special file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFiles {
    /// The regular `*.toml` files, sorted by path.
    pub files: Vec<RuleFile>,
    /// `*.toml` entries that are not regular files (FIFOs, devices, sockets), with why.
    pub skipped: Vec<String>,
}

impl RuleFiles {
    /// Reads every `*.toml` in `dir` (hidden files excluded). A FIFO or device named `*.toml`
    /// is never read (opening with `O_NONBLOCK` and checking the open file, so a file
    /// swapped between the check and the read cannot block either): it is listed in
    /// `skipped`.
    pub fn read(dir: &Path) -> Result<RuleFiles, Vec<Diagnostic>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![Diagnostic {
                file: dir.display().to_string(),
                line: 1,
                col: 1,
                message: format!("cannot read the rules directory: {e}"),
            }]
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            // Hidden files are editor locks (`.#x.toml`) or macOS metadata (`._x.toml`).
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        let mut out = RuleFiles::default();
        for path in paths {
            match read_regular(&path) {
                Ok(Some(f)) => out.files.push(f),
                Ok(None) => out.skipped.push(format!(
                    "{}: not a regular file (a FIFO, device or socket is never read)",
                    path.display()
                )),
                Err(e) => out.files.push(RuleFile {
                    path,
                    len: 0,
                    modified: None,
                    text: Err(e.to_string()),
                }),
            }
        }
        Ok(out)
    }
}

/// Reads `path` if it is a regular file (following symlinks); `None` for anything else.
fn read_regular(path: &Path) -> std::io::Result<Option<RuleFile>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    let after = file.metadata()?;
    Ok(Some(RuleFile {
        path: path.to_path_buf(),
        len: after.len(),
        modified: after.modified().ok(),
        text: String::from_utf8(bytes)
            .map_err(|_| "stream did not contain valid UTF-8".to_string()),
    }))
}

/// Checks every update-only source's `[updates] of` against the loaded set: it must name
/// another source that creates conversions (not update-only, with a dedupe key).
fn update_targets(rules: &BTreeMap<String, Arc<Rule>>, dir: &Path) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    for rule in rules.values() {
        let Some(only) = &rule.updates.only else {
            continue;
        };
        let of = only.of.as_str();
        let problem = match rules.get(of) {
            _ if of == rule.source => Some(
                "updates: an update-only source never creates conversions, so it cannot change its own; set of = \"SOURCE\" to the source whose conversions it changes"
                    .to_string(),
            ),
            None => {
                let known: Vec<&str> = rules.keys().map(String::as_str).collect();
                Some(format!(
                    "updates.of = {of:?}: no such source; loaded sources are {}",
                    known.join(", ")
                ))
            }
            Some(target) if target.updates.only.is_some() => Some(format!(
                "updates.of = {of:?}: that source is update-only too; name the source that creates the conversions"
            )),
            Some(target) if target.dedupe.fields.is_empty() || !target.updates.enabled => {
                Some(format!(
                    "updates.of = {of:?}: that source does not track its conversions (it needs a dedupe key and [updates] enabled)"
                ))
            }
            Some(_) => None,
        };
        if let Some(message) = problem {
            let (line, col) = rule.updates_of_at.unwrap_or((1, 1));
            problems.push(Diagnostic {
                file: dir
                    .join(format!("{}.toml", rule.source))
                    .display()
                    .to_string(),
                line,
                col,
                message,
            });
        }
    }
    problems
}

/// Decodes a query string or form body the way every rule expects: `+` is a space, names and
/// values percent-decoded once, malformed `%` kept literally, invalid UTF-8 as U+FFFD.
///
/// One exception keeps what arrived: a value that was, as sent, a whole unresolved macro
/// (`%%AFF_SUB%%`, `%ADV_SUB%`) is kept as that text instead of being decoded, since its `%AF`
/// or `%AD` would decode into a stray byte and turn a macro into a garbled "real" value. The
/// rules then see the macro and treat it as no value.
pub fn decode_form(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == b'&')
        .filter(|piece| !piece.is_empty())
        .filter_map(|piece| {
            let (name, value) = form_urlencoded::parse(piece).next()?;
            let raw = piece.splitn(2, |b| *b == b'=').nth(1).unwrap_or_default();
            let value = raw_macro(raw).unwrap_or_else(|| value.into_owned());
            Some((name.into_owned(), value))
        })
        .collect()
}

/// How a POST body's parameters are encoded (`map --content-type`, a test's `content_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`, decoded like a query string.
    Form,
    /// A flat JSON object.
    Json,
}

impl BodyKind {
    /// `"form"` or `"json"`.
    pub fn parse(text: &str) -> Option<BodyKind> {
        match text {
            "form" => Some(BodyKind::Form),
            "json" => Some(BodyKind::Json),
            _ => None,
        }
    }
}

/// A POST body's parameters, and which of them (indices into `pairs`) were JSON numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyParams {
    pub pairs: Vec<(String, String)>,
    /// A JSON number is read as a JSON number (dot decimal, exponent allowed), never through a
    /// field's `decimal`; its text is the canonical decimal (`1.500` -> `1.5`, `1e2` -> `100`).
    pub numbers: Vec<usize>,
}

/// Decodes a POST body's parameters as ingest does: a form like a query string; a flat JSON
/// object's members in order, strings as they are, `null` as empty, a number as its canonical
/// decimal text (marked in `numbers`), any other value as its JSON text (so a JSON-valued
/// member can be read with `json = "/pointer"`).
pub fn decode_body(body: &[u8], kind: BodyKind) -> Result<BodyParams, String> {
    match kind {
        BodyKind::Form => Ok(BodyParams {
            pairs: decode_form(body),
            numbers: Vec::new(),
        }),
        BodyKind::Json => {
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| format!("not JSON ({e}); expected a flat JSON object"))?;
            let serde_json::Value::Object(map) = value else {
                return Err("expected a flat JSON object of parameters".to_owned());
            };
            let mut out = BodyParams::default();
            for (i, (name, value)) in map.into_iter().enumerate() {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::Number(n) => {
                        let text = n.to_string();
                        match value::parse_json_number(&text) {
                            Ok(d) => {
                                out.numbers.push(i);
                                value::format_decimal(d)
                            }
                            Err(_) => text,
                        }
                    }
                    other => other.to_string(),
                };
                out.pairs.push((name, text));
            }
            Ok(out)
        }
    }
}

/// The name of the pair that a stored query ends with when some of its values were JSON
/// numbers: its value lists their positions among the stored pairs (`@json_numbers=2,3`), so a
/// replay reads them as the JSON numbers they were.
pub const JSON_NUMBERS_PARAM: &str = "@json_numbers";

/// Decodes a stored query: its pairs and the positions of JSON numbers (see
/// [`JSON_NUMBERS_PARAM`]), the marker itself removed.
pub fn decode_stored(query: &str) -> BodyParams {
    let mut pairs = decode_form(query.as_bytes());
    let mut numbers = Vec::new();
    if pairs.last().is_some_and(|(n, _)| n == JSON_NUMBERS_PARAM) {
        let (_, list) = pairs.pop().unwrap_or_default();
        numbers = list
            .split(',')
            .filter_map(|i| i.trim().parse::<usize>().ok())
            .filter(|i| *i < pairs.len())
            .collect();
    }
    BodyParams { pairs, numbers }
}

/// The value as sent (`+` read as a space, nothing percent-decoded) when it is a whole macro
/// that percent-decoding would change; `None` otherwise.
fn raw_macro(raw: &[u8]) -> Option<String> {
    if !raw.contains(&b'%') {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?.replace('+', " ");
    let text = text.trim();
    value::is_macro(text).then(|| text.to_owned())
}

/// The rule set in force, swapped whole on reload; a postback keeps the `Arc` it started with.
/// Reading it takes no lock (`arc_swap`): ingest never waits for a reload, nor a reload for
/// ingest.
#[derive(Debug, Default)]
pub struct LiveRules(arc_swap::ArcSwap<RuleSet>);

impl LiveRules {
    pub fn new(set: RuleSet) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(set))
    }

    /// The current set.
    pub fn current(&self) -> Arc<RuleSet> {
        self.0.load_full()
    }

    /// Installs a new, fully validated set.
    pub fn replace(&self, set: RuleSet) {
        self.0.store(Arc::new(set));
    }
}
