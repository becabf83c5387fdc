//! Scaleo's API contract in one place, used by the rules (which fields a body may hold, and
//! their types), forward (where to send, how to read the answer) and the sandbox (which
//! serves the same contract):
//!
//! - the endpoints: [`Call`], [`CONV_PATH`], [`UPDATE_PATH`];
//! - [`fields`]: the conversion fields, their JSON types and known value sets, and the
//!   fields `leads/update` may change;
//! - [`envelope`]: the answer envelope (`{"status", "code", "name", "message", "info"}`),
//!   built (sandbox) and read (forward), with the "duplicate" phrase;
//! - [`reference`](mod@reference): the field reference `postback-relay fields` prints.

pub mod envelope;
pub mod fields;
pub mod reference;

pub use fields::{FIELDS, FieldType, allowed_values, field, field_type};

/// The path of the endpoint that creates a conversion (`POST`), under `scaleo.base_url`.
pub const CONV_PATH: &str = "/api/v2/network/tracking/conv-click-id";

/// The path of the endpoint that changes a conversion (`PUT`, with Scaleo's `lead_id`).
pub const UPDATE_PATH: &str = "/api/v2/network/leads/update";

/// Which of Scaleo's calls a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST conv-click-id`: create a conversion.
    Create,
    /// `PUT leads/update`: change a conversion.
    Update,
}

impl Call {
    /// The endpoint's path under `base_url`.
    pub fn path(self) -> &'static str {
        match self {
            Call::Create => CONV_PATH,
            Call::Update => UPDATE_PATH,
        }
    }

    /// The HTTP method the endpoint takes.
    pub fn method(self) -> &'static str {
        match self {
            Call::Create => "POST",
            Call::Update => "PUT",
        }
    }

    /// The call a request path names, if any.
    pub fn of_path(path: &str) -> Option<Call> {
        match path {
            CONV_PATH => Some(Call::Create),
            UPDATE_PATH => Some(Call::Update),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_is_found_by_its_path() {
        for call in [Call::Create, Call::Update] {
            assert_eq!(Call::of_path(call.path()), Some(call));
        }
        assert_eq!(Call::of_path("/api/v2/network/other"), None);
        assert_eq!(Call::Create.method(), "POST");
        assert_eq!(Call::Update.method(), "PUT");
    }
}
