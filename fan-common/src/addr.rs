//! IPv4 addresses as the maps key them: in network byte order, the order
//! packet headers carry them. The arithmetic works in host byte order
//! (`u32`); everything that is a map key or an event's address is a
//! [`WireAddr`], so that no key can be built in the other order.

/// An IPv4 address in network byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct WireAddr(u32);

impl WireAddr {
    /// `0.0.0.0`: no address.
    pub const UNSPECIFIED: Self = Self(0);

    /// The four bytes as a packet header carries them.
    #[inline(always)]
    pub const fn from_octets(octets: [u8; 4]) -> Self {
        Self(u32::from_ne_bytes(octets))
    }

    /// An address of the arithmetic (host byte order).
    #[inline(always)]
    pub const fn from_host(addr: u32) -> Self {
        Self(addr.to_be())
    }

    /// For the arithmetic (host byte order).
    #[inline(always)]
    pub const fn to_host(self) -> u32 {
        u32::from_be(self.0)
    }

    /// The value as the kernel stores it (a route lookup's fields, an LPM
    /// key's data).
    #[inline(always)]
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl From<core::net::Ipv4Addr> for WireAddr {
    fn from(addr: core::net::Ipv4Addr) -> Self {
        Self::from_octets(addr.octets())
    }
}

impl From<WireAddr> for core::net::Ipv4Addr {
    fn from(addr: WireAddr) -> Self {
        core::net::Ipv4Addr::from(addr.to_host())
    }
}

#[cfg(feature = "user")]
// SAFETY: WireAddr is a transparent u32.
unsafe impl aya::Pod for WireAddr {}
