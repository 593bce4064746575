//! The generator's packet pieces: IPv4 headers (options and broken fields
//! now and then), transport headers, the Ethernet header, and truncation
//! at a header boundary.

use super::PROTO_ICMP;
use crate::fuzz::rng::Rng;
use crate::model::wire::{ETH_LEN, PROTO_TCP, PROTO_UDP, header_checksum, put16};

pub(super) struct HeaderFields {
    pub(super) tos: u8,
    pub(super) id: u16,
    pub(super) flags_offset: u16,
    pub(super) ttl: u8,
    pub(super) protocol: u8,
    pub(super) src: u32,
    pub(super) dst: u32,
}

/// An IPv4 header for `payload`, now and then with options of any length,
/// a wrong version, IHL below 5 or beyond the packet, a total length that
/// disagrees with the packet, or a wrong checksum.
pub(super) fn ip_header(rng: &mut Rng, f: HeaderFields, payload: &[u8]) -> Vec<u8> {
    let options = if rng.chance(1, 8) {
        ip_options(rng)
    } else {
        vec![]
    };
    let header_len = 20 + options.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | (header_len / 4) as u8;
    h[1] = f.tos;
    let real_total = (header_len + payload.len()).min(0xffff) as u16;
    put16(&mut h, 2, real_total);
    put16(&mut h, 4, f.id);
    put16(&mut h, 6, f.flags_offset);
    h[8] = f.ttl;
    h[9] = f.protocol;
    h[12..16].copy_from_slice(&f.src.to_be_bytes());
    h[16..20].copy_from_slice(&f.dst.to_be_bytes());
    h.extend_from_slice(&options);
    if rng.chance(1, 10) {
        let any = rng.u16();
        let total = *rng.pick(&[
            0,
            1,
            19,
            20,
            real_total.wrapping_sub(1),
            real_total.wrapping_add(1),
            real_total.wrapping_add(100),
            65515,
            65516,
            65535,
            any,
        ]);
        put16(&mut h, 2, total);
    }
    if rng.chance(1, 40) {
        h[0] = (rng.u8() & 0xf0) | (h[0] & 0x0f);
    }
    if rng.chance(1, 30) {
        h[0] = (h[0] & 0xf0) | (rng.u8() & 0x0f);
    }
    let check = header_checksum(&h);
    put16(&mut h, 10, check);
    if rng.chance(1, 25) {
        h[10] ^= rng.u8() | 1;
    }
    h
}

/// IPv4 options padding the header to a multiple of 4 bytes: NOPs, an early
/// end of list, a record-route, or noise.
fn ip_options(rng: &mut Rng) -> Vec<u8> {
    let len = 4 * rng.range(1, 10);
    let mut options = vec![0u8; len];
    match rng.below(4) {
        0 => options.fill(1),
        1 => {
            options.fill(1);
            options[len - 1] = 0;
        }
        2 => {
            options[0] = 7;
            options[1] = (len - 1) as u8;
            options[2] = 4;
        }
        _ => rng.fill(&mut options),
    }
    options
}

/// A transport header: ICMP echo, UDP, TCP with a data offset that may lie.
pub(super) fn transport_header(rng: &mut Rng, protocol: u8) -> Vec<u8> {
    match protocol {
        PROTO_ICMP => vec![8, 0, 0, 0, 0x42, 0x42, 0, 1],
        PROTO_UDP => {
            let mut udp = vec![0u8; 8];
            if rng.chance(1, 4) {
                // DHCP: a server's reply (67 -> 68), which ports drop, or the
                // other way round.
                // A client takes a reply to 68 from any port.
                let ports = *rng.pick(&[
                    [0, 67, 0, 68],
                    [0, 68, 0, 67],
                    [0, 67, 0, 67],
                    [0x04, 0xd2, 0, 68],
                    [0, 68, 0x04, 0xd2],
                ]);
                udp[..4].copy_from_slice(&ports);
            } else {
                rng.fill(&mut udp[..4]);
            }
            udp
        }
        PROTO_TCP => {
            let mut tcp = vec![0u8; 20];
            rng.fill(&mut tcp);
            let data_offset = if rng.chance(3, 4) { 5 } else { rng.u8() & 0x0f };
            tcp[12] = data_offset << 4;
            let options = (usize::from(data_offset) * 4).saturating_sub(20);
            tcp.resize(20 + options, 1);
            tcp
        }
        _ => {
            let mut bytes = vec![0u8; rng.range(0, 8)];
            rng.fill(&mut bytes);
            bytes
        }
    }
}

/// An Ethernet header in front of `packet`: IPv4 mostly, now and then a
/// VLAN tag, ARP, IPv6 or any Ethernet type.
pub(super) fn with_ethernet(rng: &mut Rng, packet: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(packet.len() + 18);
    let dst = *rng.pick(&[
        [2, 0, 0, 0, 0, 0x01],
        [2, 0, 0, 0, 0, 0x11],
        [0xff; 6],
        [2, 0, 0, 0, 0, 0x22],
    ]);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
    match rng.below(100) {
        0..=87 => frame.extend_from_slice(&[0x08, 0x00]),
        88..=90 => {
            // VLAN tags (the kernel strips a VLAN 0 priority tag and takes
            // what is inside): one or two, of each tag type.
            for _ in 0..rng.range(1, 3) {
                let tag_type: [u8; 2] = *rng.pick(&[[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]]);
                let vlan: [u8; 2] = *rng.pick(&[[0x00, 0x00], [0x00, 0x0a]]);
                frame.extend_from_slice(&tag_type);
                frame.extend_from_slice(&vlan);
            }
            if rng.chance(1, 4) {
                frame.extend_from_slice(&[0x08, 0x06]);
                frame.extend_from_slice(&arp_body(rng, packet));
                return frame;
            }
            frame.extend_from_slice(&[0x08, 0x00]);
        }
        91..=93 => {
            frame.extend_from_slice(&[0x08, 0x06]);
            frame.extend_from_slice(&arp_body(rng, packet));
            return frame;
        }
        94..=96 => {
            frame.extend_from_slice(&[0x86, 0xdd]);
            frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]);
            frame.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            frame.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            return frame;
        }
        _ => frame.extend_from_slice(&rng.u16().to_be_bytes()),
    }
    frame.extend_from_slice(packet);
    frame
}

/// An ARP packet after the Ethernet type: mostly Ethernet/IPv4 (hardware
/// type 1), else IEEE 802's type 6 (which Linux also learns from on
/// Ethernet) or any, any protocol or lengths now and then; the sender's MAC
/// often another container port's; the sender's address the packet's
/// source (a container claiming an address), 0.0.0.0 (a probe) or an
/// underlay address.
fn arp_body(rng: &mut Rng, packet: &[u8]) -> Vec<u8> {
    let any = rng.u16();
    let hardware = *rng.pick(&[1, 1, 1, 6, any]);
    let protocol = if rng.chance(7, 8) { 0x0800 } else { rng.u16() };
    let (hardware_len, protocol_len) = if rng.chance(7, 8) {
        (6, 4)
    } else {
        (rng.u8(), rng.u8())
    };
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&hardware.to_be_bytes());
    arp.extend_from_slice(&u16::to_be_bytes(protocol));
    arp.extend_from_slice(&[hardware_len, protocol_len, 0, *rng.pick(&[1, 2])]);
    let sender_mac: [u8; 6] = *rng.pick(&[
        [2, 0, 0, 0, 0, 0x22],
        [2, 0, 0, 0, 0, 0xaa],
        [2, 0, 0, 0, 0, 0xbb],
    ]);
    arp.extend_from_slice(&sender_mac);
    match packet.get(12..16) {
        Some(src) if rng.chance(1, 2) => arp.extend_from_slice(src),
        _ if rng.chance(1, 3) => arp.extend_from_slice(&[0, 0, 0, 0]),
        _ => arp.extend_from_slice(&[198, 18, 0, 2]),
    }
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    arp
}

/// An ARP message from `sender` about `target`: mostly an Ethernet/IPv4
/// request or reply, now and then another operation or hardware type.
pub(super) fn arp_message(rng: &mut Rng, sender: u32, target: u32) -> Vec<u8> {
    let hardware: u16 = *rng.pick(&[1, 1, 1, 1, 6]);
    let operation: u16 = *rng.pick(&[1, 1, 2, 2, 3, 0]);
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&hardware.to_be_bytes());
    arp.extend_from_slice(&[0x08, 0x00, 6, 4]);
    arp.extend_from_slice(&operation.to_be_bytes());
    arp.extend_from_slice(&[0x0a, 0, 0, 0, 0, 0x09]);
    arp.extend_from_slice(&sender.to_be_bytes());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.to_be_bytes());
    if rng.chance(1, 4) {
        // Padded to Ethernet's minimum.
        arp.resize(46, 0);
    }
    arp
}

/// Cuts the frame at one of its header boundaries (give or take two bytes),
/// or anywhere.
pub(super) fn truncate_at_a_boundary(rng: &mut Rng, frame: &mut Vec<u8>) {
    let mut boundaries = vec![ETH_LEN];
    let mut at = ETH_LEN;
    // Up to two IPv4 headers (outer, inner) and what follows them.
    for _ in 0..2 {
        let Some(&first) = frame.get(at) else { break };
        let header_len = usize::from(first & 0x0f) * 4;
        boundaries.extend([at + 20, at + header_len]);
        at += header_len.max(20);
        boundaries.extend([at + 8, at + 13, at + 20]);
    }
    let cut = if rng.chance(1, 8) {
        rng.range(0, frame.len())
    } else {
        let boundary = *rng.pick(&boundaries) as i64 + rng.range(0, 4) as i64 - 2;
        boundary.clamp(0, frame.len() as i64) as usize
    };
    frame.truncate(cut);
}
