//! The counters as user space reads them: summed over CPUs, by reason name,
//! their changes between two reads, and Prometheus' text format.

use super::*;

pub(super) fn sum_stats<T: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<T, Counter>,
) -> Result<Stats> {
    let mut stats = Stats::default();
    for &reason in StatReason::ALL {
        // Counters pinned by an older version lack the newer reasons until
        // attach carries them over (see `carry`): those read as none.
        if reason as u32 >= array.len() {
            continue;
        }
        let per_cpu = array.get(&(reason as u32), 0)?;
        stats.0.insert(reason.name(), summed(&per_cpu));
    }
    Ok(stats)
}

/// One counter's values on every CPU, added up.
pub(super) fn summed(per_cpu: &aya::maps::PerCpuValues<Counter>) -> Counter {
    per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
        packets: sum.packets + c.packets,
        bytes: sum.bytes + c.bytes,
    })
}

/// Counter totals by reason name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<&'static str, Counter>);

impl Stats {
    pub fn get(&self, reason: StatReason) -> Counter {
        self.0.get(reason.name()).copied().unwrap_or_default()
    }

    /// The change from `earlier` to `self`. A counter below its earlier
    /// value was reset in between (its map re-created by a detach and an
    /// attach): what it counted since the reset is all it says.
    /// The counters in Prometheus' text exposition format (version 0.0.4): one
    /// packets and one bytes counter per outcome, labelled by its stable name,
    /// and the same per fan (`fan_xdp_fan_*`, labelled by overlay and type too).
    pub fn prometheus(&self, path_mtus_evicted: u64, by_fan: &[FanStats]) -> String {
        let mut out = String::new();
        for (metric, what) in [("packets", "Packets"), ("bytes", "Bytes")] {
            out += &format!(
                "# HELP fan_xdp_{metric}_total {what} per outcome of fan-xdp's programs, summed over CPUs.\n"
            );
            out += &format!("# TYPE fan_xdp_{metric}_total counter\n");
            for &reason in StatReason::ALL {
                let c = self.get(reason);
                let value = if metric == "packets" {
                    c.packets
                } else {
                    c.bytes
                };
                out += &format!(
                    "fan_xdp_{metric}_total{{reason=\"{}\"}} {value}\n",
                    reason.name()
                );
            }
        }
        out +=
            "# HELP fan_xdp_path_mtu_evicted_total Path MTU entries evicted from the full table.\n";
        out += "# TYPE fan_xdp_path_mtu_evicted_total counter\n";
        out += &format!("fan_xdp_path_mtu_evicted_total {path_mtus_evicted}\n");
        if by_fan.is_empty() {
            return out;
        }
        // An info series per fan: its labels whether or not it has counted anything.
        out += "# HELP fan_xdp_fan_info The fans attached here: overlay and wire format.\n";
        out += "# TYPE fan_xdp_fan_info gauge\n";
        for fan in by_fan {
            out += &format!(
                "fan_xdp_fan_info{{overlay=\"{}\",type=\"{}\"}} 1\n",
                fan.overlay, fan.encap
            );
        }
        for (metric, what) in [("packets", "Packets"), ("bytes", "Bytes")] {
            out += &format!(
                "# HELP fan_xdp_fan_{metric}_total {what} per fan and outcome decided once the packet's fan was known, summed over CPUs.\n"
            );
            out += &format!("# TYPE fan_xdp_fan_{metric}_total counter\n");
            for FanStats {
                overlay,
                encap,
                stats,
            } in by_fan
            {
                for (reason, c) in &stats.0 {
                    let value = if metric == "packets" {
                        c.packets
                    } else {
                        c.bytes
                    };
                    out += &format!(
                        "fan_xdp_fan_{metric}_total{{overlay=\"{overlay}\",type=\"{encap}\",reason=\"{reason}\"}} {value}\n"
                    );
                }
            }
        }
        out
    }

    pub fn since(&self, earlier: &Stats) -> Stats {
        let mut delta = self.clone();
        for (name, counter) in delta.0.iter_mut() {
            let before = earlier.0.get(name).copied().unwrap_or_default();
            if let (Some(packets), Some(bytes)) = (
                counter.packets.checked_sub(before.packets),
                counter.bytes.checked_sub(before.bytes),
            ) {
                *counter = Counter { packets, bytes };
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fan_common::{Counter, StatReason};

    use super::{FanStats, Stats};

    fn stats(packets: u64, bytes: u64) -> Stats {
        let mut stats = Stats::default();
        stats
            .0
            .insert(StatReason::Encapsulated.name(), Counter { packets, bytes });
        stats
    }

    #[test]
    fn deltas_of_counters_that_grew_or_were_reset() {
        let delta = stats(10, 1000).since(&stats(4, 400));
        assert_eq!(
            delta.get(StatReason::Encapsulated),
            Counter {
                packets: 6,
                bytes: 600
            }
        );
        // Reset in between: the counts since the reset, not a wrapped number.
        let delta = stats(3, 300).since(&stats(4, 400));
        assert_eq!(
            delta.get(StatReason::Encapsulated),
            Counter {
                packets: 3,
                bytes: 300
            }
        );
    }

    #[test]
    fn prometheus_text_names_every_outcome_in_the_exposition_format() {
        let stats = Stats(BTreeMap::from([(
            StatReason::Encapsulated.name(),
            Counter {
                packets: 7,
                bytes: 700,
            },
        )]));
        let text = stats.prometheus(2, &[]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "# HELP fan_xdp_packets_total Packets per outcome of fan-xdp's programs, summed over CPUs.",
                "# TYPE fan_xdp_packets_total counter",
                "fan_xdp_packets_total{reason=\"encapsulated\"} 7",
            ]
        );
        assert!(lines.contains(&"fan_xdp_bytes_total{reason=\"encapsulated\"} 700"));
        assert_eq!(lines.last(), Some(&"fan_xdp_path_mtu_evicted_total 2"));
        let samples = lines.iter().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 2 * StatReason::ALL.len() + 1);
    }

    #[test]
    fn prometheus_per_fan_series_say_the_overlay_and_the_type() {
        let by_fan = [FanStats {
            overlay: "250.0.0.0/8".into(),
            encap: "vxlan",
            stats: stats(3, 150),
        }];
        let text = Stats::default().prometheus(0, &by_fan);
        assert!(
            text.lines()
                .any(|l| l == "fan_xdp_fan_info{overlay=\"250.0.0.0/8\",type=\"vxlan\"} 1")
        );
        assert!(text.lines().any(|l| l
            == "fan_xdp_fan_packets_total{overlay=\"250.0.0.0/8\",type=\"vxlan\",reason=\"encapsulated\"} 3"));
        assert!(text.lines().any(|l| l
            == "fan_xdp_fan_bytes_total{overlay=\"250.0.0.0/8\",type=\"vxlan\",reason=\"encapsulated\"} 150"));
    }
}
