//! The words of one line (or of `up`'s command line): OVERLAY, UNDERLAY and
//! the keywords, each checked where it stands, so an error names its word.

use std::net::Ipv4Addr;

use fan_common::FanMap;
use ipnetwork::Ipv4Network;

use super::{FanLine, Underlay, Word, default_overlay};
use crate::{
    cli::{Bypass, FanType, Mode, parse_port, parse_vni},
    host::naming::{check_bridge_name, check_ifname},
};

type WordError<'a> = (Word<'a>, String);

pub(super) fn parse_words<'a>(
    words: &[Word<'a>],
    overlay_optional: bool,
) -> Result<FanLine, WordError<'a>> {
    // The overlay is left out when the first word is the underlay: not a
    // prefix, or a prefix with no underlay after it.
    let starts_with_overlay = !overlay_optional
        || (parse_prefix(words[0].text).is_some()
            && words.get(1).is_some_and(|w| is_underlay_word(w.text)));
    let (overlay, rest) = if starts_with_overlay {
        (parse_overlay(words[0])?, &words[1..])
    } else {
        (default_overlay(), words)
    };
    let Some((&underlay_word, keywords)) = rest.split_first() else {
        return Err((words[0], "expected the underlay after the overlay".into()));
    };
    let underlay = parse_underlay(underlay_word)?;
    let mut fan = FanLine {
        overlay,
        underlay,
        dhcp: false,
        host_reserve: None,
        bridge: None,
        off: false,
        mode: None,
        fan_type: None,
        vni: None,
        port: None,
        mtu: None,
        no_nat: false,
        bypass: None,
        line: 0,
    };
    if let Underlay::Address(_, len) | Underlay::Interface(_, len) = fan.underlay {
        check_map(overlay, len, &fan.underlay).map_err(|m| (underlay_word, m))?;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut iter = keywords.iter().copied();
    while let Some(word) = iter.next() {
        if seen.contains(&word.text) {
            return Err((word, format!("{} is given twice", word.text)));
        }
        let mut value = || {
            iter.next()
                .ok_or_else(|| (word, format!("{} needs a value", word.text)))
        };
        match word.text {
            "dhcp" => fan.dhcp = true,
            "off" => fan.off = true,
            "no-nat" => fan.no_nat = true,
            "host-reserve" => {
                let v = value()?;
                match v.text.parse::<u32>() {
                    Ok(n) if n >= 1 => fan.host_reserve = Some(n),
                    _ => {
                        return Err((v, "host-reserve is a count of addresses, at least 1".into()));
                    }
                }
            }
            "mtu" => {
                let v = value()?;
                match v.text.parse::<u32>() {
                    Ok(n) if (576..=65535).contains(&n) => fan.mtu = Some(n),
                    _ => return Err((v, "mtu is a number from 576 to 65535".into())),
                }
            }
            "bridge" => {
                let v = value()?;
                check_bridge_name(v.text).map_err(|m| (v, m))?;
                fan.bridge = Some(v.text.to_string());
            }
            "mode" => {
                let v = value()?;
                fan.mode = Some(match v.text {
                    "tc" => Mode::Tc,
                    "xdp" => Mode::Xdp,
                    "auto" => Mode::Auto,
                    _ => return Err((v, "mode is tc, xdp or auto".into())),
                });
            }
            "type" => {
                let v = value()?;
                fan.fan_type = Some(match v.text {
                    "ipip" => FanType::Ipip,
                    "vxlan" => FanType::Vxlan,
                    _ => return Err((v, "type is ipip or vxlan".into())),
                });
            }
            "vni" => {
                let v = value()?;
                fan.vni = Some(parse_vni(v.text).map_err(|m| (v, m))?);
            }
            "port" => {
                let v = value()?;
                fan.port = Some(parse_port(v.text).map_err(|m| (v, m))?);
            }
            "bypass" => {
                let v = value()?;
                fan.bypass = Some(match v.text {
                    "off" => Bypass::Off,
                    "on" => Bypass::On,
                    "auto" => Bypass::Auto,
                    _ => return Err((v, "bypass is off, on or auto".into())),
                });
            }
            _ => {
                return Err((
                    word,
                    "unknown keyword (expected dhcp, host-reserve N, bridge NAME, off, type T, vni N, port P, mode M, mtu N, no-nat or bypass B)"
                        .into(),
                ));
            }
        }
        seen.push(word.text);
    }
    check_type(&fan, keywords)?;
    Ok(fan)
}

/// VXLAN's own keywords need `type vxlan`, which decapsulates at TC only.
fn check_type<'a>(fan: &FanLine, keywords: &[Word<'a>]) -> Result<(), WordError<'a>> {
    if fan.fan_type == Some(FanType::Vxlan) {
        if fan.mode == Some(Mode::Xdp)
            && let Some(word) = keywords.iter().find(|w| w.text == "mode")
        {
            return Err((
                *word,
                "mode xdp does not decapsulate VXLAN (TC does): use mode tc or auto".into(),
            ));
        }
        return Ok(());
    }
    match keywords
        .iter()
        .find(|w| w.text == "vni" || w.text == "port")
    {
        Some(word) => Err((*word, format!("{} needs type vxlan", word.text))),
        None => Ok(()),
    }
}

fn is_underlay_word(text: &str) -> bool {
    text == "default" || text.contains('/')
}

/// `A.B.C.D/LEN` with LEN at most 32.
fn parse_prefix(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((addr.parse().ok()?, len))
}

fn parse_overlay(word: Word<'_>) -> Result<Ipv4Network, WordError<'_>> {
    let Some((addr, len)) = parse_prefix(word.text) else {
        let why = if word.text.contains(':') {
            "the overlay is IPv6: fan-xdp maps IPv4 only"
        } else {
            "the overlay is an IPv4 prefix, e.g. 250.0.0.0/8"
        };
        return Err((word, why.into()));
    };
    let net = Ipv4Network::new(addr, len).map_err(|e| (word, e.to_string()))?;
    if net.network() != addr {
        return Err((
            word,
            format!(
                "the overlay has host bits set (did you mean {}/{len}?)",
                net.network()
            ),
        ));
    }
    Ok(net)
}

fn parse_underlay(word: Word<'_>) -> Result<Underlay, WordError<'_>> {
    if word.text == "default" {
        return Ok(Underlay::Default);
    }
    if let Some((addr, len)) = parse_prefix(word.text) {
        return Ok(Underlay::Address(addr, len));
    }
    let bad = |why: &str| {
        Err((
            word,
            format!("{why}: the underlay is ADDR/LEN, IFACE/LEN or default"),
        ))
    };
    if word.text.contains(':') {
        return Err((word, "the underlay is IPv6: fan-xdp maps IPv4 only".into()));
    }
    let Some((name, len)) = word.text.rsplit_once('/') else {
        return bad("no prefix length");
    };
    let Some(len) = len.parse::<u8>().ok().filter(|l| (1..=32).contains(l)) else {
        return bad("the prefix length is 1 to 32");
    };
    if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u32>().is_ok()) {
        return bad("not an IPv4 address");
    }
    check_ifname(name).map_err(|m| (word, m))?;
    Ok(Underlay::Interface(name.to_string(), len))
}

/// The fan map's own rules (overlay shorter than the underlay, slices of
/// at least 4 addresses, no reserved ranges), where the file says enough.
fn check_map(overlay: Ipv4Network, len: u8, underlay: &Underlay) -> Result<(), String> {
    let network = match underlay {
        Underlay::Address(addr, _) => Ipv4Network::new(*addr, len)
            .map(|n| u32::from(n.network()))
            .map_err(|e| e.to_string())?,
        // The host decides the network: take one of that length that the
        // overlay cannot overlap (the other half of the address space), so
        // only the rules on lengths and the overlay itself can refuse.
        _ => {
            (u32::from(overlay.network()) ^ 0x8000_0000)
                & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
        }
    };
    let map = FanMap::new(u32::from(overlay.network()), overlay.prefix(), network, len);
    match (map.validate(), underlay) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(()), Underlay::Address(addr, _)) => map.validate_host(u32::from(*addr)).or_else(|e| {
            // The underlay's network itself names no host but is allowed.
            if u32::from(*addr) == network {
                Ok(())
            } else {
                Err(e.to_string())
            }
        }),
        (Ok(()), _) => Ok(()),
    }
}
