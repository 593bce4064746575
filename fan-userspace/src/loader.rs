//! Loads the eBPF object, attaches its programs and fills its maps.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use fan_common::{Counter, FanEntry, StatReason};

/// The eBPF object built from `fan-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fan-ebpf"));

/// Program names, as the entry points in `fan-ebpf/src/main.rs` are called.
pub const ENCAP_FORWARD: &str = "fan_encap_forward";
pub const ENCAP_OUTPUT: &str = "fan_encap_output";
pub const DECAP_TC: &str = "fan_decap_tc";
pub const DECAP_XDP: &str = "fan_decap_xdp";
pub const CONFIG_MAP: &str = "FAN_CONFIG";
pub const STATS_MAP: &str = "FAN_STATS";

/// Where decapsulation runs on the underlay device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapMode {
    /// Native (driver) XDP: before GRO and before an skb exists.
    Xdp,
    /// TC ingress: after GRO, keeps 64 KB aggregates whole (the choice on veth).
    Tc,
}

/// The loaded programs and maps. Attachments live as long as this value.
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads every program. With `log_level` 0 the eBPF side's log statements
    /// are compiled out by the verifier (the level is a constant it sees).
    pub fn load(log_level: u8) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &log_level, true)
            .load(EBPF_OBJECT)
            .context("loading the fan-xdp eBPF object")?;
        for name in [ENCAP_FORWARD, ENCAP_OUTPUT, DECAP_TC] {
            let program: &mut SchedClassifier = program(&mut ebpf, name)?;
            program.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, DECAP_XDP)?;
        xdp.load().with_context(|| format!("verifier rejected {DECAP_XDP}"))?;
        Ok(Self { ebpf })
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

    fn attach_tc(&mut self, name: &str, iface: &str, hook: TcAttachType) -> Result<()> {
        let program: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        program
            .attach(iface, hook)
            .with_context(|| format!("attaching {name} to {iface} {hook:?}"))?;
        Ok(())
    }

    /// Adds or replaces the fan whose overlay is `entry.map.overlay`.
    pub fn insert_fan(&mut self, entry: &FanEntry) -> Result<()> {
        let map = self.ebpf.map_mut(CONFIG_MAP).ok_or_else(|| anyhow!("no map {CONFIG_MAP}"))?;
        let mut trie: LpmTrie<_, u32, FanEntry> = LpmTrie::try_from(map)?;
        let key = Key::new(entry.map.overlay_len.into(), entry.map.overlay.to_be());
        trie.insert(&key, entry, 0).context("writing the fan map entry")?;
        Ok(())
    }

    /// The counters summed over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let map = self.ebpf.map(STATS_MAP).ok_or_else(|| anyhow!("no map {STATS_MAP}"))?;
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
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

    /// A TC program by name, for attaching elsewhere or test runs.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        program(&mut self.ebpf, name)
    }

    /// The XDP decapsulation program, for test runs.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf, DECAP_XDP)
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name} in the object"))?;
    Ok(program.try_into()?)
}

/// Counter totals by reason name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<&'static str, Counter>);

impl Stats {
    pub fn get(&self, reason: StatReason) -> Counter {
        self.0.get(reason.name()).copied().unwrap_or_default()
    }

    /// The change from `earlier` to `self`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let mut delta = self.clone();
        for (name, counter) in delta.0.iter_mut() {
            let before = earlier.0.get(name).copied().unwrap_or_default();
            counter.packets -= before.packets;
            counter.bytes -= before.bytes;
        }
        delta
    }
}
