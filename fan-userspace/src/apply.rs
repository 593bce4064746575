//! The apply layer: attach and detach as changes to the host, whoever asks
//! for them. The command line (`fan-xdp attach`, `detach`) and the agent
//! (the configuration's fans, following the host) both call it; each
//! says how the change is to be made ([`How`]), so no command needs to
//! know who called it:
//!
//! - the lock: a command waits for `state.lock` and holds it for the
//!   change; the agent takes it without waiting (a command holding it may
//!   be waiting for the agent's answer) and hands the held lock in;
//! - the report: a command prints what changed; the agent logs one line
//!   per change itself, so the change says nothing.

use anyhow::Result;
use ipnetwork::Ipv4Network;

use crate::{
    cli::{AttachArgs, DetachArgs, Global},
    commands::{attach, detach},
    state::rundir::{RunDir, StateLock},
};

/// Who takes `state.lock` for a change.
#[derive(Clone, Copy)]
pub enum Lock<'a> {
    /// The change takes it, waiting while another fan-xdp holds it.
    Take,
    /// The caller holds it already (this is its guard).
    Held(&'a StateLock),
}

/// Where a change says what it changed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// On standard output, for whoever ran the command.
    Print,
    /// Nowhere: the caller says it.
    Quiet,
}

/// How a caller wants a change made.
#[derive(Clone, Copy)]
pub struct How<'a> {
    pub lock: Lock<'a>,
    pub report: Report,
}

impl How<'_> {
    /// As the command line makes a change: waits for the lock, prints.
    pub const COMMAND: How<'static> = How {
        lock: Lock::Take,
        report: Report::Print,
    };
}

impl<'a> How<'a> {
    /// Under a lock the caller holds, saying nothing.
    pub fn held(lock: &'a StateLock) -> Self {
        Self {
            lock: Lock::Held(lock),
            report: Report::Quiet,
        }
    }
}

/// Attaches a fan (or finds it attached as asked); returns its overlay.
pub async fn attach(args: &AttachArgs, global: &Global, how: How<'_>) -> Result<Ipv4Network> {
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    // Held while attach plans and applies: neither sees another change.
    let _taken = take(&run_dir, how.lock)?;
    crate::agent::injected_delay("apply");
    attach::attach(args, global, &run_dir, how.report).await
}

/// Detaches one fan, or every fan of an interface.
pub async fn detach(args: &DetachArgs, global: &Global, how: How<'_>) -> Result<()> {
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    // Held until detach returns: no attach changes the fans meanwhile.
    let _taken = take(&run_dir, how.lock)?;
    crate::agent::injected_delay("apply");
    detach::detach(args, global, run_dir, how.report).await
}

/// The lock the change takes itself, if the caller does not hold it.
fn take(run_dir: &RunDir, lock: Lock<'_>) -> Result<Option<StateLock>> {
    match lock {
        Lock::Take => run_dir.lock_state().map(Some),
        Lock::Held(_) => Ok(None),
    }
}
