//! Shared test bed: network namespaces that clean up after themselves, and
//! fan topologies of simulated hosts and containers built from them. Used by
//! the end-to-end tests and the demo.

pub mod chart;
pub mod cni;
pub mod cri;
pub mod dhcp;
pub mod fuzz;
pub mod lifecycle;
pub mod measure;
pub mod model;
pub mod monitor;
pub mod netns;
pub mod paths;
pub mod podman;
pub mod runtimes;
pub mod snapshot;
pub mod topology;
pub mod traffic;

/// Whether privileged tests can run. Without root they skip, except under CI
/// (`CI=true`), where a skipped privileged test is a failure.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test needs root (network namespaces, BPF) and CI=true forbids skipping it");
    }
    eprintln!("skipping: needs root");
    false
}

/// Parses whitespace-separated hex, for literal packet fixtures.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in fixture"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex fixture"))
        .collect()
}
