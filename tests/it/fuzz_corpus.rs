//! Replays the fuzz corpora and every crash input ever found (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same checks the fuzz targets run, on stable.

use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

/// Every fuzz target and its check; a directory under `fuzz/corpus` or `fuzz/regressions`
/// that names none of them fails the test.
const TARGETS: [(&str, Check); 6] = [
    ("query_form", postback_relay::fuzz::query_form),
    ("json_body", postback_relay::fuzz::json_body),
    ("number_time", postback_relay::fuzz::number_time),
    ("macro_detect", postback_relay::fuzz::macro_detect),
    ("rule_compile", postback_relay::fuzz::rule_compile),
    ("ingest_request", postback_relay::fuzz::ingest_request),
];

fn fuzz_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
}

/// The files of `dir`, sorted; panics when it is missing or empty.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// Runs every input of `target` (its corpus, and its regressions when it has any).
fn replay(target: &str) -> usize {
    let check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, c)| *c)
        .expect("a known target");
    let mut dirs = vec![fuzz_dir("corpus").join(target)];
    let regressions = fuzz_dir("regressions").join(target);
    if regressions.exists() {
        dirs.push(regressions);
    }
    let mut n = 0;
    for dir in dirs {
        for file in inputs(&dir) {
            let data = std::fs::read(&file).expect("a readable input");
            // The file name says which input failed.
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{} fails its check", file.display());
            n += 1;
        }
    }
    n
}

#[test]
fn every_corpus_and_regression_directory_names_a_target_and_is_not_empty() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir(kind)) else {
            assert_eq!(kind, "regressions", "no fuzz/{kind}");
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "{} names no fuzz target",
                path.display()
            );
            inputs(&path);
        }
    }
    for (target, _) in TARGETS {
        let corpus = fuzz_dir("corpus").join(target);
        assert!(corpus.is_dir(), "target {target} has no corpus");
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        assert!(source.is_file(), "target {target} has no fuzz target");
    }
}

#[test]
fn query_form_corpus() {
    assert!(replay("query_form") > 0);
}

#[test]
fn json_body_corpus() {
    assert!(replay("json_body") > 0);
}

#[test]
fn number_time_corpus() {
    assert!(replay("number_time") > 0);
}

#[test]
fn macro_detect_corpus() {
    assert!(replay("macro_detect") > 0);
}

#[test]
fn rule_compile_corpus() {
    assert!(replay("rule_compile") > 0);
}

#[test]
fn ingest_request_corpus() {
    let n = replay("ingest_request");
    // The corpus reaches the answers that matter, not only hyper's refusals.
    let mut seen = std::collections::BTreeSet::new();
    for file in inputs(&fuzz_dir("corpus").join("ingest_request")) {
        let data = std::fs::read(&file).expect("a readable input");
        seen.extend(postback_relay::fuzz::ingest_statuses(&data));
    }
    postback_relay::fuzz::cleanup();
    assert!(n > 0);
    for status in [200, 401, 404, 405, 413, 414, 422, 431] {
        assert!(
            seen.contains(&status),
            "no input is answered {status}: {seen:?}"
        );
    }
}
