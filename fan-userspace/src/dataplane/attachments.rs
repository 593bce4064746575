//! Attachments, one kind per hook: XDP and TCX links (pinned, checked for
//! life on the current ifindex, replaced in place), clsact filters before
//! Linux 6.6, and removing them; the sweep of directories whose every
//! pinned link is defunct.

use super::*;
use crate::host::TcBpfFilter;

impl Dataplane {
    /// Attaches decapsulation to the underlay device `iface`.
    pub fn attach_decap(&mut self, iface: &str, mode: DecapMode) -> Result<()> {
        match mode {
            DecapMode::Xdp => {
                let xdp: &mut Xdp = program_by_name(&mut self.ebpf, DECAP_XDP)?;
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

    /// Attaches a VXLAN fan's sending program to its overlay port's (`B`'s)
    /// ingress: for tests of the programs (attach keeps its own, pinned link).
    pub fn attach_vxlan_out(&mut self, overlay_port: &str) -> Result<()> {
        self.attach_tc(VXLAN_OUT, overlay_port, TcAttachType::Ingress)
    }

    /// Attaches the container port program to a bridge port's ingress: for
    /// tests of the programs (the agent keeps its own, pinned links).
    pub fn attach_encap_port(&mut self, port: &str) -> Result<()> {
        self.attach_tc(ENCAP_PORT, port, TcAttachType::Ingress)
    }

    pub(super) fn attach_tc(
        &mut self,
        name: &'static str,
        iface: &str,
        hook: TcAttachType,
    ) -> Result<()> {
        if !tcx_supported() {
            // aya falls back to a netlink filter, which needs the qdisc.
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
        }
        let program: &mut SchedClassifier = program_by_name(&mut self.ebpf, name)?;
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
    /// [`pinned_link_ifindex`]). Returns what changed. TC hooks without TCX
    /// go through [`Dataplane::ensure_clsact`].
    pub fn ensure_link(
        &mut self,
        program: &str,
        device: &str,
        hook: Hook,
        pin: &std::path::Path,
    ) -> Result<LinkChange> {
        anyhow::ensure!(
            hook == Hook::Xdp || tcx_supported(),
            "no TCX on this kernel: {program} on {device} is a clsact filter"
        );
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
    /// runs. `running` is the filter that runs the pinned program, as the
    /// caller found it on `device`: another version's is replaced in place
    /// under its priority and handle (the kernel swaps the program of a
    /// filter atomically, as a TCX link does), so no packet meets the hook
    /// without a program.
    pub fn ensure_clsact(
        &mut self,
        program: &str,
        device: &str,
        hook: Hook,
        pin: &std::path::Path,
        running: Option<TcBpfFilter>,
    ) -> Result<LinkChange> {
        let attach_type = tc_attach_type(hook);
        let target = self.target_id(program)?;
        if pin.exists() {
            if pinned_program_id(pin) == Some(target) {
                return Ok(LinkChange::Unchanged);
            }
            if let Some(filter) = running {
                let tc = self.target_tc(program)?;
                replace_clsact_program(tc, device, attach_type, filter.priority, filter.handle)?;
                std::fs::remove_file(pin)?;
                tc.pin(pin)
                    .with_context(|| format!("pinning {}", pin.display()))?;
                return Ok(LinkChange::Replaced);
            }
            // The pinned program's filter is not where it was: attach anew.
            let _ = aya::programs::tc::qdisc_detach_program(device, attach_type, program);
            std::fs::remove_file(pin)?;
        }

        log::info!(
            "TCX unavailable (kernel before 6.6): attaching {program} to {device} through a clsact qdisc"
        );
        let tc = self.target_tc(program)?;
        add_clsact_filter(tc, device, attach_type, Default::default())?;
        tc.pin(pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(LinkChange::Created)
    }
}

/// Makes the clsact filter of `device` at `attach_type`, `priority` and
/// `handle` run `tc` instead of its program: the kernel swaps a filter's
/// program atomically, as a TCX link's, so no packet meets the hook without
/// one. Fails if there is no such filter. The filter stays after we exit.
pub fn replace_clsact_program(
    tc: &mut SchedClassifier,
    device: &str,
    attach_type: TcAttachType,
    priority: u16,
    handle: u32,
) -> Result<()> {
    use aya::programs::tc::{SchedClassifierLink, TcHandle};
    let place =
        SchedClassifierLink::attached(device, attach_type, priority, TcHandle::from(handle), None)
            .with_context(|| format!("finding {device}"))?;
    let id = tc
        .attach_to_link(place)
        .with_context(|| format!("replacing the program of {device}'s {attach_type:?} filter"))?;
    // Dropping the handle would remove the filter: it must stay.
    std::mem::forget(tc.take_link(id)?);
    Ok(())
}

/// Adds a filter running `tc` at `attach_type` of `device` (the TC
/// attachment before Linux 6.6), first the clsact qdisc it hangs on if the
/// device has none. Returns whether it added the qdisc. The filter stays
/// after we exit.
pub fn add_clsact_filter(
    tc: &mut SchedClassifier,
    device: &str,
    attach_type: TcAttachType,
    options: aya::programs::tc::NlOptions,
) -> Result<bool> {
    let added_qdisc = match aya::programs::tc::qdisc_add_clsact(device) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("clsact on {device}: {e} (already present)");
            false
        }
    };
    let id = tc
        .attach_with_options(device, attach_type, TcAttachOptions::Netlink(options))
        .with_context(|| format!("attaching a clsact filter to {device} {attach_type:?}"))?;
    // Dropping the handle would remove the filter: it must stay after we exit.
    std::mem::forget(tc.take_link(id)?);
    Ok(added_qdisc)
}

/// Whether this kernel has TCX (BPF links for TC, Linux 6.6).
pub fn tcx_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

pub(super) fn tc_attach_type(hook: Hook) -> TcAttachType {
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
pub(super) struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
pub(super) struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to the XDP/TCX part of its union (which starts
/// 8-aligned, at byte 16): `ifindex` is the first field of both.
#[repr(C)]
#[derive(Default)]
pub(super) struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _hole: u32,
    ifindex: u32,
    attach_type: u32,
}

pub(super) const BPF_OBJ_GET: libc::c_long = 7;
pub(super) const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

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
    // SAFETY: `get` is a bpf_attr prefix whose `pathname` points to a
    // NUL-terminated string that outlives the call.
    let fd = match unsafe { bpf(BPF_OBJ_GET, &mut get) } {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("opening pinned link {}", pin.display()));
        }
    };
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
    // SAFETY: `query` is a bpf_attr prefix; `info` is writable for
    // `info_len` bytes, and the kernel writes no more than that.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut query) }
        .with_context(|| format!("reading pinned link {}", pin.display()))?;
    Ok(Some(info.ifindex))
}

/// The bpf(2) system call with `attr` (a prefix of `union bpf_attr`, its
/// size passed along): its non-negative result, or the error.
///
/// # Safety
/// Every pointer in `attr` must be valid for what command `cmd` does with it.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is valid for its size; the caller vouches for its pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
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
pub(super) fn pins_say_defunct(dir: &Path) -> Result<Option<bool>> {
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
