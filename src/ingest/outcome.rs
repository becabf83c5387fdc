//! What happened to one postback at ingest: the `status` of its answer and the `outcome`
//! label of `postback_relay_postbacks_total` ([`crate::metrics::postback`]).

/// How ingest answered a postback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostbackOutcome {
    Accepted,
    Duplicate,
    Skipped,
    Rejected,
    /// A change of a stored conversion (forwarded as such).
    Update,
    /// A change that would move a conversion back (stored, not sent).
    Stale,
    /// 401: token or signature missing or wrong.
    Unauthorized,
    /// 403: caller not in the allow list.
    Forbidden,
    /// 503: the store could not persist it.
    Unavailable,
}

impl PostbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PostbackOutcome::Accepted => "accepted",
            PostbackOutcome::Duplicate => "duplicate",
            PostbackOutcome::Skipped => "skipped",
            PostbackOutcome::Rejected => "rejected",
            PostbackOutcome::Update => "update",
            PostbackOutcome::Stale => "stale",
            PostbackOutcome::Unauthorized => "unauthorized",
            PostbackOutcome::Forbidden => "forbidden",
            PostbackOutcome::Unavailable => "unavailable",
        }
    }

    /// Whether the postback was taken (stored as a conversion or a change of one): the
    /// answer a sender expects on success (`[answer] body`) applies.
    pub fn is_taken(self) -> bool {
        matches!(
            self,
            PostbackOutcome::Accepted
                | PostbackOutcome::Duplicate
                | PostbackOutcome::Update
                | PostbackOutcome::Stale
        )
    }
}
