//! Measurements of the paths as the bench makes them, for the bench and the
//! demo alike: each run sets one path up on the same namespaces, waits
//! until it is complete, measures and tears it down again, so that runs of
//! different paths interleave and drifts of the machine fall on all of them;
//! the runs of a path are summarised as a median and a min-max spread.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Result, bail};

use crate::{
    netns::Netns,
    paths::{Active, Path},
    topology::Fleet,
    traffic::ping,
};

/// The CPU the pinned measurements run on: client, server and so all the
/// softirq work of a veth path, which a veth does on the sending CPU.
pub const PINNED_CPU: usize = 0;

/// How long `fan-xdp run` may take to take over a host's ports.
pub const RUN_READY_LIMIT: Duration = Duration::from_secs(10);

/// Sets `path` up on `fleet`, waits until it carries traffic from `client`
/// to `server` the way it is meant to, runs `measure`, and tears the path
/// down again, also when the wait or the measurement failed.
pub fn on_path<T>(
    fleet: &Fleet,
    path: Path,
    client: &Netns,
    server: Ipv4Addr,
    measure: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let active = Active::setup(fleet, path)?;
    let measured = ready(fleet, path, client, server).and_then(|()| measure());
    let torn_down = active.teardown(fleet);
    let value = measured?;
    torn_down?;
    Ok(value)
}

/// A path that runs `fan-xdp run` is complete once every host's daemon has
/// its port programs and the server's host delivers to the server directly.
fn ready(fleet: &Fleet, path: Path, client: &Netns, server: Ipv4Addr) -> Result<()> {
    if !path.runs_daemon() {
        return Ok(());
    }
    for host in &fleet.hosts {
        host.wait_for_run_ready(RUN_READY_LIMIT)?;
    }
    wait_for_direct_delivery(fleet, client, server)
}

/// `fan-xdp run` learns a container once its host has resolved it: pings
/// from `client` until the host of `server` has an endpoint (5 s at most).
pub fn wait_for_direct_delivery(fleet: &Fleet, client: &Netns, server: Ipv4Addr) -> Result<()> {
    let Some(host) = fleet
        .hosts
        .iter()
        .find(|h| h.containers.iter().any(|c| c.addr == server))
    else {
        bail!("no host of the fleet has a container {server}");
    };
    for _ in 0..50 {
        ping(client, server, 1)?;
        if host.pinned_maps()?.endpoints.iter().count() > 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("fan-xdp run did not learn the endpoint of {server}")
}

/// The median of `values` (the upper one of an even count; NaN if empty).
/// Sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    values[values.len() / 2]
}

/// The median and the range of a path's runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// NaN throughout when there are no values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut values: Vec<f64> = values.into_iter().collect();
        let median = median(&mut values);
        Self {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// These runs as ratios to `base`'s median: what the bench reports and
    /// draws, where `base` is plain routing.
    pub fn relative_to(&self, base: &Spread) -> Spread {
        Spread {
            median: self.median / base.median,
            min: self.min / base.median,
            max: self.max / base.median,
        }
    }

    /// Whether some run of `self` and some run of `other` came out the
    /// other way round from their medians: their ranges overlap.
    pub fn overlaps(&self, other: &Spread) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn a_spread_relative_to_plain_routing() {
        let routing = Spread::of([14.0, 15.0, 16.0]);
        let fan = Spread::of([15.0, 16.5, 18.0]);
        assert_eq!(
            routing,
            Spread {
                median: 15.0,
                min: 14.0,
                max: 16.0
            }
        );
        let ratio = fan.relative_to(&routing);
        assert_eq!((ratio.median, ratio.min, ratio.max), (1.1, 1.0, 1.2));
    }

    #[test]
    fn ranges_that_touch_overlap_and_apart_do_not() {
        let a = Spread::of([1.0, 2.0]);
        assert!(a.overlaps(&Spread::of([2.0, 3.0])));
        assert!(!a.overlaps(&Spread::of([2.5, 3.0])));
        assert!(Spread::of([2.5, 3.0]).overlaps(&Spread::of([0.0, 5.0])));
    }
}
