//! The Fan address arithmetic (the generalised kernel fan-map semantics).
//!
//! With overlay prefix length `o` and underlay prefix length `u` (`o < u`), the
//! underlay host bits are shifted left by `u - o` into the overlay: every
//! underlay host owns one slice of length `o + 32 - u`, and every overlay
//! address names exactly one underlay host. All addresses are `u32` in host
//! byte order; callers convert from the wire with `u32::from_be`.

use core::{fmt, net::Ipv4Addr};

/// Prefixes an overlay may not touch: "this network", loopback, multicast
/// (class D) and the limited broadcast address, which would otherwise be a
/// valid inner destination of an overlay such as 255.0.0.0/8. (Class E,
/// 240.0.0.0/4, is where fans traditionally live, so it stays usable.)
pub const RESERVED_OVERLAYS: [(u32, u8); 4] = [
    (0x0000_0000, 8),  // 0.0.0.0/8
    (0x7f00_0000, 8),  // 127.0.0.0/8
    (0xe000_0000, 4),  // 224.0.0.0/4
    (0xffff_ffff, 32), // 255.255.255.255/32
];

/// The longest slice that still leaves room for a gateway and a container.
pub const MAX_SLICE_LEN: u8 = 30;

/// The mask of a prefix length (`/0` is the empty mask).
#[inline(always)]
pub const fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else if len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// Whether two prefixes share any address.
#[inline(always)]
pub const fn prefixes_overlap(a: u32, a_len: u8, b: u32, b_len: u8) -> bool {
    let shorter = if a_len < b_len { a_len } else { b_len };
    let mask = prefix_mask(shorter);
    a & mask == b & mask
}

/// One fan: an overlay prefix carved into slices by the hosts of an underlay prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FanMap {
    pub overlay: u32,
    pub underlay: u32,
    pub overlay_len: u8,
    pub underlay_len: u8,
    pub _pad: [u8; 2],
}

impl FanMap {
    #[inline(always)]
    pub const fn new(overlay: u32, overlay_len: u8, underlay: u32, underlay_len: u8) -> Self {
        Self {
            overlay,
            underlay,
            overlay_len,
            underlay_len,
            _pad: [0; 2],
        }
    }

    /// How far underlay host bits move to become slice bits: `u - o`.
    #[inline(always)]
    pub const fn shift(&self) -> u32 {
        (self.underlay_len - self.overlay_len) as u32
    }

    /// Length of every host's slice: `o + (32 - u)`.
    #[inline(always)]
    pub const fn slice_len(&self) -> u8 {
        self.overlay_len + (32 - self.underlay_len)
    }

    #[inline(always)]
    pub const fn overlay_contains(&self, addr: u32) -> bool {
        addr & prefix_mask(self.overlay_len) == self.overlay
    }

    #[inline(always)]
    pub const fn underlay_contains(&self, addr: u32) -> bool {
        addr & prefix_mask(self.underlay_len) == self.underlay
    }

    /// The slice (network address) owned by underlay host `host`.
    #[inline(always)]
    pub const fn slice_of(&self, host: u32) -> u32 {
        self.overlay | ((host & !prefix_mask(self.underlay_len)) << self.shift())
    }

    /// The gateway of `host`'s slice: the slice bridge's address, the first
    /// after the slice's network address.
    #[inline(always)]
    pub const fn gateway_of(&self, host: u32) -> u32 {
        self.slice_of(host) + 1
    }

    /// The underlay host that owns overlay address `addr`: the outer destination.
    #[inline(always)]
    pub const fn host_of(&self, addr: u32) -> u32 {
        self.underlay | ((addr & !prefix_mask(self.overlay_len)) >> self.shift())
    }

    /// Whether `addr` lies in the slice of underlay host `host`.
    #[inline(always)]
    pub const fn slice_contains(&self, host: u32, addr: u32) -> bool {
        addr & prefix_mask(self.slice_len()) == self.slice_of(host)
    }

    /// Whether underlay address `host` is the network or broadcast address of
    /// the underlay: such a host part names no host, so nothing maps to it.
    #[inline(always)]
    pub const fn is_reserved_host(&self, host: u32) -> bool {
        let host_bits = host & !prefix_mask(self.underlay_len);
        host_bits == 0 || host_bits == !prefix_mask(self.underlay_len)
    }

    /// Whether `addr` is the network or broadcast address of the slice of
    /// underlay host `host`: such an address names no container.
    #[inline(always)]
    pub const fn is_slice_edge(&self, host: u32, addr: u32) -> bool {
        let offset = addr.wrapping_sub(self.slice_of(host));
        offset == 0 || offset == !prefix_mask(self.slice_len())
    }

    /// Whether `underlay_src` is the host that owns `overlay_src` (anti-spoofing).
    #[inline(always)]
    pub const fn owns(&self, underlay_src: u32, overlay_src: u32) -> bool {
        self.underlay_contains(underlay_src)
            && self.overlay_contains(overlay_src)
            && self.host_of(overlay_src) == underlay_src
    }

    /// Checks the map on its own; see [`validate_fans`] for several maps on one host.
    pub const fn validate(&self) -> Result<(), FanError> {
        if self.overlay_len > 32 {
            return Err(FanError::PrefixLenOutOfRange {
                len: self.overlay_len,
            });
        }
        if self.underlay_len > 32 {
            return Err(FanError::PrefixLenOutOfRange {
                len: self.underlay_len,
            });
        }
        if self.overlay_len >= self.underlay_len {
            return Err(FanError::OverlayNotShorter {
                overlay_len: self.overlay_len,
                underlay_len: self.underlay_len,
            });
        }
        if self.underlay_len > MAX_SLICE_LEN {
            return Err(FanError::UnderlayTooLong {
                underlay_len: self.underlay_len,
            });
        }
        if self.slice_len() > MAX_SLICE_LEN {
            return Err(FanError::SliceTooLong {
                slice_len: self.slice_len(),
            });
        }
        if self.overlay & !prefix_mask(self.overlay_len) != 0 {
            return Err(FanError::HostBitsSet {
                role: Role::Overlay,
                addr: self.overlay,
                len: self.overlay_len,
            });
        }
        if self.underlay & !prefix_mask(self.underlay_len) != 0 {
            return Err(FanError::HostBitsSet {
                role: Role::Underlay,
                addr: self.underlay,
                len: self.underlay_len,
            });
        }
        let mut i = 0;
        while i < RESERVED_OVERLAYS.len() {
            let (net, len) = RESERVED_OVERLAYS[i];
            if prefixes_overlap(self.overlay, self.overlay_len, net, len) {
                return Err(FanError::OverlayReserved {
                    overlay: self.overlay,
                    overlay_len: self.overlay_len,
                    reserved: net,
                    reserved_len: len,
                });
            }
            i += 1;
        }
        if prefixes_overlap(
            self.overlay,
            self.overlay_len,
            self.underlay,
            self.underlay_len,
        ) {
            return Err(FanError::OverlayOverlapsUnderlay {
                overlay: self.overlay,
                overlay_len: self.overlay_len,
                underlay: self.underlay,
                underlay_len: self.underlay_len,
            });
        }
        Ok(())
    }

    /// Checks that `host` can be a member of this fan.
    pub const fn validate_host(&self, host: u32) -> Result<(), FanError> {
        if !self.underlay_contains(host) {
            return Err(FanError::HostOutsideUnderlay {
                host,
                underlay: self.underlay,
                underlay_len: self.underlay_len,
            });
        }
        if self.is_reserved_host(host) {
            return Err(FanError::ReservedHost { host });
        }
        Ok(())
    }
}

/// Validates every map and the set of them as configured on one host: overlays
/// must not overlap each other, or a destination would belong to two fans.
pub fn validate_fans(fans: &[FanMap]) -> Result<(), FanError> {
    for (i, a) in fans.iter().enumerate() {
        a.validate()?;
        for b in &fans[..i] {
            if prefixes_overlap(a.overlay, a.overlay_len, b.overlay, b.overlay_len) {
                return Err(FanError::OverlaysOverlap {
                    first: b.overlay,
                    first_len: b.overlay_len,
                    second: a.overlay,
                    second_len: a.overlay_len,
                });
            }
        }
    }
    Ok(())
}

/// Which side of a map a prefix belongs to, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Overlay,
    Underlay,
}

/// Why a fan map or host cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanError {
    PrefixLenOutOfRange {
        len: u8,
    },
    OverlayNotShorter {
        overlay_len: u8,
        underlay_len: u8,
    },
    UnderlayTooLong {
        underlay_len: u8,
    },
    SliceTooLong {
        slice_len: u8,
    },
    HostBitsSet {
        role: Role,
        addr: u32,
        len: u8,
    },
    OverlayReserved {
        overlay: u32,
        overlay_len: u8,
        reserved: u32,
        reserved_len: u8,
    },
    OverlayOverlapsUnderlay {
        overlay: u32,
        overlay_len: u8,
        underlay: u32,
        underlay_len: u8,
    },
    OverlaysOverlap {
        first: u32,
        first_len: u8,
        second: u32,
        second_len: u8,
    },
    HostOutsideUnderlay {
        host: u32,
        underlay: u32,
        underlay_len: u8,
    },
    ReservedHost {
        host: u32,
    },
}

struct Prefix(u32, u8);

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.0), self.1)
    }
}

impl fmt::Display for FanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::PrefixLenOutOfRange { len } => {
                write!(f, "prefix length /{len} is out of range (0 to 32)")
            }
            Self::OverlayNotShorter {
                overlay_len,
                underlay_len,
            } => write!(
                f,
                "overlay prefix /{overlay_len} must be shorter than underlay prefix /{underlay_len}"
            ),
            Self::UnderlayTooLong { underlay_len } => write!(
                f,
                "underlay prefix /{underlay_len} is too long: at most /{MAX_SLICE_LEN} leaves room for hosts"
            ),
            Self::SliceTooLong { slice_len } => write!(
                f,
                "prefix too long: each host's slice would be /{slice_len}, at most /{MAX_SLICE_LEN} leaves room for containers"
            ),
            Self::HostBitsSet { role, addr, len } => {
                let which = match role {
                    Role::Overlay => "overlay",
                    Role::Underlay => "underlay",
                };
                let net = addr & prefix_mask(len);
                write!(
                    f,
                    "{which} {} has host bits set (did you mean {}?)",
                    Prefix(addr, len),
                    Prefix(net, len)
                )
            }
            Self::OverlayReserved {
                overlay,
                overlay_len,
                reserved,
                reserved_len,
            } => write!(
                f,
                "overlay {} is in the reserved range {}",
                Prefix(overlay, overlay_len),
                Prefix(reserved, reserved_len)
            ),
            Self::OverlayOverlapsUnderlay {
                overlay,
                overlay_len,
                underlay,
                underlay_len,
            } => {
                write!(
                    f,
                    "overlay {} overlaps underlay {}: it would capture the hosts' own traffic",
                    Prefix(overlay, overlay_len),
                    Prefix(underlay, underlay_len)
                )
            }
            Self::OverlaysOverlap {
                first,
                first_len,
                second,
                second_len,
            } => write!(
                f,
                "overlays {} and {} overlap",
                Prefix(first, first_len),
                Prefix(second, second_len)
            ),
            Self::HostOutsideUnderlay {
                host,
                underlay,
                underlay_len,
            } => write!(
                f,
                "host address {} is not in underlay {}",
                Ipv4Addr::from(host),
                Prefix(underlay, underlay_len)
            ),
            Self::ReservedHost { host } => write!(
                f,
                "host address {} is the underlay's network or broadcast address and names no host",
                Ipv4Addr::from(host)
            ),
        }
    }
}

impl core::error::Error for FanError {}
