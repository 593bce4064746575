//! Names derived from a slice, following the original Fan tools.

use std::net::Ipv4Addr;

/// Linux interface names hold at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The kernel's rule for an interface name (dev_valid_name).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("an interface name is 1 to {IFNAME_MAX} bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err("not an interface name".into());
    }
    Ok(())
}

/// A slice bridge's name: an interface name that dnsmasq's
/// `--interface=NAME` names alone. A comma would make it a list of two
/// interfaces, and a trailing `*` a wildcard matching others.
pub fn check_bridge_name(name: &str) -> Result<(), String> {
    check_ifname(name)?;
    if name.contains([',', '*']) {
        return Err(format!(
            "bridge name {name:?} holds ',' or '*', which dnsmasq's --interface reads as a list or a wildcard"
        ));
    }
    Ok(())
}

/// The bridge name of a slice: `fan-` and the slice's octets joined by `-`,
/// trailing zero octets dropped (`250.0.28.0/24` is `fan-250-0-28`), as fanctl
/// and LXD named them. When that exceeds 15 bytes the octets are written as
/// eight hex digits instead: `33.240.16.32/28` is `fan-21f01020`, which is
/// always 12 bytes and still unique per slice address.
pub fn bridge_name(slice: Ipv4Addr) -> String {
    let octets = slice.octets();
    let keep = octets.iter().rposition(|&o| o != 0).map_or(1, |i| i + 1);
    let dotted: Vec<String> = octets[..keep].iter().map(u8::to_string).collect();
    let name = format!("fan-{}", dotted.join("-"));
    if name.len() <= IFNAME_MAX {
        name
    } else {
        format!("fan-{:08x}", u32::from(slice))
    }
}

/// The slice bridge's MAC address, derived from its gateway address: locally
/// administered (02), then `fa` for the Fan, then the gateway's four
/// octets. The same after the bridge is re-created, and one per slice.
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0xfa, a, b, c, d]
}

/// Where a VXLAN fan's overlay port names begin: a veth pair attach makes
/// for the slice bridge (fan-xdp's emulation of the Fan's vxlan device).
const OVERLAY_PORT_PREFIX: &str = "fvx-";

/// The overlay port of a VXLAN fan's slice: `fvx-` and the slice address
/// as eight hex digits, then `a` for the end plugged into the bridge and
/// `b` for the end whose ingress encapsulates (13 bytes each). Derived
/// from the slice alone, so detach finds them without a record of names.
pub fn overlay_port_names(slice: Ipv4Addr) -> (String, String) {
    let stem = format!("{OVERLAY_PORT_PREFIX}{:08x}", u32::from(slice));
    (format!("{stem}a"), format!("{stem}b"))
}

/// The MAC of an overlay port's bridge end: the largest unicast address.
/// A bridge with no address set takes its ports' smallest MAC, so plugging
/// this port into an adopted bridge that has other ports never changes the
/// bridge's (its containers would keep the gateway's old MAC in their ARP
/// caches). It is never a frame's source: the port only switches frames.
pub const OVERLAY_PORT_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// Whether `name` is an overlay port's bridge end: not a container's port
/// (the agent hangs no port program on it and delivers nothing through it).
pub fn is_overlay_port(name: &str) -> bool {
    name.strip_prefix(OVERLAY_PORT_PREFIX)
        .and_then(|rest| rest.strip_suffix('a'))
        .is_some_and(|hex| hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_are_one_interface_to_the_kernel_and_dnsmasq() {
        for good in ["fan-250-0-1", "br0", "a.b-c_d", "fan-21f01020"] {
            assert_eq!(check_bridge_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "sixteen-bytes-xx",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "br0,eth0",
            "fan*",
        ] {
            assert!(check_bridge_name(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn names_follow_fanctl_and_shorten_deterministically() {
        assert_eq!(bridge_name("250.0.28.0".parse().unwrap()), "fan-250-0-28");
        assert_eq!(bridge_name("99.224.80.0".parse().unwrap()), "fan-99-224-80");
        assert_eq!(bridge_name("240.33.0.0".parse().unwrap()), "fan-240-33");
        assert_eq!(bridge_name("10.0.77.0".parse().unwrap()), "fan-10-0-77");
        // 16 bytes in dotted form: the hex short form.
        assert_eq!(bridge_name("33.240.16.32".parse().unwrap()), "fan-21f01020");
        assert_eq!(
            bridge_name("100.66.128.0".parse().unwrap()),
            "fan-100-66-128"
        );
        assert_eq!(
            bridge_name("250.255.255.252".parse().unwrap()),
            "fan-fafffffc"
        );
    }

    #[test]
    fn overlay_port_names_fit_and_are_told_apart() {
        let (a, b) = overlay_port_names(Ipv4Addr::new(250, 0, 28, 0));
        assert_eq!((a.as_str(), b.as_str()), ("fvx-fa001c00a", "fvx-fa001c00b"));
        assert!(check_ifname(&a).is_ok() && check_ifname(&b).is_ok());
        let (widest, _) = overlay_port_names(Ipv4Addr::new(255, 255, 255, 255));
        assert!(widest.len() <= IFNAME_MAX);
        assert!(is_overlay_port(&a));
        assert!(!is_overlay_port(&b));
        assert!(!is_overlay_port("fvx-fa001c0a"));
        assert!(!is_overlay_port("veth1234a"));
        assert!(!is_overlay_port("fvx-fa001c0ga"));
    }
}
