//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the same function the
//! cargo-fuzz target calls (`fuzz/src/lib.rs`, included here), on the stable toolchain. A
//! panic found by fuzzing is fixed in the code and its input added to the corpus, so it stays
//! fixed.

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::PathBuf;

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn no_committed_fuzz_input_panics() {
    let mut replayed = 0;
    let mut failures = Vec::new();
    for (target, run) in harness::TARGETS {
        let dir = corpus_root().join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("readable corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{target}: the corpus needs a handful of seeds, found {}", files.len());
        for file in files {
            let data = std::fs::read(&file).expect("readable corpus file");
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(failures.is_empty(), "these fuzz inputs panic: {failures:#?}");
    eprintln!("replayed {replayed} fuzz inputs");
}

#[test]
fn every_fuzz_target_has_a_corpus_and_a_target_file() {
    let fuzz = corpus_root().join("..");
    for (target, _) in harness::TARGETS {
        assert!(corpus_root().join(target).is_dir(), "fuzz/corpus/{target} is missing");
        assert!(
            fuzz.join("fuzz_targets").join(format!("{target}.rs")).is_file(),
            "fuzz/fuzz_targets/{target}.rs is missing"
        );
    }
}
