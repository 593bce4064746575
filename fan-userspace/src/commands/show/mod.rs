//! `fan-xdp show`: the fans of this namespace, from the pinned state.

use anyhow::Result;
use serde::Serialize;

use fan_common::maps::PathMtu;

use crate::{
    agent,
    agent::{
        bindings::{self, Binding},
        pmtu,
    },
    cli::{Global, ShowArgs},
    dataplane::{ENCAP_PORT, PinnedMaps, inspect, pinned_program_id, tcx_supported},
    host::Net,
    host::bypass,
    host::naming::is_overlay_port,
    state::StateDir,
    state::record::{Fan, attached},
    state::rundir::RunDir,
};

mod slice;
use slice::{SliceUse, describe_slice_use, slice_use};

/// The fast path `fan-xdp run` keeps for a fan: encapsulation at the slice
/// bridge's ports and the endpoints decapsulated packets go straight to.
#[derive(Debug, Serialize)]
pub struct FastPath {
    /// The slice bridge's ports (container veths).
    pub ports: usize,
    /// Ports running the encapsulating program; None where the kernel has
    /// no TCX, so encapsulation stays at the bridge.
    pub ports_encapsulating: Option<usize>,
    /// Containers of the slice that packets are delivered to directly.
    pub endpoints: usize,
}

#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    fan: &'a Fan,
    fast_path: Option<FastPath>,
    path_mtus: Vec<LearnedPathMtu>,
    /// The agent serving the namespace, from its status; None: none runs.
    agent: Option<&'a agent::Status>,
    /// Whether the fast path may skip the host's netfilter, and why (not).
    bypass: &'a bypass::Verdict,
    /// The agent's bindings of addresses of the slice (CNI's name their pod).
    bindings: Vec<&'a Binding>,
    #[serde(flatten)]
    slice: SliceUse,
}

/// A path MTU the programs learned towards a host of a fan's underlay.
#[derive(Debug, Serialize)]
struct LearnedPathMtu {
    host: std::net::Ipv4Addr,
    mtu: u32,
    age_seconds: u64,
    /// Past the kernel's mtu_expires: no longer applied.
    expired: bool,
}

/// The learned path MTUs towards hosts of `fan`'s underlay.
fn path_mtus(learned: &[(std::net::Ipv4Addr, PathMtu, bool)], fan: &Fan) -> Vec<LearnedPathMtu> {
    learned
        .iter()
        .filter(|(host, _, _)| fan.underlay.contains(*host))
        .map(|(host, entry, fresh)| LearnedPathMtu {
            host: *host,
            mtu: entry.mtu,
            age_seconds: pmtu::age_seconds(entry.learned_ns),
            expired: !fresh,
        })
        .collect()
}

/// What `fan-xdp run` currently does for `fan`, read from the kernel (the
/// daemon's TCX links and the endpoint map), not from the daemon.
async fn fast_path(net: &Net, dir: &StateDir, maps: &PinnedMaps, fan: &Fan) -> Result<FastPath> {
    // A VXLAN fan's overlay port is the overlay's, not a container's.
    let ports = match net.device(&fan.bridge).await? {
        Some(bridge) => net
            .ports(bridge.index)
            .await?
            .into_iter()
            .filter(|p| !is_overlay_port(&p.name))
            .collect(),
        None => Vec::new(),
    };
    let ports_encapsulating = if tcx_supported() {
        inspect::ports_running_encap(dir, ports.iter().map(|p| p.name.as_str()))
    } else {
        // Before 6.6: the clsact filters running the pinned port program.
        let encap = pinned_program_id(&dir.program(ENCAP_PORT));
        let mut running = 0;
        for port in &ports {
            if net
                .tc_bpf_programs(port.index, false)
                .await?
                .into_iter()
                .any(|id| Some(id) == encap)
            {
                running += 1;
            }
        }
        running
    };
    let mut endpoints = 0;
    for key in maps.endpoints.keys() {
        if fan.slice.contains(std::net::Ipv4Addr::from(key?)) {
            endpoints += 1;
        }
    }
    Ok(FastPath {
        ports: ports.len(),
        ports_encapsulating: Some(ports_encapsulating),
        endpoints,
    })
}

pub async fn run(args: &ShowArgs, global: &Global) -> Result<()> {
    // An attach or detach in progress (the agent's own, when a fan follows
    // its underlay) may be creating or removing the pins as they are read:
    // read again once it is done, for at most two seconds.
    let run = RunDir::locate(global.run_dir.as_deref())?;
    for _ in 0..20 {
        match show(args, global).await {
            Err(_) if run.try_lock_state().ok().flatten().is_none() => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            shown => return shown,
        }
    }
    show(args, global).await
}

async fn show(args: &ShowArgs, global: &Global) -> Result<()> {
    let (dir, fans) = attached(global)?;
    let run = RunDir::locate(global.run_dir.as_deref())?;
    let serving = agent::status(&run);
    let bound = if serving.is_some() {
        bindings::list(&run).unwrap_or_default()
    } else {
        Vec::new()
    };
    let bound_in = |fan: &Fan| -> Vec<&Binding> {
        bound
            .iter()
            .filter(|b| fan.slice.contains(b.address))
            .collect()
    };
    let mut fast_paths = Vec::new();
    let mut slices = Vec::new();
    let mut learned = Vec::new();
    let mut bypass = bypass::Verdict {
        on: true,
        why: String::new(),
    };
    if !fans.is_empty() {
        let net = Net::connect()?;
        let maps = PinnedMaps::open(&dir)?;
        learned = pmtu::learned(&maps)?;
        bypass = bypass_now(maps.bypass()?);
        for fan in &fans {
            let shown = if fan.complete {
                Some(fast_path(&net, &dir, &maps, fan).await?)
            } else {
                None
            };
            fast_paths.push(shown);
            slices.push(slice_use(&net, &run, global, fan, args.leases).await?);
        }
    }
    if args.json {
        let shown: Vec<Shown> = fans
            .iter()
            .zip(fast_paths)
            .zip(slices)
            .map(|((fan, fast_path), slice)| Shown {
                fan,
                fast_path,
                path_mtus: path_mtus(&learned, fan),
                agent: serving.as_ref(),
                bypass: &bypass,
                bindings: bound_in(fan),
                slice,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    if fans.is_empty() {
        println!("no fans attached in this network namespace");
        return Ok(());
    }
    println!(
        "{:<15} {:<26} {:<18} {:<18} {:<5} FLAGS",
        "BRIDGE", "UNDERLAY", "OVERLAY", "SLICE", "MODE"
    );
    for fan in &fans {
        let mut flags = vec![
            format!("type={}", fan.wire.encap().name()),
            format!("mtu={}", fan.mtu),
            format!("host-reserve={}", fan.host_reserve),
        ];
        if let Some((vni, port)) = fan.wire.vxlan() {
            flags.extend([format!("vni={vni}"), format!("port={port}")]);
        }
        if fan.nat {
            flags.push("nat".into());
        }
        if !fan.complete {
            flags.push("INCOMPLETE".into());
        }
        println!(
            "{:<15} {:<26} {:<18} {:<18} {:<5} {}",
            fan.bridge,
            format!("{} {}/{}", fan.iface, fan.host, fan.underlay.prefix()),
            fan.overlay.to_string(),
            fan.slice.to_string(),
            fan.mode_name(),
            flags.join(",")
        );
    }
    println!("{}", describe_agent(serving.as_ref()));
    if bypass.on {
        println!("bypass: on (the fast path skips netfilter: {})", bypass.why);
    } else {
        println!(
            "bypass: off ({}): fan traffic takes the host's stack; `fan-xdp attach ... --bypass on` forces the fast path",
            bypass.why
        );
    }
    for ((fan, fast_path), slice) in fans.iter().zip(&fast_paths).zip(&slices) {
        for line in describe_slice_use(fan, slice) {
            println!("{line}");
        }
        for line in describe_bindings(fan, &bound_in(fan)) {
            println!("{line}");
        }
        if let (Some((port, inner)), Some((vni, udp_port))) = (fan.overlay_port(), fan.wire.vxlan())
        {
            println!(
                "{}: VXLAN (VNI {vni}, UDP port {udp_port}) through its overlay port {port}, encapsulated at {inner}; gateway {}/{} (the overlay on-link)",
                fan.bridge,
                fan.gateway,
                fan.gateway_prefix()
            );
        }
        let Some(fast_path) = fast_path else { continue };
        println!(
            "{}: decapsulation {} ({})",
            fan.iface,
            fan.mode_name(),
            fan.mode_reason
        );
        println!(
            "{}: {}",
            fan.bridge,
            describe(fast_path, serving.is_some(), bypass.on)
        );
        for learned in path_mtus(&learned, fan) {
            println!(
                "{}: path MTU to {} is {} (learned {} s ago{})",
                fan.iface,
                learned.host,
                learned.mtu,
                learned.age_seconds,
                if learned.expired { ", expired" } else { "" }
            );
        }
    }
    Ok(())
}

/// The bound addresses of `fan`'s slice, one line each: who holds it (a
/// CNI binding's pod and container, a DHCP client) and at which port.
fn describe_bindings(fan: &Fan, bound: &[&Binding]) -> Vec<String> {
    if bound.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!("{}: bound addresses:", fan.bridge)];
    for b in bound {
        let holder = match &b.pod {
            Some(pod) => format!("pod {pod}, container {}", b.owner),
            None if b.owner.is_empty() => "an unnamed owner".to_string(),
            None => b.owner.clone(),
        };
        lines.push(format!(
            "  {:<15} {:<6} {} at {}",
            b.address,
            b.origin.name(),
            holder,
            b.port.as_deref().unwrap_or(&b.mac)
        ));
    }
    lines
}

/// One line on the fast path, saying what is missing when `fan-xdp run` is not.
fn describe(fast_path: &FastPath, agent_runs: bool, bypass_on: bool) -> String {
    let ports = fast_path.ports;
    if !bypass_on {
        let checked = fast_path
            .ports_encapsulating
            .map_or("no TCX for port programs".to_string(), |n| {
                format!("{n} of {ports} container port(s)")
            });
        return format!(
            "no fast path (bypass off): source and DHCP checks at {checked}; {} address(es) bound, none delivered directly",
            fast_path.endpoints
        );
    }
    let encap = match fast_path.ports_encapsulating {
        Some(n) if n == ports && ports > 0 => {
            format!("encapsulation at each of the {ports} container port(s)")
        }
        Some(0) if ports > 0 && agent_runs => {
            format!(
                "encapsulation at the bridge for now: the agent is taking over its {ports} port(s)"
            )
        }
        Some(0) if ports > 0 => {
            format!("encapsulation at the bridge, none of its {ports} port(s) (no agent runs)")
        }
        Some(n) => {
            format!("encapsulation at {n} of {ports} container port(s), the others at the bridge")
        }
        None => "encapsulation at the bridge (no TCX for port programs)".to_string(),
    };
    format!(
        "{encap}; direct delivery to {} container(s)",
        fast_path.endpoints
    )
}

/// One line on the agent serving the namespace.
fn describe_agent(status: Option<&agent::Status>) -> String {
    let Some(status) = status else {
        return "agent: none runs (attached with --no-agent, or it was stopped): every packet takes the bridge and the stack".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bindings: Vec<String> = status
        .bindings
        .iter()
        .map(|(origin, n)| format!("{n} {origin}"))
        .collect();
    format!(
        "agent: fan-xdp run (pid {}, version {}){}, up {} s, last sync {} s ago; bindings: {}",
        status.pid,
        status.version,
        if status.started_by_attach {
            ", started by attach"
        } else {
            ""
        },
        now.saturating_sub(status.since),
        now.saturating_sub(status.last_sync),
        if bindings.is_empty() {
            "none".to_string()
        } else {
            bindings.join(", ")
        }
    )
}

/// What the bypass value in force means, with the reason behind it.
fn bypass_now(value: u32) -> bypass::Verdict {
    use fan_common::maps::bypass as value_of;
    match value {
        value_of::AUTO_OFF => bypass::Verdict {
            on: false,
            why: bypass::netfilter_could_act()
                .unwrap_or_else(|| "netfilter could act (until the agent looks again)".into()),
        },
        value_of::FORCED_OFF => bypass::decide(crate::cli::Bypass::Off).1,
        value_of::FORCED_ON => bypass::decide(crate::cli::Bypass::On).1,
        _ => bypass::Verdict {
            on: true,
            why: "netfilter has nothing for forwarded fan traffic".into(),
        },
    }
}
