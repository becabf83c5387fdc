//! Compile a rule file: parse the TOML, check every key, name and value, and build the
//! [`Rule`] that `apply` runs. Every problem is collected with its `file:line:col`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use rust_decimal::Decimal;
use toml::Spanned;

use super::diag::{Diagnostic, Diagnostics};
use super::model::*;
use super::raw::{RawAuth, RawDedupe, RawField, RawForward, RawMatch, RawRule, RawSpec, RawTest};
use super::scaleo::{self, FieldType};
use super::value::{self, DecimalMode, TimeFormat};

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
    let raw: RawRule = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            diags.at(e.span(), e.message().trim().replace('\n', " "));
            return Err(diags.list);
        }
    };
    let rule = Compiler {
        diags: &mut diags,
        params: Default::default(),
        key_spans: HashMap::new(),
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
            placeholders: raw.params.placeholders,
        };

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
        if fields_at.is_some() && !fields.iter().any(|f| f.field == "click_id") {
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
        let tests = raw.tests.into_iter().filter_map(|t| self.test(t)).collect();

        let mut rule = Rule {
            source: source.to_string(),
            description: raw.description,
            auth,
            dedupe,
            forward,
            tests,
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
                let hint = scaleo::did_you_mean(name.get_ref(), scaleo::FIELDS.iter().copied())
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                self.err(
                    Some(at),
                    format!("{section}: {:?} is not a Scaleo conversion field{hint}; accepted fields are listed in SCALEO.md (click_id, revenue, payout, amount, conv_status, goal_id, goal_alias, adv_order_id, ...)", name.get_ref()),
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

    /// Compiles one field spec; `None` after reporting a problem.
    fn spec(
        &mut self,
        section: &str,
        field: &'static str,
        raw: RawField,
        at: Range<usize>,
    ) -> Option<Spec> {
        let ty = scaleo::field_type(field);
        let key = format!("{section}.{field}");
        let required = field == "click_id";
        let raw = match raw {
            RawField::Param(p) => RawSpec {
                from: Some(Spanned::new(at.clone(), super::raw::Names::One(p))),
                ..Default::default()
            },
            RawField::List(l) => RawSpec {
                from: Some(Spanned::new(at.clone(), super::raw::Names::Many(l))),
                ..Default::default()
            },
            RawField::Spec(s) => *s,
        };
        let before = self.diags.list.len();

        let given = [
            raw.from.is_some(),
            raw.value.is_some(),
            raw.template.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.err(Some(at.clone()), format!("{key}: give exactly one of `from` (parameter names), `value` (a constant) or `template`"));
            return None;
        }
        let default = raw
            .default
            .as_ref()
            .and_then(|d| self.constant(&key, "default", ty, field, d));
        if let Some(v) = &raw.value {
            let c = self.constant(&key, "value", ty, field, v)?;
            for (set, opt) in [
                (raw.map.is_some(), "map"),
                (raw.number.is_some(), "number"),
                (raw.time.is_some(), "time"),
                (raw.json.is_some(), "json"),
                (raw.default.is_some(), "default"),
                (raw.case.is_some(), "case"),
            ] {
                if set {
                    self.err(
                        Some(at.clone()),
                        format!("{key}: `{opt}` has no effect on a constant `value`; remove it"),
                    );
                }
            }
            return Some(Spec {
                ty,
                source: Source::Const(c),
                transform: Transform::default(),
                default: None,
                required,
            });
        }

        let source = if let Some(t) = &raw.template {
            Source::Template(self.template(&key, t)?)
        } else {
            let from = raw.from.as_ref()?;
            let list = match from.get_ref() {
                super::raw::Names::One(n) => vec![n.clone()],
                super::raw::Names::Many(v) => v.clone(),
            };
            if list.is_empty() {
                self.err(
                    span(from),
                    format!("{key}: the list of parameter names is empty; name at least one"),
                );
                return None;
            }
            let mut refs = Vec::new();
            for n in list {
                if n.starts_with('@') {
                    match Special::parse(&n) {
                        Some(s) => refs.push(ParamRef::Special(s)),
                        None => self.err(span(from), format!("{key}: {n:?} is not a request attribute; expected @client_ip, @user_agent, @referer or @received_at")),
                    }
                } else if n.trim().is_empty() {
                    self.err(span(from), format!("{key}: an empty parameter name"));
                } else {
                    refs.push(ParamRef::Param(self.norm(&n)));
                }
            }
            Source::Params(refs)
        };
        if raw.json.is_some() && raw.template.is_some() {
            self.err(
                Some(at.clone()),
                format!("{key}: `json` reads from a parameter; it cannot follow a template"),
            );
        }
        let transform = self.transform(&key, field, ty, &raw, at.clone());
        let required = required || raw.required.unwrap_or(false);
        if required && default.is_some() && field == "click_id" {
            self.err(Some(at.clone()), format!("{key}: a default click id would send conversions to a made-up click; remove `default`"));
        }
        (self.diags.list.len() == before).then_some(Spec {
            ty,
            source,
            transform,
            default,
            required,
        })
    }

    fn transform(
        &mut self,
        key: &str,
        field: &'static str,
        ty: FieldType,
        raw: &RawSpec,
        at: Range<usize>,
    ) -> Transform {
        let mut t = Transform {
            json: None,
            map: None,
            number: None,
            time: None,
            case: None,
        };
        if let Some(p) = &raw.json {
            let ptr = p.get_ref();
            if !(ptr.is_empty() || ptr.starts_with('/')) {
                self.err(span(p), format!("{key}.json = {ptr:?}: a JSON pointer starts with '/' (e.g. \"/af_order_id\")"));
            }
            t.json = Some(ptr.clone());
        }
        if raw.map.is_none() {
            for (set, opt, opt_at) in [
                (raw.ignore_case.is_some(), "ignore_case", None),
                (
                    raw.unmapped.is_some(),
                    "unmapped",
                    raw.unmapped.as_ref().map(|u| u.span()),
                ),
            ] {
                if set {
                    self.err(
                        opt_at.or(Some(at.clone())),
                        format!("{key}: `{opt}` only applies together with `map`"),
                    );
                }
            }
        }
        if let Some(m) = &raw.map {
            if raw.number.is_some() || raw.time.is_some() {
                self.err(span(m), format!("{key}: `map` gives the final value; it cannot be combined with `number` or `time`"));
            }
            let ignore_case = raw.ignore_case.unwrap_or(false);
            let mut entries = HashMap::new();
            for (k, v) in m.get_ref() {
                let out = self.constant(&format!("{key}.map"), &format!("{k:?}"), ty, field, v);
                if let Some(out) = out {
                    entries.insert(
                        if ignore_case {
                            k.to_lowercase()
                        } else {
                            k.clone()
                        },
                        out,
                    );
                }
            }
            let unmapped = match raw
                .unmapped
                .as_ref()
                .map(|u| (u.get_ref().as_str(), u.span()))
            {
                None | Some(("reject", _)) => Unmapped::Reject,
                Some(("keep", _)) => Unmapped::Keep,
                Some((v, at)) => {
                    match self.typed(&format!("{key}.unmapped"), ty, field, v, Some(at)) {
                        Some(out) => Unmapped::Value(out),
                        None => Unmapped::Reject,
                    }
                }
            };
            t.map = Some(MapRule {
                entries,
                ignore_case,
                unmapped,
            });
        }
        let wants_number =
            raw.number == Some(true) || (ty == FieldType::Number && raw.map.is_none());
        if raw.number == Some(true) && matches!(ty, FieldType::Integer | FieldType::Time) {
            self.err(
                Some(at.clone()),
                format!("{key}: `number` does not apply to {field} (an integer or a time)"),
            );
        }
        if wants_number {
            let decimal = match raw
                .decimal
                .as_ref()
                .map(|d| (d.get_ref().as_str(), d.span()))
            {
                None | Some(("auto", _)) => DecimalMode::Auto,
                Some(("dot", _)) => DecimalMode::Dot,
                Some(("comma", _)) => DecimalMode::Comma,
                Some((other, at)) => {
                    self.err(
                        Some(at),
                        format!(
                            "{key}.decimal = {other:?}: expected \"auto\", \"dot\" or \"comma\""
                        ),
                    );
                    DecimalMode::Auto
                }
            };
            let scale = raw.scale.as_ref().and_then(|s| {
                let text = toml_scalar_text(s.get_ref());
                match text.as_deref().map(|t| value::parse_decimal(t, DecimalMode::Dot)) {
                    Some(Ok(d)) if !d.is_zero() => Some(d),
                    _ => {
                        self.err(span(s), format!("{key}.scale = {}: expected a non-zero decimal such as \"0.01\" (cents to units)", s.get_ref()));
                        None
                    }
                }
            });
            t.number = Some(NumberRule { decimal, scale });
        } else {
            for (opt_at, opt) in [
                (raw.decimal.as_ref().map(|d| d.span()), "decimal"),
                (raw.scale.as_ref().map(|s| s.span()), "scale"),
            ] {
                if opt_at.is_some() {
                    self.err(opt_at, format!("{key}: `{opt}` needs `number = true`"));
                }
            }
        }
        let wants_time = raw.time.is_some() || (ty == FieldType::Time && raw.map.is_none());
        if wants_time {
            let format = match &raw.time {
                None => TimeFormat::Auto,
                Some(f) => value::TimeFormat::parse_spec(f.get_ref()).unwrap_or_else(|e| {
                    self.err(span(f), format!("{key}.time = {:?}: {e}", f.get_ref()));
                    TimeFormat::Auto
                }),
            };
            let tz = match &raw.tz {
                None => jiff::tz::TimeZone::UTC,
                Some(z) => value::parse_zone(z.get_ref()).unwrap_or_else(|e| {
                    self.err(span(z), format!("{key}.tz = {:?}: {e}", z.get_ref()));
                    jiff::tz::TimeZone::UTC
                }),
            };
            if wants_number {
                self.err(
                    Some(at.clone()),
                    format!("{key}: a field is either a `number` or a `time`, not both"),
                );
            }
            t.time = Some(TimeRule { format, tz });
        } else if let Some(z) = &raw.tz {
            self.err(span(z), format!("{key}.tz: `tz` needs `time`"));
        }
        if let Some(c) = &raw.case {
            t.case = match c.get_ref().as_str() {
                "upper" => Some(Case::Upper),
                "lower" => Some(Case::Lower),
                other => {
                    self.err(
                        span(c),
                        format!("{key}.case = {other:?}: expected \"upper\" or \"lower\""),
                    );
                    None
                }
            };
            if ty != FieldType::String || wants_number {
                self.err(
                    span(c),
                    format!("{key}.case: `case` applies to text fields only"),
                );
            }
        }
        t
    }

    fn template(&mut self, key: &str, t: &Spanned<String>) -> Option<Vec<Part>> {
        let mut parts = Vec::new();
        let mut rest = t.get_ref().as_str();
        while !rest.is_empty() {
            let Some(open) = rest.find(['{', '}']) else {
                parts.push(Part::Lit(rest.to_string()));
                break;
            };
            if rest[open..].starts_with('}') {
                self.err(
                    span(t),
                    format!("{key}.template: a '}}' without '{{' in {:?}", t.get_ref()),
                );
                return None;
            }
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                self.err(
                    span(t),
                    format!("{key}.template: an unclosed '{{' in {:?}", t.get_ref()),
                );
                return None;
            };
            let name = &after[..close];
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_-.$~[]".contains(c));
            if !plain {
                self.err(span(t), format!("{key}.template: {{{name}}} is not a plain parameter name (letters, digits, _ - . $ ~)"));
                return None;
            }
            parts.push(Part::Param(self.norm(name)));
            rest = &after[close + 1..];
        }
        if !parts.iter().any(|p| matches!(p, Part::Param(_))) {
            self.err(
                span(t),
                format!("{key}.template: names no parameter; use `value` for a constant"),
            );
            return None;
        }
        Some(parts)
    }

    /// A constant (`value`, `default`) of the field's type.
    fn constant(
        &mut self,
        key: &str,
        what: &str,
        ty: FieldType,
        field: &str,
        v: &Spanned<toml::Value>,
    ) -> Option<Out> {
        let Some(text) = toml_scalar_text(v.get_ref()) else {
            self.err(
                span(v),
                format!(
                    "{key}.{what}: expected a string or a number, found {}",
                    v.get_ref().type_str()
                ),
            );
            return None;
        };
        self.typed(&format!("{key}.{what}"), ty, field, &text, span(v))
    }

    /// Checks a constant text against the field's type and Scaleo's value set.
    fn typed(
        &mut self,
        key: &str,
        ty: FieldType,
        field: &str,
        text: &str,
        at: Option<Range<usize>>,
    ) -> Option<Out> {
        let out = match ty {
            FieldType::Number => value::parse_decimal(text, DecimalMode::Dot)
                .map(Out::Num)
                .map_err(|e| format!("{field} is a JSON number: {e}")),
            FieldType::Integer => text
                .trim()
                .parse::<i64>()
                .map(Out::Int)
                .map_err(|_| format!("{field} is a JSON integer (e.g. 12)")),
            FieldType::String | FieldType::Time => Ok(Out::Str(text.to_string())),
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                self.err(at, format!("{key} = {text:?}: {e}"));
                return None;
            }
        };
        if let (Some(allowed), Out::Str(s)) = (scaleo::allowed_values(field), &out)
            && !allowed.contains(&s.as_str())
        {
            self.err(
                at,
                format!(
                    "{key} = {s:?}: Scaleo accepts {field} values {}",
                    allowed.join(", ")
                ),
            );
            return None;
        }
        Some(out)
    }

    fn conditions(&mut self, key: &str, raw: RawMatch, at: Range<usize>) -> Vec<Condition> {
        if raw.is_empty() {
            self.err(
                Some(at),
                format!("{key}: empty; name at least one parameter and its value(s)"),
            );
        }
        raw.into_iter()
            .map(|(param, values)| Condition {
                param: self.norm(&param),
                values: values.into_vec(),
            })
            .collect()
    }

    fn env(&mut self, key: &str, v: &Spanned<String>, env: EnvMode) -> Option<String> {
        let text = v.get_ref();
        let Some(var) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
            return Some(text.clone());
        };
        if env == EnvMode::Ignore {
            return None;
        }
        match std::env::var(var) {
            Ok(val) if !val.is_empty() => Some(val),
            _ => {
                self.err(span(v), format!("{key}: environment variable {var} is not set (or empty); set it, or use --no-env to check without secrets"));
                None
            }
        }
    }

    fn auth(&mut self, raw: Option<RawAuth>, env: EnvMode) -> Auth {
        let Some(raw) = raw else {
            return Auth {
                token: None,
                token_param: "token".into(),
                allow_ips: Vec::new(),
            };
        };
        let token = raw
            .token
            .as_ref()
            .and_then(|t| self.env("auth.token", t, env));
        let token_param = raw
            .token_param
            .map(|p| p.into_inner())
            .unwrap_or_else(|| "token".into());
        let mut allow_ips = Vec::new();
        for ip in &raw.allow_ips {
            match crate::config::parse_cidr(ip.get_ref()) {
                Some(net) => allow_ips.push(net),
                None => self.err(span(ip), format!("auth.allow_ips: {:?} is not a CIDR or address (e.g. 203.0.113.0/24, 2001:db8::/32)", ip.get_ref())),
            }
        }
        Auth {
            token,
            token_param,
            allow_ips,
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
                        let hint = scaleo::did_you_mean(k.get_ref(), scaleo::FIELDS.iter().copied())
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

    fn forward(&mut self, raw: Option<RawForward>, env: EnvMode) -> ForwardOverride {
        let Some(raw) = raw else {
            return ForwardOverride::default();
        };
        if raw.rate_per_second.is_some() && raw.burst == Some(0) {
            self.err(None, "forward.burst = 0: expected at least 1");
        }
        let base_url = raw.base_url.as_ref().and_then(|u| {
            let url = u.get_ref();
            if url.starts_with("http://") || url.starts_with("https://") {
                Some(url.trim_end_matches('/').to_string())
            } else {
                self.err(
                    span(u),
                    format!("forward.base_url = {url:?}: expected an http:// or https:// URL"),
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
            burst: raw.burst,
            base_url,
            api_key,
        }
    }

    fn test(&mut self, raw: Spanned<RawTest>) -> Option<RuleTest> {
        let at = raw.span();
        let line = super::diag::line_col(self.diags_text(), at.start).0;
        let t = raw.into_inner();
        let key = format!("tests {:?}", t.name);
        let expect = match (t.expect, t.expect_reject, t.expect_skip) {
            (Some(body), None, None) => {
                let mut map = serde_json::Map::new();
                for (k, v) in body {
                    match toml_to_json(&v) {
                        Some(j) => {
                            map.insert(k, j);
                        }
                        None => self.err(
                            Some(at.clone()),
                            format!("{key}: expect.{k} must be a string or a number"),
                        ),
                    }
                }
                Expectation::Body(map)
            }
            (None, Some(r), None) => Expectation::Reject(r),
            (None, None, Some(s)) => Expectation::Skip(s),
            _ => {
                self.err(Some(at), format!("{key}: give exactly one of `expect` (the whole body), `expect_reject` or `expect_skip`"));
                return None;
            }
        };
        let received_at = t.received_at.and_then(|r| match r.parse::<jiff::Timestamp>() {
            Ok(ts) => Some(ts),
            Err(_) => {
                self.err(Some(at.clone()), format!("{key}: received_at = {r:?}: expected RFC 3339 such as 2024-05-20T10:00:00Z"));
                None
            }
        });
        Some(RuleTest {
            name: t.name,
            query: t.query,
            expect,
            client_ip: t.client_ip,
            user_agent: t.user_agent,
            referer: t.referer,
            received_at,
            line,
        })
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
            Source::Params(refs) => names.extend(refs.iter().filter_map(|r| match r {
                ParamRef::Param(p) => Some(p.clone()),
                ParamRef::Special(_) => None,
            })),
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
