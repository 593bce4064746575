//! One bed's side of a fuzz run: each case through the program and the
//! model, compared and tallied; the corpus, the generated cases (with the
//! forwarding-off phase), and the round trips of A's encapsulations through
//! B's decapsulation.

use std::time::Instant;

use anyhow::Result;

use super::{
    Report, Settings,
    bed::{GATEWAY_MAC, Observed, Runner},
    case_seed,
    check::{self, compare, observed_fate, properties},
    corpus,
    generate::{Case, Generator},
    rng::Rng,
};
use crate::model::{
    self, Fate, Program, RunContext,
    wire::{ETH_LEN, decrement_ttl},
};

/// Every this many generated cases run twice: a run must not depend on the
/// ones before it (per-CPU state, maps).
const REPEAT_EVERY: u64 = 16;
/// How many encapsulations are kept for the round trip.
const MAX_ROUND_TRIPS: usize = 50_000;

struct Checked {
    observed: Observed,
    problems: Vec<String>,
    /// The known finding the case runs into (the model predicted the programs there).
    known: Option<&'static str>,
}

/// A disagreement, with the case when it replays as a corpus line.
pub(super) type Failure = (Option<Case>, String);

/// An encapsulation by A to B: the encapsulating program, its input and output.
pub(super) type RoundTripCase = (Program, Vec<u8>, Vec<u8>);

/// One bed's side of a run: the model's configuration for it, its ports,
/// the runner inside its namespace, and where results go.
pub(super) struct Checker<'a, 'd> {
    pub(super) config: &'a model::Config,
    pub(super) ports: &'a (dyn Fn(&str) -> u32 + Sync),
    pub(super) runner: &'a mut Runner<'d>,
    pub(super) report: &'a mut Report,
    pub(super) failures: &'a mut Vec<Failure>,
}

impl Checker<'_, '_> {
    /// One run through the program and the model.
    fn check(&mut self, case: &Case) -> Result<Checked> {
        let ctx = self.context(case);
        let config = self.config;
        let predicted = model::predict(config, case.program, &case.frame, ctx);
        let known = model::known_finding(config, case.program, &case.frame, ctx).map(|f| f.label());
        let observed = self.runner.run(case.program, &case.frame, ctx)?;
        let mut problems = compare(&predicted, &observed);
        problems.extend(properties(config, case.program, &case.frame, &observed));
        problems.extend(self.vxlan_encapsulation(case, &observed));
        self.tally(case, &observed);
        Ok(Checked {
            observed,
            problems,
            known,
        })
    }

    /// A VXLAN encapsulation's source port must be the one its inner
    /// flow got before (the kernel's flow hash, keyed per boot); the port
    /// program's are tallied as switched or routed.
    fn vxlan_encapsulation(&mut self, case: &Case, observed: &Observed) -> Option<String> {
        let Observed::Ran {
            frame, counters, ..
        } = observed
        else {
            return None;
        };
        if observed_fate(counters) != Fate::Encapsulated || !check::is_vxlan(frame) {
            return None;
        }
        if case.program == Program::EncapPort {
            let paths = &mut self.report.vxlan_port_paths;
            if case.frame[..6] == GATEWAY_MAC {
                paths.1 += 1;
            } else {
                paths.0 += 1;
            }
        }
        let flow = check::vxlan_flow(frame)?;
        let port = model::wire::be16(frame, model::VXLAN_SOURCE_PORT.start);
        match self.report.vxlan_flows.insert(flow, port) {
            Some(earlier) if earlier != port => Some(format!(
                "VXLAN source port {port} for flow {flow:x?}, which got {earlier} before"
            )),
            Some(_) => {
                self.report.vxlan_flow_repeats += 1;
                None
            }
            None => None,
        }
    }

    fn context(&self, case: &Case) -> RunContext {
        RunContext {
            ingress_ifindex: (self.ports)(&case.port),
            gso_size: case.gso_size,
        }
    }

    fn tally(&mut self, case: &Case, observed: &Observed) {
        let tally = self.report.tallies.entry(case.program).or_default();
        tally.runs += 1;
        let Observed::Ran { counters, .. } = observed else {
            tally.refused += 1;
            return;
        };
        for &(name, packets, _) in counters {
            *self
                .report
                .counters
                .entry((case.program, name))
                .or_default() += packets;
        }
        tally.outcomes += counters
            .iter()
            .filter(|c| !check::is_subset_counter(c.0))
            .count() as u64;
    }

    /// Records a case's known finding and disagreement; whether it agreed.
    fn note(&mut self, reproducer: &str, case: &Case, checked: &Checked, replayable: bool) -> bool {
        if let Some(label) = checked.known {
            let hit = self
                .report
                .known_hits
                .entry(label)
                .or_insert_with(|| (0, corpus::format(case)));
            hit.0 += 1;
        }
        if checked.problems.is_empty() {
            return true;
        }
        let text = format!(
            "{reproducer} {}\n  {}",
            corpus::format(case),
            checked.problems.join("\n  ")
        );
        self.failures
            .push((Some(case.clone()).filter(|_| replayable), text));
        false
    }

    /// The corpus, first: each line must agree, and a `known=` line must
    /// still run into its finding.
    pub(super) fn replay_corpus(&mut self, corpus: &[corpus::Entry]) -> Result<()> {
        for entry in corpus {
            let mut checked = self.check(&entry.case)?;
            if let Some(label) = &entry.known {
                if checked.known == Some(label.as_str()) {
                    self.report.known_reproduced.push(label.clone());
                } else {
                    checked.problems.push(format!(
                        "marked known={label}, but the model says it runs into {:?}",
                        checked.known
                    ));
                }
            }
            checked.known = None;
            let reproducer = format!("corpus line {}:", entry.line);
            self.note(&reproducer, &entry.case, &checked, true);
        }
        Ok(())
    }

    /// The generated cases, every sixteenth twice; returns A's
    /// encapsulations to B for the round trip.
    pub(super) fn generated(
        &mut self,
        settings: &Settings,
        start: Instant,
        peer: &model::Config,
    ) -> Result<Vec<RoundTripCase>> {
        let generator = Generator::new(self.config);
        let mut round_trips = Vec::new();
        let mut generated = 0u64;
        for program in Program::ALL {
            for index in 0..settings.cases_per_program {
                let mut rng = Rng::new(case_seed(settings.seed, program, index));
                let case = generator.case(&mut rng, program);
                let mut checked = self.check(&case)?;
                if index.is_multiple_of(REPEAT_EVERY) {
                    self.report.repetitions += 1;
                    let again = self
                        .runner
                        .run(case.program, &case.frame, self.context(&case))?;
                    self.tally(&case, &again);
                    if again != checked.observed {
                        checked.problems.push(format!(
                            "a second run on the original input did otherwise: {again:?}"
                        ));
                    }
                }
                let reproducer = format!("seed={:#x} case={index}", settings.seed);
                let agreed = self.note(&reproducer, &case, &checked, true);
                if agreed
                    && round_trips.len() < MAX_ROUND_TRIPS
                    && let Some(out) = encapsulated_to(&checked.observed, peer)
                {
                    round_trips.push((program, case.frame.clone(), out));
                }
                generated += 1;
                if settings.progress_every != 0 && generated.is_multiple_of(settings.progress_every)
                {
                    eprintln!(
                        "fuzz: {generated} cases, {} disagreements, {:.0} s",
                        self.failures.len(),
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        Ok(round_trips)
    }

    /// The encapsulating programs with forwarding off on the underlay
    /// device, where every route lookup stops (a fiftieth of the run's cases).
    pub(super) fn forwarding_off(
        &mut self,
        settings: &Settings,
        ns: &crate::netns::Netns,
    ) -> Result<()> {
        let mut off = self.config.clone();
        let eth0 = off.fans[0].underlay_ifindex;
        for device in &mut off.underlay.devices {
            if device.ifindex == eth0 {
                device.forwarding = false;
            }
        }
        ns.sysctl("net.ipv4.conf.eth0.forwarding", "0")?;
        let encapsulating = [
            Program::EncapForward,
            Program::EncapPort,
            Program::EncapOutput,
        ];
        let seed = settings.seed ^ FORWARDING_OFF_SEED;
        self.phase(
            &off,
            settings,
            seed,
            &encapsulating,
            "forwarding off on eth0",
        )?;
        ns.sysctl("net.ipv4.conf.eth0.forwarding", "1")?;
        Ok(())
    }

    /// Every program with the bypass off (a fiftieth of the run's cases
    /// each): the port program still checks sources and DHCP replies, what
    /// the programs would forward goes to the stack, nothing is delivered
    /// straight into a container.
    pub(super) fn bypass_off(&mut self, settings: &Settings) -> Result<()> {
        let mut off = self.config.clone();
        off.bypass_off = true;
        self.runner.set_bypass_off(true)?;
        let seed = settings.seed ^ BYPASS_OFF_SEED;
        self.phase(&off, settings, seed, &Program::ALL, "bypass off")?;
        self.runner.set_bypass_off(false)
    }

    /// A fiftieth of the run's cases for each of `programs` under `config`
    /// (the bed set up to match), from `seed`, reproducers marked `label`.
    /// Not corpus lines: the cases mean something else in the main run.
    fn phase(
        &mut self,
        config: &model::Config,
        settings: &Settings,
        seed: u64,
        programs: &[Program],
        label: &str,
    ) -> Result<()> {
        let mut checker = Checker {
            config,
            ports: self.ports,
            runner: self.runner,
            report: self.report,
            failures: self.failures,
        };
        let generator = Generator::new(config);
        for &program in programs {
            for index in 0..settings.cases_per_program.div_ceil(50) {
                let mut rng = Rng::new(case_seed(seed, program, index));
                let case = generator.case(&mut rng, program);
                let checked = checker.check(&case)?;
                let reproducer = format!("seed={:#x} case={index} ({label})", settings.seed);
                checker.note(&reproducer, &case, &checked, false);
            }
        }
        Ok(())
    }

    /// B decapsulates what A encapsulated for it, with both programs.
    pub(super) fn round_trips(&mut self, round_trips: &[RoundTripCase]) -> Result<()> {
        for (encapsulator, input, encapsulated) in round_trips {
            for program in [Program::DecapTc, Program::DecapXdp] {
                let case = Case {
                    program,
                    port: "0".into(),
                    gso_size: 0,
                    frame: encapsulated.clone(),
                };
                let mut checked = self.check(&case)?;
                match round_trip_result(*encapsulator, input, encapsulated, &checked.observed) {
                    RoundTrip::Intact => self.report.round_trips += 1,
                    RoundTrip::SliceEdge => {
                        self.report.round_trips += 1;
                        self.report.round_trips_to_slice_edges += 1;
                    }
                    RoundTrip::TooLongToRun => {}
                    RoundTrip::Broken(why) => checked.problems.push(why),
                }
                let reproducer = format!(
                    "round trip (B decapsulates A's {} of {}):",
                    encapsulator.name(),
                    model::wire::to_hex(input)
                );
                self.note(&reproducer, &case, &checked, true);
            }
        }
        Ok(())
    }
}

/// The frame out of a run that encapsulated it to the peer's address in
/// the inner destination's fan (`peer` is the peer's configuration).
fn encapsulated_to(observed: &Observed, peer: &model::Config) -> Option<Vec<u8>> {
    let Observed::Ran {
        frame, counters, ..
    } = observed
    else {
        return None;
    };
    // VXLAN's round trip ends at the overlay port, which hands the inner
    // frame to the bridge: checked by the model alone.
    if observed_fate(counters) != Fate::Encapsulated || frame.len() < 54 || check::is_vxlan(frame) {
        return None;
    }
    let (outer_dst, inner_dst) = (model::wire::be32(frame, 30), model::wire::be32(frame, 50));
    let to_peer = peer
        .fan_for(inner_dst)
        .is_some_and(|fan| fan.local_host == outer_dst);
    to_peer.then(|| frame.clone())
}

/// Mixed into the run's seed for the forwarding-off phase.
const FORWARDING_OFF_SEED: u64 = 0x006f_6666;
/// Mixed into the run's seed for the bypass-off phase.
const BYPASS_OFF_SEED: u64 = 0x0062_7970;

enum RoundTrip {
    /// B gave back A's input: the Ethernet header as A's program left it,
    /// the inner TTL less one where A forwarded.
    Intact,
    /// The inner destination is a slice edge of B's, which B drops.
    SliceEdge,
    /// A's packet grew past what a test run takes (a jumbo frame's 20 more bytes).
    TooLongToRun,
    Broken(String),
}

fn round_trip_result(
    encapsulator: Program,
    input: &[u8],
    encapsulated: &[u8],
    observed: &Observed,
) -> RoundTrip {
    let Observed::Ran {
        frame, counters, ..
    } = observed
    else {
        if !model::kernel_accepts(Program::DecapTc, encapsulated) {
            return RoundTrip::TooLongToRun;
        }
        return RoundTrip::Broken("B refused to run A's encapsulation".into());
    };
    match observed_fate(counters) {
        Fate::Decapsulated => {
            let mut expected = encapsulated[..ETH_LEN].to_vec();
            expected.extend_from_slice(&input[ETH_LEN..]);
            if encapsulator != Program::EncapOutput {
                decrement_ttl(&mut expected, ETH_LEN);
            }
            if *frame == expected {
                RoundTrip::Intact
            } else {
                RoundTrip::Broken(format!(
                    "round trip changed the packet: expected {}",
                    model::wire::to_hex(&expected)
                ))
            }
        }
        _ if counters.iter().any(|c| c.0 == "drop_inner_dst_reserved") => RoundTrip::SliceEdge,
        _ => RoundTrip::Broken(format!("B did not decapsulate A's packet: {counters:?}")),
    }
}
