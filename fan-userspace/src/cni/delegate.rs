//! Delegated IPAM: the plugin named by `ipam.type`, found in CNI_PATH and
//! run as the specification says: the same environment (with the command
//! the plugin is carrying out) and the same configuration on stdin.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
};

use serde_json::Value;

use super::{
    config::NetConf,
    env::Command,
    error::{BAD_ENVIRONMENT, CniError, CniResult, DELEGATE},
    result::CniOutput,
};

/// The IPAM plugin `name` in the directories of CNI_PATH.
pub fn find(name: &str, path: &[PathBuf]) -> CniResult<PathBuf> {
    if path.is_empty() {
        return Err(CniError::new(
            BAD_ENVIRONMENT,
            format!("CNI_PATH is not set, so the IPAM plugin {name:?} cannot be found"),
        ));
    }
    path.iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            CniError::new(
                DELEGATE,
                format!(
                    "the IPAM plugin {name:?} is in none of CNI_PATH's directories ({})",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs the IPAM plugin for `command` and returns what it printed (an
/// IPAM result for ADD, nothing otherwise). Its own CNI error is passed on
/// as it is.
pub fn run(conf: &NetConf, command: Command, path: &[PathBuf]) -> CniResult<Option<CniOutput>> {
    let name = conf.ipam.as_deref().expect("only called with ipam");
    let plugin = find(name, path)?;
    let failed = |what: String| CniError::new(DELEGATE, format!("the IPAM plugin {name}: {what}"));
    let mut child = Process::new(&plugin)
        .env("CNI_COMMAND", command.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot be run ({e})")))?;
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&conf.raw);
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("did not finish ({e})")))?;
    written.map_err(|e| failed(format!("did not read its configuration ({e})")))?;
    let stdout: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        // Its own error object, if it printed one: that is the answer.
        if let Some(error) = &stdout
            && let Some(code) = error["code"].as_u64()
        {
            let mut e = CniError::new(
                code as u32,
                format!(
                    "the IPAM plugin {name}: {}",
                    error["msg"].as_str().unwrap_or("failed")
                ),
            );
            e.details = error["details"].as_str().unwrap_or_default().to_string();
            return Err(e);
        }
        return Err(failed(format!(
            "exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if command != Command::Add {
        return Ok(None);
    }
    let value = stdout.ok_or_else(|| {
        failed(format!(
            "printed no JSON result: {:?}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })?;
    CniOutput::from_value(&value, &format!("the IPAM plugin {name}'s result")).map(Some)
}
