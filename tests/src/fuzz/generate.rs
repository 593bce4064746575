//! The case generator: structured frames biased towards the edges of the
//! policy and of the parsers, plus byte-wise mutation of fixtures.

mod headers;

use super::rng::Rng;
use crate::model::{
    Config, Program,
    config::Fan,
    wire::{ETH_LEN, PROTO_IPIP, PROTO_TCP, PROTO_UDP, from_hex},
};

use super::bed::{GATEWAY_MAC, VXLAN_NEIGHBOUR};
use headers::{
    HeaderFields, arp_message, ip_header, transport_header, truncate_at_a_boundary, with_ethernet,
};

fn addr(bytes: [u8; 4]) -> u32 {
    u32::from_be_bytes(bytes)
}

/// One input: the program, the port it arrives on (by device name, so a
/// corpus line means the same in every namespace), the GSO size, the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub program: Program,
    pub port: String,
    pub gso_size: u32,
    pub frame: Vec<u8>,
}

const PROTO_ICMP: u8 = 1;

/// Ports a container's frame may arrive on: both container ports, none,
/// the underlay device, and one that does not exist.
const PORTS: [&str; 5] = ["eth0-peer", "eth1-peer", "0", "eth0", "missing"];

/// Inner lengths at the MTU rules' edges (overlay MTUs 1480 and 1400, the
/// locked route MTU 1400 less the outer header, a narrow container port 1300).
/// The learned path MTUs of 576 and 1000 (less the outer header) too.
const EDGE_LENGTHS: [usize; 20] = [
    556, 557, 576, 980, 981, 1279, 1280, 1300, 1301, 1379, 1380, 1381, 1399, 1400, 1401, 1479,
    1480, 1481, 1500, 2900,
];

/// MTUs a "fragmentation needed" reports: around the smallest link (68),
/// the kernel's floor (552) and the bed's learned path MTUs (576, 1000,
/// 1400), and the largest.
const REPORTED_MTUS: [u16; 16] = [
    0, 67, 68, 100, 551, 552, 553, 576, 577, 999, 1000, 1001, 1399, 1400, 1401, 65535,
];

/// Total lengths of the outer packets a "fragmentation needed" quotes.
const QUOTED_LENGTHS: [u16; 8] = [68, 553, 577, 1001, 1400, 1401, 1500, 9000];

/// Frame lengths around the test run's buffer limits.
const JUMBO_LENGTHS: [usize; 9] = [3519, 3520, 3521, 3711, 3712, 3713, 3900, 4096, 4200];

/// GSO segment sizes: tiny, usual MSS values, the edges of the MTUs, and
/// values that only fit the context's 32 bits (the skb keeps 16).
const GSO_SIZES: [u32; 13] = [
    1, 8, 536, 1000, 1340, 1360, 1380, 1440, 1448, 1460, 1480, 65535, 65536,
];

/// Addresses outside every overlay, and the special ones.
const OUTSIDE: [[u8; 4]; 10] = [
    [192, 0, 2, 1],
    [203, 0, 113, 7],
    [255, 255, 255, 255],
    [224, 0, 0, 1],
    [239, 255, 255, 250],
    [0, 0, 0, 0],
    [127, 0, 0, 1],
    [198, 18, 0, 1],
    [198, 18, 0, 2],
    [198, 19, 0, 2],
];

/// Frames from programs.rs (valid fan traffic and its neighbours), for
/// byte-wise mutation.
const FIXTURES: [&str; 6] = [
    // A container's echo request 250.0.1.10 -> 250.0.2.20.
    "0200000000010200000000aa08004500002012344000400131 8afa00010afa0002140800e13942420001 66616e21",
    // The same with an inner option (IHL 6).
    "0200000000010200000000aa0800460000241234400040012e85fa00010afa000214010101000800e1394242000166616e21",
    // Genuine fan traffic 198.18.0.2 -> 198.18.0.1, inner 250.0.2.20 -> 250.0.1.10.
    "0200000000110200000000220800450000340000400040 04ae9ec6120002c612000145000020123440004001318afa000214fa00010a0800e1394242000166616e21",
    // Outer options (IHL 6).
    "02000000001102000000002208004600003800004000 4004ab99c6120002c61200010101010045000020123440004001318afa000214fa00010a0800e1394242000166616e21",
    // Outer CE over inner ECT(0).
    "020000000011020000000022080045030034000040004004ae9bc6120002c612000145020020123440004001 3188fa000214fa00010a0800e1394242000166616e21",
    // The second fan: 198.19.0.2 -> 198.19.0.1, inner 240.0.2.20 -> 240.0.1.10.
    "020000000011020000000022080045000034000040004004ae9cc6130002c613000145000020123440004001458af0000214f000010a0800e1394242000166616e21",
];

pub struct Generator<'a> {
    config: &'a Config,
    fixtures: Vec<Vec<u8>>,
}

impl<'a> Generator<'a> {
    pub fn new(config: &'a Config) -> Self {
        let fixtures = FIXTURES
            .iter()
            .map(|text| {
                let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                from_hex(&digits).expect("fixture hex")
            })
            .collect();
        Self { config, fixtures }
    }

    pub fn case(&self, rng: &mut Rng, program: Program) -> Case {
        let mut frame = if program == Program::VxlanOut && rng.chance(9, 10) {
            self.at_overlay_port(rng)
        } else if rng.chance(1, 8) {
            self.mutated_fixture(rng)
        } else {
            // Now and then the other direction's traffic, so each program
            // also sees what is not meant for it.
            let encap_shaped = program.is_encap() != rng.chance(1, 10);
            if encap_shaped {
                self.container_frame(rng)
            } else {
                self.underlay_frame(rng)
            }
        };
        if rng.chance(1, 6) {
            truncate_at_a_boundary(rng, &mut frame);
        } else if rng.chance(1, 150) {
            // Past the limits of a test run's buffer: the skb's page, the
            // linear part of XDP's (beyond it, fragments).
            let len = *rng.pick(&JUMBO_LENGTHS);
            frame.resize(len.max(frame.len()), 0);
        }
        let port = if program == Program::EncapPort {
            self.port_for(rng, &frame)
        } else {
            "0".to_string()
        };
        let gso_size = if !program.is_xdp() && rng.chance(1, 8) {
            *rng.pick(&GSO_SIZES)
        } else {
            0
        };
        Case {
            program,
            port,
            gso_size,
            frame,
        }
    }

    /// Mostly the port the source is bound to (so the frame gets past the
    /// port rule), else any.
    fn port_for(&self, rng: &mut Rng, frame: &[u8]) -> String {
        let src = crate::model::arp_ipv4_sender(frame).or_else(|| {
            (frame.len() >= ETH_LEN + 20)
                .then(|| u32::from_be_bytes(frame[26..30].try_into().unwrap()))
        });
        if rng.chance(2, 3)
            && let Some(src) = src
            && let Some(e) = self.config.endpoint(src)
        {
            let name = if e.ifindex == super::bed::MISSING_IFINDEX {
                "missing"
            } else if rng.chance(1, 2) {
                "eth0-peer"
            } else {
                "eth1-peer"
            };
            return name.to_string();
        }
        rng.pick(&PORTS).to_string()
    }

    /// What a container sends its gateway: an IPv4 packet for the overlay.
    fn container_frame(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.chance(1, 10)
            && let Some(frame) = self.towards_learned_path(rng)
        {
            return frame;
        }
        if rng.chance(1, 12) {
            return self.tunnel_from_a_container(rng);
        }
        let (src, dst) = if rng.chance(1, 2) {
            self.plausible_sender_pair(rng)
        } else {
            (self.inner_addr(rng), self.inner_addr(rng))
        };
        let (src, dst) = match self.vxlan_fan() {
            // A VXLAN fan's container routing through its gateway to the
            // remote container the host's neighbour table knows.
            Some(fan) if rng.chance(1, 10) => (
                self.slice_addr(rng, &fan, fan.local_host),
                addr(VXLAN_NEIGHBOUR),
            ),
            _ => (src, dst),
        };
        let packet = self.ip_packet(rng, src, dst, 2);
        let mut frame = with_ethernet(rng, &packet);
        if rng.chance(1, 3) {
            // Routed through the gateway (else switched to a MAC of its own).
            frame[..6].copy_from_slice(&GATEWAY_MAC);
        }
        frame
    }

    /// The bed's VXLAN fan.
    fn vxlan_fan(&self) -> Option<Fan> {
        self.config.fans.iter().find(|f| f.vxlan.is_some()).copied()
    }

    /// A frame the slice bridge switched to a VXLAN fan's overlay port:
    /// IPv4 (mostly from this host's slice to a remote one), ARP requests
    /// and replies (by sender and target, likewise), IPv6 and anything,
    /// to a remote container's MAC, a broadcast or a multicast one.
    fn at_overlay_port(&self, rng: &mut Rng) -> Vec<u8> {
        let fan = self.vxlan_fan().expect("the bed's VXLAN fan");
        let src = match rng.below(8) {
            0 => self.inner_addr(rng),
            1 => fan.gateway(),
            _ => self.slice_addr(rng, &fan, fan.local_host),
        };
        let dst = match rng.below(10) {
            0 => self.inner_addr(rng),
            1 => self.slice_addr(rng, &fan, fan.local_host),
            2 => u32::from_be_bytes(*rng.pick(&OUTSIDE)),
            _ => {
                let host = self.host_in(rng, &fan);
                self.slice_addr(rng, &fan, host)
            }
        };
        let dst_mac = *rng.pick(&[
            [0x0a, 0, 0, 0, 2, 0x14],
            [0xff; 6],
            [0x33, 0x33, 0, 0, 0, 1],
            [0x01, 0, 0x5e, 0, 0, 1],
            [2, 0, 0, 0, 0, 0xb1],
        ]);
        let mut frame = self.ethernet_frame(rng, dst_mac, [0x0a, 0, 0, 0, 0, 0x09], src, dst);
        if rng.chance(1, 10) {
            let len = *rng.pick(&EDGE_LENGTHS) + ETH_LEN;
            frame.resize(len.max(frame.len()), 0);
        } else if rng.chance(1, 6) {
            self.one_of_few_flows(rng, &mut frame);
        }
        frame
    }

    /// Makes `frame` a packet of one of a few TCP and UDP flows (its other
    /// fields as they are), so that flows recur with different packets:
    /// each flow's source port must stay the same.
    fn one_of_few_flows(&self, rng: &mut Rng, frame: &mut Vec<u8>) {
        let (src, dst): ([u8; 4], [u8; 4]) = *rng.pick(&[
            ([251, 0, 1, 10], VXLAN_NEIGHBOUR),
            ([251, 0, 1, 10], [251, 0, 3, 7]),
            ([251, 0, 1, 77], [251, 0, 2, 8]),
        ]);
        let protocol = *rng.pick(&[PROTO_TCP, PROTO_UDP]);
        let (from, to): (u16, u16) = *rng.pick(&[(4321, 80), (5353, 53), (40000, 8472)]);
        let mut transport = transport_header(rng, protocol);
        transport[..2].copy_from_slice(&from.to_be_bytes());
        transport[2..4].copy_from_slice(&to.to_be_bytes());
        transport.resize(transport.len() + rng.range(0, 64), 0xab);
        let mut fields = self.header_fields(rng, protocol, addr(src), addr(dst));
        fields.flags_offset = 0x4000;
        let mut packet = ip_header(rng, fields, &transport);
        packet.extend_from_slice(&transport);
        frame.truncate(12);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&packet);
    }

    /// An Ethernet frame between container MACs: IPv4 from `src` to `dst`
    /// mostly, an ARP request or reply (mostly) from `src` for `dst`, or
    /// IPv6, a VLAN tag or any type.
    fn ethernet_frame(
        &self,
        rng: &mut Rng,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: u32,
        dst: u32,
    ) -> Vec<u8> {
        let mut frame = dst_mac.to_vec();
        frame.extend_from_slice(&src_mac);
        match rng.below(10) {
            0..=4 => {
                frame.extend_from_slice(&[0x08, 0x00]);
                frame.extend_from_slice(&self.ip_packet(rng, src, dst, 0));
            }
            5..=7 => {
                frame.extend_from_slice(&[0x08, 0x06]);
                frame.extend_from_slice(&arp_message(rng, src, dst));
            }
            _ => {
                let any = rng.u16();
                let kind = *rng.pick(&[0x86dd, 0x8100, any]);
                frame.extend_from_slice(&u16::to_be_bytes(kind));
                frame.resize(frame.len() + 40, 0);
            }
        }
        frame
    }

    /// A VXLAN packet on the underlay: mostly a genuine claim of the bed's
    /// VXLAN fan (an owner of a slice to this host, the fan's port and VNI
    /// with the I flag, IPv4 or ARP from the owner's slice to ours), one
    /// part of it now and then replaced: the outer addresses, the port,
    /// the VNI, the flags, the inner addresses (spoofed), the inner
    /// Ethernet type or a broadcast or multicast inner MAC.
    fn vxlan_frame(&self, rng: &mut Rng) -> Vec<u8> {
        let fan = self.vxlan_fan().expect("the bed's VXLAN fan");
        let vxlan = fan.vxlan.expect("a VXLAN fan");
        let owner = self.host_in(rng, &fan);
        let mut outer_src = owner;
        let mut outer_dst = fan.local_host;
        let mut inner_src = self.slice_addr(rng, &fan, owner);
        let mut inner_dst = self.slice_addr(rng, &fan, fan.local_host);
        let (mut port, mut vni, mut flags) = (vxlan.port, vxlan.vni, 0x08u8);
        let (any16, any32, any8) = (rng.u16(), rng.u32() & 0xff_ffff, rng.u8());
        match rng.below(14) {
            0 => outer_src = self.underlay_addr(rng),
            1 => outer_dst = self.underlay_addr(rng),
            2 => inner_src = self.inner_addr(rng),
            3 => inner_dst = self.inner_addr(rng),
            4 => port = *rng.pick(&[4789, 8472 + 1, any16]),
            5 => vni = *rng.pick(&[vni + 1, vni - 1, 0, any32]),
            6 => flags = *rng.pick(&[0, 0x0c, 0x80, any8]),
            _ => {}
        }
        let dst_mac = match rng.below(8) {
            0 => [0xff; 6],
            1 => [0x01, 0, 0x5e, 0, 0, 1],
            2 => GATEWAY_MAC,
            _ => [0x0a, 0, 0, 0, 0, 0x09],
        };
        let inner =
            self.ethernet_frame(rng, dst_mac, [0x0a, 0, 0, 0, 2, 0x14], inner_src, inner_dst);
        let mut udp = rng.u16().to_be_bytes().to_vec();
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&((inner.len() + 16) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0, flags, 0, 0, 0]);
        udp.extend_from_slice(&vni.to_be_bytes()[1..]);
        udp.push(0);
        udp.extend_from_slice(&inner);
        let fields = self.header_fields(rng, PROTO_UDP, outer_src, outer_dst);
        let mut packet = ip_header(rng, fields, &udp);
        packet.extend_from_slice(&udp);
        with_ethernet(rng, &packet)
    }

    /// A container's tunnel packet (IP-in-IP, IPv6-in-IPv4, GRE) from its
    /// slice, mostly to a host of a fan's underlay (where a peer would take
    /// it for fan traffic), else outside every underlay, where tunnels are
    /// the container's own business. The inner packet often claims a
    /// sibling's or the gateway's address.
    fn tunnel_from_a_container(&self, rng: &mut Rng) -> Vec<u8> {
        let fan = *rng.pick(&self.config.fans);
        let src = self.slice_addr(rng, &fan, fan.local_host);
        let dst = if rng.chance(3, 4) {
            self.host_in(rng, &fan)
        } else {
            u32::from_be_bytes(*rng.pick(&OUTSIDE))
        };
        let (inner_src, inner_dst) = if rng.chance(1, 2) {
            (fan.gateway(), self.inner_addr(rng))
        } else {
            (self.inner_addr(rng), self.inner_addr(rng))
        };
        let mut inner = self.ip_packet(rng, inner_src, inner_dst, 0);
        let mut protocol = *rng.pick(&[PROTO_IPIP, PROTO_IPIP, 41, 47]);
        if rng.chance(1, 4)
            && let Some(vxlan) = self.vxlan_fan().and_then(|f| f.vxlan)
        {
            // VXLAN naming the fan (or another VNI), the inner frame behind.
            protocol = PROTO_UDP;
            let vni = *rng.pick(&[vxlan.vni, vxlan.vni + 1]);
            let mut udp = vec![0x12, 0x34];
            udp.extend_from_slice(&vxlan.port.to_be_bytes());
            udp.extend_from_slice(&((inner.len() + 30) as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0, 0x08, 0, 0, 0]);
            udp.extend_from_slice(&vni.to_be_bytes()[1..]);
            udp.extend_from_slice(&[0, 0x0a, 0, 0, 0, 2, 0x14, 0x0a, 0, 0, 0, 0, 9, 8, 0]);
            udp.append(&mut inner);
            inner = udp;
        }
        let fields = self.header_fields(rng, protocol, src, dst);
        let mut packet = ip_header(rng, fields, &inner);
        packet.extend_from_slice(&inner);
        with_ethernet(rng, &packet)
    }

    /// What arrives on the underlay: mostly IP-in-IP, often genuine, and
    /// now and then a router's "fragmentation needed".
    fn underlay_frame(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.chance(1, 8) {
            return self.frag_needed(rng);
        }
        if rng.chance(1, 4) {
            return self.vxlan_frame(rng);
        }
        let (outer_src, outer_dst, inner_src, inner_dst) = if rng.chance(1, 2) {
            self.plausible_claim(rng)
        } else {
            (
                self.underlay_addr(rng),
                self.underlay_addr(rng),
                self.inner_addr(rng),
                self.inner_addr(rng),
            )
        };
        let inner = self.ip_packet(rng, inner_src, inner_dst, 1);
        let protocol = if rng.chance(9, 10) {
            PROTO_IPIP
        } else {
            let any = rng.u8();
            *rng.pick(&[PROTO_ICMP, PROTO_TCP, PROTO_UDP, 41, 47, any])
        };
        let fields = self.header_fields(rng, protocol, outer_src, outer_dst);
        let outer = ip_header(rng, fields, &inner);
        let mut packet = outer;
        packet.extend_from_slice(&inner);
        with_ethernet(rng, &packet)
    }

    /// A host of `fan`'s underlay with a learned path MTU, if it has one.
    fn learned_host(&self, rng: &mut Rng, fan: &Fan) -> Option<(u32, u32)> {
        let hosts: Vec<(u32, u32)> = self
            .config
            .path_mtus
            .iter()
            .filter(|p| fan.map.underlay_contains(p.host))
            .map(|p| (p.host, p.mtu))
            .collect();
        (!hosts.is_empty()).then(|| *rng.pick(&hosts))
    }

    /// A container's packet towards a host with a learned path MTU, from
    /// this host's slice, its length at the edge of that MTU, mostly with
    /// DF; now and then an ICMP error, which no answer may answer.
    fn towards_learned_path(&self, rng: &mut Rng) -> Option<Vec<u8>> {
        let fan = *rng.pick(&self.config.fans);
        let (host, mtu) = self.learned_host(rng, &fan)?;
        let src = match self.endpoint_in(&fan) {
            // A VXLAN fan's port sends only for a container it knows.
            Some(endpoint) if rng.chance(1, 2) => endpoint,
            _ => self.slice_addr(rng, &fan, fan.local_host),
        };
        let dst = self.slice_addr(rng, &fan, host);
        let protocol = *rng.pick(&[PROTO_ICMP, PROTO_UDP, PROTO_TCP]);
        let mut payload = transport_header(rng, protocol);
        if protocol == PROTO_ICMP && rng.chance(1, 3) {
            payload[0] = *rng.pick(&[3, 4, 5, 11, 12, 0]);
        }
        // The inner length that just fits the path, and its neighbours.
        let fits = (mtu - fan.overhead()) as usize;
        let total = *rng.pick(&[fits - 1, fits, fits + 1, fits + 100]);
        let start = payload.len();
        payload.resize(total - 20, 0);
        rng.fill(&mut payload[start..(start + 16).min(total - 20)]);
        let mut fields = self.header_fields(rng, protocol, src, dst);
        if rng.chance(2, 3) {
            fields.flags_offset = 0x4000;
        }
        let mut packet = ip_header(rng, fields, &payload);
        packet.extend_from_slice(&payload);
        let mut frame = with_ethernet(rng, &packet);
        if fan.vxlan.is_some() && rng.chance(1, 2) {
            frame[..6].copy_from_slice(&GATEWAY_MAC);
        }
        Some(frame)
    }

    /// A container of this host's slice of `fan` with direct delivery.
    fn endpoint_in(&self, fan: &Fan) -> Option<u32> {
        self.config
            .endpoints
            .iter()
            .map(|e| e.addr)
            .find(|&a| fan.is_local(a))
    }

    /// A router's ICMP "fragmentation needed" to one of this host's
    /// addresses, mostly about one of its outer packets: the quoted outer
    /// header from that address to another host of the fan, then the first
    /// bytes of the inner packet (its header from this host's slice to the
    /// other host's, often), the MTU reported around the rules' edges.
    fn frag_needed(&self, rng: &mut Rng) -> Vec<u8> {
        let fan = *rng.pick(&self.config.fans);
        let remote = match self.learned_host(rng, &fan) {
            Some((host, _)) if rng.chance(1, 3) => host,
            _ => self.host_in(rng, &fan),
        };
        let local = if rng.chance(7, 8) {
            fan.local_host
        } else {
            self.underlay_addr(rng)
        };
        let (inner_src, inner_dst) = if rng.chance(3, 4) {
            (
                self.slice_addr(rng, &fan, fan.local_host),
                self.slice_addr(rng, &fan, remote),
            )
        } else {
            (self.inner_addr(rng), self.inner_addr(rng))
        };
        let mut inner = self.ip_packet(rng, inner_src, inner_dst, 0);
        let mut protocol = if rng.chance(9, 10) {
            PROTO_IPIP
        } else {
            rng.u8()
        };
        if let Some(vxlan) = fan.vxlan
            && protocol == PROTO_IPIP
        {
            // Our VXLAN: UDP to the fan's port (or another), the VXLAN
            // header with its VNI (or another), the inner frame's header.
            protocol = PROTO_UDP;
            let port = *rng.pick(&[vxlan.port, vxlan.port, 4789]);
            let vni = *rng.pick(&[vxlan.vni, vxlan.vni, vxlan.vni + 1]);
            let ethertype: [u8; 2] = *rng.pick(&[[0x08, 0x00], [0x08, 0x00], [0x08, 0x06]]);
            let mut udp = vec![0xc3, 0x50];
            udp.extend_from_slice(&port.to_be_bytes());
            udp.extend_from_slice(&((inner.len() + 30) as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0, 0x08, 0, 0, 0]);
            udp.extend_from_slice(&vni.to_be_bytes()[1..]);
            udp.extend_from_slice(&[0, 0x0a, 0, 0, 0, 2, 0x14, 0x0a, 0, 0, 0, 0, 9]);
            udp.extend_from_slice(&ethertype);
            udp.extend_from_slice(&inner);
            inner = udp;
        }
        let quoted_src = if rng.chance(9, 10) {
            local
        } else {
            self.underlay_addr(rng)
        };
        let fields = self.header_fields(rng, protocol, quoted_src, remote);
        let mut quoted = ip_header(rng, fields, &inner);
        let quoted_len = *rng.pick(&QUOTED_LENGTHS);
        if rng.chance(3, 4) {
            quoted[2..4].copy_from_slice(&quoted_len.to_be_bytes());
        }
        // RFC 792's 8 bytes after the header, the inner header, or more
        // (VXLAN's: its UDP header, its VXLAN header, the inner frame's).
        let cut = *rng.pick(&[0, 8, 19, 20, 28, 64, 16, 30, 50]);
        quoted.extend_from_slice(&inner[..cut.min(inner.len())]);
        let (any, edge) = (rng.u16(), *rng.pick(&REPORTED_MTUS));
        let reported = *rng.pick(&[edge, quoted_len - 1, quoted_len, any]);
        let (icmp_type, code) = match rng.below(12) {
            0 => (3, rng.u8()),
            1 => (rng.u8(), 4),
            _ => (3, 4),
        };
        let mut icmp = vec![icmp_type, code, 0, 0, 0, 0];
        icmp.extend_from_slice(&reported.to_be_bytes());
        icmp.extend_from_slice(&quoted);
        let check = !crate::model::wire::ones_complement_sum(&icmp);
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        let router = if rng.chance(1, 2) {
            self.host_in(rng, &fan)
        } else {
            self.underlay_addr(rng)
        };
        let fields = self.header_fields(rng, PROTO_ICMP, router, local);
        let mut packet = ip_header(rng, fields, &icmp);
        packet.extend_from_slice(&icmp);
        with_ethernet(rng, &packet)
    }

    /// A source in one of this host's slices and a destination in a remote
    /// slice of a fan with the same local address, then perhaps one of the
    /// two replaced by anything.
    fn plausible_sender_pair(&self, rng: &mut Rng) -> (u32, u32) {
        let src_fan = *rng.pick(&self.config.fans);
        let src = self.slice_addr(rng, &src_fan, src_fan.local_host);
        let peers: Vec<Fan> = self
            .config
            .fans
            .iter()
            .filter(|f| f.local_host == src_fan.local_host)
            .copied()
            .collect();
        let dst_fan = *rng.pick(&peers);
        let host = self.host_in(rng, &dst_fan);
        let dst = self.slice_addr(rng, &dst_fan, host);
        match rng.below(6) {
            0 => (self.inner_addr(rng), dst),
            1 => (src, self.inner_addr(rng)),
            _ => (src, dst),
        }
    }

    /// A claim that passes the receive policy when nothing is replaced:
    /// (outer source, outer destination, inner source, inner destination).
    fn plausible_claim(&self, rng: &mut Rng) -> (u32, u32, u32, u32) {
        let dst_fan = *rng.pick(&self.config.fans);
        let inner_dst = self.slice_addr(rng, &dst_fan, dst_fan.local_host);
        let src_fan = *rng.pick(&self.config.fans);
        let owner = self.host_in(rng, &src_fan);
        let inner_src = self.slice_addr(rng, &src_fan, owner);
        let mut claim = (owner, dst_fan.local_host, inner_src, inner_dst);
        match rng.below(8) {
            0 => claim.0 = self.underlay_addr(rng),
            1 => claim.1 = self.underlay_addr(rng),
            2 => claim.2 = self.inner_addr(rng),
            3 => claim.3 = self.inner_addr(rng),
            _ => {}
        }
        claim
    }

    /// Any overlay-ish address: this host's slices, remote slices, or outside.
    fn inner_addr(&self, rng: &mut Rng) -> u32 {
        let fan = *rng.pick(&self.config.fans);
        match rng.below(20) {
            0..=6 => self.slice_addr(rng, &fan, fan.local_host),
            7..=14 => {
                let host = self.host_in(rng, &fan);
                self.slice_addr(rng, &fan, host)
            }
            15..=18 => u32::from_be_bytes(*rng.pick(&OUTSIDE)),
            _ => rng.u32(),
        }
    }

    /// An address in the slice of `host`: its edges, the gateway, a
    /// container with direct delivery, or any.
    fn slice_addr(&self, rng: &mut Rng, fan: &Fan, host: u32) -> u32 {
        let base = fan.map.slice_of(host);
        let size = 1u64 << (32 - u32::from(fan.map.slice_len()));
        let last = (size - 1) as u32;
        let offset = match rng.below(9) {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => last,
            4 => last - 1,
            5 => {
                // A container this host delivers to directly, if in this slice.
                let in_slice: Vec<u32> = self
                    .config
                    .endpoints
                    .iter()
                    .map(|e| e.addr)
                    .filter(|&a| fan.map.slice_contains(host, a))
                    .collect();
                if in_slice.is_empty() {
                    10.min(last)
                } else {
                    rng.pick(&in_slice) - base
                }
            }
            _ => rng.below(size) as u32,
        };
        base + offset
    }

    /// A host of the fan's underlay: this one, the peer, the bed's special
    /// hosts (unresolved, blackhole, unreachable, prohibited, other device,
    /// narrow route, learned path MTUs), the reserved host parts, or any.
    fn host_in(&self, rng: &mut Rng, fan: &Fan) -> u32 {
        let host_bits_max = !fan_common::fan::prefix_mask(fan.map.underlay_len);
        let bits = match rng.below(16) {
            0..=3 => 2,
            4 => 1,
            // The special hosts, and those with learned path MTUs.
            5..=10 => rng.range(3, 12) as u32,
            11 => 0,
            12 => host_bits_max,
            13 => host_bits_max - 1,
            _ => rng.u32() & host_bits_max,
        };
        fan.map.underlay | bits
    }

    /// An outer address: ours, a peer's, an underlay edge, or anything.
    fn underlay_addr(&self, rng: &mut Rng) -> u32 {
        let fan = *rng.pick(&self.config.fans);
        match rng.below(10) {
            0..=2 => fan.local_host,
            3..=6 => self.host_in(rng, &fan),
            7 => {
                let edges = [0, 0xffff, 0x0fff, 0x1000];
                (fan.map.underlay & 0xffff_0000) | rng.pick(&edges)
            }
            8 => u32::from_be_bytes(*rng.pick(&OUTSIDE)),
            _ => rng.u32(),
        }
    }

    /// An inner IPv4 packet with a transport header (or a nested IP-in-IP
    /// packet while `depth` allows).
    fn ip_packet(&self, rng: &mut Rng, src: u32, dst: u32, depth: u32) -> Vec<u8> {
        let protocol = match rng.below(12) {
            0..=3 => PROTO_ICMP,
            4..=6 => PROTO_UDP,
            7..=9 => PROTO_TCP,
            10 if depth > 0 => PROTO_IPIP,
            _ => rng.u8(),
        };
        let mut payload = if protocol == PROTO_IPIP && depth > 0 {
            let (s, d) = (self.inner_addr(rng), self.inner_addr(rng));
            self.ip_packet(rng, s, d, depth - 1)
        } else {
            transport_header(rng, protocol)
        };
        let data_len = if rng.chance(1, 10) {
            rng.pick(&EDGE_LENGTHS).saturating_sub(20 + payload.len())
        } else {
            rng.range(0, 48)
        };
        let start = payload.len();
        payload.resize(start + data_len, 0);
        rng.fill(&mut payload[start..start + data_len.min(64)]);
        let fields = self.header_fields(rng, protocol, src, dst);
        ip_header(rng, fields, &payload)
            .into_iter()
            .chain(payload)
            .collect()
    }

    fn header_fields(&self, rng: &mut Rng, protocol: u8, src: u32, dst: u32) -> HeaderFields {
        let any_ttl = rng.u8();
        HeaderFields {
            tos: if rng.chance(1, 2) { rng.u8() } else { 0 },
            id: rng.u16(),
            flags_offset: match rng.below(10) {
                0..=3 => 0x4000,
                4..=6 => 0,
                7 => 0x2000,
                8 => *rng.pick(&[0x0001, 0x2001, 0x1fff, 0x8000, 0x6000, 0x4001]),
                _ => rng.u16(),
            },
            ttl: *rng.pick(&[64, 64, 64, 0, 1, 2, 3, 63, 255, any_ttl]),
            protocol,
            src,
            dst,
        }
    }

    fn mutated_fixture(&self, rng: &mut Rng) -> Vec<u8> {
        let mut frame = rng.pick(&self.fixtures).clone();
        for _ in 0..rng.range(1, 4) {
            if frame.is_empty() {
                break;
            }
            let at = rng.below(frame.len() as u64) as usize;
            match rng.below(6) {
                0 => frame[at] = rng.u8(),
                1 => frame[at] = *rng.pick(&[0x00, 0xff, 0x45, 0x46, 0x4f, 0x04, 0x01, 0x03]),
                2 => frame[at] ^= 1 << rng.below(8),
                3 => frame.insert(at, rng.u8()),
                4 => {
                    frame.remove(at);
                }
                _ => frame.truncate(at),
            }
        }
        frame
    }
}
