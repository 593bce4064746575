//! The data plane as user space drives it: the eBPF object's programs
//! (`programs`), their attachments per hook kind (`attachments`), their
//! maps (`maps`), their event ring (`events`), and read-only questions
//! about them (`inspect`). Nothing
//! above this module names aya.

mod attachments;
mod carry;
mod events;
pub mod inspect;
mod maps;
mod programs;
mod stats;

pub use attachments::{
    LinkChange, add_clsact_filter, pinned_link_ifindex, pinned_program_id, replace_clsact_program,
    sweep_stale, tcx_supported, unlink,
};
use carry::CarriedCounters;
use programs::program_by_name;

pub use events::{EventRing, sample_passes};
pub use maps::{FanStats, PinnedMaps, monotonic_ns, overlay_key};
pub use stats::Stats;
use stats::sum_stats;

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
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap,
        lpm_trie::Key,
    },
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use fan_common::{
    Counter, FanEntry, FanStatKey, StatReason, WireAddr,
    maps::{Endpoint, FanMeta, FanMetaKey, LocalHost, PathMtu, VxlanKey},
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
/// TC ingress of a VXLAN fan's overlay port (`B`): encapsulates what the
/// slice bridge sends to the overlay.
pub const VXLAN_OUT: &str = fan_common::Program::VxlanOut.name();
/// The name of its link's pin, beside the device's name.
pub const VXLAN_OUT_PIN: &str = "vxlan-out";
/// Every TC program, in the order they are loaded and pinned.
const TC_PROGRAMS: [&str; 5] = [ENCAP_FORWARD, ENCAP_PORT, ENCAP_OUTPUT, DECAP_TC, VXLAN_OUT];
/// An XDP program that only returns XDP_PASS: the bench's baseline.
pub const BENCH_XDP_PASS: &str = "fan_bench_xdp_pass";
pub const CONFIG_MAP: &str = "FAN_CONFIG";
pub const STATS_MAP: &str = "FAN_STATS";
pub const STATS_BY_FAN_MAP: &str = "FAN_STATS_BY_FAN";
pub const META_MAP: &str = "FAN_META";
pub const ENDPOINTS_MAP: &str = "FAN_ENDPOINTS";
pub const LOCAL_HOSTS_MAP: &str = "FAN_LOCAL_HOSTS";
pub const UNDERLAYS_MAP: &str = "FAN_UNDERLAYS";
pub const PATH_MTU_MAP: &str = "FAN_PATH_MTU";
pub const AGENT_MAP: &str = "FAN_AGENT";
pub const BYPASS_MAP: &str = "FAN_BYPASS";
pub const EVENTS_MAP: &str = "FAN_EVENTS";
pub const EVENT_SETTINGS_MAP: &str = "FAN_EVENT_SETTINGS";
pub const VXLAN_MAP: &str = "FAN_VXLAN";
/// The pinned maps. A state directory of map layout 2 lacked the event
/// maps, the per-fan counters and the underlays; layout 4 (VXLAN) changed
/// the fan entry and record, which no older state can be read as.
const MAPS: [&str; 13] = [
    AGENT_MAP,
    BYPASS_MAP,
    CONFIG_MAP,
    STATS_MAP,
    META_MAP,
    ENDPOINTS_MAP,
    LOCAL_HOSTS_MAP,
    PATH_MTU_MAP,
    EVENTS_MAP,
    EVENT_SETTINGS_MAP,
    STATS_BY_FAN_MAP,
    UNDERLAYS_MAP,
    VXLAN_MAP,
];

/// Where decapsulation runs on the underlay device: the one type both sides share.
pub use fan_common::maps::DecapMode;

/// The loaded programs and maps. Attachments made through this value (not
/// pinned ones) live as long as it does.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Filters attached through netlink (kernels without TCX), which the
    /// kernel keeps after their fds close: removed on drop, in their namespace.
    clsact: Vec<ClsactFilter>,
    /// See [`Dataplane::use_pinned_programs`].
    pinned: Option<PinnedPrograms>,
    /// Whether loading created pinned maps beside existing ones.
    created_maps: bool,
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

/// Where a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}
