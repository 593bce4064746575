//! `fan-xdp doctor`: checks what breaks fans in the field, and says how to
//! fix each. Read-only; exits non-zero when it found a problem.

use anyhow::{Result, bail};
use fan_common::maps::DecapMode;

use crate::{
    agent,
    cli::Global,
    dataplane::{DECAP_TC, PinnedMaps, inspect, overlay_key, pinned_link_ifindex, tcx_supported},
    host::{IP_FORWARD, Net, arp_table::ArpTable, nat, read_sysctl, rp_filter_is_strict},
    state::{
        record::{Fan, attached},
        rundir::RunDir,
    },
};

/// One finding: what is wrong, and what fixes it.
struct Finding {
    problem: String,
    fix: String,
}

pub async fn run(global: &Global) -> Result<()> {
    let (dir, fans) = attached(global)?;
    if fans.is_empty() {
        println!("no fans attached in this network namespace: nothing to check");
        return Ok(());
    }
    let net = Net::connect()?;
    let maps = PinnedMaps::open(&dir)?;
    let mut findings = Vec::new();
    let mut found = |problem: String, fix: String| findings.push(Finding { problem, fix });

    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    match agent::status(&run_dir) {
        None => found(
            "no agent serves this network namespace: no direct delivery, no encapsulation at the container ports".into(),
            "start it: `systemctl start fan-xdp` or `fan-xdp run` (attach starts one unless --no-agent)".into(),
        ),
        Some(status) if !status.bypass => found(
            format!("the fast path is off: {}", status.bypass_why),
            "if netfilter need not see fan traffic, attach again with --bypass on".into(),
        ),
        Some(_) => {}
    }
    if read_sysctl(IP_FORWARD)? != 1 {
        found(
            "forwarding is off: the stack drops what it would forward between the slice and the underlay".into(),
            "sysctl -w net.ipv4.ip_forward=1".into(),
        );
    }
    if let Some(chain) = nat::forward_drop_policy() {
        found(
            format!("{chain} drops forwarded packets by default: fan traffic on the stack path is dropped"),
            "accept the slice bridges in it, e.g. `nft insert rule <family> <table> <chain> iifname \"fan-*\" accept` and the same with oifname".into(),
        );
    }
    // Readable in the host's own namespace only: elsewhere nothing to judge.
    if let Ok(table) = ArpTable::read()
        && let Some((problem, fix)) = arp_table_finding(table.entries, table.limit)
    {
        found(problem, fix);
    }
    for fan in &fans {
        if !fan.complete {
            found(
                format!(
                    "fan {} was attached only half-way (the attach was interrupted)",
                    fan.overlay
                ),
                format!("finish it: {}", reattach(fan)),
            );
            continue;
        }
        let Some(iface) = net.device(&fan.iface).await? else {
            found(
                format!("the underlay {} of fan {} is gone", fan.iface, fan.overlay),
                format!("when it is back: {}", reattach(fan)),
            );
            continue;
        };
        if rp_filter_is_strict(&fan.iface)? {
            found(
                format!(
                    "strict reverse-path filtering on {}: decapsulated packets from other slices are dropped",
                    fan.iface
                ),
                format!("sysctl -w net.ipv4.conf.{}.rp_filter=2", fan.iface),
            );
        }
        let entry = maps
            .config
            .get(
                &overlay_key(u32::from(fan.overlay.network()), fan.overlay.prefix()),
                0,
            )
            .ok();
        if entry.is_some_and(|e| e.underlay_ifindex != iface.index) {
            found(
                format!(
                    "fan {} points at an old {} (the device was re-created)",
                    fan.overlay, fan.iface
                ),
                reattach(fan),
            );
        }
        let hook = if fan.mode == Some(DecapMode::Xdp) {
            "decap-xdp"
        } else {
            "decap-tc"
        };
        if (fan.mode == Some(DecapMode::Xdp) || tcx_supported())
            && let Ok(Some(index)) = pinned_link_ifindex(&dir.link(&fan.iface, hook))
            && index != iface.index
        {
            found(
                format!(
                    "the decapsulation link of {} is defunct (on ifindex {index}, the device is now {})",
                    fan.iface, iface.index
                ),
                reattach(fan),
            );
        }
        if fan.mode == Some(DecapMode::Tc) && tcx_supported() {
            for (id, name) in inspect::tcx_ingress_before(&dir, &fan.iface, DECAP_TC) {
                found(
                    format!(
                        "program {id} ({name}) runs before fan-xdp's decapsulation on {} and decides first",
                        fan.iface
                    ),
                    "make sure it hands IP-in-IP on (TCX_NEXT), or detach it".into(),
                );
            }
        }
        if let Some(bridge) = net.device(&fan.bridge).await? {
            if let Some((port, _)) = fan.overlay_port() {
                let plugged = net.device(&port).await?;
                if plugged.is_none_or(|p| p.controller != Some(bridge.index)) {
                    found(
                        format!(
                            "the VXLAN fan {}'s overlay port {port} is not a port of {}: nothing the bridge sends reaches other hosts",
                            fan.overlay, fan.bridge
                        ),
                        reattach(fan),
                    );
                }
                // The gateway forwards what routed containers send to remote
                // ones back out of the bridge: the kernel sends them ICMP
                // redirects (when conf/all or the bridge's says so), they
                // then switch such traffic past the host's forwarding and
                // netfilter, and keep those routes cached after a detach.
                let key = |scope: &str| format!("conf/{scope}/send_redirects");
                if read_sysctl(&key("all"))? != 0 || read_sysctl(&key(&fan.bridge))? != 0 {
                    found(
                        format!(
                            "the VXLAN fan {}'s gateway sends ICMP redirects on {}: containers routed through it are told to send to remote containers directly",
                            fan.overlay, fan.bridge
                        ),
                        format!(
                            "sysctl -w net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.{}.send_redirects=0",
                            fan.bridge
                        ),
                    );
                }
            }
            for port in net.ports(bridge.index).await? {
                if port.mtu > fan.mtu {
                    found(
                        format!(
                            "{} on {} has MTU {} above the fan's {}: its large packets are dropped",
                            port.name, fan.bridge, port.mtu, fan.mtu
                        ),
                        format!(
                            "give the container's interface and {} MTU {} (runtimes: --mtu={})",
                            port.name, fan.mtu, fan.mtu
                        ),
                    );
                }
            }
        } else {
            found(
                format!(
                    "the slice bridge {} of fan {} is gone",
                    fan.bridge, fan.overlay
                ),
                reattach(fan),
            );
        }
    }
    // Each fan with its wire format.
    let named: Vec<String> = fans
        .iter()
        .map(|f| format!("{} {}", f.overlay, f.wire.encap().name()))
        .collect();
    if findings.is_empty() {
        println!(
            "ok: {} fan(s) ({}), nothing found that breaks them",
            fans.len(),
            named.join(", ")
        );
        return Ok(());
    }
    println!("fan(s): {}", named.join(", "));
    for finding in &findings {
        println!("problem: {}\n    fix: {}", finding.problem, finding.fix);
    }
    bail!("{} problem(s) found", findings.len())
}

/// Past `limit` entries the kernel makes no new one, and so answers no ARP
/// request from a new sender: a container that came up then cannot reach
/// its gateway. Each container holds an entry for its gateway and its host
/// one for it: a host needs about two per container. Said from three
/// quarters full, while there is room to act.
fn arp_table_finding(entries: u64, limit: u64) -> Option<(String, String)> {
    if entries * 4 < limit * 3 {
        return None;
    }
    let raised = (entries * 2).max(limit * 2).next_power_of_two();
    Some((
        format!(
            "the kernel's ARP table holds {entries} of the {limit} entries it allows (one table for the host and every container): past it new containers get no ARP answer and cannot reach their gateway"
        ),
        format!(
            "allow about two per container: sysctl -w net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh3={raised}",
            raised / 2
        ),
    ))
}

/// The attach that sets `fan` up again as it is (its wire format included).
fn reattach(fan: &Fan) -> String {
    let mut command = format!("fan-xdp attach {} --overlay {}", fan.iface, fan.overlay);
    if let Some((vni, port)) = fan.wire.vxlan() {
        command += &format!(" --type vxlan --vni {vni} --port {port}");
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nearly_full_arp_table_is_a_finding_with_room_to_spare_in_its_fix() {
        assert_eq!(arp_table_finding(700, 1024), None);
        let (problem, fix) = arp_table_finding(768, 1024).expect("three quarters full");
        assert!(problem.contains("holds 768 of the 1024"), "{problem}");
        assert!(
            fix.ends_with("gc_thresh2=1024 net.ipv4.neigh.default.gc_thresh3=2048"),
            "{fix}"
        );
        let (_, fix) = arp_table_finding(1500, 1024).expect("over the limit");
        assert!(fix.ends_with("gc_thresh3=4096"), "{fix}");
    }
}
