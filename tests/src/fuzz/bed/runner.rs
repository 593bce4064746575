//! Running the programs on single frames in the bed (BPF_PROG_TEST_RUN):
//! the verdict, the frame out and the counters that moved, or the kernel's
//! refusal.

use anyhow::{Context as _, Result};
use aya::programs::{ProgramError, TestRun, TestRunOptions};
use fan_common::{StatReason, maps::PathMtu as MapPathMtu, pmtu::PMTU_EXPIRES_NS};
use fan_userspace::dataplane::{Dataplane, Stats};

use crate::model::{Program, RunContext, config::PathMtu};

/// What one test run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The kernel refused the run (its errno).
    Refused(i32),
    Ran {
        verdict: u32,
        frame: Vec<u8>,
        /// Every counter that moved: (name, packets, bytes).
        counters: Vec<(&'static str, u64, u64)>,
        /// The path MTUs the run wrote: (host, MTU).
        learned: Vec<(u32, u32)>,
    },
}

/// Offsets in `struct __sk_buff` (uapi/linux/bpf.h) of the fields a run sets.
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_GSO_SIZE: usize = 176;
const SKB_CTX_LEN: usize = SKB_GSO_SIZE + 4;

/// Runs programs on single frames. Must be used on a thread inside the
/// bed's namespace (route lookups resolve in the caller's namespace).
pub struct Runner<'a> {
    dataplane: &'a mut Dataplane,
    stats: Stats,
    out: Vec<u8>,
    /// When the agent's heartbeat was last written: the runner beats as the
    /// agent does (every second), or direct delivery would not be followed.
    beaten: Option<std::time::Instant>,
    /// The path MTU table each case starts from, as last written.
    path_mtus: Vec<(u32, MapPathMtu)>,
    wanted_path_mtus: Vec<PathMtu>,
}

impl<'a> Runner<'a> {
    /// A runner whose cases start from the path MTU table `path_mtus`.
    pub fn new(dataplane: &'a mut Dataplane, path_mtus: &[PathMtu]) -> Result<Self> {
        let stats = dataplane.stats()?;
        Ok(Self {
            dataplane,
            stats,
            out: vec![0; 8192],
            beaten: None,
            path_mtus: Vec::new(),
            wanted_path_mtus: path_mtus.to_vec(),
        })
    }

    /// Writes the path MTU table the cases start from: fresh entries as
    /// learned now, expired ones as learned just past the expiry.
    fn write_path_mtus(&mut self, now: u64) -> Result<()> {
        for (host, _) in self.dataplane.path_mtus()? {
            self.dataplane.remove_path_mtu(host)?;
        }
        self.path_mtus.clear();
        for wanted in &self.wanted_path_mtus {
            let learned_ns = match wanted.fresh {
                true => now,
                // Wrapping, as the programs' age check does.
                false => now.wrapping_sub(PMTU_EXPIRES_NS + 1_000_000_000),
            };
            let entry = MapPathMtu {
                mtu: wanted.mtu,
                _pad: 0,
                learned_ns,
            };
            self.dataplane.set_path_mtu(wanted.host, entry)?;
            self.path_mtus.push((wanted.host, entry));
        }
        Ok(())
    }

    /// The entries a run wrote into the path MTU table; puts the table back
    /// as it was if it wrote any.
    fn path_mtus_written(&mut self) -> Result<Vec<(u32, u32)>> {
        let mut now: Vec<(u32, MapPathMtu)> = self.dataplane.path_mtus()?;
        now.sort_by_key(|e| e.0);
        let mut before = self.path_mtus.clone();
        before.sort_by_key(|e| e.0);
        if now == before {
            return Ok(Vec::new());
        }
        let written = now
            .iter()
            .filter(|entry| !before.contains(entry))
            .map(|(host, entry)| (*host, entry.mtu))
            .collect();
        self.write_path_mtus(fan_userspace::dataplane::monotonic_ns())?;
        Ok(written)
    }

    /// Turns the bypass off (forced, as `--bypass off` does) or on.
    pub fn set_bypass_off(&mut self, off: bool) -> Result<()> {
        use fan_common::maps::bypass;
        self.dataplane.set_bypass(if off {
            bypass::FORCED_OFF
        } else {
            bypass::FORCED_ON
        })
    }

    /// The kernel's own count of each program's runs in this bed (counted
    /// while BPF_ENABLE_STATS is on: see [`crate::fuzz::run`]).
    pub fn kernel_runs(&mut self) -> Result<Vec<(Program, u64)>> {
        Program::ALL
            .into_iter()
            .map(|program| {
                let info = if program.is_xdp() {
                    self.dataplane.xdp()?.info()
                } else {
                    self.dataplane.classifier(program.name())?.info()
                };
                Ok((
                    program,
                    info.context("reading a program's info")?.run_count(),
                ))
            })
            .collect()
    }

    /// One run of `program` on `frame`, and the counters it moved.
    pub fn run(&mut self, program: Program, frame: &[u8], ctx: RunContext) -> Result<Observed> {
        if self
            .beaten
            .is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(1))
        {
            let now = fan_userspace::dataplane::monotonic_ns();
            self.dataplane.set_heartbeat(now)?;
            // Before the table is made fresh again: a write by a case that
            // was not an ICMP message would otherwise be overwritten unseen.
            let unchecked = self.path_mtus_written()?;
            anyhow::ensure!(
                unchecked.is_empty(),
                "path MTUs written by a case that carried no ICMP message (host, MTU): {unchecked:08x?}"
            );
            self.write_path_mtus(now)?;
            self.beaten = Some(std::time::Instant::now());
        }
        let mut skb = [0u8; SKB_CTX_LEN];
        skb[SKB_INGRESS_IFINDEX..][..4].copy_from_slice(&ctx.ingress_ifindex.to_ne_bytes());
        skb[SKB_GSO_SIZE..][..4].copy_from_slice(&ctx.gso_size.to_ne_bytes());
        let with_ctx = !program.is_xdp() && ctx != RunContext::default();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut self.out),
            ctx_in: with_ctx.then_some(&skb[..]),
            ..Default::default()
        };
        let result = if program.is_xdp() {
            self.dataplane.xdp()?.test_run(opts)
        } else {
            self.dataplane.classifier(program.name())?.test_run(opts)
        };
        let result = match result {
            Ok(result) => result,
            Err(ProgramError::SyscallError(e)) => {
                return Ok(Observed::Refused(e.io_error.raw_os_error().unwrap_or(0)));
            }
            Err(e) => return Err(e).context("test run"),
        };
        let stats = self.dataplane.stats()?;
        let delta = stats.since(&self.stats);
        self.stats = stats;
        // Events left out (nothing reads the ring here) are not outcomes.
        let counters = StatReason::ALL
            .iter()
            .filter(|r| r.is_outcome())
            .map(|&r| (r.name(), delta.get(r)))
            .filter(|(_, c)| c.packets != 0 || c.bytes != 0)
            .map(|(name, c)| (name, c.packets, c.bytes))
            .collect();
        // Only an ICMP message at a decapsulating program may teach a path
        // MTU; reading the table after those alone keeps runs fast, and a
        // stray write elsewhere still shows at the next such read or, at
        // the latest, at the next refresh of the table.
        let icmp = frame.len() > 23 && frame[12..14] == [0x08, 0x00] && frame[23] == 1;
        let learned = if icmp && !program.is_encap() {
            self.path_mtus_written()?
        } else {
            Vec::new()
        };
        Ok(Observed::Ran {
            verdict: result.return_value,
            frame: self.out[..result.data_size_out as usize].to_vec(),
            counters,
            learned,
        })
    }
}
