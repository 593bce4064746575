//! The CNI plugin `fan`: `fan-xdp` run under the name `fan` (a link in the
//! CNI binary directory) speaks the Container Network Interface
//! specification, so Kubernetes (through containerd or CRI-O), Podman and
//! nerdctl put their containers on the fan with one configuration, the same
//! on every host: each host's slice follows from its own address.
//!
//! The runtime gives the command and the attachment in `CNI_*` variables
//! ([`env`]) and the configuration on stdin ([`config`]); the plugin prints
//! a result in the version asked for ([`result`], [`version`]) or an error
//! object with the specification's code ([`error`]), and exits non-zero on
//! error. ADD ([`add`]), DEL and GC ([`del`]), CHECK and STATUS ([`check`]);
//! addresses from its own store ([`store`]) or a delegated IPAM plugin
//! ([`delegate`]).

pub mod add;
pub mod check;
pub mod config;
pub mod context;
pub mod del;
pub mod delegate;
pub mod env;
pub mod error;
pub mod ids;
pub mod result;
pub mod store;
pub mod version;

use std::io::{Read as _, Write as _};

use serde_json::Value;

use self::{
    config::NetConf,
    env::{Command, Env},
    error::{CniError, CniResult, IO_FAILURE},
    version::{LATEST, SUPPORTED, Version},
};

/// The name the plugin is run by (`type` in a network configuration).
pub const PLUGIN_NAME: &str = "fan";

/// Runs the plugin: reads the environment and stdin, prints the answer,
/// and returns the exit status.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let answer = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(IO_FAILURE, format!("reading stdin: {e}"))),
    };
    let mut stdout = std::io::stdout().lock();
    match answer {
        Ok(Some(value)) => {
            let _ = writeln!(stdout, "{value}");
            0
        }
        Ok(None) => 0,
        Err(mut e) => {
            // The error in the configuration's version, where it has one.
            if let Ok(map) = config::decode(&stdin)
                && let Ok(v) = config::version_of(&map)
            {
                e.cni_version = v.as_str().to_string();
            }
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string(&e).expect("an error serializes")
            );
            eprintln!("fan: {e}");
            1
        }
    }
}

fn run(stdin: &[u8]) -> CniResult<Option<Value>> {
    let env = Env::read(|name| std::env::var_os(name))?;
    if env.command == Command::Version {
        return Ok(Some(version_answer(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    conf.version.allows(env.command.name())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(IO_FAILURE, format!("starting the runtime: {e}")))?;
    runtime.block_on(async {
        let invocation = env.invocation.as_ref();
        match env.command {
            Command::Add => add::add(&conf, invocation.expect("read with ADD"), &env.path)
                .await
                .map(Some),
            Command::Del => del::del(&conf, invocation.expect("read with DEL"), &env.path)
                .await
                .map(|()| None),
            Command::Check => check::check(&conf, invocation.expect("read with CHECK"), &env.path)
                .await
                .map(|()| None),
            Command::Status => check::status(&conf, &env.path).map(|()| None),
            Command::Gc => del::gc(&conf, &env.path).await.map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    })
}

/// VERSION: the versions the plugin speaks, in the configuration's version
/// where it names one of them (libcni sends `{"cniVersion": ...}`).
fn version_answer(stdin: &[u8]) -> Value {
    let asked = config::decode(stdin)
        .ok()
        .and_then(|map| config::version_of(&map).ok())
        .map_or(LATEST, Version::as_str);
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_lists_every_version_in_the_version_asked_for() {
        assert_eq!(
            super::version_answer(br#"{"cniVersion":"0.4.0"}"#).to_string(),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(super::version_answer(b"")["cniVersion"], "1.1.0");
    }
}
