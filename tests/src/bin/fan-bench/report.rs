//! The bench's report: the path table, the targets met or not, and the
//! chart, every figure as a ratio to plain routing.

use fan_tests::{
    chart::{Chart, Panel, Row, RowKind},
    measure::{PINNED_CPU as CPU, Spread},
    paths::Path,
};

use super::{Sample, Samples};

/// "median (min-max)" of one field.
fn stat(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let spread = Spread::of(samples.iter().map(field));
    (spread.median, spread.min, spread.max)
}

fn routing(samples: &Samples) -> &[Sample] {
    &samples[&Path::Routing.to_string()].1
}

/// A column of the path table: its heading and the figure it shows.
type Column = (&'static str, fn(&Sample) -> f64);

pub(super) fn path_table(samples: &Samples, loopback_rr: f64) -> String {
    let base = routing(samples);
    let fields: [Column; 5] = [
        ("TCP 1 stream, Gbit/s", |s| s.tcp1),
        ("TCP 4 streams, Gbit/s", |s| s.tcp4),
        ("TCP 1 stream, unpinned, Gbit/s", |s| s.tcp1_free),
        ("UDP 64 B, kpps received", |s| s.udp_kpps),
        ("TCP request/response, per s", |s| s.rr_tps),
    ];
    let mut out = String::from("## Paths (median, min-max; ratio to plain routing)\n\n| path |");
    for (name, _) in &fields {
        out += &format!(" {name} |");
    }
    out += " RR p50 / p99 µs | TCP retransmits (unpinned) | BPF ns per invocation (encap / decap) |\n|---|---|---|---|---|---|---|---|---|\n";
    for (name, s) in order(samples) {
        out += &format!("| {name} |");
        if s.is_empty() {
            out += " n/a (no ipip module) | | | | | | | |\n";
            continue;
        }
        for (_, f) in &fields {
            let (m, lo, hi) = stat(s, f);
            let (b, _, _) = stat(base, f);
            out += &format!(" {m:.2} ({lo:.2}-{hi:.2}) **{:.2}x** |", m / b);
        }
        let (p50, _, _) = stat(s, |x| x.rr_p50);
        let (p99, _, _) = stat(s, |x| x.rr_p99);
        out += &format!(" {p50:.0} / {p99:.0} |");
        out += &format!(" {:.0} |", stat(s, |x| x.retransmits_free).0);
        match s.iter().filter_map(|x| x.bpf_ns).map(|x| x.0).next() {
            Some(_) => {
                let (e, _, _) = stat(s, |x| x.bpf_ns.map_or(f64::NAN, |b| b.0));
                let (d, _, _) = stat(s, |x| x.bpf_ns.map_or(f64::NAN, |b| b.1));
                out += &format!(" {e:.0} / {d:.0} |\n");
            }
            None => out += " - |\n",
        }
    }
    out += &format!(
        "\nTCP and request/response run with client, server and so all the softirq work of the path on CPU {CPU}: \
         the figures measure what the path costs, not where the scheduler put the two ends. \
         The unpinned run shows the same path with both CPUs in use; a veth transmits on the CPU that sends, \
         so when the sender's process and its ACK-clocked softirq are on different CPUs one flow is reordered \
         (the retransmits, on every path). UDP runs unpinned: the sender's CPU carries the path.\n\
         BPF ns per invocation come from kernel.bpf_stats_enabled during the pinned 1-stream run, where one invocation may carry a 64 KB GSO packet (with `--rr-only`, during a request/response run of its own after the measured one).\n"
    );
    // A transaction's time minus the same exchange over loopback: what the
    // path between the containers adds.
    let above = |s: &[Sample]| 1e6 / stat(s, |x| x.rr_tps).0 - 1e6 / loopback_rr;
    let Some((_, fan)) = samples.get(&Path::FanTc.to_string()) else {
        return out;
    };
    let (r, f) = (above(routing(samples)), above(fan));
    out += &format!(
        "\nRequest/response over the client container's loopback: {loopback_rr:.0} per s ({:.1} µs). \
         Above that, a transaction spends {r:.1} µs on the path with plain routing and {f:.1} µs with fan-xdp \
         (TC + direct delivery): {:.2}x less.\n",
        1e6 / loopback_rr,
        r / f
    );
    out
}

fn order(samples: &Samples) -> Vec<(String, &Vec<Sample>)> {
    let mut v: Vec<_> = samples
        .iter()
        .map(|(k, (p, s))| (*p as u8, k.clone(), s))
        .collect();
    v.sort_by_key(|(p, _, _)| *p);
    v.into_iter().map(|(_, k, s)| (k, s)).collect()
}

/// fan-xdp's targets as ratios to plain routing (docs/performance.md's).
const TCP_TARGET: f64 = 1.05;
const RR_TARGET: f64 = 1.2;

pub(super) fn targets(samples: &Samples) -> String {
    let mut out = String::new();
    for (path, heading) in [
        (Path::FanTc, "fan-xdp TC + direct delivery"),
        (Path::FanAttachOnly, "fan-xdp, attach only"),
        (Path::FanVxlan, "fan-xdp VXLAN, TC + direct delivery"),
    ] {
        if samples.contains_key(&path.to_string()) {
            out += &targets_of(samples, path, heading);
        }
    }
    out
}

/// The user's one command must give what the daemon row gives: the
/// attach-only row's pinned 1-stream TCP against the daemon row's, run by
/// run, as the two ran next to each other ("" unless both ran).
pub(super) fn attach_only_verdict(samples: &Samples) -> String {
    let Some(ratios) = paired(samples, Path::FanAttachOnly, Path::FanTc, |s| s.tcp1) else {
        return String::new();
    };
    let runs = samples[&Path::FanTc.to_string()].1.len();
    format!(
        "- attach only vs TC + direct delivery, TCP 1 stream, {runs} runs side by side: {:.3}x ({:.3}-{:.3}), {}\n",
        ratios.median,
        ratios.min,
        ratios.max,
        if (ratios.median - 1.0).abs() <= 0.03 {
            "within 3%"
        } else {
            "NOT within 3%"
        }
    )
}

/// The ratios of `path` to `base` in one field, run by run (the two
/// measured next to each other in every run), when both rows ran.
fn paired(samples: &Samples, path: Path, base: Path, field: fn(&Sample) -> f64) -> Option<Spread> {
    let of = |p: Path| samples.get(&p.to_string()).map(|(_, s)| s);
    let (runs, base_runs) = (of(path)?, of(base)?);
    Some(Spread::of(
        runs.iter().zip(base_runs).map(|(s, b)| field(s) / field(b)),
    ))
}

fn targets_of(samples: &Samples, path: Path, heading: &str) -> String {
    let base = routing(samples);
    let fan = &samples[&path.to_string()].1;
    let r = |s: &[Sample], f: fn(&Sample) -> f64| stat(s, f).0 / stat(base, f).0;
    let checks = [
        (
            "TCP 1 stream >= 1.05x routing",
            r(fan, |s| s.tcp1),
            TCP_TARGET,
        ),
        (
            "TCP 4 streams >= 1.05x routing",
            r(fan, |s| s.tcp4),
            TCP_TARGET,
        ),
        (
            "request/response >= 1.2x routing",
            r(fan, |s| s.rr_tps),
            RR_TARGET,
        ),
    ];
    // Against the kernel's VXLAN, what LXD fan users run today: on TCP, and
    // for a VXLAN fan on request/response too.
    let kernel_vxlan = samples.get(&Path::Vxlan.to_string()).map(|(_, s)| s);
    let vs_vxlan = |name, f: fn(&Sample) -> f64| {
        kernel_vxlan.map(|s| (name, stat(fan, f).0 / stat(s, f).0, 1.25))
    };
    let vxlan = vs_vxlan("TCP 1 stream >= 1.25x kernel VXLAN", |s| s.tcp1)
        .into_iter()
        .chain(
            (path == Path::FanVxlan)
                .then(|| vs_vxlan("request/response >= 1.25x kernel VXLAN", |s| s.rr_tps))
                .flatten(),
        );
    let mut out = format!("\n## Targets ({heading})\n\n");
    // A figure not measured (`--tcp1-only`, `--rr-only`) is no verdict.
    for (name, value, goal) in checks.into_iter().chain(vxlan).filter(|c| !c.1.is_nan()) {
        out += &format!(
            "- {name}: {value:.2}x, {}\n",
            if value >= goal { "met" } else { "NOT met" }
        );
    }
    out
}

/// The path table's columns that the chart draws, with fan-xdp's target
/// for each as a ratio to plain routing.
const CHARTED: [(Column, Option<f64>); 4] = [
    (("TCP, 1 stream", |s| s.tcp1), Some(TCP_TARGET)),
    (("TCP, 4 streams", |s| s.tcp4), Some(TCP_TARGET)),
    (("UDP 64 B, packets/s", |s| s.udp_kpps), None),
    (
        ("TCP request/response, per s", |s| s.rr_tps),
        Some(RR_TARGET),
    ),
];

/// Every measured path (a path this kernel cannot run has no row) in
/// every charted column, as ratios to plain routing's median.
pub(super) fn chart(samples: &Samples, runs: usize, quick: bool) -> Chart {
    let mut measured: Vec<(Path, &[Sample])> = samples
        .values()
        .filter(|(_, s)| !s.is_empty())
        .map(|(path, s)| (*path, s.as_slice()))
        .collect();
    measured.sort_by_key(|(path, _)| *path as u8);
    let base = routing(samples);
    let rows = measured
        .iter()
        .map(|(path, _)| Row {
            label: path.to_string(),
            kind: match path {
                Path::Routing => RowKind::Reference,
                p if p.is_fan() => RowKind::FanXdp,
                _ => RowKind::Other,
            },
        })
        .collect();
    let panels = CHARTED
        .iter()
        .map(|&((title, field), target)| {
            let reference = Spread::of(base.iter().map(field));
            Panel {
                title: title.to_string(),
                target,
                ratios: measured
                    .iter()
                    .map(|(_, s)| Spread::of(s.iter().map(field)).relative_to(&reference))
                    .collect(),
            }
        })
        .collect();
    Chart {
        heading: format!(
            "fan-xdp bench: every path as a ratio to plain routing, median of {runs} run(s) per path{}",
            if quick {
                " (--quick: a smoke run, not a measurement)"
            } else {
                ""
            }
        ),
        footnote: "Bar: the median (blue: fan-xdp; orange: the kernel's other ways). \
                   Whisker: the runs' min-max, over plain routing's median. \
                   Grey line: plain routing (1.00x). Dashed red: fan-xdp's target."
            .to_string(),
        rows,
        panels,
    }
}
