//! The fans controller: the one place the agent attaches and detaches,
//! on a thread of its own (with its own small runtime), so that an attach
//! that takes seconds holds up nothing else: not the heartbeat, not the
//! control socket, not the endpoint map. It owns the configuration's fans
//! ([`FileFans`]: applied at start and on reload, failed lines retried)
//! and the host follower ([`Follower`]: an address moved, a device
//! re-created, an MTU changed), and is told of host changes by the event
//! reader. It publishes the devices its fans are on, so that the reader
//! tells it only of changes that may concern them.

use std::{collections::HashSet, thread::JoinHandle, time::Duration};

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    agent::{config::FileFans, delivery::report, follow::Follower},
    cli::Global,
    config::FanLine,
    host::Net,
    state::{StateDir, rundir::RunDir},
};

/// What the fans controller is told or asked.
pub(super) enum ToFans {
    /// The host changed in a way that may concern a fan.
    HostChanged,
    /// Apply the file again (`reload`); answered once applied, or with why not.
    Reload(oneshot::Sender<Result<()>>),
    /// Finish what is under way and stop.
    Stop,
}

/// The fans controller, running.
pub(super) struct Fans {
    pub(super) inbox: mpsc::UnboundedSender<ToFans>,
    /// The devices the fans are on (underlays and slice bridges).
    pub(super) devices: watch::Receiver<HashSet<String>>,
    thread: Option<JoinHandle<()>>,
}

/// What the controller works with.
pub(super) struct Setting {
    pub(super) file_fans: FileFans,
    /// The file's lines, read at start (a bad file stopped the start).
    pub(super) lines: Vec<FanLine>,
    pub(super) dir: StateDir,
    pub(super) run_dir: RunDir,
    /// attach and detach's global options, as the agent runs them.
    pub(super) global: Global,
    pub(super) resync_period: Duration,
}

impl Fans {
    /// Starts the controller; it first brings up the file's fans, and
    /// answers `started` once that is done (with why not, if some failed).
    pub(super) fn start(setting: Setting, started: oneshot::Sender<Result<()>>) -> Result<Self> {
        let (inbox, messages) = mpsc::unbounded_channel();
        let (devices_tx, devices) = watch::channel(HashSet::new());
        let thread = std::thread::Builder::new()
            .name("fans".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        runtime.block_on(serve(setting, messages, devices_tx, started));
                    }
                    Err(e) => {
                        let _ = started.send(Err(e).context("the fans controller's runtime"));
                    }
                }
            })
            .context("starting the fans controller")?;
        Ok(Self {
            inbox,
            devices,
            thread: Some(thread),
        })
    }

    /// Stops the controller once what it is doing is done (an attach is
    /// never cut in half).
    pub(super) fn stop(mut self) {
        let _ = self.inbox.send(ToFans::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    setting: Setting,
    mut messages: mpsc::UnboundedReceiver<ToFans>,
    devices: watch::Sender<HashSet<String>>,
    started: oneshot::Sender<Result<()>>,
) {
    let Setting {
        mut file_fans,
        lines,
        dir,
        run_dir,
        global,
        resync_period,
    } = setting;
    let net = match Net::connect() {
        Ok(net) => net,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(file_fans.apply(&net, &global, lines).await);
    let mut follower = Follower::default();
    let follow = async |follower: &mut Follower, file_fans: &mut FileFans| {
        let mut named = file_fans.named_addresses();
        // What `up` named by hand stands over the file (the later word).
        match crate::state::named::load(&run_dir) {
            Ok(by_hand) => named.extend(by_hand),
            Err(e) => log::warn!("{e:#}"),
        }
        report(follower.follow(&net, &dir, &run_dir, &global, &named).await);
        file_fans.retry(&net, &global).await;
        devices.send_if_modified(|known| {
            let changed = known != follower.devices();
            if changed {
                known.clone_from(follower.devices());
            }
            changed
        });
    };
    // A first look: the devices, and whatever changed before the start.
    follow(&mut follower, &mut file_fans).await;
    let mut resync = tokio::time::interval(resync_period);
    resync.tick().await;
    // A move waiting out its time is looked at again every second, as no
    // event may come.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(ToFans::HostChanged) => {
                    // One look covers every change announced so far.
                    let mut reload = None;
                    let mut stop = false;
                    while let Ok(next) = messages.try_recv() {
                        match next {
                            ToFans::HostChanged => {}
                            ToFans::Reload(answer) => reload = Some(answer),
                            ToFans::Stop => stop = true,
                        }
                    }
                    follow(&mut follower, &mut file_fans).await;
                    if let Some(answer) = reload {
                        let _ = answer.send(reload_file(&net, &global, &mut file_fans).await);
                    }
                    if stop {
                        return;
                    }
                }
                Some(ToFans::Reload(answer)) => {
                    let _ = answer.send(reload_file(&net, &global, &mut file_fans).await);
                }
                Some(ToFans::Stop) | None => return,
            },
            _ = resync.tick() => follow(&mut follower, &mut file_fans).await,
            _ = tick.tick(), if follower.has_pending() => {
                follow(&mut follower, &mut file_fans).await;
            }
        }
    }
}

async fn reload_file(net: &Net, global: &Global, file_fans: &mut FileFans) -> Result<()> {
    let lines = file_fans.read()?;
    file_fans.apply(net, global, lines).await
}
