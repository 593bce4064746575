//! The heartbeat controller: a thread of its own that stamps the agent's
//! beat in the pinned map every second, which the programs read to trust
//! the endpoint map (a beat older than three seconds and direct delivery
//! falls back to the stack). Nothing else runs on it, so no slow attach,
//! dnsmasq stop or netlink dump of another controller can delay a beat.
//! It also sees when an agent that attach started has nothing left to
//! serve (every fan detached), and says so.

use std::time::{Duration, Instant};

use anyhow::Result;
use log::info;
use tokio::sync::mpsc;

use crate::{
    agent::{delivery::report, stoppable::Stoppable, sync::beat},
    state::StateDir,
};

/// How often the agent beats (the programs' timeout is three of these).
const PERIOD: Duration = Duration::from_secs(1);
/// How often the thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The heartbeat, running; dropped, it returns once the last beat is
/// written: a beat stopped after that stays stopped.
pub(super) struct Heartbeat {
    _thread: Stoppable,
}

impl Heartbeat {
    /// Starts beating. With `stop_when_detached` (an agent that attach
    /// started), the thread stops once no fan is left and sends on
    /// `detached`.
    pub(super) fn start(
        dir: StateDir,
        stop_when_detached: bool,
        detached: mpsc::UnboundedSender<()>,
    ) -> Result<Self> {
        Stoppable::spawn("heartbeat", move |stop| {
            while !stop.get() {
                if stop_when_detached && !dir.exists() {
                    info!("fan-xdp run: every fan is detached; stopping");
                    let _ = detached.send(());
                    return;
                }
                report(beat(&dir));
                let beaten = Instant::now();
                while beaten.elapsed() < PERIOD && !stop.get() {
                    std::thread::sleep(STOP_CHECK);
                }
            }
        })
        .map(|thread| Self { _thread: thread })
    }
}
