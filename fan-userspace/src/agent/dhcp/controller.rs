//! The DHCP controller: the agent's DHCP servers supervised on a thread of
//! their own, every second and when asked (reload), so that a dnsmasq
//! that takes three seconds to stop holds up no other controller. The
//! leases go to the delivery controller as bindings of origin `dhcp`,
//! when they change.

use std::{
    path::PathBuf,
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::{Servers, round};
use crate::{
    agent::{bindings::Binding, delivery::ToDelivery},
    state::{StateDir, rundir::RunDir},
};

/// How often the servers are looked at.
const PERIOD: Duration = Duration::from_secs(1);

/// What the DHCP controller is asked.
pub(in crate::agent) enum ToDhcp {
    /// A round now; answered once its leases are with the delivery controller.
    Round(oneshot::Sender<()>),
    Stop,
}

/// A round now, answered once its leases are with the delivery controller
/// (so a sync asked for after it sees them).
pub(in crate::agent) async fn round_now(inbox: &mpsc::Sender<ToDhcp>) {
    let (answer, done) = oneshot::channel();
    if inbox.send(ToDhcp::Round(answer)).is_ok() {
        let _ = done.await;
    }
}

/// The DHCP controller, running.
pub(in crate::agent) struct Dhcp {
    pub(in crate::agent) inbox: mpsc::Sender<ToDhcp>,
    thread: Option<JoinHandle<()>>,
}

impl Dhcp {
    pub(in crate::agent) fn start(
        run_dir: RunDir,
        state_dir: Option<PathBuf>,
        dir: StateDir,
        delivery: tokio_mpsc::Sender<ToDelivery>,
    ) -> Result<Self> {
        let (inbox, asked) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("dhcp".into())
            .spawn(move || {
                let mut servers = Servers::default();
                let mut sent: Option<Vec<Binding>> = None;
                loop {
                    let answer = match asked.recv_timeout(PERIOD) {
                        Ok(ToDhcp::Round(answer)) => Some(answer),
                        Err(RecvTimeoutError::Timeout) => None,
                        Ok(ToDhcp::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    };
                    if let Some(leases) = round(&mut servers, &run_dir, state_dir.as_deref(), &dir)
                        && sent.as_ref() != Some(&leases)
                    {
                        sent = Some(leases.clone());
                        if delivery
                            .blocking_send(ToDelivery::DhcpLeases(leases))
                            .is_err()
                        {
                            return;
                        }
                    }
                    if let Some(answer) = answer {
                        let _ = answer.send(());
                    }
                }
            })
            .context("starting the DHCP controller")?;
        Ok(Self {
            inbox,
            thread: Some(thread),
        })
    }

    /// Stops the controller once its round is done.
    pub(in crate::agent) fn stop(mut self) {
        let _ = self.inbox.send(ToDhcp::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
