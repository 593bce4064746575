//! The heartbeat controller: a thread of its own that stamps the agent's
//! beat in the pinned map every second, which the programs read to trust
//! the endpoint map (a beat older than three seconds and direct delivery
//! falls back to the stack). Nothing else runs on it, so no slow attach,
//! dnsmasq stop or netlink dump of another controller can delay a beat.
//! It beats only while the delivery controller, the endpoint map's keeper,
//! turns its loop: a beat vouches for that map, so a hung keeper must let
//! the programs fall back to the stack (after [`KEEPER_STALL`] and the
//! programs' three seconds). It also sees when an agent that attach
//! started has nothing left to serve (every fan detached), and says so.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use log::{info, warn};
use tokio::sync::mpsc;

use crate::{
    agent::{delivery::report, stoppable::Stoppable, sync::beat},
    state::StateDir,
};

/// How often the agent beats (the programs' timeout is three of these).
const PERIOD: Duration = Duration::from_secs(1);
/// How often the thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How long the endpoint map's keeper may go without turning its loop (a
/// full read of hundreds of ports takes a while) before the beat stops.
pub(super) const KEEPER_STALL: Duration = Duration::from_secs(5);

/// When the delivery controller last turned its loop, as the heartbeat
/// reads it: milliseconds since the agent started.
#[derive(Clone)]
pub(super) struct KeeperAlive {
    started: Instant,
    turned_ms: Arc<AtomicU64>,
}

impl KeeperAlive {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            turned_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Called by the keeper each time round its loop.
    pub(super) fn turned(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.turned_ms.store(now, Ordering::Relaxed);
    }

    /// Whether the keeper turned its loop within `stall`.
    fn within(&self, stall: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(self.turned_ms.load(Ordering::Relaxed)) <= stall.as_millis() as u64
    }
}

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
        keeper: KeeperAlive,
        stop_when_detached: bool,
        detached: mpsc::UnboundedSender<()>,
    ) -> Result<Self> {
        let mut withheld = false;
        Stoppable::spawn("heartbeat", move |stop| {
            while !stop.get() {
                if stop_when_detached && !dir.exists() {
                    info!("fan-xdp run: every fan is detached; stopping");
                    let _ = detached.send(());
                    return;
                }
                if keeper.within(KEEPER_STALL) {
                    if withheld {
                        info!("the endpoint map's keeper is back: beating again");
                        withheld = false;
                    }
                    report(beat(&dir));
                } else if !withheld {
                    warn!(
                        "the endpoint map's keeper has not turned its loop for {} s: no beat, so direct delivery falls back to the stack",
                        KEEPER_STALL.as_secs()
                    );
                    withheld = true;
                }
                let beaten = Instant::now();
                while beaten.elapsed() < PERIOD && !stop.get() {
                    std::thread::sleep(STOP_CHECK);
                }
            }
        })
        .map(|thread| Self { _thread: thread })
    }
}
