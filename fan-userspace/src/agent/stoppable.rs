//! A thread of the agent's that runs until asked to stop: the heartbeat's
//! and the ruleset watch's. Dropping it asks, then waits for the thread to
//! finish what it is doing, so nothing it writes comes after.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};

/// Whether the thread has been asked to stop (it looks between its rounds).
#[derive(Clone)]
pub(super) struct StopAsked(Arc<AtomicBool>);

impl StopAsked {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub(super) struct Stoppable {
    stop: StopAsked,
    thread: Option<JoinHandle<()>>,
}

impl Stoppable {
    /// Starts `work` on a thread named `name`; it returns once `StopAsked`
    /// says so (or on its own).
    pub(super) fn spawn(name: &str, work: impl FnOnce(StopAsked) + Send + 'static) -> Result<Self> {
        let stop = StopAsked(Arc::new(AtomicBool::new(false)));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn({
                let stop = stop.clone();
                move || work(stop)
            })
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop.0.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
