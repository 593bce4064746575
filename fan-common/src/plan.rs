//! The address plan of one slice: which of its addresses the host keeps,
//! which the DHCP server leases, which Docker assigns and which the CNI
//! plugin allocates. The parts never overlap, so the runtimes can share one
//! slice bridge without handing out the same address twice.
//!
//! The default plan follows from the slice alone, so it is the same on every
//! host and needs no configuration: the host reserve first (the gateway is
//! its first address), DHCP up to the end of the first half, Docker the third
//! quarter (`--fixed-cidr` takes one aligned CIDR), the CNI plugin the fourth
//! quarter up to the last address before the broadcast address.

use core::{fmt, net::Ipv4Addr};

/// An inclusive range of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddrRange {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        Self { first, last }
    }

    /// How many addresses the range holds (0 if `last` is before `first`).
    pub fn len(&self) -> u32 {
        let (first, last) = (u32::from(self.first), u32::from(self.last));
        if last < first { 0 } else { last - first + 1 }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.first <= address && address <= self.last
    }

    fn overlaps(&self, other: &AddrRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// An aligned prefix: `base` has no bits set below `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    /// The prefix, or `None` if `base` is not aligned to `len` or `len` > 32.
    pub fn new(base: Ipv4Addr, len: u8) -> Option<Self> {
        let host_bits = 32u32.checked_sub(len as u32)?;
        let size_minus_one = if host_bits == 32 {
            u32::MAX
        } else {
            (1u32 << host_bits) - 1
        };
        (u32::from(base) & size_minus_one == 0).then_some(Self { base, len })
    }

    pub fn range(&self) -> AddrRange {
        let base = u32::from(self.base);
        let host_bits = 32 - self.len as u32;
        let last = if host_bits == 32 {
            u32::MAX
        } else {
            base | ((1u32 << host_bits) - 1)
        };
        AddrRange::new(self.base, Ipv4Addr::from(last))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.len)
    }
}

/// One slice, partitioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPlan {
    /// The slice bridge's address: the containers' router.
    pub gateway: Ipv4Addr,
    /// Addresses kept for the host, the gateway first; nobody leases them.
    pub reserve: AddrRange,
    pub dhcp: AddrRange,
    pub docker: Cidr,
    pub cni: AddrRange,
}

/// Why a plan does not fit its slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The slice has too few addresses for four parts (fewer than 16).
    SliceTooSmall { slice_len: u8 },
    /// The host reserve is 0 (the gateway needs one address) or reaches
    /// into the second half of the slice, where the default plan puts Docker.
    HostReserve { requested: u32, most: u32 },
    /// A part holds no address.
    Empty { part: Part },
    /// A part reaches outside the slice or onto its network or broadcast address.
    OutsideSlice { part: Part },
    /// Two parts share addresses.
    Overlap { first: Part, second: Part },
    /// The reserve does not start at the gateway (the slice's first host).
    ReserveNotAtGateway,
}

/// The parts of a plan, named as the command line and `show` name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Reserve,
    Dhcp,
    Docker,
    Cni,
}

impl Part {
    pub const fn name(self) -> &'static str {
        match self {
            Part::Reserve => "host reserve",
            Part::Dhcp => "DHCP range",
            Part::Docker => "Docker range",
            Part::Cni => "CNI range",
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlanError::SliceTooSmall { slice_len } => write!(
                f,
                "a /{slice_len} slice is too small for an address plan (at least a /28: 16 addresses)"
            ),
            PlanError::HostReserve { requested, most } => write!(
                f,
                "host reserve {requested} does not fit: between 1 (the gateway) and {most} addresses"
            ),
            PlanError::Empty { part } => write!(f, "the {} holds no address", part.name()),
            PlanError::OutsideSlice { part } => write!(
                f,
                "the {} reaches outside the slice or onto its network or broadcast address",
                part.name()
            ),
            PlanError::Overlap { first, second } => {
                write!(f, "the {} and the {} overlap", first.name(), second.name())
            }
            PlanError::ReserveNotAtGateway => {
                write!(
                    f,
                    "the host reserve must start at the gateway, the slice's first host address"
                )
            }
        }
    }
}

impl core::error::Error for PlanError {}

/// Slices smaller than this (a /28) leave some part without addresses.
const SMALLEST_SLICE_HOST_BITS: u32 = 4;

impl AddressPlan {
    /// The plan every host derives for a slice on its own.
    pub fn default_for(
        slice_base: Ipv4Addr,
        slice_len: u8,
        host_reserve: u32,
    ) -> Result<Self, PlanError> {
        let host_bits = 32u32.saturating_sub(slice_len as u32);
        if !(SMALLEST_SLICE_HOST_BITS..32).contains(&host_bits) {
            return Err(PlanError::SliceTooSmall { slice_len });
        }
        let base = u32::from(slice_base);
        let size = 1u32 << host_bits;
        let (half, quarter) = (size / 2, size / 4);
        // The reserve and at least one DHCP address fit in the first half.
        let most = half - 2;
        if host_reserve == 0 || host_reserve > most {
            return Err(PlanError::HostReserve {
                requested: host_reserve,
                most,
            });
        }
        let at = |offset: u32| Ipv4Addr::from(base + offset);
        let plan = Self {
            gateway: at(1),
            reserve: AddrRange::new(at(1), at(host_reserve)),
            dhcp: AddrRange::new(at(host_reserve + 1), at(half - 1)),
            docker: Cidr {
                base: at(half),
                len: slice_len + 2,
            },
            cni: AddrRange::new(at(half + quarter), at(size - 2)),
        };
        plan.validate(slice_base, slice_len)?;
        Ok(plan)
    }

    /// Checks that every part holds addresses inside the slice (never its
    /// network or broadcast address), that the reserve starts at the
    /// gateway, and that no two parts share an address.
    pub fn validate(&self, slice_base: Ipv4Addr, slice_len: u8) -> Result<(), PlanError> {
        let host_bits = 32u32.saturating_sub(slice_len as u32);
        if !(SMALLEST_SLICE_HOST_BITS..32).contains(&host_bits) {
            return Err(PlanError::SliceTooSmall { slice_len });
        }
        let base = u32::from(slice_base);
        let usable = AddrRange::new(
            Ipv4Addr::from(base + 1),
            Ipv4Addr::from(base + (1u32 << host_bits) - 2),
        );
        let parts = self.parts();
        for (part, range) in parts {
            if range.is_empty() {
                return Err(PlanError::Empty { part });
            }
            if !usable.contains(range.first) || !usable.contains(range.last) {
                return Err(PlanError::OutsideSlice { part });
            }
        }
        if self.reserve.first != self.gateway || self.gateway != usable.first {
            return Err(PlanError::ReserveNotAtGateway);
        }
        for (i, (first, a)) in parts.iter().enumerate() {
            for (second, b) in &parts[i + 1..] {
                if a.overlaps(b) {
                    return Err(PlanError::Overlap {
                        first: *first,
                        second: *second,
                    });
                }
            }
        }
        Ok(())
    }

    /// The parts in address order of the default plan.
    pub fn parts(&self) -> [(Part, AddrRange); 4] {
        [
            (Part::Reserve, self.reserve),
            (Part::Dhcp, self.dhcp),
            (Part::Docker, self.docker.range()),
            (Part::Cni, self.cni),
        ]
    }
}

#[cfg(test)]
mod tests;
