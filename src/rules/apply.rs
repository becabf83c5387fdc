//! Apply a compiled rule to one postback: skip rules, fields, `[[when]]` overrides, then
//! validation. Pure and total: any input gives an [`Outcome`], never a panic or an I/O call.

use std::borrow::Cow;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::model::*;
use super::value::{self, NoValue, TimeFormat};
use crate::scaleo::{self, FieldType};

mod condition;

use condition::json_at;

/// One postback as the rules see it: decoded parameters in order plus request attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Input<'a> {
    /// Form-decoded (name, value) pairs in arrival order, values not yet trimmed.
    pub params: &'a [(String, String)],
    /// Indices into `params` of values that came as JSON numbers (a JSON body's members):
    /// read as JSON numbers, never through a field's `decimal`.
    pub json_numbers: &'a [usize],
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub received_at: Option<Timestamp>,
}

/// What a rule made of a postback.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Forward(Mapped),
    Skip { reason: String },
    Reject { reason: String },
}

/// A body ready for Scaleo.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub body: Map<String, Value>,
    /// Always present except in an update-only source (`[updates] only = true`).
    pub click_id: Option<String>,
    /// The dedupe identity (source and key fields), `None` when the rule turns dedupe off.
    pub dedupe_key: Option<String>,
}

/// Where a field's value came from, for `explain`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Param { name: String },
    Template,
    Constant,
    Default,
}

/// A value that was present but counted as no value, for `explain`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ignored {
    pub param: String,
    pub value: String,
    pub why: &'static str,
}

/// One field's story, for `explain`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldTrace {
    pub field: &'static str,
    /// `None` for `[fields]`, the index of the `[[when]]` otherwise.
    pub when: Option<usize>,
    pub origin: Option<Origin>,
    pub value: Option<Value>,
    pub ignored: Vec<Ignored>,
    pub error: Option<String>,
}

/// Everything `explain` shows about one postback.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Trace {
    pub skip_matched: Option<usize>,
    pub when_matched: Vec<usize>,
    pub fields: Vec<FieldTrace>,
}

type Slot = Result<Option<Out>, String>;

struct Ctx<'a, 'r> {
    rule: &'r Rule,
    input: &'a Input<'a>,
    zone: &'a TimeZone,
    trace: Option<&'a mut Trace>,
}

impl Rule {
    /// Maps one postback. `zone` is the network's time zone for `timestamp` outputs.
    pub fn apply(&self, input: &Input<'_>, zone: &TimeZone) -> Outcome {
        Ctx {
            rule: self,
            input,
            zone,
            trace: None,
        }
        .run()
    }

    /// Maps one postback and records how each field got its value.
    pub fn explain(&self, input: &Input<'_>, zone: &TimeZone) -> (Outcome, Trace) {
        let mut trace = Trace::default();
        let outcome = Ctx {
            rule: self,
            input,
            zone,
            trace: Some(&mut trace),
        }
        .run();
        (outcome, trace)
    }

    /// The click id the rule resolves for this postback, whatever the outcome (a rejected
    /// postback is still findable by its click id).
    pub fn resolve_click_id(&self, input: &Input<'_>) -> Option<String> {
        let mut ctx = Ctx {
            rule: self,
            input,
            zone: &TimeZone::UTC,
            trace: None,
        };
        let mut spec = self.fields.iter().find(|f| f.field == "click_id");
        for w in self.whens.iter().filter(|w| ctx.matches(&w.conditions)) {
            if let Some(f) = w.set.iter().find(|f| f.field == "click_id") {
                spec = Some(f);
            }
        }
        match ctx.eval(spec?, None) {
            Ok(Some(Out::Str(s))) => Some(s),
            _ => None,
        }
    }

    /// The `[answer] body` for this postback (`None` when the rule sets none); a parameter
    /// without a value is empty in it.
    pub fn answer_body(&self, input: &Input<'_>) -> Option<String> {
        let parts = self.answer.body.as_ref()?;
        let ctx = Ctx {
            rule: self,
            input,
            zone: &TimeZone::UTC,
            trace: None,
        };
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Param(name) => out.push_str(ctx.param(name).unwrap_or("")),
            }
        }
        Some(out)
    }

    /// `[params].ignore_case`: parameter names (the token's too) match case-insensitively.
    pub fn params_ignore_case(&self) -> bool {
        self.params.ignore_case
    }

    /// Whether `name` is a parameter name this rule reads (after `ignore_case`).
    pub fn names_param(&self, name: &str) -> bool {
        let n = if self.params.ignore_case {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        self.reads.binary_search(&n).is_ok()
    }
}

impl<'a> Ctx<'a, '_> {
    fn run(mut self) -> Outcome {
        let rule = self.rule;
        if let Some((i, skip)) = rule
            .skips
            .iter()
            .enumerate()
            .find(|(_, s)| self.matches(&s.conditions))
        {
            if let Some(t) = self.trace.as_deref_mut() {
                t.skip_matched = Some(i);
            }
            return Outcome::Skip {
                reason: skip.reason.clone(),
            };
        }
        if rule.params.repeated == Repeated::Reject
            && let Some((name, n)) = rule
                .reads
                .iter()
                .map(|r| (r, self.count(r)))
                .find(|(_, n)| *n > 1)
        {
            return reject(format!(
                "parameter {name} occurs {n} times and params.repeated = \"reject\""
            ));
        }

        let mut slots: Vec<(&FieldRule, Slot)> = Vec::with_capacity(rule.fields.len() + 2);
        for f in &rule.fields {
            let v = self.eval(f, None);
            slots.push((f, v));
        }
        for (i, w) in rule.whens.iter().enumerate() {
            if !self.matches(&w.conditions) {
                continue;
            }
            if let Some(t) = self.trace.as_deref_mut() {
                t.when_matched.push(i);
            }
            for f in &w.set {
                let v = self.eval(f, Some(i));
                let other = match f.field {
                    "goal_id" => Some("goal_alias"),
                    "goal_alias" => Some("goal_id"),
                    _ => None,
                };
                // A goal set by this same [[when]] stays: if both get values, the body
                // check below rejects instead of one silently replacing the other.
                slots.retain(|(s, _)| {
                    s.field != f.field
                        && (Some(s.field) != other || w.set.iter().any(|g| g.field == s.field))
                });
                slots.push((f, v));
            }
        }

        let mut body = Map::new();
        for (f, slot) in slots {
            match slot {
                Err(reason) => return reject(reason),
                Ok(None)
                    if f.spec.required
                        || (f.field == "click_id" && rule.updates.only.is_none()) =>
                {
                    return reject(self.missing(f.field, &f.spec.source));
                }
                Ok(None) => {}
                Ok(Some(out)) => {
                    body.insert(f.field.to_string(), out_json(out));
                }
            }
        }
        if body.contains_key("goal_id") && body.contains_key("goal_alias") {
            return reject("goal_id and goal_alias: the body would carry both; Scaleo takes one (use a [[when]] to choose)".into());
        }
        if let Some(only) = &rule.updates.only
            && let Err(reason) = crate::lifecycle::Lookup::of_body(only, &body)
        {
            return reject(reason);
        }
        let click_id = match body.get("click_id") {
            // A constant or default of "" or spaces is no click id either.
            Some(Value::String(c)) if c.trim().is_empty() => {
                return reject(format!(
                    "click_id: {c:?} is blank (a constant or default of the rule); a click id is required"
                ));
            }
            Some(Value::String(c)) => Some(c.clone()),
            _ if rule.updates.only.is_some() => None,
            _ => return reject("click_id: required, but the rule gives it no value".into()),
        };
        let dedupe_key = (!rule.dedupe.fields.is_empty()).then(|| {
            let mut key = rule.source.clone();
            for f in &rule.dedupe.fields {
                key.push('\u{1f}');
                key.push_str(f);
                key.push('=');
                if let Some(v) = body.get(*f) {
                    key.push_str(&v.to_string());
                }
            }
            key
        });
        Outcome::Forward(Mapped {
            body,
            click_id,
            dedupe_key,
        })
    }

    /// Why a required field has no value, naming the parameters of the spec that was used
    /// (the `[fields]` one or a matched `[[when]]`'s).
    fn missing(&self, field: &str, source: &Source) -> String {
        let names: Vec<String> = match source {
            Source::Params(refs) => refs
                .iter()
                .flat_map(|r| match r {
                    ParamRef::Template(parts) => param_names(parts),
                    ParamRef::Const(_) => Vec::new(),
                    other => vec![ref_name(other)],
                })
                .collect(),
            Source::Template(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Param(p) => Some(p.clone()),
                    Part::Lit(_) => None,
                })
                .collect(),
            Source::Const(_) => Vec::new(),
        };
        let mut names = names;
        let mut unique = std::collections::HashSet::new();
        names.retain(|n| unique.insert(n.clone()));
        let seen: Vec<String> = names
            .iter()
            .map(|n| match self.param(n) {
                None => format!("{n} (absent)"),
                Some(v) => {
                    let why = value::no_value(v, &self.rule.params.placeholders)
                        .map_or("present", NoValue::describe);
                    format!("{n}={v:?} ({why})")
                }
            })
            .collect();
        if names.iter().all(|n| self.param(n).is_none()) {
            format!(
                "{field}: required, but no value: none of {} is present",
                names.join(", ")
            )
        } else {
            format!("{field}: required, but no value: {}", seen.join(", "))
        }
    }

    /// The decoded, trimmed value of a parameter per `[params]` (first or last occurrence).
    fn param(&self, name: &str) -> Option<&'a str> {
        self.param_hit(name).map(|(_, v)| v)
    }

    /// [`Self::param`] and, when the value came as a JSON number, that number.
    fn param_typed(&self, name: &str) -> Option<(&'a str, Option<Decimal>)> {
        self.param_hit(name).map(|(i, v)| {
            let number = self
                .input
                .json_numbers
                .contains(&i)
                .then(|| value::parse_json_number(v).ok())
                .flatten();
            (v, number)
        })
    }

    fn param_hit(&self, name: &str) -> Option<(usize, &'a str)> {
        let ic = self.rule.params.ignore_case;
        let mut hits = self.input.params.iter().enumerate().filter(|(_, (n, _))| {
            if ic {
                n.eq_ignore_ascii_case(name)
            } else {
                n == name
            }
        });
        let hit = match self.rule.params.repeated {
            Repeated::Last => hits.next_back(),
            Repeated::First | Repeated::Reject => hits.next(),
        };
        hit.map(|(i, (_, v))| (i, v.trim()))
    }

    fn count(&self, name: &str) -> usize {
        let ic = self.rule.params.ignore_case;
        self.input
            .params
            .iter()
            .filter(|(n, _)| {
                if ic {
                    n.eq_ignore_ascii_case(name)
                } else {
                    n == name
                }
            })
            .count()
    }

    fn matches(&self, conds: &[Condition]) -> bool {
        conds.iter().all(|c| self.condition(c))
    }

    fn special(&self, s: Special) -> Option<String> {
        match s {
            Special::ClientIp => self.input.client_ip.map(str::to_string),
            Special::UserAgent => self.input.user_agent.map(str::to_string),
            Special::Referer => self.input.referer.map(str::to_string),
            Special::ReceivedAt => self.input.received_at.map(|t| t.to_string()),
        }
    }

    /// Evaluates one field spec: `Ok(None)` for no value (after `default`).
    fn eval(&mut self, f: &FieldRule, when: Option<usize>) -> Slot {
        let mut ft = FieldTrace {
            field: f.field,
            when,
            origin: None,
            value: None,
            ignored: Vec::new(),
            error: None,
        };
        let spec = &f.spec;
        let tracing = self.trace.is_some();
        let found: Result<Option<Found<'a, '_>>, String> = match &spec.source {
            Source::Const(out) => {
                ft.origin = Some(Origin::Constant);
                return self.finish(ft, Ok(Some(out.clone())));
            }
            Source::Params(refs) => {
                let mut found = Ok(None);
                for r in refs {
                    let (v, received_at, number) = match r {
                        ParamRef::Param(p) => match self.param_typed(p) {
                            Some((v, number)) => (Cow::Borrowed(v), false, number),
                            None => continue,
                        },
                        ParamRef::Special(s) => match self.special(*s) {
                            Some(v) => (
                                Cow::Owned(v.trim().to_string()),
                                *s == Special::ReceivedAt,
                                None,
                            ),
                            None => continue,
                        },
                        ParamRef::Template(parts) => match self.template(parts, &mut ft) {
                            Some(v) => (Cow::Owned(v), false, None),
                            None => continue,
                        },
                        ParamRef::Const(out) => {
                            ft.origin = Some(Origin::Constant);
                            return self.finish(ft, Ok(Some(out.clone())));
                        }
                    };
                    if let Some(why) = value::no_value(&v, &self.rule.params.placeholders) {
                        if tracing {
                            ft.ignored.push(Ignored {
                                param: ref_name(r),
                                value: v.into_owned(),
                                why: why.describe(),
                            });
                        }
                        continue;
                    }
                    let Some(ptr) = &spec.transform.json else {
                        found = Ok(Some(Found {
                            from: Some(r),
                            text: v,
                            number,
                            received_at,
                        }));
                        break;
                    };
                    match json_at(&v, ptr) {
                        Err(e) => {
                            found = Err(format!(
                                "{}: parameter {} = {v:?}: {e}",
                                f.field,
                                ref_name(r)
                            ));
                            break;
                        }
                        Ok(None) => {
                            if tracing {
                                ft.ignored.push(Ignored {
                                    param: ref_name(r),
                                    value: v.into_owned(),
                                    why: "the JSON pointer finds nothing or null",
                                });
                            }
                        }
                        Ok(Some(j))
                            if value::no_value(&j.text, &self.rule.params.placeholders)
                                .is_some() =>
                        {
                            if tracing {
                                ft.ignored.push(Ignored {
                                    param: ref_name(r),
                                    value: j.text,
                                    why: "no value at the JSON pointer",
                                });
                            }
                        }
                        Ok(Some(j)) => {
                            found = Ok(Some(Found {
                                from: Some(r),
                                text: Cow::Owned(j.text),
                                number: j.number,
                                received_at,
                            }));
                            break;
                        }
                    }
                }
                found
            }
            Source::Template(parts) => Ok(self.template(parts, &mut ft).map(|s| Found {
                from: None,
                text: Cow::Owned(s),
                number: None,
                received_at: false,
            })),
        };
        let result = match found {
            Err(e) => Err(e),
            Ok(Some(found)) => {
                let r = found.from.filter(|r| !matches!(r, ParamRef::Template(_)));
                if tracing {
                    ft.origin =
                        Some(r.map_or(Origin::Template, |r| Origin::Param { name: ref_name(r) }));
                }
                self.transform(f.field, spec, &found).map_err(|e| {
                    let what = r.map_or_else(
                        || "template value".to_string(),
                        |r| format!("parameter {}", ref_name(r)),
                    );
                    format!("{}: {what} = {:?}: {e}", f.field, found.text)
                })
            }
            Ok(None) => match &spec.default {
                Some(d) => {
                    ft.origin = Some(Origin::Default);
                    Ok(Some(d.clone()))
                }
                None => Ok(None),
            },
        };
        self.finish(ft, result)
    }

    fn finish(&mut self, mut ft: FieldTrace, result: Slot) -> Slot {
        if let Some(t) = self.trace.as_deref_mut() {
            match &result {
                Ok(v) => ft.value = v.clone().map(out_json),
                Err(e) => ft.error = Some(e.clone()),
            }
            t.fields.push(ft);
        }
        result
    }

    fn template(&self, parts: &[Part], ft: &mut FieldTrace) -> Option<String> {
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Param(name) => {
                    let v = self.param(name)?;
                    if let Some(why) = value::no_value(v, &self.rule.params.placeholders) {
                        ft.ignored.push(Ignored {
                            param: name.clone(),
                            value: v.to_string(),
                            why: why.describe(),
                        });
                        return None;
                    }
                    out.push_str(v);
                }
            }
        }
        Some(out)
    }

    /// regex, map, number or time, type, case, then Scaleo's value set (the JSON pointer
    /// was followed when the value was found).
    fn transform(&self, field: &str, spec: &Spec, found: &Found<'_, '_>) -> Slot {
        let t = &spec.transform;
        let mut text: &str = &found.text;
        let mut json_number = found.number;
        if let Some(re) = &t.regex {
            text = re
                .captures(text)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str())
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    format!(
                        "does not match regex {:?} (its capture group must match)",
                        re.as_str()
                    )
                })?;
            json_number = None;
        }
        let received_at = found.received_at;
        let mut out = if let Some(m) = &t.map {
            let key = if m.ignore_case {
                text.to_lowercase()
            } else {
                text.to_string()
            };
            match (m.entries.get(&key), &m.unmapped) {
                (Some(o), _) => o.clone(),
                (None, Unmapped::Value(o)) => o.clone(),
                (None, Unmapped::Keep) => typed_found(spec.ty, text, json_number)?,
                (None, Unmapped::Reject) => {
                    let mut known: Vec<&str> = m.entries.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(format!(
                        "not in the map (known: {}; set unmapped = \"keep\" or a value to accept others)",
                        known.join(", ")
                    ));
                }
            }
        } else if let Some(n) = &t.number {
            let parsed = match json_number {
                Some(d) => d,
                None => value::parse_decimal(text, n.decimal)?,
            };
            match (spec.ty, n.scale) {
                (FieldType::Number, None) => Out::Num(parsed),
                (FieldType::Number, Some(s)) => Out::Num(value::scale_decimal(parsed, s)?),
                (_, None) if json_number.is_some() => Out::Str(value::format_decimal(parsed)),
                (_, None) => Out::Str(written_decimals(text, parsed)),
                (_, Some(s)) => Out::Str(value::format_decimal(value::scale_decimal(parsed, s)?)),
            }
        } else if let Some(tr) = &t.time {
            let format = if received_at {
                &TimeFormat::Rfc3339
            } else {
                &tr.format
            };
            // A JSON number (`1.7e9`) is read by its value, as plain digits.
            let plain = json_number.map(value::format_decimal);
            let at = value::parse_time(plain.as_deref().unwrap_or(text), format, &tr.tz)?;
            Out::Str(value::format_scaleo_time(at, self.zone))
        } else {
            typed_found(spec.ty, text, json_number)?
        };
        if let (Some(case), Out::Str(s)) = (t.case, &mut out) {
            *s = match case {
                Case::Upper => s.to_uppercase(),
                Case::Lower => s.to_lowercase(),
            };
        }
        if let (Some(allowed), Out::Str(s)) = (scaleo::allowed_values(field), &out)
            && !allowed.contains(&s.as_str())
        {
            return Err(format!(
                "{s:?} is not a value Scaleo accepts for {field} ({})",
                allowed.join(", ")
            ));
        }
        Ok(Some(out))
    }
}

/// [`typed`], except that a JSON number found under `json` is read as the number it is
/// (`1e1` and `12.0` are the integers 10 and 12, as in a flat JSON body).
fn typed_found(ty: FieldType, text: &str, json_number: Option<Decimal>) -> Result<Out, String> {
    match (ty, json_number) {
        (FieldType::Number, Some(d)) => Ok(Out::Num(d)),
        (FieldType::Integer, Some(d)) if d.fract().is_zero() => i64::try_from(d.trunc())
            .map(Out::Int)
            .map_err(|_| "not an integer (goal_id is a JSON integer)".to_string()),
        _ => typed(ty, text),
    }
}

/// A present value converted to the field's JSON type.
fn typed(ty: FieldType, text: &str) -> Result<Out, String> {
    match ty {
        FieldType::Integer => text
            .parse::<i64>()
            .map(Out::Int)
            .map_err(|_| "not an integer (goal_id is a JSON integer)".to_string()),
        FieldType::Number => value::parse_decimal(text, value::DecimalMode::Auto).map(Out::Num),
        FieldType::String | FieldType::Time => Ok(Out::Str(text.to_string())),
    }
}

/// `number = true` on a text field: the canonical text of `parsed`, keeping the decimal
/// places as written (`"12,50"` -> `"12.50"`), which `parse_decimal` normalises away.
fn written_decimals(text: &str, parsed: Decimal) -> String {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let places = text.rfind(['.', ',']).map_or(0, |i| {
        text[i..].chars().filter(char::is_ascii_digit).count()
    });
    let as_written = u32::try_from(places)
        .ok()
        .filter(|p| (1..=Decimal::MAX_SCALE).contains(p))
        .and_then(|p| Decimal::try_from_i128_with_scale(digits.parse().ok()?, p).ok());
    match as_written {
        // The last separator was the decimal one (not a thousands separator).
        Some(w) if w == parsed.abs() && parsed.scale() <= w.scale() => {
            let mut out = parsed;
            out.rescale(w.scale());
            out.to_string()
        }
        _ => value::format_decimal(parsed),
    }
}

fn ref_name(r: &ParamRef) -> String {
    match r {
        ParamRef::Param(p) => p.clone(),
        ParamRef::Special(s) => s.name().to_string(),
        ParamRef::Template(parts) => format!("template {:?}", template_text(parts)),
        ParamRef::Const(_) => "constant".to_string(),
    }
}

fn param_names(parts: &[Part]) -> Vec<String> {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Param(p) => Some(p.clone()),
            Part::Lit(_) => None,
        })
        .collect()
}

/// A template as written (`{s2}{s3}`), for reasons and `explain`.
fn template_text(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Param(p) => format!("{{{p}}}"),
            Part::Lit(l) => l.clone(),
        })
        .collect()
}

/// The value a field found, before its transforms.
struct Found<'a, 'r> {
    /// The alternative it came from; `None` for a template source.
    from: Option<&'r ParamRef>,
    text: Cow<'a, str>,
    /// Set when the value was a JSON number (a JSON body's member, or inside a JSON
    /// parameter): read exactly as JSON, never through `decimal`.
    number: Option<Decimal>,
    /// `@received_at`: RFC 3339 whatever the rule's time format.
    received_at: bool,
}

fn reject(reason: String) -> Outcome {
    Outcome::Reject { reason }
}

fn out_json(out: Out) -> Value {
    match out {
        Out::Str(s) => Value::String(s),
        Out::Int(i) => Value::from(i),
        Out::Num(d) => decimal_json(d),
    }
}

/// A decimal as an exact JSON number (`19.99`, never `19.990000000000002`).
pub fn decimal_json(d: Decimal) -> Value {
    let text = value::format_decimal(d);
    text.parse::<serde_json::Number>()
        .map(Value::Number)
        .unwrap_or(Value::String(text))
}
