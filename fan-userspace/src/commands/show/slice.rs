//! What `show` says about how a fan's slice is shared out: the address
//! plan, the Docker options that fit it, the DHCP server and its leases.

use anyhow::Result;
use serde::Serialize;

use crate::{
    agent::{bindings::format_mac, dhcp},
    cli::Global,
    host::Net,
    state::{record::Fan, rundir::RunDir, settings},
};

/// How a fan's slice is shared out: the address plan, the Docker options
/// that fit it, its DHCP server and, with `--leases`, the leases.
#[derive(Serialize)]
pub struct SliceUse {
    /// None where the slice is too small for a plan (a /29 or /30).
    plan: Option<ShownPlan>,
    /// The seed's `DOCKER_OPTS` line for this fan's bridge.
    docker_opts: Option<String>,
    /// None: DHCP is off for this fan.
    dhcp: Option<dhcp::Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leases: Option<Vec<ShownLease>>,
}

#[derive(Serialize)]
struct ShownPlan {
    gateway: std::net::Ipv4Addr,
    reserve: String,
    dhcp: String,
    docker: String,
    cni: String,
}

#[derive(Serialize)]
struct ShownLease {
    #[serde(flatten)]
    lease: dhcp::Lease,
    /// The bridge port the bridge's forwarding database has for the MAC.
    port: Option<String>,
}

pub async fn slice_use(
    net: &Net,
    run: &RunDir,
    global: &Global,
    fan: &Fan,
    leases: bool,
) -> Result<SliceUse> {
    let plan = settings::plan_of(run, fan).ok();
    let dhcp = match (settings::dhcp_of(run, fan)?, &plan) {
        (true, Some(plan)) => Some(dhcp::status(run, global.state_dir.as_deref(), fan, plan)),
        _ => None,
    };
    let leases = match (&dhcp, leases) {
        (Some(status), true) => Some(shown_leases(net, fan, &status.lease_file).await?),
        _ => None,
    };
    Ok(SliceUse {
        docker_opts: plan.as_ref().map(|plan| {
            format!(
                "DOCKER_OPTS=\"-b {} --mtu={} --fixed-cidr={} --iptables=false --ip6tables=false --ip-masq=false\"",
                fan.bridge, fan.mtu, plan.docker
            )
        }),
        plan: plan.map(|plan| ShownPlan {
            gateway: plan.gateway,
            reserve: plan.reserve.to_string(),
            dhcp: plan.dhcp.to_string(),
            docker: plan.docker.to_string(),
            cni: plan.cni.to_string(),
        }),
        dhcp,
        leases,
    })
}

/// The leases in `file`, each with the port its MAC is behind.
async fn shown_leases(net: &Net, fan: &Fan, file: &std::path::Path) -> Result<Vec<ShownLease>> {
    let mut ports = std::collections::HashMap::new();
    if let Some(bridge) = net.device(&fan.bridge).await? {
        let names: std::collections::HashMap<u32, String> = net
            .ports(bridge.index)
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        for entry in net.fdb(bridge.index).await? {
            if let Some(name) = names.get(&entry.port) {
                ports.insert(format_mac(entry.mac), name.clone());
            }
        }
    }
    Ok(dhcp::read_leases(file)?
        .into_iter()
        .map(|lease| ShownLease {
            port: ports.get(&lease.mac).cloned(),
            lease,
        })
        .collect())
}

/// The text lines of a fan's slice use.
pub fn describe_slice_use(fan: &Fan, slice: &SliceUse) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(plan) = &slice.plan else {
        return lines;
    };
    lines.push(format!(
        "{}: address plan: host reserve {} (gateway {}), DHCP {}, Docker {}, CNI {}",
        fan.bridge, plan.reserve, plan.gateway, plan.dhcp, plan.docker, plan.cni
    ));
    if let Some(opts) = &slice.docker_opts {
        lines.push(format!("{}: {opts}", fan.bridge));
    }
    lines.push(match &slice.dhcp {
        None => format!(
            "{}: DHCP: off (attach --dhcp serves the DHCP range)",
            fan.bridge
        ),
        Some(dhcp) => match dhcp.pid {
            Some(pid) => format!(
                "{}: DHCP: running (dnsmasq pid {pid}), {} lease(s) in use of {} ({})",
                fan.bridge, dhcp.leases, dhcp.size, dhcp.range
            ),
            None => format!(
                "{}: DHCP: on, but dnsmasq is not running (the agent starts it again; see its log)",
                fan.bridge
            ),
        },
    });
    for shown in slice.leases.iter().flatten() {
        let lease = &shown.lease;
        lines.push(format!(
            "  {:<15} {} {:<15} {}",
            lease.address,
            lease.mac,
            shown.port.as_deref().unwrap_or("-"),
            describe_expiry(lease.expiry)
        ));
    }
    lines
}

fn describe_expiry(expiry: u64) -> String {
    if expiry == 0 {
        return "never expires".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if expiry > now {
        format!("expires in {} s (at {expiry})", expiry - now)
    } else {
        format!("expired {} s ago", now - expiry)
    }
}
