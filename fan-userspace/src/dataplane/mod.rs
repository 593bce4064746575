//! Loads the eBPF object, attaches its programs and fills its maps.

pub mod inspect;

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use fan_common::{
    Counter, FanEntry, StatReason,
    maps::{Endpoint, FanMeta, FanMetaKey, LocalHost, PathMtu},
};

use crate::state::StateDir;

/// The eBPF object built from `fan-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fan-ebpf"));

/// Program names, as the entry points in `fan-ebpf/src/main.rs` are called.
pub const ENCAP_FORWARD: &str = "fan_encap_forward";
/// Attached by `fan-xdp run` to the slice bridge's ports, not by `attach`.
pub const ENCAP_PORT: &str = "fan_encap_port";
pub const ENCAP_OUTPUT: &str = "fan_encap_output";
pub const DECAP_TC: &str = "fan_decap_tc";
pub const DECAP_XDP: &str = "fan_decap_xdp";
/// Every TC program, in the order they are loaded and pinned.
const TC_PROGRAMS: [&str; 4] = [ENCAP_FORWARD, ENCAP_PORT, ENCAP_OUTPUT, DECAP_TC];
/// An XDP program that only returns XDP_PASS: the bench's baseline.
pub const BENCH_XDP_PASS: &str = "fan_bench_xdp_pass";
pub const CONFIG_MAP: &str = "FAN_CONFIG";
pub const STATS_MAP: &str = "FAN_STATS";
pub const META_MAP: &str = "FAN_META";
pub const ENDPOINTS_MAP: &str = "FAN_ENDPOINTS";
pub const LOCAL_HOSTS_MAP: &str = "FAN_LOCAL_HOSTS";
pub const PATH_MTU_MAP: &str = "FAN_PATH_MTU";
pub const AGENT_MAP: &str = "FAN_AGENT";
pub const BYPASS_MAP: &str = "FAN_BYPASS";
const MAPS: [&str; 8] = [
    AGENT_MAP,
    BYPASS_MAP,
    CONFIG_MAP,
    STATS_MAP,
    META_MAP,
    ENDPOINTS_MAP,
    LOCAL_HOSTS_MAP,
    PATH_MTU_MAP,
];

/// Where decapsulation runs on the underlay device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapMode {
    /// Native (driver) XDP: before GRO and before an skb exists.
    Xdp,
    /// TC ingress: after GRO, keeps 64 KB aggregates whole (the choice on veth).
    Tc,
}

/// The loaded programs and maps. Attachments made through this value (not
/// pinned ones) live as long as it does.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Filters attached through netlink (kernels without TCX), which the
    /// kernel keeps after their fds close: removed on drop, in their namespace.
    clsact: Vec<ClsactFilter>,
    /// See [`Dataplane::use_pinned_programs`].
    pinned: Option<PinnedPrograms>,
}

/// The programs pinned by an earlier attach of the same version.
struct PinnedPrograms {
    tc: std::collections::HashMap<&'static str, SchedClassifier>,
    xdp: Xdp,
}

struct ClsactFilter {
    netns: std::fs::File,
    iface: String,
    hook: TcAttachType,
    program: &'static str,
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for filter in self.clsact.drain(..) {
            // Netlink acts in the calling thread's namespace: go to the filter's.
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    use std::os::fd::AsRawFd as _;
                    // SAFETY: setns on this short-lived thread only.
                    if unsafe { libc::setns(filter.netns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                        let _ = aya::programs::tc::qdisc_detach_program(
                            &filter.iface,
                            filter.hook,
                            filter.program,
                        );
                    }
                });
            });
        }
    }
}

impl Dataplane {
    /// Loads every program. With `log_level` 0 the eBPF side's log statements
    /// are compiled out by the verifier (the level is a constant it sees).
    pub fn load(log_level: u8) -> Result<Self> {
        Self::load_with(EbpfLoader::new().override_global("AYA_LOG_LEVEL", &log_level, true))
    }

    /// Loads every program with its maps pinned in `dir`: maps already pinned
    /// there (by an earlier attach) are reused, so their contents survive.
    pub fn load_pinned(dir: &StateDir, log_level: u8) -> Result<Self> {
        let paths: Vec<_> = MAPS.iter().map(|m| dir.map(m)).collect();
        let mut loader = EbpfLoader::new();
        loader.override_global("AYA_LOG_LEVEL", &log_level, true);
        for (name, path) in MAPS.iter().zip(&paths) {
            loader.map_pin_path(name, path.as_path());
        }
        Self::load_with(&mut loader)
    }

    fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self> {
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the fan-xdp eBPF object")?;
        for name in TC_PROGRAMS {
            let program: &mut SchedClassifier = program(&mut ebpf, name)?;
            program
                .load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, DECAP_XDP)?;
        xdp.load()
            .with_context(|| format!("verifier rejected {DECAP_XDP}"))?;
        Ok(Self {
            ebpf,
            clsact: Vec::new(),
            pinned: None,
        })
    }

    /// Attaches decapsulation to the underlay device `iface`.
    pub fn attach_decap(&mut self, iface: &str, mode: DecapMode) -> Result<()> {
        match mode {
            DecapMode::Xdp => {
                let xdp: &mut Xdp = program(&mut self.ebpf, DECAP_XDP)?;
                xdp.attach(iface, XdpMode::Driver)
                    .with_context(|| format!("attaching native XDP decapsulation to {iface}"))?;
            }
            DecapMode::Tc => self.attach_tc(DECAP_TC, iface, TcAttachType::Ingress)?,
        }
        Ok(())
    }

    /// Attaches forwarding encapsulation to a slice bridge's ingress.
    pub fn attach_encap_forward(&mut self, bridge: &str) -> Result<()> {
        self.attach_tc(ENCAP_FORWARD, bridge, TcAttachType::Ingress)
    }

    /// Attaches output encapsulation to the egress of fan-xdp's NOARP host device.
    pub fn attach_encap_output(&mut self, device: &str) -> Result<()> {
        self.attach_tc(ENCAP_OUTPUT, device, TcAttachType::Egress)
    }

    fn attach_tc(&mut self, name: &'static str, iface: &str, hook: TcAttachType) -> Result<()> {
        if !tcx_supported() {
            // aya falls back to a netlink filter, which needs the qdisc.
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
        }
        let program: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        program
            .attach(iface, hook)
            .with_context(|| format!("attaching {name} to {iface} {hook:?}"))?;
        if !tcx_supported() {
            let netns = std::fs::File::open("/proc/thread-self/ns/net")
                .context("opening our network namespace")?;
            self.clsact.push(ClsactFilter {
                netns,
                iface: iface.to_string(),
                hook,
                program: name,
            });
        }
        Ok(())
    }

    /// Makes `program` run at `hook` of `device` through a link pinned at
    /// `pin`. An existing pinned link is kept; if it runs another version of
    /// the program (a different tag), the program is replaced in place,
    /// atomically, with no moment without a program. A pin whose attachment
    /// is not on `device` as it is now must be removed first (see
    /// [`pinned_link_ifindex`]). Returns what changed.
    pub fn ensure_link(
        &mut self,
        program: &str,
        device: &str,
        hook: Hook,
        pin: &std::path::Path,
    ) -> Result<LinkChange> {
        if hook != Hook::Xdp && !tcx_supported() {
            return self.ensure_clsact(program, device, hook, pin);
        }
        let existing = match PinnedLink::from_pin(pin) {
            Ok(link) => Some(FdLink::from(link)),
            Err(aya::programs::links::LinkError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening pinned link {}", pin.display()));
            }
        };
        let target = self.target_id(program)?;
        if let Some(link) = existing {
            let info = link.info().context("reading pinned link")?;
            if info.program_id() == target {
                return Ok(LinkChange::Unchanged);
            }
            match hook {
                Hook::Xdp => {
                    let xdp = self.target_xdp(program)?;
                    let id = xdp
                        .attach_to_link(link.try_into()?)
                        .context("replacing the XDP program")?;
                    drop(xdp.take_link(id)?);
                }
                Hook::TcIngress | Hook::TcEgress => {
                    let tc = self.target_tc(program)?;
                    let id = tc
                        .attach_to_link(link.try_into()?)
                        .context("replacing the TC program")?;
                    // The pin keeps the link; dropping our handle only closes an fd.
                    drop(tc.take_link(id)?);
                }
            }
            return Ok(LinkChange::Replaced);
        }
        let link: FdLink = match hook {
            Hook::Xdp => {
                let xdp = self.target_xdp(program)?;
                let id = xdp
                    .attach(device, XdpMode::Driver)
                    .with_context(|| format!("attaching native XDP to {device}"))?;
                xdp.take_link(id)?.try_into()?
            }
            Hook::TcIngress | Hook::TcEgress => {
                let tc = self.target_tc(program)?;
                let attach_type = tc_attach_type(hook);
                // First in the TCX chain: fan traffic is ours to handle before
                // other programs see it, and everything else continues down
                // the chain untouched (TCX_NEXT).
                let id = tc
                    .attach_with_options(
                        device,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .with_context(|| format!("attaching {program} to {device} {attach_type:?}"))?;
                tc.take_link(id)?.try_into()?
            }
        };
        link.pin(pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(LinkChange::Created)
    }

    /// The TC attachment for kernels without TCX (before 6.6): a filter on the
    /// device's clsact qdisc. Such a filter outlives this process by itself;
    /// the program pinned at `pin` marks it as ours and as which instance it
    /// runs. Replacing one detaches the old filter before attaching the new,
    /// a short gap that TCX links do not have.
    fn ensure_clsact(
        &mut self,
        program: &str,
        device: &str,
        hook: Hook,
        pin: &std::path::Path,
    ) -> Result<LinkChange> {
        let attach_type = tc_attach_type(hook);
        let target = self.target_id(program)?;
        let change = if pin.exists() {
            LinkChange::Replaced
        } else {
            LinkChange::Created
        };
        if pin.exists() {
            if pinned_program_id(pin) == Some(target) {
                return Ok(LinkChange::Unchanged);
            }
            let _ = aya::programs::tc::qdisc_detach_program(device, attach_type, program);
            std::fs::remove_file(pin)?;
        }

        log::info!(
            "TCX unavailable (kernel before 6.6): attaching {program} to {device} through a clsact qdisc"
        );
        if let Err(e) = aya::programs::tc::qdisc_add_clsact(device) {
            log::debug!("clsact on {device}: {e} (already present)");
        }
        let tc = self.target_tc(program)?;
        let id = tc
            .attach_with_options(
                device,
                attach_type,
                TcAttachOptions::Netlink(Default::default()),
            )
            .with_context(|| format!("attaching {program} to {device} {attach_type:?} (clsact)"))?;
        // Dropping the handle would remove the filter: it must stay after we exit.
        std::mem::forget(tc.take_link(id)?);
        tc.pin(pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(change)
    }

    /// Makes links run the programs pinned in `dir` if they are this very
    /// version (every program's tag the same as this load's): links then
    /// share one instance of each program with the pins, and with them the
    /// log buffer `-v` streams and the id `fan-xdp run` follows. Returns
    /// false (and links take this load's programs, all of them, and the pins
    /// must be replaced with them) on a first attach or a new version.
    pub fn use_pinned_programs(&mut self, dir: &StateDir) -> Result<bool> {
        let mut tc = std::collections::HashMap::new();
        for name in TC_PROGRAMS {
            let path = dir.program(name);
            let Ok(program) = SchedClassifier::from_pin(&path) else {
                return Ok(false);
            };
            if program.info()?.tag() != self.tag(name)? {
                return Ok(false);
            }
            tc.insert(name, program);
        }
        let Ok(xdp) = Xdp::from_pin(
            dir.program(DECAP_XDP),
            aya_obj::programs::XdpAttachType::Interface,
        ) else {
            return Ok(false);
        };
        if xdp.info()?.tag() != self.tag(DECAP_XDP)? {
            return Ok(false);
        }
        self.pinned = Some(PinnedPrograms { tc, xdp });
        Ok(true)
    }

    /// The id of the instance of `program` links should run.
    fn target_id(&mut self, program: &str) -> Result<u32> {
        Ok(if program == DECAP_XDP {
            self.target_xdp(program)?.info()?.id()
        } else {
            self.target_tc(program)?.info()?.id()
        })
    }

    fn target_tc(&mut self, program: &str) -> Result<&mut SchedClassifier> {
        match &mut self.pinned {
            Some(pinned) => pinned
                .tc
                .get_mut(program)
                .ok_or_else(|| anyhow!("no pinned program {program}")),
            None => program_mut(&mut self.ebpf, program),
        }
    }

    fn target_xdp(&mut self, program: &str) -> Result<&mut Xdp> {
        match &mut self.pinned {
            Some(pinned) => Ok(&mut pinned.xdp),
            None => program_mut(&mut self.ebpf, program),
        }
    }

    /// Pins every program in `dir`, replacing pins of older versions.
    pub fn pin_programs(&mut self, dir: &StateDir) -> Result<()> {
        for name in TC_PROGRAMS.into_iter().chain([DECAP_XDP]) {
            let path = dir.program(name);
            let _ = std::fs::remove_file(&path);
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?;
            program
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    fn tag(&self, name: &str) -> Result<u64> {
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?;
        Ok(program.info()?.tag())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name} in the object"))
    }

    /// Writes fan-xdp's record of a fan.
    pub fn insert_meta(&mut self, key: FanMetaKey, meta: &FanMeta) -> Result<()> {
        let mut records: BpfHashMap<_, FanMetaKey, FanMeta> =
            BpfHashMap::try_from(self.map_mut(META_MAP)?)?;
        records
            .insert(key, meta, 0)
            .context("writing the fan record")?;
        Ok(())
    }

    /// Points direct delivery of `addr` (network byte order) at `endpoint`.
    pub fn insert_endpoint(&mut self, addr: u32, endpoint: &Endpoint) -> Result<()> {
        let mut endpoints: BpfHashMap<_, u32, Endpoint> =
            BpfHashMap::try_from(self.map_mut(ENDPOINTS_MAP)?)?;
        endpoints
            .insert(addr, endpoint, 0)
            .context("writing an endpoint")?;
        Ok(())
    }

    /// Adds or replaces the fan whose overlay is `entry.map.overlay`, and
    /// brings the local hosts map in line with the fans configured.
    pub fn insert_fan(&mut self, entry: &FanEntry) -> Result<()> {
        let mut trie: LpmTrie<_, u32, FanEntry> = LpmTrie::try_from(self.map_mut(CONFIG_MAP)?)?;
        trie.insert(
            &overlay_key(entry.map.overlay, entry.map.overlay_len),
            entry,
            0,
        )
        .context("writing the fan map entry")?;
        let fans = fan_entries(&trie)?;
        let mut hosts: BpfHashMap<_, u32, LocalHost> =
            BpfHashMap::try_from(self.map_mut(LOCAL_HOSTS_MAP)?)?;
        sync_local_hosts(&mut hosts, &fans)
    }

    /// Sets the agent's heartbeat to `ns` (CLOCK_MONOTONIC), as the agent
    /// does every second: for tests of the programs.
    pub fn set_heartbeat(&mut self, ns: u64) -> Result<()> {
        let mut agent: Array<_, u64> = Array::try_from(self.map_mut(AGENT_MAP)?)?;
        agent.set(0, ns, 0).context("writing the heartbeat")
    }

    /// The path MTU learned towards remote underlay host `host` (host order).
    pub fn path_mtu(&self, host: u32) -> Result<Option<PathMtu>> {
        let map = self
            .ebpf
            .map(PATH_MTU_MAP)
            .ok_or_else(|| anyhow!("no map {PATH_MTU_MAP}"))?;
        let mtus: BpfHashMap<_, u32, PathMtu> = BpfHashMap::try_from(map)?;
        match mtus.get(&host.to_be(), 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a path MTU"),
        }
    }

    /// The counters summed over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or_else(|| anyhow!("no map {STATS_MAP}"))?;
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
        sum_stats(&array)
    }

    /// A TC program by name, for attaching elsewhere or test runs.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        program(&mut self.ebpf, name)
    }

    /// The XDP decapsulation program, for test runs.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf, DECAP_XDP)
    }

    /// How many instructions the verifier processed for each program.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        TC_PROGRAMS
            .into_iter()
            .chain([DECAP_XDP])
            .map(|name| {
                let program = self
                    .ebpf
                    .program(name)
                    .ok_or_else(|| anyhow!("no program {name}"))?;
                Ok((
                    name,
                    program.info()?.verified_instruction_count().unwrap_or(0),
                ))
            })
            .collect()
    }

    /// The bench's XDP_PASS baseline, loaded on first use.
    pub fn baseline_xdp(&mut self) -> Result<&mut Xdp> {
        let xdp: &mut Xdp = program(&mut self.ebpf, BENCH_XDP_PASS)?;
        if xdp.fd().is_err() {
            xdp.load()?;
        }
        Ok(xdp)
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    program(ebpf, name)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name} in the object"))?;
    Ok(program.try_into()?)
}

/// Whether this kernel has TCX (BPF links for TC, Linux 6.6).
pub fn tcx_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn tc_attach_type(hook: Hook) -> TcAttachType {
    if hook == Hook::TcEgress {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

/// Removes an attachment made by [`Dataplane::ensure_link`] through its pin:
/// a pinned link goes with its pin; a clsact filter (marked by a pinned
/// program) is removed from `device` first. A missing pin or device is fine.
pub fn unlink(pin: &std::path::Path, device: &str, hook: Hook) -> Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    // A program pinned where a link would be marks a clsact filter.
    if hook != Hook::Xdp
        && let Ok(info) = aya::programs::ProgramInfo::from_pin(pin)
    {
        let name = TC_PROGRAMS
            .into_iter()
            .find(|n| info.name_as_str().is_some_and(|short| n.starts_with(short)))
            .unwrap_or_default();
        let _ = aya::programs::tc::qdisc_detach_program(device, tc_attach_type(hook), name);
    }
    std::fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))
}

/// What [`Dataplane::ensure_link`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// The pinned link already ran this program.
    Unchanged,
    /// The pinned link now runs this program instead of another version.
    Replaced,
    /// A new link was made and pinned (none was, or only a defunct one).
    Created,
}

impl LinkChange {
    pub fn changed(self) -> bool {
        self != LinkChange::Unchanged
    }
}

/// `bpf_attr` for BPF_OBJ_GET (the fields up to `file_flags`).
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to the XDP/TCX part of its union (which starts
/// 8-aligned, at byte 16): `ifindex` is the first field of both.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _hole: u32,
    ifindex: u32,
    attach_type: u32,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The ifindex of the device the XDP or TCX link pinned at `pin` is
/// attached to, None if nothing is pinned there. A link outlives its device,
/// defunct, and then reports 0; a device re-created under the same name
/// (netplan, a driver reload) has another ifindex. aya's
/// `LinkInfo` does not expose it, so this asks the kernel itself.
pub fn pinned_link_ifindex(pin: &Path) -> Result<Option<u32>> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `get` is a valid bpf_attr prefix of the size given, and
    // `pathname` points to a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw mut get,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("opening pinned link {}", pin.display()));
    }
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // A program's info would read as a link's: tell them apart by the fd's kind.
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .with_context(|| format!("inspecting pinned object {}", pin.display()))?;
    if kind.as_os_str() != "anon_inode:bpf-link" {
        anyhow::bail!("{} is not a BPF link ({})", pin.display(), kind.display());
    }
    let mut info = LinkInfoHead::default();
    let mut query = InfoByFdAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfoHead>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `query` is a valid bpf_attr prefix; `info` is writable for
    // `info_len` bytes, and the kernel writes no more than that.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut query,
            std::mem::size_of::<InfoByFdAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading pinned link {}", pin.display()));
    }
    Ok(Some(info.ifindex))
}

/// Removes the state directories of other namespaces that are gone, judged
/// by their pins: a directory goes only if every link pinned in it is
/// defunct (its device was deleted, as a namespace's devices are when it
/// dies). A namespace kept alive by a bind mount anywhere, or used by a
/// fan-xdp in another PID namespace, keeps its devices and so its links.
/// Where the pins cannot say (only clsact filters' markers, before Linux 6.6,
/// beside defunct links, or no links yet: an attach in progress), the
/// directory goes only if no process or `ip netns` name holds its namespace
/// either: before 6.6, only a namespace whose decapsulation is XDP (a link)
/// is safe from that weaker judgement.
/// Returns what was removed.
pub fn sweep_stale(dir: &StateDir) -> Result<Vec<std::path::PathBuf>> {
    let mut live = None;
    let mut removed = Vec::new();
    for (path, cookie) in dir.others() {
        let stale = match pins_say_defunct(&path)? {
            Some(defunct) => defunct,
            None => {
                let live = match &live {
                    Some(live) => live,
                    None => live.insert(crate::host::netns::live_cookies()?),
                };
                !live.contains(&cookie)
            }
        };
        if stale {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale state {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether every attachment pinned in `dir` is defunct: Some(false) if a
/// link in it is alive, Some(true) if it has links and all are defunct,
/// None if the pins cannot tell (no links, or clsact markers besides
/// defunct links).
fn pins_say_defunct(dir: &Path) -> Result<Option<bool>> {
    let (mut defunct, mut markers) = (0, 0);
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
    {
        if !entry.file_name().to_string_lossy().starts_with("link_") {
            continue;
        }
        match pinned_link_ifindex(&entry.path()) {
            Ok(Some(0)) => defunct += 1,
            Ok(Some(_)) => return Ok(Some(false)),
            Ok(None) => {}
            // Not a link: a program marking a clsact filter.
            Err(_) => markers += 1,
        }
    }
    Ok((defunct > 0 && markers == 0).then_some(true))
}

/// The id of the program pinned at `pin` (the marker of a clsact filter).
pub fn pinned_program_id(pin: &Path) -> Option<u32> {
    aya::programs::ProgramInfo::from_pin(pin)
        .ok()
        .map(|info| info.id())
}

/// Where a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

/// The LPM key of an overlay prefix.
pub fn overlay_key(overlay: u32, len: u8) -> Key<u32> {
    Key::new(len.into(), overlay.to_be())
}

/// Every fan entry of a configuration map.
fn fan_entries<T: std::borrow::Borrow<MapData>>(
    trie: &LpmTrie<T, u32, FanEntry>,
) -> Result<Vec<FanEntry>> {
    trie.iter()
        .map(|item| Ok(item?.1))
        .collect::<Result<_>>()
        .context("reading the fan map")
}

/// Makes the local hosts map hold exactly the local underlay addresses of
/// `fans`, each with the widest underlay using it and how many fans do. The
/// programs accept fan traffic only for these addresses, refuse it from
/// them, and learn path MTUs only towards hosts of those underlays.
fn sync_local_hosts<T: std::borrow::BorrowMut<MapData>>(
    hosts: &mut BpfHashMap<T, u32, LocalHost>,
    fans: &[FanEntry],
) -> Result<()> {
    let mut want: BTreeMap<u32, LocalHost> = BTreeMap::new();
    for fan in fans {
        let host = want.entry(fan.local_host.to_be()).or_insert(LocalHost {
            underlay: fan.map.underlay,
            underlay_len: fan.map.underlay_len,
            ..LocalHost::default()
        });
        if fan.map.underlay_len < host.underlay_len {
            host.underlay = fan.map.underlay;
            host.underlay_len = fan.map.underlay_len;
        }
        host.fans += 1;
    }
    let stale: Vec<u32> = hosts
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !want.contains_key(key))
        .collect();
    for key in stale {
        hosts.remove(&key).context("removing a local host")?;
    }
    for (key, host) in want {
        if hosts.get(&key, 0).ok() != Some(host) {
            hosts.insert(key, host, 0).context("writing a local host")?;
        }
    }
    Ok(())
}

/// The pinned maps, opened without loading any program (show, stats, detach).
pub struct PinnedMaps {
    pub config: LpmTrie<MapData, u32, FanEntry>,
    pub meta: BpfHashMap<MapData, FanMetaKey, FanMeta>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub endpoints: BpfHashMap<MapData, u32, Endpoint>,
    pub local_hosts: BpfHashMap<MapData, u32, LocalHost>,
    /// Path MTUs learned towards remote hosts (an LRU hash map).
    pub path_mtus: BpfHashMap<MapData, u32, PathMtu>,
    /// The agent's heartbeat.
    pub agent: Array<MapData, u64>,
    /// Whether the fast path may skip netfilter (`fan_common::maps::bypass`).
    pub bypass: Array<MapData, u32>,
}

impl PinnedMaps {
    pub fn open(dir: &StateDir) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let data = MapData::from_pin(dir.map(name))
                .with_context(|| format!("opening pinned map {}", dir.map(name).display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(Self {
            config: LpmTrie::try_from(open(CONFIG_MAP)?)?,
            meta: BpfHashMap::try_from(open(META_MAP)?)?,
            stats: PerCpuArray::try_from(open(STATS_MAP)?)?,
            endpoints: BpfHashMap::try_from(open(ENDPOINTS_MAP)?)?,
            local_hosts: BpfHashMap::try_from(open(LOCAL_HOSTS_MAP)?)?,
            path_mtus: BpfHashMap::try_from(open(PATH_MTU_MAP)?)?,
            agent: Array::try_from(open(AGENT_MAP)?)?,
            bypass: Array::try_from(open(BYPASS_MAP)?)?,
        })
    }

    /// The bypass value the programs follow.
    pub fn bypass(&self) -> Result<u32> {
        self.bypass.get(&0, 0).context("reading the bypass setting")
    }

    pub fn set_bypass(&mut self, value: u32) -> Result<()> {
        self.bypass
            .set(0, value, 0)
            .context("writing the bypass setting")
    }

    /// The agent's heartbeat: the programs follow the endpoint map for
    /// [`fan_common::maps::AGENT_HEARTBEAT_TIMEOUT_NS`] after it.
    pub fn beat(&mut self) -> Result<()> {
        self.agent
            .set(0, monotonic_ns(), 0)
            .context("writing the agent's heartbeat")
    }

    /// The agent stopped: no more direct delivery, whatever the map says.
    pub fn stop_beating(&mut self) -> Result<()> {
        self.agent
            .set(0, 0, 0)
            .context("clearing the agent's heartbeat")
    }

    /// Writes the fan entry `entry` back (an undone change), and its local host.
    pub fn insert_fan(&mut self, entry: &FanEntry) -> Result<()> {
        self.config
            .insert(
                &overlay_key(entry.map.overlay, entry.map.overlay_len),
                entry,
                0,
            )
            .context("writing the fan map entry")?;
        let fans = fan_entries(&self.config)?;
        sync_local_hosts(&mut self.local_hosts, &fans)
    }

    /// Removes the fan of overlay `overlay/len` (host byte order) from the
    /// programs' configuration, and its local host where no other fan uses it.
    pub fn remove_fan(&mut self, overlay: u32, len: u8) -> Result<()> {
        match self.config.remove(&overlay_key(overlay, len)) {
            Ok(()) => {}
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("removing the fan map entry"),
        }
        let fans = fan_entries(&self.config)?;
        sync_local_hosts(&mut self.local_hosts, &fans)
    }

    /// fan-xdp's record of every fan, ordered by overlay.
    pub fn fans(&self) -> Result<Vec<(FanMetaKey, FanMeta)>> {
        let mut fans = self.meta.iter().collect::<Result<Vec<_>, _>>()?;
        fans.sort_by_key(|(key, _)| (key[1], key[0]));
        Ok(fans)
    }

    pub fn stats(&self) -> Result<Stats> {
        sum_stats(&self.stats)
    }
}

fn sum_stats<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, Counter>) -> Result<Stats> {
    let mut stats = Stats::default();
    for &reason in StatReason::ALL {
        let per_cpu = array.get(&(reason as u32), 0)?;
        let total = per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        });
        stats.0.insert(reason.name(), total);
    }
    Ok(stats)
}

/// Counter totals by reason name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<&'static str, Counter>);

impl Stats {
    pub fn get(&self, reason: StatReason) -> Counter {
        self.0.get(reason.name()).copied().unwrap_or_default()
    }

    /// The change from `earlier` to `self`. A counter below its earlier
    /// value was reset in between (its map re-created by a detach and an
    /// attach): what it counted since the reset is all it says.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let mut delta = self.clone();
        for (name, counter) in delta.0.iter_mut() {
            let before = earlier.0.get(name).copied().unwrap_or_default();
            if let (Some(packets), Some(bytes)) = (
                counter.packets.checked_sub(before.packets),
                counter.bytes.checked_sub(before.bytes),
            ) {
                *counter = Counter { packets, bytes };
            }
        }
        delta
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the programs' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use fan_common::{Counter, StatReason};

    use super::Stats;

    fn stats(packets: u64, bytes: u64) -> Stats {
        let mut stats = Stats::default();
        stats
            .0
            .insert(StatReason::Encapsulated.name(), Counter { packets, bytes });
        stats
    }

    #[test]
    fn deltas_of_counters_that_grew_or_were_reset() {
        let delta = stats(10, 1000).since(&stats(4, 400));
        assert_eq!(
            delta.get(StatReason::Encapsulated),
            Counter {
                packets: 6,
                bytes: 600
            }
        );
        // Reset in between: the counts since the reset, not a wrapped number.
        let delta = stats(3, 300).since(&stats(4, 400));
        assert_eq!(
            delta.get(StatReason::Encapsulated),
            Counter {
                packets: 3,
                bytes: 300
            }
        );
    }
}
