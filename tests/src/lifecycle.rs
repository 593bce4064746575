//! What the tests of fan-xdp over time share (tests/tests/lifecycle.rs and
//! tests/tests/soak.rs): containers that come and go, the counters that
//! must not move, the agent's footprint, and sizes from the environment.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use fan_common::StatReason;

use crate::{
    topology::{Container, Fleet, Host, add_container_at},
    traffic::snmp_counter,
};

/// A number from the environment variable `name`, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// Container `addr_index` of `host` (address slice + 10 + index) plugged
/// into the slice bridge through port `veth<port>`: a later container can
/// take an address again on another port.
pub fn container(host: &Host, port: u8, addr_index: u8) -> Result<Container> {
    add_container_at(
        host,
        port,
        Ipv4Addr::from(u32::from(host.slice) + 10 + addr_index as u32),
    )
}

/// Waits (at most ~5 s) until `host`'s slice bridge has no port left: a
/// deleted container namespace takes its veth with it in the kernel's
/// deferred work, and detach keeps a bridge that still has ports.
pub fn wait_until_bridge_empty(host: &Host) -> Result<()> {
    for _ in 0..50 {
        let ports = host
            .ns
            .ip(&["-o", "link", "show", "master", &host.bridge])
            .unwrap_or_default();
        if ports.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{}'s bridge kept its ports", host.ns.name())
}

/// Packets every drop counter of `host` has counted, summed.
pub fn drops(host: &Host) -> Result<u64> {
    let stats = host.pinned_maps()?.stats()?;
    Ok(StatReason::ALL
        .iter()
        .filter(|r| r.name().starts_with("drop_"))
        .map(|r| stats.get(*r).packets)
        .sum())
}

/// TCP resets the stack of container `c` sent or took (`OutRsts` and
/// `EstabResets` of its /proc/net/snmp).
pub fn resets(c: &Container) -> Result<u64> {
    Ok(snmp_counter(&c.ns, "Tcp", "OutRsts")? + snmp_counter(&c.ns, "Tcp", "EstabResets")?)
}

/// Slows what `c` sends to `rate` (a tbf on its eth0, e.g. "100mbit"), so
/// that a transfer spans what the test does meanwhile.
pub fn shape(c: &Container, rate: &str) -> Result<()> {
    c.ns.run(
        "tc",
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb",
            "latency", "50ms",
        ],
    )?;
    Ok(())
}

/// The pid of `host`'s agent, from `fan-xdp show --json`.
pub fn agent_pid(host: &Host) -> Result<u32> {
    let shown: serde_json::Value = serde_json::from_str(&host.fan_xdp_ok(&["show", "--json"])?)?;
    let pid = shown[0]["agent"]["pid"]
        .as_u64()
        .with_context(|| format!("no agent in {shown}"))?;
    Ok(pid as u32)
}

/// The oldest `host`'s agent heartbeat gets while `for_how_long` passes
/// (sampled every 100 ms): the programs stop trusting it at 3 s.
pub fn oldest_beat(host: &Host, for_how_long: Duration) -> Result<Duration> {
    let started = std::time::Instant::now();
    let mut oldest = Duration::ZERO;
    while started.elapsed() < for_how_long {
        let beat = host.pinned_maps()?.agent.get(&0, 0)?;
        let age = fan_userspace::dataplane::monotonic_ns().saturating_sub(beat);
        oldest = oldest.max(Duration::from_nanos(age));
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(oldest)
}

/// Stops `host`'s agent and starts `fan-xdp run` in its place with `env`
/// set (a test hook, a state directory); returns its run directory and the
/// process once it is ready (10 s at most).
pub fn replace_agent(
    host: &Host,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(fan_userspace::state::rundir::RunDir, std::process::Child)> {
    replace_agent_with(host, &[], env)
}

/// As [`replace_agent`], with `args` after `fan-xdp run`.
pub fn replace_agent_with(
    host: &Host,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(fan_userspace::state::rundir::RunDir, std::process::Child)> {
    let run = host
        .ns
        .enter(|| fan_userspace::state::rundir::RunDir::locate(None))??;
    fan_userspace::agent::stop(&run)?;
    let agent = host
        .ns
        .command(
            crate::topology::fan_xdp_binary()
                .to_str()
                .context("binary path")?,
        )
        .arg("run")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting fan-xdp run")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fan_userspace::agent::status(&run).is_some_and(|s| s.ready) {
        if std::time::Instant::now() > deadline {
            bail!("the agent in {} never got ready", host.ns.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((run, agent))
}

/// What a process holds: resident memory in KiB and open descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: usize,
}

impl Footprint {
    pub fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok(Self { rss_kib, fds })
    }
}

/// `hosts` hosts with forwarding on (detach leaves it on: whatever started
/// after attach may rely on it) and each one's [`lifecycle_snapshot`],
/// taken before anything of fan-xdp's is there.
///
/// [`lifecycle_snapshot`]: crate::snapshot::lifecycle_snapshot
pub fn fleet_as_found(hosts: u8) -> Result<(Fleet, Vec<String>)> {
    let fleet = Fleet::new(hosts)?;
    for host in &fleet.hosts {
        host.ns.sysctl("net.ipv4.ip_forward", "1")?;
    }
    let before = fleet
        .hosts
        .iter()
        .map(|h| crate::snapshot::lifecycle_snapshot(&h.ns))
        .collect::<Result<_>>()?;
    Ok((fleet, before))
}

/// Two attached hosts with a container each, the second host already
/// delivering straight into its container what the first one's sends.
pub fn attached_pair() -> Result<Fleet> {
    let fleet = Fleet::new(2)?;
    fleet.attach_all(&[])?;
    let fleet = fleet.with_containers(1)?;
    let (c1, h2) = (&fleet.hosts[0].containers[0], &fleet.hosts[1]);
    anyhow::ensure!(
        h2.wait_for_direct(&c1.ns, h2.containers[0].addr)?,
        "no direct delivery between the pair"
    );
    Ok(fleet)
}

/// The loaded program of id `id`, attached through `at` (for the error).
fn loaded_program(id: u32, at: &str) -> Result<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .with_context(|| format!("no program {id} for {at}"))
}

/// The tag (instruction hash) of the program the link pinned at `pin` runs.
pub fn linked_tag(pin: &std::path::Path) -> Result<u64> {
    use aya::programs::links::{FdLink, PinnedLink};
    let link = FdLink::from(PinnedLink::from_pin(pin)?);
    let id = link.info()?.program_id();
    Ok(loaded_program(id, &format!("the link at {}", pin.display()))?.tag())
}

/// How many times the kernel ran the TC program attached through `pin` (a
/// TCX link, or before 6.6 the program marking a clsact filter): counted
/// only while `aya::sys::enable_stats` is held.
pub fn program_runs(pin: &std::path::Path) -> Result<u64> {
    use aya::programs::links::{FdLink, PinnedLink};
    // Which kind the pin is follows from the kernel: either object's fd
    // would read as the other's info.
    let id = if fan_userspace::dataplane::tcx_supported() {
        FdLink::from(PinnedLink::from_pin(pin)?)
            .info()?
            .program_id()
    } else {
        aya::programs::ProgramInfo::from_pin(pin)?.id()
    };
    Ok(loaded_program(id, &pin.display().to_string())?.run_count())
}

/// The BPF filter on `device`'s ingress clsact hook in `host` (kernels
/// before 6.6), as `tc` lists it: program id, priority and handle. There
/// must be exactly one: a replacement that leaves the old filter beside the
/// new would run both.
fn ingress_filter(host: &Host, device: &str) -> Result<(u32, u16, u32)> {
    let bpf = ingress_bpf_filters(host, device)?;
    match bpf[..] {
        [one] => Ok(one),
        _ => bail!("{device} has {} BPF filters on ingress: {bpf:?}", bpf.len()),
    }
}

/// The names of the programs on `device`'s TC ingress in `host`, in the
/// order they run: its TCX chain, or before 6.6 its clsact filters.
pub fn ingress_programs(host: &Host, device: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let ids: Vec<u32> = if fan_userspace::dataplane::tcx_supported() {
        let device = device.to_string();
        host.ns
            .enter(move || SchedClassifier::query_tcx(&device, TcAttachType::Ingress))
            .unwrap()
            .unwrap()
            .1
            .iter()
            .map(|p| p.id())
            .collect()
    } else if has_clsact(host, device) {
        let filters = ingress_bpf_filters(host, device).unwrap();
        filters.into_iter().map(|(id, _, _)| id).collect()
    } else {
        Vec::new()
    };
    ids.into_iter()
        .map(|id| {
            let info = loaded_program(id, device).unwrap();
            info.name_as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// Whether `device` in `host` has a clsact qdisc.
pub fn has_clsact(host: &Host, device: &str) -> bool {
    host.ns
        .run("tc", &["qdisc", "show", "dev", device])
        .unwrap()
        .contains("clsact")
}

/// The BPF filters on `device`'s ingress clsact hook in `host`, as `tc`
/// lists them: program id, priority and handle.
pub fn ingress_bpf_filters(host: &Host, device: &str) -> Result<Vec<(u32, u16, u32)>> {
    let listed = host
        .ns
        .run("tc", &["-j", "filter", "show", "dev", device, "ingress"])?;
    let filters: Vec<serde_json::Value> = serde_json::from_str(&listed)
        .with_context(|| format!("tc's filters of {device}: {listed}"))?;
    let bpf: Vec<_> = filters
        .iter()
        .filter_map(|f| {
            let id = f["options"]["prog"]["id"].as_u64()?;
            let handle = f["options"]["handle"].as_str()?.strip_prefix("0x")?;
            Some((
                id as u32,
                f["pref"].as_u64()? as u16,
                u32::from_str_radix(handle, 16).ok()?,
            ))
        })
        .collect();
    Ok(bpf)
}

/// The tag of the program running at `device`'s ingress in `host` for the
/// attachment pinned at `pin`: a TCX link's, or (before 6.6) the clsact
/// filter's, which the pinned program must be.
pub fn running_tag(host: &Host, device: &str, pin: &std::path::Path) -> Result<u64> {
    if fan_userspace::dataplane::tcx_supported() {
        return linked_tag(pin);
    }
    let (id, _, _) = ingress_filter(host, device)?;
    let marked = aya::programs::ProgramInfo::from_pin(pin)?.id();
    anyhow::ensure!(
        marked == id,
        "{} marks program {marked}, but {device}'s filter runs {id}",
        pin.display()
    );
    Ok(loaded_program(id, device)?.tag())
}

/// Makes the attachment at `device`'s ingress in `host`, pinned at `pin`,
/// run `older` (another load's program), as an older fan-xdp would have
/// left it: a TCX link updated in place, or (before 6.6) the clsact
/// filter's program replaced under its priority and handle and the pin
/// marking it.
pub fn put_older_version(
    host: &Host,
    device: &str,
    pin: &std::path::Path,
    older: &mut aya::programs::SchedClassifier,
) -> Result<()> {
    use aya::programs::{
        TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcHandle},
    };
    if fan_userspace::dataplane::tcx_supported() {
        let link = FdLink::from(PinnedLink::from_pin(pin)?);
        let id = older.attach_to_link(link.try_into()?)?;
        // The pin keeps the link; this only closes our handle.
        drop(older.take_link(id)?);
        return Ok(());
    }
    let (_, priority, handle) = ingress_filter(host, device)?;
    host.ns.enter(|| -> Result<()> {
        let place = SchedClassifierLink::attached(
            device,
            TcAttachType::Ingress,
            priority,
            TcHandle::from(handle),
            None,
        )?;
        let id = older.attach_to_link(place)?;
        // Dropping the handle would remove the filter.
        std::mem::forget(older.take_link(id)?);
        Ok(())
    })??;
    std::fs::remove_file(pin)?;
    older.pin(pin)?;
    Ok(())
}

/// The tags of the bridge's program and of the host device's in `other`
/// (a load of its own): the output hook's program encapsulates the same
/// way with another tag, which makes it the "other version" a link can be
/// put on, as an older fan-xdp would have left it, for attach to replace.
pub fn forward_and_output_tags(
    other: &mut fan_userspace::dataplane::Dataplane,
) -> Result<(u64, u64)> {
    use fan_userspace::dataplane::{ENCAP_FORWARD, ENCAP_OUTPUT};
    let forward = other.classifier(ENCAP_FORWARD)?.info()?.tag();
    let output = other.classifier(ENCAP_OUTPUT)?.info()?.tag();
    anyhow::ensure!(forward != output, "the two programs have one tag");
    Ok((forward, output))
}

/// The runs of the programs holding the counters map `counters_map` (a
/// host's: the pinned programs its links run, its agent's port program) as
/// the kernel counted them: only while `aya::sys::enable_stats` is held.
fn runs_with_map(counters_map: u32) -> u64 {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&counters_map))
        })
        .map(|p| p.run_count())
        .sum()
}

/// The outcomes `host`'s counters counted (the documented subsets aside).
fn outcomes_counted(host: &Host) -> Result<u64> {
    let stats = host.pinned_maps()?.stats()?;
    Ok(StatReason::ALL
        .iter()
        .filter(|r| r.is_outcome() && !crate::fuzz::check::is_subset_counter(r.name()))
        .map(|&r| stats.get(r).packets)
        .sum())
}

/// Checks that `host`'s counters add up to its programs' runs as the kernel
/// counted them (hold `aya::sys::enable_stats` from before the host's first
/// attach: runs count only while it is held, counters always): every run
/// counts one outcome. Read until no program ran between two reads of the
/// run counts (bounded: a second), as a packet may be under way. Returns
/// (runs, outcomes).
pub fn assert_runs_add_up(host: &Host) -> Result<(u64, u64)> {
    use fan_userspace::dataplane::STATS_MAP;
    let dir = host
        .ns
        .enter(|| fan_userspace::state::StateDir::locate(None))??;
    let counters_map = aya::maps::MapInfo::from_pin(dir.map(STATS_MAP))?.id();
    let mut last = (0, 0);
    for _ in 0..50 {
        let runs = runs_with_map(counters_map);
        let outcomes = outcomes_counted(host)?;
        if runs == runs_with_map(counters_map) && runs == outcomes {
            return Ok((runs, outcomes));
        }
        last = (runs, outcomes);
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{}: its programs ran {} times, its counters counted {} outcomes",
        host.ns.name(),
        last.0,
        last.1
    )
}
