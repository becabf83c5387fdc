//! Compiling one field spec: its source (parameters, constant, template), its transforms
//! (json, map, number, time, case) and the typed constants, checked against Scaleo's field.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::{Compiler, span, toml_scalar_text};
use crate::rules::model::*;
use crate::rules::raw::{Alts, Names, RawAlt, RawField, RawSpec};
use crate::rules::value::{self, DecimalMode, TimeFormat};
use crate::scaleo::{self, FieldType};

impl Compiler<'_, '_> {
    pub(super) fn spec(
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
                from: Some(Spanned::new(at.clone(), Alts::One(p))),
                ..Default::default()
            },
            RawField::List(l) => RawSpec {
                from: Some(Spanned::new(at.clone(), Alts::Many(l))),
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
                (raw.regex.is_some(), "regex"),
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
                Alts::One(n) => vec![RawAlt::Name(n.clone())],
                Alts::Many(v) => v.clone(),
            };
            if list.is_empty() {
                self.err(
                    span(from),
                    format!("{key}: the list of parameter names is empty; name at least one"),
                );
                return None;
            }
            let mut refs = Vec::new();
            for alt in list {
                let n = match alt {
                    RawAlt::Name(n) => n,
                    RawAlt::Template(t) => {
                        if raw.json.is_some() {
                            self.err(span(from), format!("{key}: `json` reads from a parameter; a list with `json` cannot hold a template"));
                        }
                        let t = Spanned::new(from.span(), t);
                        if let Some(parts) = self.template(&key, &t) {
                            refs.push(ParamRef::Template(parts));
                        }
                        continue;
                    }
                    RawAlt::Value(v) => {
                        let v = Spanned::new(from.span(), v);
                        if let Some(out) = self.constant(&key, "value", ty, field, &v) {
                            refs.push(ParamRef::Const(out));
                        }
                        continue;
                    }
                };
                if n.starts_with('@') {
                    match Special::parse(&n) {
                        Some(s) => refs.push(ParamRef::Special(s)),
                        None => self.err(span(from), format!("{key}: {n:?} is not a request attribute; expected @client_ip, @user_agent, @referer or @received_at")),
                    }
                } else if n.trim().is_empty() {
                    self.err(span(from), format!("{key}: an empty parameter name"));
                } else {
                    let n = self.norm(&n);
                    self.reads_token(&key, &n, span(from));
                    refs.push(ParamRef::Param(n));
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
            regex: None,
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
        if let Some(r) = &raw.regex {
            t.regex = self.regex(key, r);
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
            let mut entries: HashMap<String, Out> = HashMap::new();
            let mut written: HashMap<String, &String> = HashMap::new();
            for (k, v) in m.get_ref() {
                let out = self.constant(&format!("{key}.map"), &format!("{k:?}"), ty, field, v);
                if let Some(out) = out {
                    let lookup = if ignore_case {
                        k.to_lowercase()
                    } else {
                        k.clone()
                    };
                    match entries.get(&lookup) {
                        Some(earlier) if *earlier != out => {
                            let first = written.get(&lookup).map_or(k, |w| *w);
                            self.err(span(m), format!("{key}.map: the keys {first:?} and {k:?} are the same key with ignore_case = true but map to different values; keep one"));
                        }
                        _ => {
                            written.insert(lookup.clone(), k);
                            entries.insert(lookup, out);
                        }
                    }
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
        if let (Some(f), FieldType::Integer) = (&raw.time, ty) {
            self.err(
                span(f),
                format!("{key}.time: `time` does not apply to {field}: it is a JSON integer, and a time is sent as a \"Y-m-d H:i:s\" string"),
            );
        }
        let wants_time = raw.time.is_some() || (ty == FieldType::Time && raw.map.is_none());
        if wants_time {
            let format = match &raw.time {
                None => TimeFormat::Auto,
                Some(f) => {
                    let parsed = match f.get_ref() {
                        Names::One(one) => value::TimeFormat::parse_spec(one)
                            .map_err(|e| format!("{key}.time = {one:?}: {e}")),
                        Names::Many(list) => value::TimeFormat::parse_specs(list)
                            .map_err(|e| format!("{key}.time: {e}")),
                    };
                    parsed.unwrap_or_else(|e| {
                        self.err(span(f), e);
                        TimeFormat::Auto
                    })
                }
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
            self.case_keeps_scaleo_values(key, field, &t, span(c));
        }
        t
    }

    /// `case` runs after `map`: the mapped values of a field whose values Scaleo knows
    /// (`conv_status`, `deliver_lead`) must still be in Scaleo's set once the case is applied.
    fn case_keeps_scaleo_values(
        &mut self,
        key: &str,
        field: &str,
        t: &Transform,
        at: Option<Range<usize>>,
    ) {
        let (Some(allowed), Some(case), Some(map)) =
            (scaleo::allowed_values(field), t.case, &t.map)
        else {
            return;
        };
        let unmapped = match &map.unmapped {
            Unmapped::Value(v) => Some(v),
            _ => None,
        };
        let mut bad: Vec<String> = map
            .entries
            .values()
            .chain(unmapped)
            .filter_map(|out| match out {
                Out::Str(s) => Some(match case {
                    Case::Upper => s.to_uppercase(),
                    Case::Lower => s.to_lowercase(),
                }),
                _ => None,
            })
            .filter(|s| !allowed.contains(&s.as_str()))
            .collect();
        bad.sort();
        bad.dedup();
        if !bad.is_empty() {
            self.err(
                at,
                format!(
                    "{key}.case: applied after `map`, it would send {} for {field}, which Scaleo does not accept (it accepts {}); remove `case` or use \"lower\"",
                    bad.iter().map(|b| format!("{b:?}")).collect::<Vec<_>>().join(", "),
                    allowed.join(", ")
                ),
            );
        }
    }

    /// `regex = "..."`: compiled now, with exactly one capture group.
    fn regex(&mut self, key: &str, r: &Spanned<String>) -> Option<regex::Regex> {
        let pattern = r.get_ref();
        match regex::Regex::new(pattern) {
            Ok(re) if re.captures_len() == 2 => Some(re),
            Ok(re) => {
                self.err(span(r), format!("{key}.regex = {pattern:?}: has {} capture groups; it needs exactly one, around the part to keep (e.g. \"gid://shopify/Order/(\\\\d+)\"; use (?:...) for groups that only group)", re.captures_len() - 1));
                None
            }
            Err(e) => {
                let why = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                self.err(span(r), format!("{key}.regex = {pattern:?}: not a valid regular expression ({why}); write it in Rust regex syntax with one capture group, e.g. \"gid://shopify/Order/(\\\\d+)\""));
                None
            }
        }
    }

    pub(super) fn template(&mut self, key: &str, t: &Spanned<String>) -> Option<Vec<Part>> {
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
            let name = self.norm(name);
            self.reads_token(key, &name, span(t));
            parts.push(Part::Param(name));
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
            FieldType::Time => jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text)
                .map(|_| Out::Str(text.to_string()))
                .map_err(|_| {
                    format!("{field} is sent as written, so a constant must be Scaleo's \"Y-m-d H:i:s\" (e.g. 2024-05-20 10:00:00)")
                }),
            FieldType::String => Ok(Out::Str(text.to_string())),
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
}
