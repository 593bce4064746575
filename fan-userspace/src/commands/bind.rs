//! `fan-xdp bind` and `unbind`: static bindings, asked of the agent (the
//! only writer of the fast path's state; see [`crate::agent::bindings`]).

use anyhow::{Result, bail};

use crate::{
    agent::{
        self,
        bindings::{self, Binding, Origin},
    },
    cli::{BindArgs, Global, UnbindArgs},
    state::rundir::RunDir,
};

fn agent_run_dir(global: &Global) -> Result<RunDir> {
    let run = RunDir::locate(global.run_dir.as_deref())?;
    if agent::running(&run).is_none() {
        bail!(
            "no fan-xdp agent serves this network namespace (bindings are kept by `fan-xdp run`)"
        );
    }
    Ok(run)
}

pub fn bind(args: &BindArgs, global: &Global) -> Result<()> {
    let run = agent_run_dir(global)?;
    bindings::parse_mac(&args.mac)?;
    bindings::bind(
        &run,
        &Binding {
            address: args.address,
            mac: args.mac.to_ascii_lowercase(),
            port: args.port.clone(),
            origin: Origin::Static,
            owner: "fan-xdp bind".into(),
            pod: None,
        },
    )?;
    println!(
        "{} bound to {}",
        args.address,
        args.port.as_deref().unwrap_or(&args.mac)
    );
    Ok(())
}

pub fn unbind(args: &UnbindArgs, global: &Global) -> Result<()> {
    bindings::unbind(&agent_run_dir(global)?, args.address, Origin::Static)?;
    println!("{} unbound", args.address);
    Ok(())
}
