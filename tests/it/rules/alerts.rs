//! `[alerts]`: when a source counts as silent, validated at load.

use super::{problems, rule};

#[test]
fn silent_after_is_read_as_a_duration() {
    let r = rule("[fields]\nclick_id = \"cid\"\n\n[alerts]\nsilent_after = \"6h\"\n");
    assert_eq!(
        r.alerts.silent_after,
        Some(std::time::Duration::from_secs(6 * 3600))
    );
    let r = rule("[fields]\nclick_id = \"cid\"\n");
    assert_eq!(r.alerts.silent_after, None, "no [alerts]: never silent");
}

#[test]
fn a_bad_or_zero_silent_after_names_the_key_the_value_and_what_is_accepted() {
    let list = problems("[fields]\nclick_id = \"cid\"\n\n[alerts]\nsilent_after = \"6 hours\"\n");
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(
        list[0].starts_with("acme.toml:5:16: alerts.silent_after = \"6 hours\"")
            && list[0].contains("1h"),
        "{}",
        list[0]
    );
    let list = problems("[fields]\nclick_id = \"cid\"\n\n[alerts]\nsilent_after = \"0s\"\n");
    assert!(list[0].contains("more than zero"), "{list:#?}");
    let list = problems("[fields]\nclick_id = \"cid\"\n\n[alerts]\nsilent = \"6h\"\n");
    assert!(list[0].contains("silent_after"), "{list:#?}");
}
