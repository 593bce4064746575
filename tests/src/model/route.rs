//! The kernel's IPv4 route lookup for a forwarded packet (`bpf_fib_lookup`
//! without flags: ingress perspective from the fan's underlay device, MTU
//! checked against the length asked about), reduced to what the bed has:
//! a local table, unicast and typed routes, locked MTUs and neighbours.

use super::config::{RouteKind, Underlay};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A route out of `ifindex` with its next hop's neighbour resolved.
    Resolved {
        ifindex: u32,
        next_hop_mac: [u8; 6],
        device_mac: [u8; 6],
    },
    /// A route out of `ifindex`, the neighbour not (yet) resolved.
    Unresolved {
        ifindex: u32,
    },
    /// The packet of the given length does not fit the route's MTU.
    FragNeeded,
    Blackhole,
    Unreachable,
    Prohibit,
    /// No unicast route (none at all, or a local or broadcast one).
    NotForwarded,
    /// Forwarding is off on the device the lookup starts from.
    ForwardingDisabled,
}

impl Underlay {
    /// Looks up `dst` for a packet of `len` bytes arriving on `iif`.
    pub fn lookup(&self, iif: u32, dst: u32, len: u32) -> Lookup {
        if !self.device(iif).is_some_and(|d| d.forwarding) {
            return Lookup::ForwardingDisabled;
        }
        // The local table is consulted first and answers local and
        // broadcast addresses, which are not forwarded.
        if self.local_table.contains(&dst) {
            return Lookup::NotForwarded;
        }
        let Some(route) = self
            .routes
            .iter()
            .filter(|r| mask(r.len) & dst == r.prefix)
            .max_by_key(|r| r.len)
        else {
            return Lookup::NotForwarded;
        };
        match route.kind {
            RouteKind::Blackhole => return Lookup::Blackhole,
            RouteKind::Unreachable => return Lookup::Unreachable,
            RouteKind::Prohibit => return Lookup::Prohibit,
            RouteKind::Unicast => {}
        }
        let Some(device) = self.device(route.dev) else {
            return Lookup::NotForwarded;
        };
        let mtu = route.locked_mtu.unwrap_or(device.mtu);
        if len > mtu {
            return Lookup::FragNeeded;
        }
        // The bed's routes are all on-link: the next hop is the destination.
        match self
            .neighbours
            .iter()
            .find(|n| n.addr == dst && n.dev == route.dev)
        {
            Some(n) => Lookup::Resolved {
                ifindex: route.dev,
                next_hop_mac: n.mac,
                device_mac: device.mac,
            },
            None => Lookup::Unresolved { ifindex: route.dev },
        }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}
