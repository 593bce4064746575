//! The ways two slices can be joined, each set up and torn down on the same
//! namespaces, for side-by-side measurements: plain routes, the kernel's
//! VXLAN (flannel style), the kernel's ipip driver (the original Fan's wire
//! format, where the kernel has it), and fan-xdp in its decapsulation modes
//! and as a VXLAN fan.

use std::fmt;

use anyhow::{Context as _, Result};

use crate::{
    netns::Netns,
    topology::{Daemon, Fleet, Host, add_bridge},
};

/// Every container link carries this MTU on every path: the VXLAN limit.
pub const CONTAINER_MTU: u32 = 1450;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Routing,
    /// Plain routing with RPS on the containers' ports, as `--steer-flows` sets.
    RoutingSteered,
    Vxlan,
    KernelIpip,
    FanXdp,
    FanTc,
    /// `fan-xdp attach` with nothing else, as a user runs it: the agent it
    /// starts keeps the fast path. Beside `FanTc`, which it must equal.
    FanAttachOnly,
    /// As `FanTc`, with `fan-xdp run --steer-flows`.
    FanTcSteered,
    /// fan-xdp in TC mode without `fan-xdp run`: every packet takes the stack.
    FanTcStack,
    /// As `FanTc`, the fan's wire format VXLAN (`attach --type vxlan`).
    FanVxlan,
}

impl Path {
    pub fn is_fan(self) -> bool {
        matches!(
            self,
            Path::FanXdp
                | Path::FanTc
                | Path::FanTcSteered
                | Path::FanTcStack
                | Path::FanAttachOnly
                | Path::FanVxlan
        )
    }

    /// Every path, in the bench's order.
    pub const ALL: [Path; 10] = [
        Path::Routing,
        Path::RoutingSteered,
        Path::Vxlan,
        Path::KernelIpip,
        Path::FanXdp,
        Path::FanTc,
        Path::FanAttachOnly,
        Path::FanTcSteered,
        Path::FanTcStack,
        Path::FanVxlan,
    ];

    /// The path's name on the bench's command line (`--paths`).
    pub fn key(self) -> &'static str {
        match self {
            Path::Routing => "routing",
            Path::RoutingSteered => "routing-steered",
            Path::Vxlan => "vxlan",
            Path::KernelIpip => "kernel-ipip",
            Path::FanXdp => "fan-xdp",
            Path::FanTc => "fan-tc",
            Path::FanTcSteered => "fan-tc-steered",
            Path::FanTcStack => "fan-tc-stack",
            Path::FanAttachOnly => "fan-attach-only",
            Path::FanVxlan => "fan-vxlan",
        }
    }

    /// Whether the path learns endpoints through `fan-xdp run`.
    pub fn runs_daemon(self) -> bool {
        matches!(
            self,
            Path::FanTc | Path::FanTcSteered | Path::FanAttachOnly | Path::FanVxlan
        )
    }
}

/// Sets the RPS mask of every container port on `host` (`0` turns it off).
fn set_port_rps(host: &Host, mask: &str) -> Result<()> {
    for j in 1..=host.containers.len() {
        host.ns.run(
            "sh",
            &[
                "-c",
                &format!("echo {mask} > /sys/class/net/veth{j}/queues/rx-0/rps_cpus"),
            ],
        )?;
    }
    Ok(())
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Routing => "plain routing",
            Path::RoutingSteered => "plain routing, flows steered (RPS on ports)",
            Path::Vxlan => "kernel VXLAN",
            Path::KernelIpip => "kernel ipip (per-slice routes)",
            Path::FanXdp => "fan-xdp, XDP decap",
            Path::FanTc => "fan-xdp, TC decap + direct delivery",
            Path::FanTcSteered => "fan-xdp, TC decap + direct delivery, --steer-flows",
            Path::FanTcStack => "fan-xdp, TC decap via the stack",
            Path::FanAttachOnly => "fan-xdp, attach only (as a user runs it)",
            Path::FanVxlan => "fan-xdp VXLAN, TC decap + direct delivery",
        })
    }
}

/// Makes `host` a member of the fan the way the original Ubuntu Fan did, on
/// the wire: Linux's ipip driver in NBMA mode (`remote any`) and one route per
/// remote slice via that slice's underlay host.
pub fn kernel_ipip_host(fleet: &Fleet, host: &Host) -> Result<()> {
    let ns = &host.ns;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    let local = host.underlay_addr.to_string();
    ns.ip(&[
        "link", "add", "fan-ipip", "type", "ipip", "remote", "any", "local", &local, "dev", "eth0",
    ])?;
    ns.ip(&["link", "set", "fan-ipip", "mtu", "1480", "up"])?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.fan-ipip.rp_filter", "0")?;
    for other in fleet.others(host) {
        let via = other.underlay_addr.to_string();
        ns.ip(&[
            "route",
            "add",
            &other.slice_cidr(),
            "via",
            &via,
            "dev",
            "fan-ipip",
            "onlink",
        ])?;
    }
    Ok(())
}

/// A configured path; `teardown` restores the plain fleet (bridges, no routes).
pub struct Active {
    pub path: Path,
    daemons: Vec<Daemon>,
}

/// Whether this kernel can create ipip devices (it has the module).
pub fn kernel_has_ipip(ns: &Netns) -> bool {
    // A local address of its own: `remote any local any` is the fallback tunl0's.
    let ok = ns
        .ip(&[
            "link",
            "add",
            "ipip-probe",
            "type",
            "ipip",
            "remote",
            "any",
            "local",
            "198.18.255.254",
        ])
        .is_ok();
    let _ = ns.ip(&["link", "del", "ipip-probe"]);
    ok
}

fn mac(i: u8) -> String {
    format!("02:fa:00:00:00:{i:02x}")
}

impl Active {
    pub fn setup(fleet: &Fleet, path: Path) -> Result<Self> {
        let mut daemons = Vec::new();
        match path {
            Path::Routing => fleet.route_slices()?,
            Path::RoutingSteered => {
                fleet.route_slices()?;
                let online = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
                let mask = fan_userspace::agent::ports::rps_mask(&online)?;
                for host in &fleet.hosts {
                    set_port_rps(host, &mask)?;
                }
            }
            Path::Vxlan => {
                for host in &fleet.hosts {
                    let i = host.underlay_addr.octets()[3];
                    let ns = &host.ns;
                    ns.sysctl("net.ipv4.ip_forward", "1")?;
                    ns.ip(&[
                        "link",
                        "add",
                        "vxlan0",
                        "address",
                        &mac(i),
                        "type",
                        "vxlan",
                        "id",
                        "42",
                        "local",
                        &host.underlay_addr.to_string(),
                        "dev",
                        "eth0",
                        "dstport",
                        "4789",
                        "nolearning",
                    ])?;
                    ns.ip(&[
                        "link",
                        "set",
                        "vxlan0",
                        "mtu",
                        &CONTAINER_MTU.to_string(),
                        "up",
                    ])?;
                    ns.ip(&[
                        "addr",
                        "add",
                        &format!("{}/32", host.slice),
                        "dev",
                        "vxlan0",
                    ])?;
                    for other in fleet.others(host) {
                        let j = other.underlay_addr.octets()[3];
                        let gw = other.slice.to_string();
                        ns.ip(&[
                            "route",
                            "add",
                            &other.slice_cidr(),
                            "via",
                            &gw,
                            "dev",
                            "vxlan0",
                            "onlink",
                        ])?;
                        ns.ip(&[
                            "neigh",
                            "add",
                            &gw,
                            "lladdr",
                            &mac(j),
                            "dev",
                            "vxlan0",
                            "nud",
                            "permanent",
                        ])?;
                        ns.run(
                            "bridge",
                            &[
                                "fdb",
                                "append",
                                &mac(j),
                                "dev",
                                "vxlan0",
                                "dst",
                                &other.underlay_addr.to_string(),
                            ],
                        )?;
                    }
                }
            }
            Path::KernelIpip => {
                for host in &fleet.hosts {
                    kernel_ipip_host(fleet, host)?;
                }
            }
            Path::FanXdp
            | Path::FanTc
            | Path::FanTcSteered
            | Path::FanTcStack
            | Path::FanAttachOnly
            | Path::FanVxlan => {
                let mode = if path == Path::FanXdp { "xdp" } else { "tc" };
                let wire = if path == Path::FanVxlan {
                    "vxlan"
                } else {
                    "ipip"
                };
                // Every path but the user's own manages its agent itself.
                let agent = if path == Path::FanAttachOnly {
                    None
                } else {
                    Some("--no-agent")
                };
                let overlay = format!(
                    "{}/{}",
                    crate::topology::OVERLAY.0,
                    crate::topology::OVERLAY.1
                );
                for host in &fleet.hosts {
                    let mut args = vec![
                        "attach",
                        "eth0",
                        "--overlay",
                        &overlay,
                        "--mode",
                        mode,
                        "--type",
                        wire,
                        "--no-nat",
                    ];
                    args.extend(agent);
                    host.fan_xdp_ok(&args)?;
                    if path == Path::FanTc || path == Path::FanVxlan {
                        daemons.push(host.fan_xdp_run()?);
                    } else if path == Path::FanTcSteered {
                        daemons.push(host.fan_xdp_run_with(&["--steer-flows"])?);
                    }
                }
            }
        }
        Ok(Self { path, daemons })
    }

    pub fn teardown(self, fleet: &Fleet) -> Result<()> {
        match self.path {
            Path::Routing => fleet.unroute_slices()?,
            Path::RoutingSteered => {
                for host in &fleet.hosts {
                    set_port_rps(host, "0")?;
                }
                fleet.unroute_slices()?;
            }
            Path::Vxlan => {
                for host in &fleet.hosts {
                    host.ns.ip(&["link", "del", "vxlan0"])?;
                }
            }
            Path::KernelIpip => {
                for host in &fleet.hosts {
                    host.ns.ip(&["link", "del", "fan-ipip"])?;
                }
            }
            Path::FanXdp
            | Path::FanTc
            | Path::FanTcSteered
            | Path::FanTcStack
            | Path::FanAttachOnly
            | Path::FanVxlan => {
                drop(self.daemons);
                for host in &fleet.hosts {
                    // The bridges were made by hand and adopted: detach keeps
                    // them, with their ports and the gateway address.
                    host.fan_xdp_ok(&["detach", "eth0"])?;
                    // A VXLAN fan's gateway forwards remote traffic back out
                    // of the bridge, so the kernel sent the containers ICMP
                    // redirects to the remote containers themselves; what they
                    // cached would misroute the next path's packets.
                    if self.path == Path::FanVxlan {
                        for container in &host.containers {
                            container.ns.ip(&["route", "flush", "cache"])?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A fleet for measurements: bridges made by hand (fan-xdp adopts them),
/// `containers` per host, every container link at [`CONTAINER_MTU`].
pub fn bench_fleet(hosts: u8, containers: u8) -> Result<Fleet> {
    let fleet = Fleet::new(hosts)?;
    for host in &fleet.hosts {
        add_bridge(host)?;
    }
    let fleet = fleet.with_containers(containers)?;
    let mtu = CONTAINER_MTU.to_string();
    for host in &fleet.hosts {
        for (j, c) in host.containers.iter().enumerate() {
            c.ns.ip(&["link", "set", "eth0", "mtu", &mtu])
                .context("container MTU")?;
            host.ns
                .ip(&["link", "set", &format!("veth{}", j + 1), "mtu", &mtu])?;
        }
    }
    Ok(fleet)
}
