//! `fan-xdp monitor --json` run in a host's namespace, its events read as
//! they come (bounded in time), for the tests of the drop events.

use std::{
    io::BufRead as _,
    process::{Child, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::topology::{Host, fan_xdp_binary};

/// A running monitor; killed when dropped.
pub struct Monitor {
    child: Child,
    events: Receiver<serde_json::Value>,
}

impl Monitor {
    /// Starts `fan-xdp monitor --json EXTRA...` in `host`, and gives the
    /// agent a moment to take it on (the command prints nothing before its
    /// first event).
    pub fn start(host: &Host, extra: &[&str]) -> Result<Self> {
        let binary = fan_xdp_binary();
        let mut child = host
            .ns
            .command(binary.to_str().context("binary path")?)
            .args(["monitor", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting fan-xdp monitor")?;
        let stdout = child.stdout.take().context("the monitor's stdout")?;
        let (send, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let Ok(event) = serde_json::from_str(&line) else {
                    panic!("fan-xdp monitor --json printed {line:?}");
                };
                if send.send(event).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child, events })
    }

    /// The events that arrive within `limit` (as soon as `enough` of them
    /// have, or the monitor ends).
    pub fn events(&self, enough: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        while events.len() < enough {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => events.push(event),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        events
    }

    /// Waits for the monitor to end by itself (`--count`), at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
