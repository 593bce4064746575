//! What a fuzz run found: the runs and outcomes per program, the counters
//! reached, the known findings hit, and the disagreements in full.

use std::{collections::BTreeMap, time::Duration};

use crate::model::Program;

/// Runs and counted outcomes of one program.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub runs: u64,
    /// Runs the kernel refused (the model predicted the refusal).
    pub refused: u64,
    /// Outcome counters moved (subset counters such as `encapsulated_gso` aside).
    pub outcomes: u64,
    /// The runs the kernel counted (BPF_ENABLE_STATS), over both beds.
    pub kernel_runs: u64,
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
    /// The UDP source port each VXLAN-encapsulated flow got (the kernel
    /// hashes the inner flow with a per-boot key: the same flow, the same
    /// port), and how many encapsulations met an earlier one of their flow.
    pub vxlan_flows: BTreeMap<super::check::Flow, u16>,
    pub vxlan_flow_repeats: u64,
    /// A VXLAN fan's frames the port program encapsulated: (switched as
    /// they were, routed to the neighbour's MAC).
    pub vxlan_port_paths: (u64, u64),
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
                "  {:<18} runs {:>9}  refused {:>7}  outcomes counted {:>9}  kernel's run count {:>9}\n",
                program.name(),
                t.runs,
                t.refused,
                t.outcomes,
                t.kernel_runs
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
        text += &format!(
            "  VXLAN: {} flows' source ports, {} encapsulations of a flow seen before; \
             at the port {} switched and {} routed\n",
            self.vxlan_flows.len(),
            self.vxlan_flow_repeats,
            self.vxlan_port_paths.0,
            self.vxlan_port_paths.1
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
