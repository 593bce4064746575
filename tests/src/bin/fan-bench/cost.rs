//! The per-packet cost of each program (BPF_PROG_TEST_RUN on literal
//! frames) with 1, 16 and 256 overlays in the LPM trie, against an
//! XDP_PASS-only baseline.

use std::time::Duration;

use anyhow::{Result, ensure};
use aya::programs::{TestRun, TestRunOptions};
use fan_common::{FanEntry, FanMap, StatReason};
use fan_tests::{hex, netns::Netns, topology};
use fan_userspace::dataplane::{DECAP_TC, Dataplane, ENCAP_FORWARD};

use super::Config;

/// A container (02:..:aa) to its gateway: 250.0.1.10 -> 250.0.2.20, ICMP echo.
const ENCAP_IN: &str = "020000000001 0200000000aa 0800 45000020 12344000 4001318a fa00010a fa000214 0800e139 42420001 66616e21";
/// From 198.18.0.2 to us: outer proto 4 | inner 250.0.2.20 -> 250.0.1.10.
const DECAP_IN: &str = "020000000011 020000000022 0800 45000034 00004000 4004ae9e c6120002 c6120001 45000020 12344000 4001318a fa000214 fa00010a 0800e139 42420001 66616e21";
/// Plain ICMP between underlay hosts: the pass-through case.
const UNDERLAY_PING: &str = "020000000011 020000000022 0800 45000020 12344000 40019c81 c6120002 c6120001 0800e139 42420001 66616e21";

/// A namespace with an `eth0` veth and a loaded data plane configured as
/// host 198.18.0.1 with `extra` more overlays in the LPM trie.
fn cost_bed(extra: u32) -> Result<(Netns, Dataplane)> {
    let (ns, mut dp, ifindex) = topology::single_host_dataplane("cost")?;
    // The peer's neighbour entry resolved, as on a host that is talking to it:
    // encapsulation takes its everyday path (route lookup, MACs, redirect).
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.2",
        "lladdr",
        "02:00:00:00:00:22",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    for k in 0..extra {
        // 251.k.0.0/16 and up over 198.19.0.0/24: disjoint from 250/8 and each other.
        let overlay = u32::from_be_bytes([251 + (k / 256) as u8, (k % 256) as u8, 0, 0]);
        let map = FanMap::new(overlay, 16, u32::from_be_bytes([198, 19, 0, 0]), 24);
        dp.insert_fan(&FanEntry::ipip(
            map,
            u32::from_be_bytes([198, 19, 0, 1]),
            ifindex,
            1480,
        ))?;
    }
    Ok((ns, dp))
}

/// Mean ns per run of a program over `n` single runs, each on a fresh copy of
/// `frame` (BPF_PROG_TEST_RUN copies data_in every call; repeat > 1 would
/// run later repetitions on the previous one's output). Returns the count of
/// `expect` as proof every run took the intended path.
fn cost(
    ns: &Netns,
    dp: &mut Dataplane,
    program: &str,
    frame: &[u8],
    n: u32,
    expect: Option<StatReason>,
) -> Result<f64> {
    let before = dp.stats()?;
    let mut total = Duration::ZERO;
    let mut out = vec![0u8; frame.len() + 64];
    ns.enter(|| -> Result<()> {
        for _ in 0..n {
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            };
            let result = match program {
                "xdp" => dp.xdp()?.test_run(opts)?,
                "xdp-pass" => dp.baseline_xdp()?.test_run(opts)?,
                name => dp.classifier(name)?.test_run(opts)?,
            };
            total += result.duration;
        }
        Ok(())
    })??;
    if let Some(reason) = expect {
        let counted = dp.stats()?.since(&before).get(reason).packets;
        ensure!(
            counted == n as u64,
            "{program}: {counted} of {n} runs counted {}",
            reason.name()
        );
    }
    Ok(total.as_nanos() as f64 / n as f64)
}

pub(super) fn per_packet(cfg: &Config) -> Result<String> {
    let mut out = String::from(
        "\n## Per-packet cost (BPF_PROG_TEST_RUN, mean ns per run, each run on the original frame)\n\n| case | 1 overlay | 16 overlays | 256 overlays |\n|---|---|---|---|\n",
    );
    let cases: [(&str, &str, &str, Option<StatReason>); 6] = [
        (
            "encapsulation (TC)",
            ENCAP_FORWARD,
            ENCAP_IN,
            Some(StatReason::Encapsulated),
        ),
        (
            "decapsulation (TC)",
            DECAP_TC,
            DECAP_IN,
            Some(StatReason::Decapsulated),
        ),
        (
            "decapsulation (XDP)",
            "xdp",
            DECAP_IN,
            Some(StatReason::Decapsulated),
        ),
        (
            "pass-through, non-fan (TC)",
            DECAP_TC,
            UNDERLAY_PING,
            Some(StatReason::PassNotIpip),
        ),
        (
            "pass-through, non-fan (XDP)",
            "xdp",
            UNDERLAY_PING,
            Some(StatReason::PassNotIpip),
        ),
        ("baseline: XDP_PASS only", "xdp-pass", DECAP_IN, None),
    ];
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for extra in [0, 15, 255] {
        let (ns, mut dp) = cost_bed(extra)?;
        for (i, (_, program, frame, expect)) in cases.iter().enumerate() {
            rows[i].push(cost(
                &ns,
                &mut dp,
                program,
                &hex(frame),
                cfg.test_runs,
                *expect,
            )?);
        }
    }
    for ((name, ..), row) in cases.iter().zip(&rows) {
        out += &format!(
            "| {name} | {:.0} | {:.0} | {:.0} |\n",
            row[0], row[1], row[2]
        );
    }
    let ratio = rows[2][0] / rows[5][0];
    out += &format!(
        "\nXDP decapsulation costs {ratio:.2}x the XDP_PASS-only program on the same frame.\n"
    );
    Ok(out)
}
