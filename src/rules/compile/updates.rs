//! `[updates]`: the transition table, update-only sources and their lookup key.

use std::ops::Range;

use toml::Spanned;

use super::{Compiler, span};
use crate::lifecycle::{LOOKUP_FIELDS, OnlyUpdates, Transitions, Updates, known_status};
use crate::rules::raw::RawUpdates;
use crate::scaleo;

impl Compiler<'_, '_> {
    /// Compiles `[updates]` of source `source`; the second value is where `of` is written.
    pub(super) fn updates(
        &mut self,
        source: &str,
        raw: Option<Spanned<RawUpdates>>,
    ) -> (Updates, Option<Range<usize>>) {
        let Some(raw) = raw else {
            return (Updates::default(), None);
        };
        let at = raw.span();
        let raw = raw.into_inner();
        let transitions = match raw.transitions {
            None => Transitions::default(),
            Some(table) => Transitions::new(
                table
                    .into_iter()
                    .map(|(from, to)| {
                        self.status("updates.transitions", &from);
                        for t in &to {
                            self.status(&format!("updates.transitions.{}", from.get_ref()), t);
                        }
                        (
                            from.into_inner(),
                            to.into_iter().map(Spanned::into_inner).collect(),
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        let only = raw.only.unwrap_or(false);
        if !only {
            for (name, present) in [("of", raw.of.is_some()), ("key", raw.key.is_some())] {
                if present {
                    self.err(
                        Some(at.clone()),
                        format!("updates.{name} is only for an update-only source: add only = true, or remove {name}"),
                    );
                }
            }
        }
        let of_at = raw.of.as_ref().map(Spanned::span);
        let only = only.then(|| OnlyUpdates {
            of: raw
                .of
                .map_or_else(|| source.to_string(), Spanned::into_inner),
            key: self.lookup_key(raw.key, at.clone()),
        });
        if only.is_some() && raw.enabled == Some(false) {
            self.err(
                Some(at),
                "updates: only = true with enabled = false: an update-only source must track updates",
            );
        }
        let updates = Updates {
            enabled: raw.enabled.unwrap_or(true),
            transitions: std::sync::Arc::new(transitions),
            only,
        };
        (updates, of_at)
    }

    fn status(&mut self, key: &str, status: &Spanned<String>) {
        if !known_status(status.get_ref()) {
            let accepted = scaleo::allowed_values("conv_status")
                .unwrap_or_default()
                .join(", ");
            self.err(
                span(status),
                format!(
                    "{key}: {:?} is not a Scaleo conv_status; expected one of {accepted}",
                    status.get_ref()
                ),
            );
        }
    }

    fn lookup_key(
        &mut self,
        raw: Option<Vec<Spanned<String>>>,
        at: Range<usize>,
    ) -> Vec<&'static str> {
        let accepted = LOOKUP_FIELDS.join(", ");
        let Some(list) = raw.filter(|l| !l.is_empty()) else {
            self.err(
                Some(at),
                format!("updates: only = true needs key, the mapped fields that find the conversion (one or both of {accepted}), e.g. key = [\"adv_order_id\"]"),
            );
            return Vec::new();
        };
        let mut key = Vec::new();
        for k in list {
            match LOOKUP_FIELDS.iter().find(|f| **f == k.get_ref()) {
                Some(f) if !key.contains(f) => key.push(*f),
                Some(_) => {}
                None => self.err(
                    span(&k),
                    format!(
                        "updates.key: {:?} cannot find a conversion; expected one or both of {accepted}",
                        k.get_ref()
                    ),
                ),
            }
        }
        key
    }
}
