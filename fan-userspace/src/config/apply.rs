//! fanctl's verbs, `up` and `down`: a second spelling of `attach` and
//! `detach`. Their words and the configuration's lines are parsed by
//! [`crate::config`], resolved into `attach`/`detach` arguments by
//! [`crate::config::resolve`] and carried out by those very commands; there
//! is no second implementation of either.
//!
//! `up -a` resolves every line before it changes anything, and if one
//! attach fails it detaches again the fans it attached itself, so a bad
//! line leaves the host as it was.

use anyhow::{Context as _, Result, bail};
use log::warn;

use crate::{
    cli::{DownArgs, Global, UpArgs},
    commands::{attach, detach},
    config::{self, FanLine, Underlay, resolve},
    host::Net,
    state::record::Fan,
    state::record::attached,
    state::{named, rundir::RunDir},
};

/// `fan-xdp up [OVERLAY] UNDERLAY [KEYWORD ...]`, or `up -a`: every line of
/// the configuration not marked `off`.
pub async fn up(args: &UpArgs, global: &Global) -> Result<()> {
    let lines = if args.all {
        config::read(&args.config)?
            .into_iter()
            .filter(|f| !f.off)
            .collect()
    } else {
        let line = config::parse_args(&args.words)?;
        if line.off {
            bail!("`off` marks a configuration line that `up -a` skips; it means nothing to `up`");
        }
        vec![line]
    };
    let net = Net::connect()?;
    let mut plans = Vec::new();
    for line in &lines {
        let plan = resolve::attach_args(&net, line, args.no_agent)
            .await
            .with_context(|| describe(line, &args.config))?;
        plans.push(plan);
    }
    let before: Vec<_> = attached(global)?.1.into_iter().map(|f| f.overlay).collect();
    for (index, plan) in plans.iter().enumerate() {
        if let Err(e) = attach::run(plan, global).await {
            // Only the fans this command added go again; ones that were
            // attached before it stay as they were.
            for earlier in plans[..index].iter().filter(|p| {
                !before
                    .iter()
                    .any(|o| ipnetwork::IpNetwork::V4(*o) == p.overlay)
            }) {
                let undo = crate::cli::DetachArgs {
                    iface: earlier.iface.clone(),
                    overlay: Some(earlier.overlay),
                };
                if let Err(e) = detach::run(&undo, global).await {
                    warn!("taking back {}: {e:#}", earlier.overlay);
                }
            }
            return Err(e.context(describe(&lines[index], &args.config)));
        }
    }
    // A fan whose line names this host's address stays on it: the agent's
    // follower reads the configuration's lines, and this for those given here.
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    for line in &lines {
        if let Some(address) = resolve::named_address(&line.underlay) {
            named::name(&run_dir, line.overlay, address)?;
        }
    }
    Ok(())
}

/// `fan-xdp down [OVERLAY] UNDERLAY`, `down -a` (every fan the
/// configuration names) or `down -e` (every fan attached here).
pub async fn down(args: &DownArgs, global: &Global) -> Result<()> {
    let (_, fans) = attached(global)?;
    let going: Vec<&Fan> = if args.existing {
        fans.iter().collect()
    } else if args.all {
        let lines = config::read(&args.config)?;
        fans.iter()
            .filter(|f| lines.iter().any(|l| l.overlay == f.overlay))
            .collect()
    } else {
        let line = config::parse_args(&args.words)?;
        match fans.iter().find(|f| f.overlay == line.overlay) {
            Some(fan) if names(&line.underlay, fan) => vec![fan],
            Some(fan) => bail!(
                "overlay {} is attached to {} ({}), not to {}",
                fan.overlay,
                fan.iface,
                fan.host,
                line.underlay
            ),
            None => {
                println!(
                    "nothing to detach: overlay {} is not attached",
                    line.overlay
                );
                return Ok(());
            }
        }
    };
    if going.is_empty() {
        println!("nothing to detach");
    }
    for fan in going {
        detach::run(&resolve::detach_args(fan), global).await?;
    }
    Ok(())
}

/// Whether UNDERLAY names the interface or address `fan` is on (`default`
/// names whatever the fan is on: the default route may have moved).
fn names(underlay: &Underlay, fan: &Fan) -> bool {
    match underlay {
        Underlay::Address(addr, len) => {
            (*addr == fan.host || *addr == fan.underlay.network()) && *len == fan.underlay.prefix()
        }
        Underlay::Interface(name, len) => *name == fan.iface && *len == fan.underlay.prefix(),
        Underlay::Default => true,
    }
}

/// A line, for messages: where it is and what it says.
pub fn describe(line: &FanLine, file: &std::path::Path) -> String {
    if line.line == 0 {
        format!("fan {} over {}", line.overlay, line.underlay)
    } else {
        format!(
            "{}:{}: fan {} over {}",
            file.display(),
            line.line,
            line.overlay,
            line.underlay
        )
    }
}
