//! Checks bodies the way Scaleo's `conv-click-id` (create) and `leads/update` (change)
//! endpoints do.
//!
//! Pure: bytes in, a [`Conversion`] or an [`Update`], or a [`Rejection`] out. The field
//! list, the JSON types and the restricted value sets are those of Scaleo's API docs, shared
//! with the rules through [`crate::scaleo`]: `revenue`, `payout`, `amount` are
//! numbers, `goal_id` is an integer and every other field is a string. An update's
//! `lead_id` may be a string or a number and is compared by its text.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::scaleo::fields::UPDATABLE;
use crate::scaleo::{self, FieldType};

/// The JSON type Scaleo expects for a body field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// Any JSON number.
    Number,
    /// A JSON integer.
    Integer,
    /// A JSON string.
    Text,
}

/// Validation errors keyed by field name, as in Scaleo's `info.errors`.
pub(crate) type FieldErrors = BTreeMap<String, Vec<String>>;

/// Which goal a conversion counts for: the part of the duplicate key besides the click.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum GoalKey {
    /// Neither `goal_id` nor `goal_alias` was sent: the offer's default goal.
    Default,
    /// `goal_id`, as its decimal text.
    Id(String),
    /// `goal_alias`.
    Alias(String),
}

/// The key Scaleo uses to refuse a second conversion for the same click and goal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DuplicateKey {
    pub(crate) click_id: String,
    pub(crate) goal: GoalKey,
}

/// A body that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Conversion {
    pub(crate) body: Map<String, Value>,
    pub(crate) key: DuplicateKey,
}

/// An update body that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub(crate) body: Map<String, Value>,
    /// The text of `lead_id` (a string as is, a number as written).
    pub(crate) lead_id: String,
}

/// Why a body was refused, each variant tied to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Rejection {
    /// 400: not JSON, or JSON that is not an object.
    #[error("bad JSON: {0}")]
    BadJson(String),
    /// 400: fields outside Scaleo's list (sorted).
    #[error("Unknown parameter: {}", .0.join(", "))]
    UnknownParameters(Vec<String>),
    /// 422: wrong types or values.
    #[error("Data validation failed")]
    Invalid(FieldErrors),
}

impl Rejection {
    /// The HTTP status Scaleo answers with for this rejection.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Rejection::BadJson(_) | Rejection::UnknownParameters(_) => 400,
            Rejection::Invalid(_) => 422,
        }
    }
}

/// Validates a raw request body as a conversion.
pub(crate) fn validate(raw: &[u8]) -> Result<Conversion, Rejection> {
    let body = parse_object(raw)?;
    let unknown: Vec<String> = body
        .keys()
        .filter(|name| field_kind(name).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(Rejection::UnknownParameters(unknown));
    }
    let errors = field_errors(&body);
    if !errors.is_empty() {
        return Err(Rejection::Invalid(errors));
    }
    match duplicate_key(&body) {
        Some(key) => Ok(Conversion { body, key }),
        // Unreachable after `field_errors`, but answered as Scaleo would rather than panicking.
        None => Err(Rejection::Invalid(blank_click_id())),
    }
}

/// Validates a raw request body as a change of a conversion (`lead_id` and updatable
/// fields). Whether the `lead_id` names a conversion is the caller's check.
pub(crate) fn validate_update(raw: &[u8]) -> Result<Update, Rejection> {
    let body = parse_object(raw)?;
    let unknown: Vec<String> = body
        .keys()
        .filter(|name| name.as_str() != "lead_id" && !UPDATABLE.contains(&name.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(Rejection::UnknownParameters(unknown));
    }
    let mut errors = FieldErrors::new();
    for (name, value) in body.iter().filter(|(name, _)| name.as_str() != "lead_id") {
        if let Some(message) = field_problem(name, value) {
            errors.entry(name.clone()).or_default().push(message);
        }
    }
    let lead_id = match body
        .get("lead_id")
        .map(|value| (value, lead_id_text(value)))
    {
        Some((_, Some(text))) if !text.trim().is_empty() => Some(text),
        Some((_, None)) => {
            let message = "lead_id must be a string or a number.".to_owned();
            errors.insert("lead_id".to_owned(), vec![message]);
            None
        }
        None | Some((_, Some(_))) => {
            let message = "lead_id cannot be blank.".to_owned();
            errors.insert("lead_id".to_owned(), vec![message]);
            None
        }
    };
    match lead_id {
        Some(lead_id) if errors.is_empty() => Ok(Update { body, lead_id }),
        _ => Err(Rejection::Invalid(errors)),
    }
}

/// The text a `lead_id` is compared by: a string as is, a number as written; `None` for
/// any other JSON type.
pub(crate) fn lead_id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Parses the body as a JSON object.
pub(crate) fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(Rejection::BadJson("the body must be a JSON object".into())),
        Err(err) => Err(Rejection::BadJson(err.to_string())),
    }
}

/// The duplicate key of a body, when it has a string `click_id` that is not blank.
pub(crate) fn duplicate_key(body: &Map<String, Value>) -> Option<DuplicateKey> {
    let click_id = body.get("click_id")?.as_str()?.trim();
    if click_id.is_empty() {
        return None;
    }
    let goal = match (body.get("goal_id"), body.get("goal_alias")) {
        (Some(id), _) => GoalKey::Id(integer_text(id)),
        (None, Some(alias)) => GoalKey::Alias(alias.as_str().unwrap_or_default().to_owned()),
        (None, None) => GoalKey::Default,
    };
    Some(DuplicateKey {
        click_id: click_id.to_owned(),
        goal,
    })
}

/// The JSON type of a field of Scaleo's list, or `None` for an unknown parameter.
pub(crate) fn field_kind(name: &str) -> Option<FieldKind> {
    scaleo::field(name).map(|f| match scaleo::field_type(f) {
        FieldType::Number => FieldKind::Number,
        FieldType::Integer => FieldKind::Integer,
        FieldType::String | FieldType::Time => FieldKind::Text,
    })
}

/// Every type and value problem of a body whose fields are all known.
fn field_errors(body: &Map<String, Value>) -> FieldErrors {
    let mut errors = FieldErrors::new();
    for (name, value) in body {
        if let Some(message) = field_problem(name, value) {
            errors.entry(name.clone()).or_default().push(message);
        }
    }
    if duplicate_key(body).is_none() && !errors.contains_key("click_id") {
        errors.extend(blank_click_id());
    }
    if body.contains_key("goal_id") && body.contains_key("goal_alias") {
        let message = "goal_id and goal_alias cannot be sent together.".to_owned();
        for field in ["goal_id", "goal_alias"] {
            errors
                .entry(field.to_owned())
                .or_default()
                .push(message.clone());
        }
    }
    errors
}

fn blank_click_id() -> FieldErrors {
    FieldErrors::from([(
        "click_id".to_owned(),
        vec!["click_id cannot be blank.".to_owned()],
    )])
}

/// The first problem with one known field, if any.
fn field_problem(name: &str, value: &Value) -> Option<String> {
    match field_kind(name)? {
        FieldKind::Number if !value.is_number() => Some(format!("{name} must be a number.")),
        FieldKind::Integer if !is_integer(value) => Some(format!("{name} must be an integer.")),
        FieldKind::Text => match value.as_str() {
            None => Some(format!("{name} must be a string.")),
            Some(text) => text_problem(name, text),
        },
        FieldKind::Number | FieldKind::Integer => None,
    }
}

/// Value checks of the string fields whose values Scaleo restricts.
fn text_problem(name: &str, text: &str) -> Option<String> {
    if matches!(name, "timestamp" | "click_timestamp") {
        return (!is_scaleo_datetime(text))
            .then(|| format!("{name} must match the format Y-m-d H:i:s."));
    }
    let allowed = scaleo::allowed_values(name)?;
    (!allowed.contains(&text)).then(|| format!("{name} must be one of: {}.", allowed.join(", ")))
}

/// A JSON integer: digits with an optional minus sign, no fraction or exponent.
fn is_integer(value: &Value) -> bool {
    value.as_i64().is_some() || value.as_u64().is_some()
}

fn integer_text(value: &Value) -> String {
    match (value.as_i64(), value.as_u64()) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) => n.to_string(),
        (None, None) => value.to_string(),
    }
}

/// `Y-m-d H:i:s` exactly (`2023-11-14 22:13:20`), and a real calendar date and time.
pub(crate) fn is_scaleo_datetime(text: &str) -> bool {
    let shape_ok = text.len() == 19
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    shape_ok && jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<Conversion, Rejection> {
        validate(body.to_string().as_bytes())
    }

    fn errors_of(body: Value) -> FieldErrors {
        match check(body) {
            Err(Rejection::Invalid(errors)) => errors,
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn knows_every_field_of_the_list_and_nothing_else() {
        for name in [
            "click_id",
            "aff_param5",
            "sub_id1",
            "custom10",
            "deliver_lead",
        ] {
            assert_eq!(field_kind(name), Some(FieldKind::Text), "{name}");
        }
        assert_eq!(field_kind("amount"), Some(FieldKind::Number));
        assert_eq!(field_kind("goal_id"), Some(FieldKind::Integer));
        for name in [
            "custom11",
            "custom01",
            "sub_id6",
            "sub_id+1",
            "aff_param",
            "clickid",
        ] {
            assert_eq!(field_kind(name), None, "{name}");
        }
    }

    #[test]
    fn accepts_a_full_valid_body() {
        let conversion = check(json!({
            "click_id": "abc", "revenue": 19.99, "amount": 0, "goal_id": 12,
            "conv_status": "hold", "deliver_lead": "yes", "timestamp": "2023-11-14 22:13:20",
        }))
        .expect("valid");
        assert_eq!(conversion.key.goal, GoalKey::Id("12".into()));
    }

    #[test]
    fn refuses_a_numeric_looking_string_amount() {
        let errors = errors_of(json!({"click_id": "abc", "amount": "0"}));
        assert_eq!(errors["amount"], ["amount must be a number."]);
    }

    #[test]
    fn names_every_unknown_parameter_sorted() {
        let rejection = check(json!({"click_id": "a", "zeta": 1, "alpha": "x"})).unwrap_err();
        assert_eq!(
            rejection,
            Rejection::UnknownParameters(vec!["alpha".into(), "zeta".into()])
        );
        assert_eq!(rejection.status(), 400);
    }

    #[test]
    fn refuses_non_objects_as_bad_json() {
        for raw in ["", "[1]", "\"x\"", "{", "null"] {
            assert!(
                matches!(validate(raw.as_bytes()), Err(Rejection::BadJson(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn reports_types_values_and_blank_click_id_together() {
        let errors = errors_of(json!({
            "click_id": " ", "revenue": "1.5", "goal_id": 1.5, "conv_status": "done",
            "deliver_lead": "maybe", "click_timestamp": "2023-02-30 00:00:00", "city": 7,
        }));
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "city",
                "click_id",
                "click_timestamp",
                "conv_status",
                "deliver_lead",
                "goal_id",
                "revenue"
            ]
        );
    }

    #[test]
    fn refuses_goal_id_with_goal_alias() {
        let errors = errors_of(json!({"click_id": "a", "goal_id": 1, "goal_alias": "sale"}));
        assert!(errors.contains_key("goal_id") && errors.contains_key("goal_alias"));
    }

    #[test]
    fn accepts_only_the_exact_datetime_shape() {
        assert!(is_scaleo_datetime("2024-02-29 23:59:59"));
        for bad in [
            "2023-11-14T22:13:20",
            "2023-11-14 22:13",
            "2023-11-14 22:13:20Z",
            "2023-13-01 00:00:00",
            "+023-11-14 22:13:20",
            "2023-11-14 24:00:00",
        ] {
            assert!(!is_scaleo_datetime(bad), "{bad}");
        }
    }

    fn check_update(body: Value) -> Result<Update, Rejection> {
        validate_update(body.to_string().as_bytes())
    }

    #[test]
    fn every_updatable_field_is_a_known_scaleo_field() {
        for name in UPDATABLE {
            assert!(field_kind(name).is_some(), "{name}");
        }
    }

    #[test]
    fn accepts_an_update_with_a_string_or_number_lead_id() {
        let update = check_update(json!({"lead_id": "42", "conv_status": "approved",
                                         "revenue": 25, "custom10": "x"}))
        .expect("valid");
        assert_eq!(update.lead_id, "42");
        assert_eq!(check_update(json!({"lead_id": 42})).unwrap().lead_id, "42");
    }

    #[test]
    fn names_every_field_an_update_cannot_change() {
        let rejection =
            check_update(json!({"lead_id": "1", "click_id": "a", "goal_id": 1, "custom11": "x"}))
                .unwrap_err();
        assert_eq!(
            rejection,
            Rejection::UnknownParameters(vec![
                "click_id".into(),
                "custom11".into(),
                "goal_id".into()
            ])
        );
    }

    #[test]
    fn reports_update_types_values_and_lead_id_together() {
        let cases = [
            (json!({"revenue": "1"}), vec!["lead_id", "revenue"]),
            (
                json!({"lead_id": " ", "conv_status": "paid"}),
                vec!["conv_status", "lead_id"],
            ),
            (
                json!({"lead_id": true, "custom1": 1}),
                vec!["custom1", "lead_id"],
            ),
            (
                json!({"lead_id": null, "amount": null}),
                vec!["amount", "lead_id"],
            ),
        ];
        for (body, fields) in cases {
            let Err(Rejection::Invalid(errors)) = check_update(body.clone()) else {
                panic!("expected a 422 for {body}");
            };
            let got: Vec<&str> = errors.keys().map(String::as_str).collect();
            assert_eq!(got, fields, "{body}");
        }
    }

    #[test]
    fn keys_duplicates_by_click_and_goal() {
        let by_alias = check(json!({"click_id": "a", "goal_alias": "sale"})).unwrap();
        assert_eq!(by_alias.key.goal, GoalKey::Alias("sale".into()));
        let default = check(json!({"click_id": " a "})).unwrap();
        assert_eq!(default.key.click_id, "a");
        assert_eq!(default.key.goal, GoalKey::Default);
    }
}
