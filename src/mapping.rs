//! From a rule's outcome to a store record state, shared by ingest and replay so a replayed
//! postback is stored exactly as a fresh one would be.

use crate::lifecycle::Lookup;
use crate::rules::{Input, Outcome, Rule};
use crate::store::{DedupeKey, NewState};

/// The parameters a rule may see: everything except the source's token parameter and
/// signature parameter, which are never mapped (names follow `[params].ignore_case`).
pub fn without_token(
    rule: &Rule,
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let ic = rule.params_ignore_case();
    pairs
        .into_iter()
        .filter(|(n, _)| !rule.auth.is_secret_param(n, ic))
        .collect()
}

/// [`without_token`], keeping `numbers` (indices of JSON numbers) pointing at the same pairs.
pub fn without_token_marked(
    rule: &Rule,
    pairs: Vec<(String, String)>,
    numbers: &[usize],
) -> (Vec<(String, String)>, Vec<usize>) {
    let ic = rule.params_ignore_case();
    let mut kept = Vec::with_capacity(pairs.len());
    let mut kept_numbers = Vec::new();
    for (i, (n, v)) in pairs.into_iter().enumerate() {
        if rule.auth.is_secret_param(&n, ic) {
            continue;
        }
        if numbers.contains(&i) {
            kept_numbers.push(kept.len());
        }
        kept.push((n, v));
    }
    (kept, kept_numbers)
}

/// The record state for `outcome`; a rejected postback keeps the click id the rule resolved
/// (so it can be found by click id), a forwarded one its dedupe key and window, and a
/// postback of an update-only source the lookup of the conversion it changes.
pub fn new_state(rule: &Rule, input: &Input<'_>, outcome: Outcome) -> NewState {
    match outcome {
        Outcome::Forward(m) => {
            let updates = &rule.updates;
            if let Some(only) = &updates.only {
                return match Lookup::of_body(only, &m.body) {
                    Ok(lookup) => NewState::Change {
                        body: m.body,
                        click_id: m.click_id,
                        lookup,
                        transitions: updates.transitions.clone(),
                    },
                    Err(reason) => NewState::Rejected {
                        reason,
                        click_id: m.click_id,
                    },
                };
            }
            let dedupe = m.dedupe_key.map(|key| DedupeKey {
                key,
                window: rule.dedupe.window,
            });
            NewState::Queued {
                updates: (updates.enabled && dedupe.is_some()).then(|| updates.transitions.clone()),
                dedupe,
                body: m.body,
                click_id: m.click_id.unwrap_or_default(),
            }
        }
        Outcome::Skip { reason } => NewState::Skipped { reason },
        Outcome::Reject { reason } => NewState::Rejected {
            reason,
            click_id: rule.resolve_click_id(input),
        },
    }
}
