//! Scaleo's conversion body fields (from Scaleo's API docs; `postback-relay fields` prints
//! them): names, JSON types, known value sets, and which ones `leads/update` may change.

/// The JSON type Scaleo expects for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A JSON number (`revenue`, `payout`, `amount`), decimal-exact.
    Number,
    /// A JSON integer (`goal_id`).
    Integer,
    /// A JSON string; also for values that look numeric.
    String,
    /// A string in `Y-m-d H:i:s` (`timestamp`, `click_timestamp`); `time = "auto"` by default.
    Time,
}

/// Every field Scaleo's `conv-click-id` accepts; anything else is an unknown parameter (400).
pub const FIELDS: &[&str] = &[
    "click_id",
    "revenue",
    "payout",
    "amount",
    "conv_status",
    "goal_id",
    "goal_alias",
    "aff_click_id",
    "adv_order_id",
    "adv_user_id",
    "adv_track_id",
    "track_id",
    "idfa",
    "gaid",
    "promo_code",
    "aff_param1",
    "aff_param2",
    "aff_param3",
    "aff_param4",
    "aff_param5",
    "sub_id1",
    "sub_id2",
    "sub_id3",
    "sub_id4",
    "sub_id5",
    "adv_param1",
    "adv_param2",
    "adv_param3",
    "adv_param4",
    "adv_param5",
    "email",
    "firstname",
    "lastname",
    "address",
    "city",
    "region",
    "country",
    "postcode",
    "phone",
    "gender",
    "birthday",
    "vertical",
    "ip",
    "public_notes",
    "private_notes",
    "click_referer_url",
    "conversion_referer_url",
    "timestamp",
    "click_timestamp",
    "custom1",
    "custom2",
    "custom3",
    "custom4",
    "custom5",
    "custom6",
    "custom7",
    "custom8",
    "custom9",
    "custom10",
    "deliver_lead",
];

/// The canonical `&'static` name of a Scaleo field, or `None` for an unknown name.
pub fn field(name: &str) -> Option<&'static str> {
    FIELDS.iter().copied().find(|f| *f == name)
}

/// The JSON type of a known field.
pub fn field_type(name: &str) -> FieldType {
    match name {
        "revenue" | "payout" | "amount" => FieldType::Number,
        "goal_id" => FieldType::Integer,
        "timestamp" | "click_timestamp" => FieldType::Time,
        _ => FieldType::String,
    }
}

/// The values Scaleo accepts for a field, where the set is known.
pub fn allowed_values(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "conv_status" => Some(&["pending", "approved", "rejected", "hold"]),
        "deliver_lead" => Some(&["yes", "no"]),
        _ => None,
    }
}

/// The fields `PUT leads/update` may change; `lead_id` (required) names the conversion.
pub const UPDATABLE: [&str; 17] = [
    "conv_status",
    "revenue",
    "payout",
    "amount",
    "adv_order_id",
    "custom1",
    "custom2",
    "custom3",
    "custom4",
    "custom5",
    "custom6",
    "custom7",
    "custom8",
    "custom9",
    "custom10",
    "public_notes",
    "private_notes",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updatable_fields_are_conversion_fields() {
        for name in UPDATABLE {
            assert_eq!(field(name), Some(name));
        }
    }

    #[test]
    fn types_follow_scaleo() {
        assert_eq!(field_type("revenue"), FieldType::Number);
        assert_eq!(field_type("goal_id"), FieldType::Integer);
        assert_eq!(field_type("adv_order_id"), FieldType::String);
        assert_eq!(field("custom10"), Some("custom10"));
        assert_eq!(field("custom11"), None);
    }
}
