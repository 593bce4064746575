//! Differential testing: the six programs against the reference model
//! (tests/src/model), on the corpus (tests/corpus) and then on generated
//! cases, with the properties of tests/src/fuzz/check.rs on top.
//!
//! `FAN_FUZZ_CASES` sets the generated cases per program (100,000 by
//! default; the VM runs 5,000), `FAN_FUZZ_SEED` the seed (by default derived
//! from the commit, so a CI run is deterministic; printed either way).
//! `FAN_FUZZ_POLICY_STRICT=1` makes the model predict the stated policy
//! where the programs are known to depart from it (`model::config::Finding`),
//! so those cases fail too.

use std::path::Path;

use fan_tests::{
    fuzz::{self, Settings, rng::mix},
    privileged,
};

const DEFAULT_CASES: u64 = 100_000;
/// The seed where no commit can be read (the VM, a source tarball): "fan-xdp".
const FALLBACK_SEED: u64 = 0x0066_616e_2d78_6470;

const CORPUS: [(&str, &str); 1] = [("regressions.txt", include_str!("../corpus/regressions.txt"))];

#[test]
fn the_programs_agree_with_the_model() {
    if !privileged() {
        return;
    }
    let cases = env_u64("FAN_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("FAN_FUZZ_SEED").unwrap_or_else(commit_seed);
    println!(
        "fuzz: seed {seed:#x}, {cases} cases per program (FAN_FUZZ_SEED={seed:#x} repeats this run)"
    );
    let corpus_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/regressions.txt");
    let report = fuzz::run(&Settings {
        cases_per_program: cases,
        seed,
        corpus: CORPUS.to_vec(),
        record_file: corpus_file.exists().then_some(corpus_file),
        progress_every: if cases > 1_000_000 { 1_000_000 } else { 0 },
        enforce_findings: std::env::var("FAN_FUZZ_POLICY_STRICT").is_ok_and(|v| v == "1"),
    })
    .expect("the fuzz run");
    println!("{}", report.summary());
    assert_eq!(
        report.disagreements, 0,
        "the programs and the model disagree (reproducers above, added to tests/corpus/regressions.txt)"
    );
}

/// A number from the environment, decimal or 0x-hex.
fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The seed of this commit: `git rev-parse HEAD` hashed (FNV-1a, then
/// mixed), or the fixed seed where git or the repository is not there.
fn commit_seed() -> u64 {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let Ok(output) = output else {
        return FALLBACK_SEED;
    };
    if !output.status.success() {
        return FALLBACK_SEED;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in output.stdout.trim_ascii() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(hash)
}
