//! The configuration's fans, as the agent keeps them: every line not marked
//! `off` is brought up at start, and `reload` applies the difference after an
//! edit (fans added, removed or changed), each logged. The fans are
//! attached and detached through the apply layer ([`crate::apply`]), under
//! the lock the agent holds, from the arguments [`crate::config::resolve`]
//! makes of each line.
//!
//! Only a file that root owns and only root may write is read; a file with
//! a bad line changes nothing (the error names file, line, column, token).
//! A line that cannot be attached now (its interface is not there yet, at
//! boot) is tried again on every address change, every change of a fan's
//! device and every resync.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use ipnetwork::Ipv4Network;
use log::{info, warn};

use crate::{
    apply::{self, How},
    cli::{FAN_CONFIG, Global, RunArgs},
    config::{self, FanLine, apply::describe, resolve},
    host::Net,
    state::record::attached,
    state::rundir::{RunDir, StateLock},
};

pub struct FileFans {
    /// None: no configuration (an agent that attach started).
    path: Option<PathBuf>,
    /// Named with --config: then a missing file is an error.
    explicit: bool,
    /// The lines in force, as last read (none marked off).
    lines: Vec<FanLine>,
    /// Lines whose attach failed, retried on host changes.
    pending: Vec<FanLine>,
    /// The text last read, and where the text last applied is kept: in
    /// the run directory, so that an agent restarted after an edit (not a
    /// reboot, which empties /run and every fan with it) still knows which
    /// fans the old file had brought up.
    read_text: Option<String>,
    applied: PathBuf,
    /// Lines read while another command held `state.lock`: applied at the
    /// next retry (that command may be waiting for the agent's answer).
    deferred: Option<Vec<FanLine>>,
    run_dir: RunDir,
}

impl FileFans {
    pub fn new(args: &RunArgs, run_dir: &RunDir) -> Self {
        let path = match (&args.config, args.started_by_attach) {
            (Some(path), _) => Some(path.clone()),
            (None, true) => None,
            (None, false) => Some(PathBuf::from(FAN_CONFIG)),
        };
        let applied = run_dir.path.join("config.applied");
        // What an earlier agent of this boot applied (it is ours: the run
        // directory is root's, mode 0700); unreadable means nothing.
        // (An agent that reads no file has no file's fans to take back.)
        let lines = std::fs::read_to_string(&applied)
            .ok()
            .filter(|_| path.is_some())
            .and_then(|text| config::parse(&applied.display().to_string(), &text).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| !l.off)
            .collect();
        Self {
            path,
            explicit: args.config.is_some(),
            lines,
            pending: Vec::new(),
            read_text: None,
            applied,
            deferred: None,
            run_dir: run_dir.clone(),
        }
    }

    /// The file's fans not marked off: none if there is no file (unless it
    /// was named); refused if anyone but root owns it or may write it.
    pub fn read(&mut self) -> Result<Vec<FanLine>> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        if !self.explicit && !path.exists() {
            return Ok(Vec::new());
        }
        if self.explicit && !path.exists() {
            bail!("the configuration {} does not exist", path.display());
        }
        config::check_owner(path)?;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lines = config::parse(&path.display().to_string(), &text)?;
        self.read_text = Some(text);
        Ok(lines.into_iter().filter(|l| !l.off).collect())
    }

    /// Applies what changed in `lines` (from [`FileFans::read`]) since the
    /// last time (at start: every fan). Fails with the lines that failed.
    pub async fn apply(&mut self, net: &Net, global: &Global, lines: Vec<FanLine>) -> Result<()> {
        if self.path.is_none() {
            return Ok(());
        }
        let Some(lock) = self.run_dir.try_lock_state()? else {
            info!(
                "another fan-xdp is changing the fans: the configuration is applied once it is done"
            );
            self.deferred = Some(lines);
            return Ok(());
        };
        let path = self.path.clone().unwrap_or_default();
        let (_, fans) = attached(global)?;
        let mut failed = Vec::new();
        // Removed (or now off) and changed lines go first: a changed line
        // may give its bridge or underlay to another.
        for old in &self.lines {
            let new = lines.iter().find(|l| l.overlay == old.overlay);
            if new.is_some_and(|n| same(n, old)) {
                continue;
            }
            if let Some(fan) = fans.iter().find(|f| f.overlay == old.overlay) {
                match apply::detach(&resolve::detach_args(fan), global, How::held(&lock)).await {
                    Ok(()) if new.is_none() => info!(
                        "{}: removed from the configuration: detached",
                        describe(old, &path)
                    ),
                    Ok(()) => {}
                    Err(e) => failed.push(format!("detaching {}: {e:#}", describe(old, &path))),
                }
            }
        }
        if let Err(e) = crate::state::named::forget_detached(global) {
            failed.push(format!("{e:#}"));
        }
        self.pending.clear();
        for line in &lines {
            let old = self.lines.iter().find(|l| l.overlay == line.overlay);
            // An unchanged line is attached again too, which changes
            // nothing where it is up (and brings back one detached by hand).
            let what = match old {
                Some(old) if same(old, line) => None,
                Some(_) => Some("changed"),
                None => Some("added"),
            };
            match up(net, line, global, &lock).await {
                Ok(()) => {
                    if let Some(what) = what {
                        info!("{}: {what}: attached", describe(line, &path));
                    }
                }
                Err(e) => {
                    failed.push(format!("{}: {e:#}", describe(line, &path)));
                    self.pending.push(line.clone());
                }
            }
        }
        self.lines = lines;
        let text = self.read_text.take().unwrap_or_default();
        if let Err(e) = std::fs::write(&self.applied, text) {
            warn!(
                "recording the applied configuration in {}: {e}",
                self.applied.display()
            );
        }
        if !failed.is_empty() {
            for failure in &failed {
                warn!("{failure}");
            }
            bail!("{}", failed.join("; "));
        }
        Ok(())
    }

    /// Tries again the lines that could not be attached (their interface
    /// or address may be there now).
    pub async fn retry(&mut self, net: &Net, global: &Global) {
        if let Some(lines) = self.deferred.take()
            && let Err(e) = self.apply(net, global, lines).await
        {
            warn!("the configuration's fans: {e:#}");
        }
        if self.pending.is_empty() {
            return;
        }
        let Ok(Some(lock)) = self.run_dir.try_lock_state() else {
            return;
        };
        let path = self.path.clone().unwrap_or_default();
        let mut still = Vec::new();
        for line in std::mem::take(&mut self.pending) {
            match up(net, &line, global, &lock).await {
                Ok(()) => info!("{}: attached now", describe(&line, &path)),
                Err(_) => still.push(line),
            }
        }
        self.pending = still;
    }
}

impl FileFans {
    /// The host addresses the file's lines name, by overlay: those fans
    /// stay on that address (the follower never moves them to another).
    pub fn named_addresses(&self) -> HashMap<Ipv4Network, Ipv4Addr> {
        self.lines
            .iter()
            .filter_map(|line| Some((line.overlay, resolve::named_address(&line.underlay)?)))
            .collect()
    }
}

/// A line's settings equal, wherever in the file it is.
fn same(a: &FanLine, b: &FanLine) -> bool {
    FanLine {
        line: 0,
        ..a.clone()
    } == FanLine {
        line: 0,
        ..b.clone()
    }
}

async fn up(net: &Net, line: &FanLine, global: &Global, lock: &StateLock) -> Result<()> {
    let args = resolve::attach_args(net, line, true).await?;
    apply::attach(&args, global, How::held(lock))
        .await
        .map(drop)
}
