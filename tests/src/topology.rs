//! A fleet of simulated Fan hosts: each host is a namespace with an underlay
//! NIC `eth0` plugged into a shared underlay switch (a bridge in a namespace
//! of its own), a slice bridge, and container namespaces on that bridge.
//! Addresses: host `i` (1-based) is 198.18.0.i/16 on the underlay and owns
//! slice 250.0.i.0/24 of overlay 250.0.0.0/8; its container `j` is 250.0.i.(10+j).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fan_common::{FanEntry, FanMap};
use fan_userspace::{
    dataplane::{Dataplane, DecapMode},
    host::naming::bridge_name,
    state::record::{HOST_DEVICE, HOST_DEVICE_PEER},
};

use crate::netns::Netns;

pub const OVERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(250, 0, 0, 0), 8);
pub const UNDERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
pub const UNDERLAY_MTU: u32 = 1500;
/// IP-in-IP costs 20 bytes of every underlay packet.
pub const OVERLAY_MTU: u32 = UNDERLAY_MTU - 20;

pub fn fan_map() -> FanMap {
    FanMap::new(
        u32::from(OVERLAY.0),
        OVERLAY.1,
        u32::from(UNDERLAY.0),
        UNDERLAY.1,
    )
}

pub struct Container {
    pub ns: Netns,
    pub addr: Ipv4Addr,
}

pub struct Host {
    pub ns: Netns,
    pub underlay_addr: Ipv4Addr,
    pub slice: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub containers: Vec<Container>,
}

impl Host {
    /// Loads fan-xdp's programs in this host's namespace, attaches them to
    /// eth0 (decapsulation in `mode`), the slice bridge and the host device,
    /// and writes the fan entry. Dropping the result detaches everything.
    pub fn attach(&self, mode: DecapMode) -> Result<Dataplane> {
        let entry = self.fan_entry()?;
        self.ns.enter(|| -> Result<Dataplane> {
            let mut dataplane = Dataplane::load()?;
            dataplane.insert_fan(&entry)?;
            dataplane.attach_decap("eth0", mode)?;
            dataplane.attach_encap_forward(&self.bridge)?;
            dataplane.attach_encap_output(HOST_DEVICE)?;
            Ok(dataplane)
        })?
    }

    /// The fan map entry of this host, with the ifindex of its `eth0`.
    pub fn fan_entry(&self) -> Result<FanEntry> {
        let ifindex = self.ns.enter(|| ifindex("eth0"))??;
        Ok(FanEntry {
            map: fan_map(),
            local_host: u32::from(self.underlay_addr),
            underlay_ifindex: ifindex,
            overlay_mtu: OVERLAY_MTU,
        })
    }
}

/// Hosts and containers; the switch namespace carries the underlay segment.
/// Field order is drop order: containers and hosts go before the switch.
pub struct Fleet {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

/// A `fan-xdp run` process; stopped with SIGTERM (a clean stop) when dropped.
pub struct Daemon(std::process::Child);

impl Daemon {
    /// Starts `fan-xdp run ARGS` in `ns`, resyncing every second unless
    /// ARGS say otherwise.
    pub fn start(ns: &Netns, extra: &[&str]) -> Result<Self> {
        Self::spawn(
            ns,
            extra,
            std::process::Stdio::null(),
            std::process::Stdio::null(),
        )
    }

    /// [`Daemon::start`], its output (the agent's log) appended to `log`.
    pub fn start_logged(ns: &Netns, extra: &[&str], log: &std::path::Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        Self::spawn(ns, extra, file.try_clone()?.into(), file.into())
    }

    fn spawn(
        ns: &Netns,
        extra: &[&str],
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<Self> {
        let resync: &[&str] = if extra.contains(&"--resync-seconds") {
            &[]
        } else {
            &["--resync-seconds", "1"]
        };
        let child = ns
            .command(fan_xdp_binary().to_str().context("binary path")?)
            .arg("run")
            .args(resync)
            .args(extra)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting fan-xdp run")?;
        Ok(Self(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops it the way systemd would, and waits for it.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// Kills it with no chance to clean up.
    pub fn kill(mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        Ok(self.0.wait()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

impl Fleet {
    /// `fan-xdp attach eth0 --overlay 250.0.0.0/8 EXTRA` on every host.
    pub fn attach_all(&self, extra: &[&str]) -> Result<()> {
        let overlay = format!("{}/{}", OVERLAY.0, OVERLAY.1);
        for host in &self.hosts {
            let args = [&["attach", "eth0", "--overlay", &overlay][..], extra].concat();
            host.fan_xdp_ok(&args)?;
        }
        Ok(())
    }

    /// `fan-xdp detach eth0` on every host.
    pub fn detach_all(&self) -> Result<()> {
        for host in &self.hosts {
            host.fan_xdp_ok(&["detach", "eth0"])?;
        }
        Ok(())
    }

    /// Plain routing between the slices (host-gw style, no encapsulation):
    /// one route per remote slice via its host's underlay address.
    pub fn route_slices(&self) -> Result<()> {
        for host in &self.hosts {
            host.ns.sysctl("net.ipv4.ip_forward", "1")?;
            for other in self.others(host) {
                let via = other.underlay_addr.to_string();
                host.ns
                    .ip(&["route", "add", &other.slice_cidr(), "via", &via])?;
            }
        }
        Ok(())
    }

    pub fn unroute_slices(&self) -> Result<()> {
        for host in &self.hosts {
            for other in self.others(host) {
                host.ns.ip(&["route", "del", &other.slice_cidr()])?;
            }
        }
        Ok(())
    }

    /// Every host but `host`.
    pub fn others<'a>(&'a self, host: &'a Host) -> impl Iterator<Item = &'a Host> {
        self.hosts
            .iter()
            .filter(move |o| o.underlay_addr != host.underlay_addr)
    }
}

impl Drop for Fleet {
    /// Deletes the namespaces, then the pinned state `fan-xdp` left for them
    /// if a test failed before detaching (a real host's would be swept by the
    /// next attach; tests must not leave it for the next test to find).
    fn drop(&mut self) {
        self.hosts.clear();
        if let Ok(dir) = fan_userspace::state::StateDir::locate(None) {
            let _ = fan_userspace::dataplane::sweep_stale(&dir);
        }
    }
}

/// A namespace for running the programs on single frames: its `eth0` (a
/// veth, MTU 1500, MAC 02:00:00:00:00:11, up, with its peer `eth0-peer` up)
/// is the underlay device of a loaded data plane that is host 198.18.0.1 of
/// the 250.0.0.0/8 fan. eth0 also holds 198.19.0.1/16 for fans over a second
/// underlay, and forwarding is on, so the programs' route lookups find the
/// underlay routes as on an attached host. Returns eth0's ifindex too.
pub fn single_host_dataplane(label: &str) -> Result<(Netns, Dataplane, u32)> {
    let ns = Netns::new(label)?;
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        "02:00:00:00:00:11",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])?;
    for addr in ["198.18.0.1/16", "198.19.0.1/16"] {
        ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
    }
    ns.ip(&["link", "set", "eth0-peer", "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    let ifindex = ns.enter(|| ifindex("eth0"))??;
    let mut dataplane = Dataplane::load()?;
    dataplane.insert_fan(&FanEntry {
        map: fan_map(),
        local_host: u32::from_be_bytes([198, 18, 0, 1]),
        underlay_ifindex: ifindex,
        overlay_mtu: OVERLAY_MTU,
    })?;
    Ok((ns, dataplane, ifindex))
}

/// The ifindex of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {name}"));
    }
    Ok(index)
}

/// Whether `fan-xdp show --json` output says `fan-xdp run` has taken over
/// every fan's slice: its port program on each of the bridge's ports, or no
/// port programs to wait for (a kernel without TCX). False while no fan is
/// attached or an attach is incomplete (no fast path shown).
pub fn ports_taken_over(show_json: &str) -> Result<bool> {
    let fans: Vec<serde_json::Value> =
        serde_json::from_str(show_json).context("fan-xdp show --json")?;
    Ok(!fans.is_empty()
        && fans.iter().all(|fan| {
            let fast_path = &fan["fast_path"];
            match fast_path["ports_encapsulating"] {
                serde_json::Value::Null => fast_path.is_object(),
                ref encapsulating => *encapsulating == fast_path["ports"],
            }
        }))
}

/// The `fan-xdp` binary next to the running test or demo executable
/// (`cargo xtask test` builds it; so does `cargo build -p fan-userspace`).
pub fn fan_xdp_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("fan-xdp");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p fan-userspace`",
        bin.display()
    );
    bin
}

impl Host {
    /// This host's slice as `a.b.c.d/len`.
    pub fn slice_cidr(&self) -> String {
        format!("{}/{}", self.slice, fan_map().slice_len())
    }

    /// Runs `fan-xdp ARGS` inside this host's namespace, through `ip netns exec`
    /// like an operator would, and returns its output whatever the exit status.
    pub fn fan_xdp(&self, args: &[&str]) -> Result<std::process::Output> {
        self.ns
            .command(fan_xdp_binary().to_str().context("binary path")?)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .context("running fan-xdp")
    }

    /// Packets counted for `reason` in this host's pinned counters.
    pub fn counter(&self, reason: fan_common::StatReason) -> Result<u64> {
        Ok(self.pinned_maps()?.stats()?.get(reason).packets)
    }

    /// Pings `to` from `from` until this host delivers straight into a
    /// container (bounded: about five seconds); whether it did.
    pub fn wait_for_direct(&self, from: &Netns, to: Ipv4Addr) -> Result<bool> {
        let direct = fan_common::StatReason::DecapsulatedDirect;
        let start = self.counter(direct)?;
        for _ in 0..25 {
            let _ = crate::traffic::ping(from, to, 1);
            if self.counter(direct)? > start {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(false)
    }

    /// fan-xdp's pinned maps for this host's namespace.
    pub fn pinned_maps(&self) -> Result<fan_userspace::dataplane::PinnedMaps> {
        let dir = self
            .ns
            .enter(|| fan_userspace::state::StateDir::locate(None))??;
        fan_userspace::dataplane::PinnedMaps::open(&dir)
    }

    /// Starts `fan-xdp run` (the long-running mode) in this host's namespace.
    pub fn fan_xdp_run(&self) -> Result<Daemon> {
        self.fan_xdp_run_with(&[])
    }

    /// [`Host::fan_xdp_run`] with extra options.
    pub fn fan_xdp_run_with(&self, extra: &[&str]) -> Result<Daemon> {
        Daemon::start(&self.ns, extra)
    }

    /// Waits, polling `fan-xdp show --json`, until the `fan-xdp run` of
    /// this host has its program on every container port of its fans, and
    /// returns how long that took; fails with what show says after `limit`.
    pub fn wait_for_run_ready(&self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let shown = self.fan_xdp_ok(&["show", "--json"])?;
            if ports_taken_over(&shown)? {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= limit {
                anyhow::bail!(
                    "fan-xdp run in {} did not take over its ports within {limit:?}; fan-xdp show:\n{}",
                    self.ns.name(),
                    self.fan_xdp_ok(&["show"]).unwrap_or(shown)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `fan-xdp ARGS` and fails with its stderr unless it succeeds.
    pub fn fan_xdp_ok(&self, args: &[&str]) -> Result<String> {
        stdout_of_success(args, self.fan_xdp(args)?)
    }
}

/// The stdout of `fan-xdp ARGS`, or an error with its stderr unless it succeeded.
pub fn stdout_of_success(args: &[&str], out: std::process::Output) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "fan-xdp {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Fleet {
    /// Builds `hosts` hosts on the underlay switch: namespaces with `eth0`
    /// addressed, and nothing of the fan yet.
    pub fn new(hosts: u8) -> Result<Self> {
        // State left by namespaces that died without a detach (a killed run)
        // would be swept by the first attach and change what tests compare.
        if let Ok(dir) = fan_userspace::state::StateDir::locate(None) {
            let _ = fan_userspace::dataplane::sweep_stale(&dir);
        }
        let switch = Netns::new("switch")?;
        switch.ip(&["link", "add", "sw", "type", "bridge"])?;
        switch.ip(&["link", "set", "sw", "up"])?;
        // The switch stands for a wire: with br_netfilter loaded (for some
        // other user of this kernel) it would run firewall hooks on every
        // frame, a cost no physical switch puts on the hosts.
        for family in ["iptables", "ip6tables", "arptables"] {
            let _ = switch.sysctl(&format!("net.bridge.bridge-nf-call-{family}"), "0");
        }
        let mut fleet = Self {
            hosts: Vec::new(),
            switch,
        };
        for i in 1..=hosts {
            let host = fleet.add_host(i)?;
            fleet.hosts.push(host);
        }
        Ok(fleet)
    }

    /// Hosts with their slice plumbing done by hand (bridge, host device,
    /// route, sysctls: what `fan-xdp attach` owns) and `containers` each, for
    /// tests of the data plane on its own.
    pub fn plumbed_by_hand(hosts: u8, containers: u8) -> Result<Self> {
        let fleet = Self::new(hosts)?;
        for host in &fleet.hosts {
            plumb_by_hand(host)?;
        }
        fleet.with_containers(containers)
    }

    /// Adds `containers` containers on every host's slice bridge (which must exist).
    pub fn with_containers(mut self, containers: u8) -> Result<Self> {
        for host in &mut self.hosts {
            for _ in 0..containers {
                let index = host.containers.len() as u8 + 1;
                let container = add_container(host, index)?;
                host.containers.push(container);
            }
        }
        Ok(self)
    }

    fn add_host(&self, i: u8) -> Result<Host> {
        let ns = Netns::new(&format!("h{i}"))?;
        let underlay_addr = Ipv4Addr::new(198, 18, 0, i);
        let fan = fan_map();
        let slice = Ipv4Addr::from(fan.slice_of(u32::from(underlay_addr)));
        let gateway = Ipv4Addr::from(u32::from(slice) + 1);
        let bridge = bridge_name(slice);
        let port = format!("sw-h{i}");
        self.switch.add_veth_to(&port, &ns)?;
        self.switch
            .ip(&["link", "set", &port, "master", "sw", "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{underlay_addr}/{}", UNDERLAY.1),
            "dev",
            "eth0",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        Ok(Host {
            ns,
            underlay_addr,
            slice,
            gateway,
            bridge,
            containers: Vec::new(),
        })
    }
}

/// The slice bridge with its gateway address, as `fan-xdp attach` would
/// create it (and adopts it when it finds it).
pub fn add_bridge(host: &Host) -> Result<()> {
    let mtu = OVERLAY_MTU.to_string();
    let bridge = &host.bridge;
    host.ns
        .ip(&["link", "add", bridge, "mtu", &mtu, "type", "bridge"])?;
    host.ns.ip(&[
        "addr",
        "add",
        &format!("{}/{}", host.gateway, fan_map().slice_len()),
        "dev",
        bridge,
    ])?;
    host.ns.ip(&["link", "set", bridge, "up"])?;
    Ok(())
}

fn plumb_by_hand(host: &Host) -> Result<()> {
    let ns = &host.ns;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        // Loose: decapsulated packets arrive on eth0 from overlay sources
        // that are routed via the fan device.
        ("net.ipv4.conf.eth0.rp_filter", "2"),
    ] {
        ns.sysctl(key, value)?;
    }
    add_bridge(host)?;
    let mtu = OVERLAY_MTU.to_string();
    ns.ip(&[
        "link",
        "add",
        HOST_DEVICE,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        HOST_DEVICE_PEER,
    ])?;
    ns.ip(&["link", "set", HOST_DEVICE, "arp", "off", "up"])?;
    ns.ip(&["link", "set", HOST_DEVICE_PEER, "up"])?;
    let overlay = format!("{}/{}", OVERLAY.0, OVERLAY.1);
    ns.ip(&[
        "route",
        "add",
        &overlay,
        "dev",
        HOST_DEVICE,
        "src",
        &host.gateway.to_string(),
    ])?;
    Ok(())
}

/// Container `j` of `host`: a namespace whose `eth0` is a veth on the slice
/// bridge, with address slice + 10 + j.
fn add_container(host: &Host, j: u8) -> Result<Container> {
    add_container_at(
        host,
        j,
        Ipv4Addr::from(u32::from(host.slice) + 10 + j as u32),
    )
}

/// A container on `host`'s bridge through port `veth<j>` with address `addr`.
pub fn add_container_at(host: &Host, j: u8, addr: Ipv4Addr) -> Result<Container> {
    let i = host.underlay_addr.octets()[3];
    let ns = plug_container(
        &host.ns,
        &host.bridge,
        &format!("veth{j}"),
        &format!("c{i}-{j}"),
        (addr, fan_map().slice_len()),
        host.gateway,
    )?;
    Ok(Container { ns, addr })
}

/// A new namespace `label` whose `eth0` is the peer of `port`, a veth
/// plugged into `bridge` in `host_ns`: link MTU [`OVERLAY_MTU`] on both
/// ends, address `addr/len`, default route via `gateway`.
pub fn plug_container(
    host_ns: &Netns,
    bridge: &str,
    port: &str,
    label: &str,
    (addr, len): (Ipv4Addr, u8),
    gateway: Ipv4Addr,
) -> Result<Netns> {
    let ns = Netns::new(label)?;
    let mtu = OVERLAY_MTU.to_string();
    host_ns.add_veth_to(port, &ns)?;
    host_ns.ip(&["link", "set", port, "mtu", &mtu, "master", bridge, "up"])?;
    ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
    ns.ip(&["addr", "add", &format!("{addr}/{len}"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fan-xdp show --json` with `fast_path` as given, the rest as printed.
    fn shown(fast_path: &str) -> String {
        format!(
            r#"[{{"overlay": "250.0.0.0/8", "underlay": "198.18.0.0/16", "host": "198.18.0.1",
                "slice": "250.0.1.0/24", "gateway": "250.0.1.1", "bridge": "fan-250-0-1",
                "iface": "eth0", "mode": "tc", "mode_reason": "veth", "nat": true,
                "host_reserve": 0, "mtu": 1480, "complete": true, "fast_path": {fast_path}}}]"#
        )
    }

    #[test]
    fn ready_once_every_port_has_the_program() {
        let ready = r#"{"ports": 2, "ports_encapsulating": 2, "endpoints": 0}"#;
        let starting = r#"{"ports": 2, "ports_encapsulating": 0, "endpoints": 0}"#;
        let halfway = r#"{"ports": 2, "ports_encapsulating": 1, "endpoints": 0}"#;
        assert!(ports_taken_over(&shown(ready)).unwrap());
        assert!(!ports_taken_over(&shown(starting)).unwrap());
        assert!(!ports_taken_over(&shown(halfway)).unwrap());
    }

    #[test]
    fn without_tcx_there_is_nothing_to_wait_for_but_an_incomplete_fan_is_not_ready() {
        let no_tcx = r#"{"ports": 2, "ports_encapsulating": null, "endpoints": 0}"#;
        assert!(ports_taken_over(&shown(no_tcx)).unwrap());
        assert!(!ports_taken_over(&shown("null")).unwrap());
        assert!(!ports_taken_over("[]").unwrap());
        assert!(ports_taken_over("not json").is_err());
    }
}
