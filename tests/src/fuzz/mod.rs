//! Differential testing of the five programs against the model: generated
//! and corpus cases run through BPF_PROG_TEST_RUN and through the model,
//! compared byte for byte, verdict and counters; properties on top.

pub mod bed;
pub mod check;
pub mod corpus;
pub mod generate;
pub mod rng;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;

use self::{
    bed::{Bed, Observed, Runner, Side},
    check::{compare, observed_fate, properties},
    generate::{Case, Generator},
    rng::{Rng, mix},
};
use crate::model::{
    self, Fate, Program, RunContext,
    wire::{ETH_LEN, decrement_ttl},
};

pub struct Settings {
    pub cases_per_program: u64,
    pub seed: u64,
    /// The corpus, replayed first: (file name, its text). Embedded in the
    /// test executable, so the VM replays it too.
    pub corpus: Vec<(&'static str, &'static str)>,
    /// Where new disagreements are appended, if anywhere.
    pub record_file: Option<PathBuf>,
    /// Print a progress line every this many generated cases (0: never).
    pub progress_every: u64,
    /// Predict the stated policy (docs/security.md) where the programs are known to depart
    /// from it (every known finding then shows as a disagreement).
    pub enforce_findings: bool,
}

/// Runs and counted outcomes of one program.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub runs: u64,
    /// Runs the kernel refused (the model predicted the refusal).
    pub refused: u64,
    /// Outcome counters moved (subset counters such as `encapsulated_gso` aside).
    pub outcomes: u64,
    /// The port program's passes, which it leaves to the bridge's program to count.
    pub uncounted_passes: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub tallies: BTreeMap<Program, Tally>,
    pub corpus_cases: usize,
    /// Known findings (corpus `known=`) that still reproduce.
    pub known_reproduced: Vec<String>,
    /// Generated cases that ran into a known finding, by label, with the first one.
    pub known_hits: BTreeMap<&'static str, (u64, String)>,
    pub disagreements: u64,
    /// The first disagreements in full, as reproducers.
    pub reports: Vec<String>,
    /// Round-trip runs: B decapsulating A's encapsulations (with both programs).
    pub round_trips: u64,
    /// Of those, inner destinations that are B's slice edges, which B drops.
    pub round_trips_to_slice_edges: u64,
    /// Packets counted per program and counter: what the cases reached.
    pub counters: BTreeMap<(Program, &'static str), u64>,
    /// Cases run a second time on the same input, which must do the same.
    pub repetitions: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn cases(&self) -> u64 {
        self.tallies.values().map(|t| t.runs).sum()
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "fuzz: seed {:#018x}: {} runs ({} corpus cases, {} round trips) in {:.1} s, {:.0} runs/s, {} disagreements\n",
            self.seed,
            self.cases(),
            self.corpus_cases,
            self.round_trips,
            self.elapsed.as_secs_f64(),
            self.cases() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.disagreements,
        );
        for (program, t) in &self.tallies {
            text += &format!(
                "  {:<18} runs {:>9}  refused {:>7}  outcomes counted {:>9}  port passes {:>7}\n",
                program.name(),
                t.runs,
                t.refused,
                t.outcomes,
                t.uncounted_passes
            );
        }
        text += "  counters reached (packets):\n";
        for program in self.tallies.keys() {
            let reached: Vec<String> = self
                .counters
                .iter()
                .filter(|((p, _), _)| p == program)
                .map(|((_, name), n)| format!("{name} {n}"))
                .collect();
            text += &format!("    {}: {}\n", program.name(), reached.join(", "));
        }
        text += &format!(
            "  repetitions on the original input: {}\n",
            self.repetitions
        );
        for known in &self.known_reproduced {
            text += &format!("  known finding still reproduces: {known}\n");
        }
        for (label, (hits, first)) in &self.known_hits {
            text +=
                &format!("  known finding {label}: {hits} generated cases, the first: {first}\n");
        }
        for report in &self.reports {
            text += &format!("{report}\n");
        }
        text
    }
}

/// How many disagreements are printed in full.
const MAX_REPORTS: usize = 20;
/// Every this many generated cases run twice: a run must not depend on the
/// ones before it (per-CPU state, maps).
const REPEAT_EVERY: u64 = 16;
/// How many encapsulations are kept for the round trip.
const MAX_ROUND_TRIPS: usize = 50_000;

/// The seed of case `index` of `program` in a run seeded `seed`.
pub fn case_seed(seed: u64, program: Program, index: u64) -> u64 {
    mix(seed ^ mix(((program as u64) << 48) ^ index))
}

/// The generated case `index` of `program` (what a reproducer's seed names).
pub fn generated_case(config: &model::Config, seed: u64, program: Program, index: u64) -> Case {
    let mut rng = Rng::new(case_seed(seed, program, index));
    Generator::new(config).case(&mut rng, program)
}

struct Checked {
    observed: Observed,
    problems: Vec<String>,
    /// The known finding the case runs into (the model predicted the programs there).
    known: Option<&'static str>,
}

/// A disagreement, with the case when it replays as a corpus line.
type Failure = (Option<Case>, String);

/// An encapsulation by A to B: the encapsulating program, its input and output.
type RoundTripCase = (Program, Vec<u8>, Vec<u8>);

/// One bed's side of a run: the model's configuration for it, its ports,
/// the runner inside its namespace, and where results go.
struct Checker<'a, 'd> {
    config: &'a model::Config,
    ports: &'a (dyn Fn(&str) -> u32 + Sync),
    runner: &'a mut Runner<'d>,
    report: &'a mut Report,
    failures: &'a mut Vec<Failure>,
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
        self.tally(case, &observed);
        Ok(Checked {
            observed,
            problems,
            known,
        })
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
        if case.program == Program::EncapPort && observed_fate(counters) == Fate::Passed {
            tally.uncounted_passes += 1;
        }
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
    fn replay_corpus(&mut self, corpus: &[corpus::Entry]) -> Result<()> {
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
    fn generated(
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
    fn forwarding_off(&mut self, settings: &Settings, ns: &crate::netns::Netns) -> Result<()> {
        let mut off = self.config.clone();
        let eth0 = off.fans[0].underlay_ifindex;
        for device in &mut off.underlay.devices {
            if device.ifindex == eth0 {
                device.forwarding = false;
            }
        }
        ns.sysctl("net.ipv4.conf.eth0.forwarding", "0")?;
        let mut checker = Checker {
            config: &off,
            ports: self.ports,
            runner: self.runner,
            report: self.report,
            failures: self.failures,
        };
        let generator = Generator::new(&off);
        let seed = settings.seed ^ FORWARDING_OFF_SEED;
        for program in [
            Program::EncapForward,
            Program::EncapPort,
            Program::EncapOutput,
        ] {
            for index in 0..settings.cases_per_program.div_ceil(50) {
                let mut rng = Rng::new(case_seed(seed, program, index));
                let case = generator.case(&mut rng, program);
                let checked = checker.check(&case)?;
                let reproducer = format!(
                    "seed={:#x} case={index} (forwarding off on eth0)",
                    settings.seed
                );
                // Not a corpus line: it means something else with forwarding on.
                checker.note(&reproducer, &case, &checked, false);
            }
        }
        ns.sysctl("net.ipv4.conf.eth0.forwarding", "1")?;
        Ok(())
    }

    /// B decapsulates what A encapsulated for it, with both programs.
    fn round_trips(&mut self, round_trips: &[RoundTripCase]) -> Result<()> {
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
    if observed_fate(counters) != Fate::Encapsulated || frame.len() < 54 {
        return None;
    }
    let (outer_dst, inner_dst) = (model::wire::be32(frame, 30), model::wire::be32(frame, 50));
    let to_peer = peer
        .fan_for(inner_dst)
        .is_some_and(|fan| fan.local_host == outer_dst);
    to_peer.then(|| frame.clone())
}

pub fn run(settings: &Settings) -> Result<Report> {
    let start = Instant::now();
    let mut a = Bed::new(Side::A)?;
    let mut b = Bed::new(Side::B)?;
    let mut corpus = Vec::new();
    for (name, text) in &settings.corpus {
        corpus.extend(corpus::parse(name, text)?);
    }
    let mut report = Report {
        seed: settings.seed,
        corpus_cases: corpus.len(),
        ..Default::default()
    };
    let mut failures: Vec<Failure> = Vec::new();
    let enforce = if settings.enforce_findings {
        model::config::Finding::ALL.to_vec()
    } else {
        vec![]
    };
    a.config.enforce = enforce.clone();
    b.config.enforce = enforce;
    let config_b = b.config.clone();
    let ports_a = a.ports();
    let resolve = move |name: &str| bed::resolve_port(&ports_a, name);
    let Bed {
        ns,
        dataplane,
        config,
        ..
    } = &mut a;
    let round_trips = ns.enter(|| -> Result<Vec<RoundTripCase>> {
        let mut runner = Runner::new(dataplane)?;
        let mut checker = Checker {
            config,
            ports: &resolve,
            runner: &mut runner,
            report: &mut report,
            failures: &mut failures,
        };
        checker.replay_corpus(&corpus)?;
        let round_trips = checker.generated(settings, start, &config_b)?;
        checker.forwarding_off(settings, ns)?;
        Ok(round_trips)
    })??;
    let Bed {
        ns,
        dataplane,
        config,
        ..
    } = &mut b;
    ns.enter(|| -> Result<()> {
        let mut runner = Runner::new(dataplane)?;
        Checker {
            config,
            ports: &|_: &str| 0,
            runner: &mut runner,
            report: &mut report,
            failures: &mut failures,
        }
        .round_trips(&round_trips)
    })??;
    failures.extend(outcomes_add_up(&report));
    report.disagreements = failures.len() as u64;
    for (case, text) in failures.iter().take(MAX_REPORTS) {
        report.reports.push(format!("DISAGREEMENT {text}"));
        if let (Some(file), Some(case)) = (&settings.record_file, case) {
            let first_line = text.lines().nth(1).unwrap_or("").trim();
            corpus::record(file, case, first_line)?;
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Per program, the outcomes counted add up to the runs: every run the
/// kernel took counted exactly one, but the port program's passes.
fn outcomes_add_up(report: &Report) -> Vec<Failure> {
    report
        .tallies
        .iter()
        .filter(|(_, t)| t.outcomes + t.uncounted_passes + t.refused != t.runs)
        .map(|(program, t)| {
            let text = format!(
                "{}: {} runs, but {} outcomes counted, {} port passes and {} refused",
                program.name(),
                t.runs,
                t.outcomes,
                t.uncounted_passes,
                t.refused
            );
            (None, text)
        })
        .collect()
}

/// Mixed into the run's seed for the forwarding-off phase.
const FORWARDING_OFF_SEED: u64 = 0x006f_6666;

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
