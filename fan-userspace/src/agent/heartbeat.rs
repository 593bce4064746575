//! The heartbeat controller: a thread of its own that stamps the agent's
//! beat in the pinned map every second, which the programs read to trust
//! the endpoint map (a beat older than three seconds and direct delivery
//! falls back to the stack). Nothing else runs on it, so no slow attach,
//! dnsmasq stop or netlink dump of another controller can delay a beat.
//! It also sees when an agent that attach started has nothing left to
//! serve (every fan detached), and says so.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use log::info;
use tokio::sync::mpsc;

use crate::{
    agent::{delivery::report, sync::beat},
    state::StateDir,
};

/// How often the agent beats (the programs' timeout is three of these).
const PERIOD: Duration = Duration::from_secs(1);
/// How often the thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

pub(super) struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        if stop_when_detached && !dir.exists() {
                            info!("fan-xdp run: every fan is detached; stopping");
                            let _ = detached.send(());
                            return;
                        }
                        report(beat(&dir));
                        let beaten = Instant::now();
                        while beaten.elapsed() < PERIOD && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(STOP_CHECK);
                        }
                    }
                }
            })
            .context("starting the heartbeat")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    /// Returns once the last beat is written: a beat stopped after this
    /// stays stopped.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
