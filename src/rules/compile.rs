//! Compile a rule file: parse the TOML, check every key, name and value, and build the
//! [`Rule`] that `apply` runs. Every problem is collected with its `file:line:col`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use rust_decimal::Decimal;
use toml::Spanned;

use super::diag::{Diagnostic, Diagnostics, did_you_mean};
use super::model::*;
use super::raw::{
    RawAlerts, RawAnswer, RawAuth, RawDedupe, RawField, RawForward, RawRule, RawTest,
};
use super::value;
use crate::scaleo;

mod condition;
mod field;
mod signature;
mod updates;

/// How `${VAR}` in `[auth]` and `[forward]` is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvMode {
    /// Read the environment; an unset variable is an error (`serve`, `check`).
    Resolve,
    /// Leave `[auth]` and `[forward]` secrets unread (`check --no-env`, `map`, `test`).
    Ignore,
}

const DEFAULT_DEDUPE: [&str; 4] = ["click_id", "goal_id", "goal_alias", "adv_order_id"];
const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// Compiles one file's text. `file` is the name used in diagnostics.
pub fn compile(
    source: &str,
    file: &str,
    text: &str,
    env: EnvMode,
) -> Result<Rule, Vec<Diagnostic>> {
    let mut diags = Diagnostics::new(file, text);
    if !valid_source_id(source) {
        diags.at(
            None,
            format!(
                "file name {source:?}: a source id must match [a-z0-9][a-z0-9_-]* (rename the file)"
            ),
        );
    }
    // Unknown keys are all reported, and the rest of the file is still checked without them.
    let raw: RawRule = match crate::toml_check::parse(text) {
        Ok(raw) => raw,
        Err(problems) => {
            for p in problems {
                diags.at(p.span, p.message);
            }
            diags.list.sort_by_key(|d| (d.line, d.col));
            return Err(diags.list);
        }
    };
    let rule = Compiler {
        diags: &mut diags,
        params: Default::default(),
        key_spans: HashMap::new(),
        token_param: String::new(),
        signature_param: None,
    }
    .rule(source, raw, env);
    // Report in file order, whatever order the checks ran in.
    diags.list.sort_by_key(|d| (d.line, d.col));
    if diags.list.is_empty() {
        Ok(rule)
    } else {
        Err(diags.list)
    }
}

/// `[a-z0-9][a-z0-9_-]*`.
pub fn valid_source_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

struct Compiler<'d, 'a> {
    diags: &'d mut Diagnostics<'a>,
    params: ParamPolicy,
    /// Where each `[fields]` key is written, for problems about a field as a whole.
    key_spans: HashMap<&'static str, Range<usize>>,
    /// `auth.token_param` (normalised): ingest never shows it to the rule.
    token_param: String,
    /// `auth.signature.param` (normalised), stripped like the token.
    signature_param: Option<String>,
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl<'a> Compiler<'_, 'a> {
    fn err(&mut self, at: Option<Range<usize>>, msg: impl Into<String>) {
        self.diags.at(at, msg);
    }

    fn rule(mut self, source: &str, raw: RawRule, env: EnvMode) -> Rule {
        self.params = ParamPolicy {
            ignore_case: raw.params.ignore_case,
            repeated: match raw
                .params
                .repeated
                .as_ref()
                .map(|r| (r.get_ref().as_str(), r.span()))
            {
                None | Some(("first", _)) => Repeated::First,
                Some(("last", _)) => Repeated::Last,
                Some(("reject", _)) => Repeated::Reject,
                Some((other, at)) => {
                    self.err(Some(at), format!("params.repeated = {other:?}: expected \"first\", \"last\" or \"reject\""));
                    Repeated::First
                }
            },
            placeholders: Vec::new(),
        };
        self.params.placeholders = self.placeholders(raw.params.placeholders);

        let token_param = raw
            .auth
            .as_ref()
            .and_then(|a| a.token_param.as_ref())
            .map_or("token", |p| p.get_ref().as_str());
        self.token_param = self.norm(token_param);
        self.signature_param = raw
            .auth
            .as_ref()
            .and_then(|a| a.signature.as_ref())
            .and_then(|s| Self::signature_param(s.get_ref()))
            .map(|p| self.norm(p));

        let fields_at = raw.fields.as_ref().map(|f| f.span());
        let fields = match raw.fields {
            Some(f) => self.fields("fields", f.into_inner()),
            None => {
                self.err(
                    None,
                    "missing [fields]: a rule needs at least `click_id = \"...\"`",
                );
                Vec::new()
            }
        };
        let (updates, of_at) = self.updates(source, raw.updates);
        if fields_at.is_some()
            && updates.only.is_none()
            && !fields.iter().any(|f| f.field == "click_id")
        {
            self.err(fields_at, "[fields] has no click_id: Scaleo needs it on every conversion (e.g. click_id = [\"clickid\", \"cid\"])");
        }
        let at = self.key_spans.get("goal_alias").cloned();
        self.goal_exclusivity("[fields]", &fields, at);

        let whens = raw
            .when
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let at = w.span();
                let w = w.into_inner();
                let conditions =
                    self.conditions(&format!("when[{i}].match"), w.matches, at.clone());
                let set = self.fields(&format!("when[{i}].set"), w.set);
                self.goal_exclusivity(&format!("[[when]] {}", i + 1), &set, Some(at));
                When { conditions, set }
            })
            .collect();
        let skips = raw
            .skip
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let at = s.span();
                let s = s.into_inner();
                let conditions = self.conditions(&format!("skip[{i}].match"), s.matches, at);
                Skip {
                    conditions,
                    reason: s.reason.unwrap_or_else(|| format!("skip rule {}", i + 1)),
                }
            })
            .collect();
        let auth = self.auth(raw.auth, env);
        let dedupe = self.dedupe(raw.dedupe);
        let forward = self.forward(raw.forward, env);
        let alerts = self.alerts(raw.alerts);
        let answer = self.answer(raw.answer);
        let tests = raw.tests.into_iter().filter_map(|t| self.test(t)).collect();

        let mut rule = Rule {
            source: source.to_string(),
            description: raw.description,
            auth,
            dedupe,
            updates,
            forward,
            alerts,
            answer,
            tests,
            updates_of_at: of_at.map(|at| super::diag::line_col(self.diags_text(), at.start)),
            params: self.params,
            fields,
            whens,
            skips,
            reads: Vec::new(),
        };
        rule.reads = reads(&rule);
        rule
    }

    fn norm(&self, name: &str) -> String {
        if self.params.ignore_case {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        }
    }

    fn fields(
        &mut self,
        section: &str,
        raw: BTreeMap<Spanned<String>, Spanned<RawField>>,
    ) -> Vec<FieldRule> {
        let mut out = Vec::new();
        for (name, spec) in raw {
            let at = name.span();
            let Some(field) = scaleo::field(name.get_ref()) else {
                let hint = did_you_mean(name.get_ref(), scaleo::FIELDS.iter().copied())
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                self.err(
                    Some(at),
                    format!("{section}: {:?} is not a Scaleo conversion field{hint}; `postback-relay fields` lists the accepted ones (click_id, revenue, payout, amount, conv_status, goal_id, goal_alias, adv_order_id, ...)", name.get_ref()),
                );
                continue;
            };
            if section == "fields" {
                self.key_spans.insert(field, at);
            }
            let spec_at = spec.span();
            if let Some(spec) = self.spec(section, field, spec.into_inner(), spec_at) {
                out.push(FieldRule { field, spec });
            }
        }
        out
    }

    /// A field that reads the token parameter would never get a value from a real postback.
    fn reads_token(&mut self, key: &str, name: &str, at: Option<Range<usize>>) {
        if self.signature_param.as_deref() == Some(name) {
            self.err(at.clone(), format!("{key}: {name:?} is the signature parameter (auth.signature.param), which ingest strips before mapping, so this field would never get its value"));
        }
        if name == self.token_param {
            self.err(at, format!("{key}: {name:?} is the token parameter (auth.token_param, default \"token\"), which ingest strips before mapping, so this field would never get its value; set auth.token_param to the parameter that carries the token"));
        }
    }

    fn goal_exclusivity(&mut self, section: &str, fields: &[FieldRule], at: Option<Range<usize>>) {
        let is_const = |name: &str| {
            fields
                .iter()
                .any(|f| f.field == name && matches!(f.spec.source, Source::Const(_)))
        };
        if is_const("goal_id") && is_const("goal_alias") {
            self.err(at, format!("{section} sets both goal_id and goal_alias as constants: Scaleo takes one or the other, never both (keep one, or set the other in a [[when]])"));
        }
    }

    fn env(&mut self, key: &str, v: &Spanned<String>, env: EnvMode) -> Option<String> {
        let text = v.get_ref();
        let Some(var) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
            return Some(text.clone());
        };
        self.env_var(key, var, span(v), env)
    }

    fn auth(&mut self, raw: Option<RawAuth>, env: EnvMode) -> Auth {
        let Some(raw) = raw else {
            return Auth {
                token: None,
                token_param: "token".into(),
                allow_ips: Vec::new(),
                signature: None,
            };
        };
        let token = raw
            .token
            .as_ref()
            .and_then(|t| self.env("auth.token", t, env));
        if let (Some(t), Some("")) = (&raw.token, token.as_deref()) {
            self.err(span(t), "auth.token is empty: it would let in any caller that sends an empty token parameter; set the token the advertiser sends (or \"${VAR}\"), or remove the key");
        }
        let token_param = raw
            .token_param
            .map(|p| p.into_inner())
            .unwrap_or_else(|| "token".into());
        let mut allow_ips = Vec::new();
        for ip in &raw.allow_ips {
            match crate::parse::parse_cidr(ip.get_ref()) {
                Some(net) => allow_ips.push(net),
                None => self.err(span(ip), format!("auth.allow_ips: {:?} is not a CIDR or address (e.g. 203.0.113.0/24, 2001:db8::/32)", ip.get_ref())),
            }
        }
        let signature = raw.signature.and_then(|s| self.signature(s, env));
        Auth {
            token,
            token_param,
            allow_ips,
            signature,
        }
    }

    fn dedupe(&mut self, raw: Option<RawDedupe>) -> Dedupe {
        let (key, window) = raw.map_or((None, None), |d| (d.key, d.window));
        let fields = match key {
            None => DEFAULT_DEDUPE.to_vec(),
            Some(list) => list
                .iter()
                .filter_map(|k| {
                    let f = scaleo::field(k.get_ref());
                    if f.is_none() {
                        let hint = did_you_mean(k.get_ref(), scaleo::FIELDS.iter().copied())
                            .map(|s| format!(" (did you mean {s:?}?)"))
                            .unwrap_or_default();
                        self.err(span(k), format!("dedupe.key: {:?} is not a Scaleo field{hint}; the key lists mapped fields", k.get_ref()));
                    }
                    f
                })
                .collect(),
        };
        let window = window.map_or(DEFAULT_WINDOW, |w| {
            value::parse_duration(w.get_ref()).unwrap_or_else(|e| {
                self.err(span(&w), format!("dedupe.window = {:?}: {e}", w.get_ref()));
                DEFAULT_WINDOW
            })
        });
        Dedupe { fields, window }
    }

    fn alerts(&mut self, raw: Option<RawAlerts>) -> Alerts {
        let silent_after =
            raw.and_then(|a| a.silent_after).and_then(|w| {
                match value::parse_duration(w.get_ref()) {
                    Ok(d) if d.is_zero() => {
                        self.err(
                            span(&w),
                            format!(
                                "alerts.silent_after = {:?}: expected more than zero (e.g. \"6h\")",
                                w.get_ref()
                            ),
                        );
                        None
                    }
                    Ok(d) => Some(d),
                    Err(e) => {
                        self.err(
                            span(&w),
                            format!("alerts.silent_after = {:?}: {e}", w.get_ref()),
                        );
                        None
                    }
                }
            });
        Alerts { silent_after }
    }

    fn forward(&mut self, raw: Option<RawForward>, env: EnvMode) -> ForwardOverride {
        let Some(raw) = raw else {
            return ForwardOverride::default();
        };
        if let Some(burst) = raw.burst.as_ref().filter(|b| *b.get_ref() == 0)
            && raw.rate_per_second.is_some()
        {
            self.err(span(burst), "forward.burst = 0: expected at least 1");
        }
        let base_url = raw.base_url.as_ref().and_then(|u| {
            let url = self.env("forward.base_url", u, env)?;
            if url.starts_with("http://") || url.starts_with("https://") {
                Some(url.trim_end_matches('/').to_string())
            } else {
                let written = u.get_ref();
                let what = if *written == url {
                    format!("{url:?}")
                } else {
                    format!("{written:?} (its value)")
                };
                self.err(
                    span(u),
                    format!("forward.base_url = {what}: expected an http:// or https:// URL"),
                );
                None
            }
        });
        let api_key = raw
            .api_key
            .as_ref()
            .and_then(|k| self.env("forward.api_key", k, env));
        ForwardOverride {
            rate_per_second: raw.rate_per_second,
            burst: raw.burst.map(Spanned::into_inner),
            base_url,
            api_key,
        }
    }

    fn answer(&mut self, raw: Option<RawAnswer>) -> AnswerRule {
        let Some(raw) = raw else {
            return AnswerRule::default();
        };
        let body = raw.body.as_ref().and_then(|t| {
            if t.get_ref().contains(['{', '}']) {
                self.template("answer.body", t)
            } else {
                Some(vec![Part::Lit(t.get_ref().clone())])
            }
        });
        let reject_ok = match raw.reject.as_ref().map(|r| (r.get_ref(), r.span())) {
            None | Some((toml::Value::Integer(422), _)) => false,
            Some((toml::Value::Integer(200), _)) => true,
            Some((other, at)) => {
                self.err(Some(at), format!("answer.reject = {other}: expected 422 (the default: a reject is an error the sender sees) or 200 (for senders that retry every non-2xx answer; the postback is still stored as rejected)"));
                false
            }
        };
        AnswerRule { body, reject_ok }
    }

    fn test(&mut self, raw: Spanned<RawTest>) -> Option<RuleTest> {
        let at = raw.span();
        let line = super::diag::line_col(self.diags_text(), at.start).0;
        let t = raw.into_inner();
        let key = format!("tests {:?}", t.name);
        let expect_body = |this: &mut Self, body: toml::Table| {
            let mut map = serde_json::Map::new();
            for (k, v) in body {
                match toml_to_json(&v) {
                    Some(j) => {
                        map.insert(k, j);
                    }
                    None => this.err(
                        Some(at.clone()),
                        format!("{key}: expect.{k} must be a string or a number"),
                    ),
                }
            }
            map
        };
        if let Some(outcome) = &t.expect_outcome {
            let Some(outcome) = ChangeOutcome::parse(outcome) else {
                self.err(Some(at), format!("{key}: expect_outcome = {outcome:?}: expected \"update\", \"stale\" or \"duplicate\""));
                return None;
            };
            if t.after.is_empty() {
                self.err(Some(at.clone()), format!("{key}: expect_outcome needs after = [\"query\", ...], the earlier postbacks of the conversion"));
            }
            if t.expect_reject.is_some() || t.expect_skip.is_some() {
                self.err(Some(at.clone()), format!("{key}: expect_outcome goes with `expect` (the fields the change sends) only"));
            }
            if t.expect.is_some() && outcome != ChangeOutcome::Update {
                self.err(
                    Some(at.clone()),
                    format!(
                        "{key}: `expect` with expect_outcome = {:?}: only an update sends fields",
                        outcome.as_str()
                    ),
                );
            }
            let change = t.expect.map(|b| expect_body(self, b));
            let body = self.test_body(&key, t.body, t.content_type, at.clone());
            return Some(RuleTest {
                body,
                name: t.name,
                query: t.query,
                expect: Expectation::Change { outcome, change },
                client_ip: t.client_ip,
                user_agent: t.user_agent,
                referer: t.referer,
                received_at: self.test_time(&key, t.received_at, &at),
                after: t.after,
                line,
            });
        }
        // `after` with `expect_reject`: a postback rejected once the conversion exists (an
        // update-only postback whose key finds none).
        if !t.after.is_empty() && t.expect_reject.is_none() {
            self.err(Some(at.clone()), format!("{key}: after = [...] needs expect_outcome = \"update\" | \"stale\" | \"duplicate\" (or expect_reject)"));
        }
        let expect = match (t.expect, t.expect_reject, t.expect_skip) {
            (Some(body), None, None) => Expectation::Body(expect_body(self, body)),
            (None, Some(r), None) => Expectation::Reject(r),
            (None, None, Some(s)) => Expectation::Skip(s),
            _ => {
                self.err(Some(at), format!("{key}: give exactly one of `expect` (the whole body), `expect_reject` or `expect_skip`"));
                return None;
            }
        };
        let received_at = self.test_time(&key, t.received_at, &at);
        let body = self.test_body(&key, t.body, t.content_type, at.clone());
        Some(RuleTest {
            body,
            name: t.name,
            query: t.query,
            expect,
            client_ip: t.client_ip,
            user_agent: t.user_agent,
            referer: t.referer,
            received_at,
            after: t.after,
            line,
        })
    }

    fn test_time(
        &mut self,
        key: &str,
        raw: Option<String>,
        at: &Range<usize>,
    ) -> Option<jiff::Timestamp> {
        raw.and_then(|r| match r.parse::<jiff::Timestamp>() {
            Ok(ts) => Some(ts),
            Err(_) => {
                self.err(
                    Some(at.clone()),
                    format!(
                        "{key}: received_at = {r:?}: expected RFC 3339 such as 2024-05-20T10:00:00Z"
                    ),
                );
                None
            }
        })
    }

    /// A test's `body` and `content_type` ("form" | "json"); a JSON body must be a flat
    /// object, checked now so that the test cannot fail for its own typo.
    fn test_body(
        &mut self,
        key: &str,
        body: Option<String>,
        content_type: Option<Spanned<String>>,
        at: Range<usize>,
    ) -> Option<(super::BodyKind, String)> {
        let kind = match &content_type {
            None => super::BodyKind::Form,
            Some(ct) => match super::BodyKind::parse(ct.get_ref()) {
                Some(kind) => kind,
                None => {
                    self.err(
                        span(ct),
                        format!(
                            "{key}: content_type = {:?}: expected \"form\" or \"json\"",
                            ct.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        let Some(body) = body else {
            if let Some(ct) = &content_type {
                self.err(span(ct), format!("{key}: content_type needs a `body`"));
            }
            return None;
        };
        if let Err(e) = super::decode_body(body.as_bytes(), kind) {
            self.err(Some(at), format!("{key}: body: {e}"));
            return None;
        }
        Some((kind, body))
    }

    fn diags_text(&self) -> &'a str {
        self.diags.text()
    }
}

/// The text of a TOML scalar: strings as they are, numbers in their shortest decimal form.
fn toml_scalar_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) if f.is_finite() => Some(f.to_string()),
        _ => None,
    }
}

/// An expected body value: strings stay strings, integers stay integers, floats become exact
/// decimals from their shortest text (`19.99`, never `19.990000000000002`).
fn toml_to_json(v: &toml::Value) -> Option<serde_json::Value> {
    match v {
        toml::Value::String(s) => Some(serde_json::Value::String(s.clone())),
        toml::Value::Integer(i) => Some((*i).into()),
        toml::Value::Float(f) if f.is_finite() => {
            let d: Decimal = f.to_string().parse().ok()?;
            Some(super::apply::decimal_json(d))
        }
        _ => None,
    }
}

/// Every parameter name the rule reads, for `repeated = "reject"`.
fn reads(rule: &Rule) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let specs = rule
        .fields
        .iter()
        .chain(rule.whens.iter().flat_map(|w| w.set.iter()));
    for f in specs {
        match &f.spec.source {
            Source::Params(refs) => {
                for r in refs {
                    match r {
                        ParamRef::Param(p) => names.push(p.clone()),
                        ParamRef::Template(parts) => {
                            names.extend(parts.iter().filter_map(|p| match p {
                                Part::Param(p) => Some(p.clone()),
                                Part::Lit(_) => None,
                            }))
                        }
                        ParamRef::Special(_) | ParamRef::Const(_) => {}
                    }
                }
            }
            Source::Template(parts) => names.extend(parts.iter().filter_map(|p| match p {
                Part::Param(p) => Some(p.clone()),
                Part::Lit(_) => None,
            })),
            Source::Const(_) => {}
        }
    }
    let conds = rule
        .whens
        .iter()
        .flat_map(|w| &w.conditions)
        .chain(rule.skips.iter().flat_map(|s| &s.conditions));
    names.extend(conds.map(|c| c.param.clone()));
    names.sort();
    names.dedup();
    names
}
