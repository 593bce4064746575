//! The guest payload: fan-xdp and the test executables of `fan-tests`.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use crate::workspace_root;

/// The test executables of `fan-tests` (built if needed), by target name.
pub fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "fan-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the test executables")?;
    ensure!(out.status.success(), "building the test executables failed");
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            exes.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(exes)
}

/// The guest payload: fan-xdp and every test executable, laid out as the
/// tests expect (`fan-xdp` one level above the executables' `deps/`).
pub fn test_payload() -> Result<Vec<(PathBuf, String)>> {
    crate::cargo(&[&["build"][..], &crate::TEST_FAN_XDP].concat())?;
    let mut payload = vec![(
        workspace_root().join("target/debug/fan-xdp"),
        "/fan/fan-xdp".to_string(),
    )];
    for (name, exe) in test_executables()? {
        payload.push((exe, format!("/fan/deps/{name}")));
    }
    Ok(payload)
}
