//! Differential testing of the six programs against the model: generated
//! and corpus cases run through BPF_PROG_TEST_RUN and through the model,
//! compared byte for byte, verdict and counters; properties on top.
//!
//! Here the run's settings and the run itself; a bed's side of it is
//! `checker`'s, what it found `report`'s.

pub mod bed;
pub mod check;
mod checker;
pub mod corpus;
pub mod generate;
mod report;
pub mod rng;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, Result};

use self::{
    bed::{Bed, Runner, Side},
    checker::{Checker, Failure, RoundTripCase},
    generate::{Case, Generator},
    rng::{Rng, mix},
};
use crate::model::{self, Program};

pub use report::{Report, Tally};

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

/// How many disagreements are printed in full.
const MAX_REPORTS: usize = 20;

/// The seed of case `index` of `program` in a run seeded `seed`.
pub fn case_seed(seed: u64, program: Program, index: u64) -> u64 {
    mix(seed ^ mix(((program as u64) << 48) ^ index))
}

/// The generated case `index` of `program` (what a reproducer's seed names).
pub fn generated_case(config: &model::Config, seed: u64, program: Program, index: u64) -> Case {
    let mut rng = Rng::new(case_seed(seed, program, index));
    Generator::new(config).case(&mut rng, program)
}

pub fn run(settings: &Settings) -> Result<Report> {
    let start = Instant::now();
    // The kernel counts every program's runs while this is held (machine-wide,
    // a few nanoseconds a run): the count the tallies must come to.
    let _kernel_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's BPF run statistics")?;
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
        let mut runner = Runner::new(dataplane, &config.path_mtus)?;
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
        checker.bypass_off(settings)?;
        add_kernel_runs(checker.report, checker.runner)?;
        Ok(round_trips)
    })??;
    let Bed {
        ns,
        dataplane,
        config,
        ..
    } = &mut b;
    ns.enter(|| -> Result<()> {
        let mut runner = Runner::new(dataplane, &config.path_mtus)?;
        Checker {
            config,
            ports: &|_: &str| 0,
            runner: &mut runner,
            report: &mut report,
            failures: &mut failures,
        }
        .round_trips(&round_trips)?;
        add_kernel_runs(&mut report, &mut runner)
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

/// Adds a bed's programs' run counts, as the kernel kept them, to the tallies.
fn add_kernel_runs(report: &mut Report, runner: &mut Runner) -> Result<()> {
    for (program, runs) in runner.kernel_runs()? {
        report.tallies.entry(program).or_default().kernel_runs += runs;
    }
    Ok(())
}

/// Per program, the outcomes counted add up to the runs the kernel counted
/// (every run it took moved exactly one counter), and the kernel took every
/// run it did not refuse, no more.
fn outcomes_add_up(report: &Report) -> Vec<Failure> {
    report
        .tallies
        .iter()
        .filter(|(_, t)| t.outcomes != t.kernel_runs || t.kernel_runs + t.refused != t.runs)
        .map(|(program, t)| {
            let text = format!(
                "{}: the kernel counted {} runs; the runner made {}, {} refused; \
                 {} outcomes counted",
                program.name(),
                t.kernel_runs,
                t.runs,
                t.refused,
                t.outcomes
            );
            (None, text)
        })
        .collect()
}
