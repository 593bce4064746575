//! BPF_PROG_TEST_RUN of every program on literal frames: exact bytes out,
//! the verdict, and the one counter that must move.
//!
//! The configured fan: overlay 250.0.0.0/8 over underlay 198.18.0.0/16; this
//! host is 198.18.0.1 (slice 250.0.1.0/24), the peer is 198.18.0.2 (slice
//! 250.0.2.0/24). Fixture checksums were computed independently of fan-xdp.
//!
//! Over 400 lines: the literal frames are the tests' expected bytes, each
//! kept in the file of the tests that read it (a test and its frames read
//! together), and the bed is this executable's alone; `cargo xtask test`
//! runs it on the 6.1 VM too, by this executable's name.

use aya::programs::{TestRun, TestRunOptions};
use fan_common::{FanEntry, FanMap, StatReason, fan::validate_fans};
use fan_tests::{hex, netns::Netns, privileged, topology};
use fan_userspace::dataplane::{DECAP_TC, Dataplane, ENCAP_FORWARD, ENCAP_OUTPUT, ENCAP_PORT};

#[path = "programs/vxlan.rs"]
mod vxlan;

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: continue with the next program / the stack
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

// Frames a container (02:..:aa) sends to its gateway (02:..:01):
// Ethernet | IPv4 250.0.1.10 -> 250.0.2.20 ICMP, TTL 64, ID 0x1234, DF | ICMP echo "fan!".
const ENCAP_IN: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
// Expected after forwarding encapsulation: Ethernet to the next hop's MAC
// (198.18.0.2, 02:..:22) from the underlay device's (02:..:11), as the route
// lookup found them | outer 198.18.0.1 -> 198.18.0.2, proto 4, TTL 64, ID 0,
// DF, total 52 | inner with TTL 63 and its checksum updated.
const ENCAP_FORWARD_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 3f01328a fa00010a fa000214
    0800e139 42420001 66616e21";
// Host-originated traffic keeps its TTL: the host is not forwarding it.
const ENCAP_OUTPUT_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
// TOS 0xb9 (DSCP 46, ECT(1)) is copied to the outer header.
const ENCAP_TOS_IN: &str = "020000000001 0200000000aa 0800
    45b90020 12344000 400130d1 fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_TOS_OUT: &str = "020000000022 020000000011 0800
    45b90034 00004000 4004ade5 c6120001 c6120002
    45b90020 12344000 3f0131d1 fa00010a fa000214
    0800e139 42420001 66616e21";
// Inner header with options (IHL 6: NOP NOP NOP EOL) is carried as it is.
const ENCAP_INNER_OPTIONS_IN: &str = "020000000001 0200000000aa 0800
    46000024 12344000 40012e85 fa00010a fa000214 01010100
    0800e139 42420001 66616e21";
const ENCAP_INNER_OPTIONS_OUT: &str = "020000000022 020000000011 0800
    45000038 00004000 4004ae9a c6120001 c6120002
    46000024 12344000 3f012f85 fa00010a fa000214 01010100
    0800e139 42420001 66616e21";
const ENCAP_TTL1: &str = "020000000001 0200000000aa 0800
    45000020 12344000 0101708a fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_TTL1_OUTPUT_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 0101708a fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_TTL2: &str = "020000000001 0200000000aa 0800
    45000020 12344000 02016f8a fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_TTL2_FORWARD_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 0101708a fa00010a fa000214
    0800e139 42420001 66616e21";
// 250.0.1.10 -> 10.1.2.3: outside the overlay.
const ENCAP_NOT_OVERLAY: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4001219b fa00010a 0a010203
    0800e139 42420001 66616e21";
// 250.0.1.10 -> 250.0.1.20: our own slice.
const ENCAP_LOCAL_SLICE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4001328a fa00010a fa000114
    0800e139 42420001 66616e21";
// 250.0.0.5 maps to 198.18.0.0, 250.255.255.5 to 198.18.255.255: no hosts.
const ENCAP_RESERVED_NETWORK: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40013399 fa00010a fa000005
    0800e139 42420001 66616e21";
const ENCAP_RESERVED_BROADCAST: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40013399 fa00010a faffff05
    0800e139 42420001 66616e21";
// Source 250.0.3.3 belongs to host 198.18.0.3, not to us.
const ENCAP_SOURCE_NOT_LOCAL: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012f91 fa000303 fa000214
    0800e139 42420001 66616e21";
// UDP, total length 1481 / 1480 (payload zeros follow the header): 1481 + 20
// exceeds the 1500-byte underlay MTU, 1480 + 20 fits exactly.
const UDP_1481_HEADER: &str = "020000000001 0200000000aa 0800
    450005c9 12344000 40112bd1 fa00010a fa000214";
const UDP_1480_HEADER: &str = "020000000001 0200000000aa 0800
    450005c8 12344000 40112bd2 fa00010a fa000214";
const UDP_1480_FORWARD_OUT_HEADERS: &str = "020000000022 020000000011 0800
    450005dc 00004000 4004a8f6 c6120001 c6120002
    450005c8 12344000 3f112cd2 fa00010a fa000214";

// Frames on the underlay from 198.18.0.2 (02:..:22) to us (02:..:11).
// Outer 198.18.0.2 -> 198.18.0.1 proto 4 | inner 250.0.2.20 -> 250.0.1.10 ICMP.
const DECAP_IN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_OUT: &str = "020000000011 020000000022 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer header with options (IHL 6): stripped by its real length.
const DECAP_OUTER_OPTIONS_IN: &str = "020000000011 020000000022 0800
    46000038 00004000 4004ab99 c6120002 c6120001 01010100
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Inner header with options: delivered as it is.
const DECAP_INNER_OPTIONS_IN: &str = "020000000011 020000000022 0800
    45000038 00004000 4004ae9a c6120002 c6120001
    46000024 12344000 40012e85 fa000214 fa00010a 01010100
    0800e139 42420001 66616e21";
const DECAP_INNER_OPTIONS_OUT: &str = "020000000011 020000000022 0800
    46000024 12344000 40012e85 fa000214 fa00010a 01010100
    0800e139 42420001 66616e21";
// Outer CE (TOS 0x03) over inner ECT(0) (0x02): the inner becomes CE, checksum updated.
const DECAP_CE_IN: &str = "020000000011 020000000022 0800
    45030034 00004000 4004ae9b c6120002 c6120001
    45020020 12344000 40013188 fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_CE_OUT: &str = "020000000011 020000000022 0800
    45030020 12344000 40013187 fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer CE over a Not-ECT inner packet: RFC 6040 says drop.
const DECAP_CE_NOT_ECT: &str = "020000000011 020000000022 0800
    45030034 00004000 4004ae9b c6120002 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer source 198.18.0.3 does not own 250.0.2.20 (198.18.0.2 does).
const DECAP_SPOOFED: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9d c6120003 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer source 203.0.113.2 is not in the underlay.
const DECAP_OUTER_SRC_OUTSIDE_UNDERLAY: &str = "020000000011 020000000022 0800
    45000034 00004000 400438b0 cb007102 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Inner destination 10.1.2.3 is outside the overlay.
const DECAP_INNER_DST_OUTSIDE_OVERLAY: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40012091 fa000214 0a010203
    0800e139 42420001 66616e21";
// Inner source 10.9.9.9 is outside the overlay.
const DECAP_INNER_SRC_OUTSIDE_OVERLAY: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40011a8d 0a090909 fa00010a
    0800e139 42420001 66616e21";
// Outer destination 198.18.0.7 is not this host.
const DECAP_NOT_FOR_US: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae98 c6120002 c6120007
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer header with MF set: a fragment.
const DECAP_OUTER_FRAGMENT: &str = "020000000011 020000000022 0800
    45000034 00002000 4004ce9e c6120002 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Plain ICMP between underlay hosts.
const UNDERLAY_PING: &str = "020000000011 020000000022 0800
    45000020 12344000 40019c81 c6120002 c6120001
    0800e139 42420001 66616e21";
// ARP request who-has 198.18.0.1 tell 198.18.0.2.
const ARP: &str = "ffffffffffff 020000000022 0806
    0001 0800 06 04 0001 020000000022 c6120002 000000000000 c6120001";
// IPv6 frame (header only: version 6, next header 59 = none).
const IPV6: &str = "020000000011 020000000022 86dd
    60000000 00003b40 fe800000000000000000000000000002 fe800000000000000000000000000001";

// DECAP_IN delivered straight into a container whose veth is known: Ethernet
// rewritten to the container (0a:..:02) from the gateway (0a:..:01), TTL 63.
const DECAP_DIRECT_OUT: &str = "0a0000000002 0a0000000001 0800
    45000020 12344000 3f01328a fa000214 fa00010a
    0800e139 42420001 66616e21";
// The same packet with inner TTL 1: the stack must answer it.
const DECAP_TTL1_IN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 0101708a fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_TTL1_OUT: &str = "020000000011 020000000022 0800
    45000020 12344000 0101708a fa000214 fa00010a
    0800e139 42420001 66616e21";

// A second fan on the same host: overlay 240.0.0.0/8 over underlay
// 198.19.0.0/16, where this host is 198.19.0.1 (slice 240.0.1.0/24).
const ENCAP2_IN: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4001458a f000010a f0000214
    0800e139 42420001 66616e21";
const ENCAP2_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9c c6130001 c6130002
    45000020 12344000 3f01468a f000010a f0000214
    0800e139 42420001 66616e21";
// From our 250/8 slice to a 240/8 address: the 240/8 fan would send it from
// 198.19.0.1, which owns no 250/8 slice, so the receiver could not check the
// sender and would drop it. The sender drops it and says why.
const ENCAP_CROSS_IN: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40013b8a fa00010a f0000214
    0800e139 42420001 66616e21";
const DECAP2_IN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9c c6130002 c6130001
    45000020 12344000 4001458a f0000214 f000010a
    0800e139 42420001 66616e21";
const DECAP2_OUT: &str = "020000000011 020000000022 0800
    45000020 12344000 4001458a f0000214 f000010a
    0800e139 42420001 66616e21";
// 240/8 traffic sent to our 250/8 underlay address: its destination is not
// in the slice of the fan that address serves.
const DECAP2_WRONG_LOCAL: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9d c6130002 c6120001
    45000020 12344000 4001458a f0000214 f000010a
    0800e139 42420001 66616e21";
// Inner 250.0.2.20 -> 240.0.1.10 across underlays: from 198.18.0.2, the
// owner of the source, it comes from outside the 240/8 fan's underlay ...
const DECAP_CROSS_IN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9d c6120002 c6130001
    45000020 12344000 40013b8a fa000214 f000010a
    0800e139 42420001 66616e21";
// ... and from 198.19.0.2 it comes from outside the 250/8 fan's underlay.
const DECAP_CROSS_WRONG_UNDERLAY: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9c c6130002 c6130001
    45000020 12344000 40013b8a fa000214 f000010a
    0800e139 42420001 66616e21";

// The receive policy, case by case (outer 198.18.0.2 -> 198.18.0.1 unless named).
// Outer source is this host's own address, inner source in our own slice.
const DECAP_OUTER_SRC_IS_LOCAL: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9f c6120001 c6120001
    45000020 12344000 4001328a fa000114 fa00010a
    0800e139 42420001 66616e21";
// Outer sources that name no host: the underlay's broadcast and network
// addresses (each owning the inner source by the arithmetic).
const DECAP_OUTER_SRC_BROADCAST: &str = "020000000011 020000000022 0800
    45000034 00004000 4004aea0 c612ffff c6120001
    45000020 12344000 40013399 faffff05 fa00010a
    0800e139 42420001 66616e21";
const DECAP_OUTER_SRC_NETWORK: &str = "020000000011 020000000022 0800
    45000034 00004000 4004aea0 c6120000 c6120001
    45000020 12344000 40013399 fa000005 fa00010a
    0800e139 42420001 66616e21";
// Inner destination in another host's slice (198.18.0.3's): never forwarded.
const DECAP_FOR_OTHER_HOST: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40012f76 fa000214 fa00031e
    0800e139 42420001 66616e21";
// Inner destination is our slice's broadcast / network address.
const DECAP_TO_SLICE_BROADCAST: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40013095 fa000214 fa0001ff
    0800e139 42420001 66616e21";
const DECAP_TO_SLICE_NETWORK: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40013194 fa000214 fa000100
    0800e139 42420001 66616e21";
// Inner destination is limited broadcast / multicast (outside every overlay).
const DECAP_TO_LIMITED_BROADCAST: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40012c95 fa000214 ffffffff
    0800e139 42420001 66616e21";
const DECAP_TO_MULTICAST: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40014c93 fa000214 e0000001
    0800e139 42420001 66616e21";
// IP-in-IP with both inner addresses outside every overlay: not the Fan's.
const DECAP_NOT_FAN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 40010994 0a090909 0a010203
    0800e139 42420001 66616e21";
// A third fan, 10.0.0.0/8 over the same underlay 198.18.0.0/16 (our slice
// 10.0.1.0/24): 250.0.2.20 -> 10.0.1.10 from 198.18.0.2 is genuine.
const DECAP3_IN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 4001218b fa000214 0a00010a
    0800e139 42420001 66616e21";
const DECAP3_OUT: &str = "020000000011 020000000022 0800
    45000020 12344000 4001218b fa000214 0a00010a
    0800e139 42420001 66616e21";
const ENCAP3_IN: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4001218b fa00010a 0a000214
    0800e139 42420001 66616e21";
const ENCAP3_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 3f01228b fa00010a 0a000214
    0800e139 42420001 66616e21";
// To 250.0.4.40: host 198.18.0.4, whose neighbour entry is unresolved: the
// Ethernet header is left for bpf_redirect_neigh to write once ARP resolves.
const ENCAP_UNRESOLVED_IN: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012f76 fa00010a fa000428
    0800e139 42420001 66616e21";
const ENCAP_UNRESOLVED_OUT: &str = "020000000001 0200000000aa 0800
    45000034 00004000 4004ae9c c6120001 c6120004
    45000020 12344000 3f013076 fa00010a fa000428
    0800e139 42420001 66616e21";
// Hosts whose underlay route is a blackhole (.5), unreachable (.6),
// prohibited (.7) or through another device (.8).
const ENCAP_TO_BLACKHOLE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012e6c fa00010a fa000532
    0800e139 42420001 66616e21";
const ENCAP_TO_UNREACHABLE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012d62 fa00010a fa00063c
    0800e139 42420001 66616e21";
const ENCAP_TO_PROHIBITED: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012c58 fa00010a fa000746
    0800e139 42420001 66616e21";
const ENCAP_TO_OTHER_DEVICE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012b4e fa00010a fa000850
    0800e139 42420001 66616e21";
// Sources a port may not use when 250.0.1.10 is bound to another port, and the gateway's.
const ENCAP_FROM_GATEWAY: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40013193 fa000101 fa000214
    0800e139 42420001 66616e21";
// ARP requests for the gateway 250.0.1.1 from a container (Ethernet/IPv4,
// RFC 826) whose sender is 250.0.1.10 (bound to a port in the tests), the
// gateway itself (asking for 250.0.1.10), and the unbound 250.0.1.20.
const ARP_FROM_BOUND: &str = "ffffffffffff 0200000000aa 0806
    0001 0800 06 04 0001 0200000000aa fa00010a 000000000000 fa000101";
const ARP_FROM_GATEWAY: &str = "ffffffffffff 0200000000aa 0806
    0001 0800 06 04 0001 0200000000aa fa000101 000000000000 fa00010a";
const ARP_FROM_UNBOUND: &str = "ffffffffffff 0200000000aa 0806
    0001 0800 06 04 0001 0200000000aa fa000114 000000000000 fa000101";
// DHCP from a container (UDP | 4 bytes "fan!"): a server's offer 67 -> 68
// broadcast, a client's discover 68 -> 67 (0.0.0.0 -> broadcast), an offer
// unicast to a remote container (DF), and a non-first fragment (offset 8)
// whose first 4 bytes read like those ports.
const DHCP_OFFER_BROADCAST: &str = "ffffffffffff 0200000000aa 0800
    45000020 12340000 40116d8f fa00010a ffffffff
    00430044 000c0000 66616e21";
const DHCP_DISCOVER: &str = "ffffffffffff 0200000000aa 0800
    45000020 12340000 4011689a 00000000 ffffffff
    00440043 000c0000 66616e21";
const DHCP_OFFER_REMOTE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4011317a fa00010a fa000214
    00430044 000c0000 66616e21";
const DHCP_LIKE_FRAGMENT: &str = "020000000001 0200000000aa 0800
    45000020 12340001 40117179 fa00010a fa000214
    00430044 000c0000 66616e21";
const DHCP_LIKE_FRAGMENT_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12340001 3f117279 fa00010a fa000214
    00430044 000c0000 66616e21";
// The container edge (docs/security.md): what a port refuses, and what the
// bridge's program refuses too. ARP of hardware type 6 (IEEE 802, which
// Linux's arp_process takes on Ethernet) claiming 250.0.1.10, and an ARP
// probe (RFC 5227: sender 0.0.0.0) for it.
const ARP_IEEE802_FROM_BOUND: &str = "ffffffffffff 0200000000aa 0806
    0006 0800 06 04 0001 0200000000aa fa00010a 000000000000 fa000101";
const ARP_PROBE: &str = "ffffffffffff 0200000000aa 0806
    0001 0800 06 04 0001 0200000000aa 00000000 000000000000 fa00010a";
// ENCAP_IN and ARP_FROM_BOUND behind a VLAN 0 tag (802.1Q), and ENCAP_IN
// behind two (802.1ad, then 802.1Q): the kernel strips priority tags and
// takes the inner packet.
const VLAN_0_ENCAP_IN: &str = "020000000001 0200000000aa 8100 0000 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
const VLAN_0_ARP_FROM_BOUND: &str = "ffffffffffff 0200000000aa 8100 0000 0806
    0001 0800 06 04 0001 0200000000aa fa00010a 000000000000 fa000101";
const QINQ_0_ENCAP_IN: &str = "020000000001 0200000000aa 88a8 0000 8100 0000 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
// A container's UDP to port 68 from port 1234 (a client takes it from any
// port), from port 67 to 5353, and from 68 to 5353.
const UDP_TO_CLIENT_PORT: &str = "ffffffffffff 0200000000aa 0800
    45000020 12344000 40112d8f fa00010a ffffffff
    04d20044 000c0000 66616e21";
const UDP_FROM_SERVER_PORT: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4011317a fa00010a fa000214
    004314e9 000c0000 66616e21";
const UDP_CLIENT_PORT_ELSEWHERE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4011317a fa00010a fa000214
    004414e9 000c0000 66616e21";
// A DHCP client's request unicast to the server (the gateway) from 0.0.0.0,
// and an ICMP echo from 0.0.0.0.
const DHCP_REQUEST_TO_SERVER: &str = "020000000001 0200000000aa 0800
    45000020 12340000 40116d98 00000000 fa000101
    00440043 000c0000 66616e21";
const UNSPECIFIED_TO_ELSEWHERE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40011ca6 00000000 0a010203
    0800e139 42420001 66616e21";
// 250.0.3.3 (another host's slice) to 10.1.2.3, outside the overlay.
const OUTSIDE_SLICE_TO_ELSEWHERE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40011fa2 fa000303 0a010203
    0800e139 42420001 66616e21";
// From the slice's network (250.0.1.0) and broadcast (250.0.1.255) addresses.
const ENCAP_FROM_NETWORK: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40013194 fa000100 fa000214
    0800e139 42420001 66616e21";
const ENCAP_FROM_BROADCAST: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40013095 fa0001ff fa000214
    0800e139 42420001 66616e21";
// A container's own tunnels, 250.0.1.10 -> 198.18.0.2 (the underlay's peer):
// IP-in-IP carrying what would pass for the peer's fan packet (250.0.2.20 ->
// 250.0.1.10), IPv6-in-IPv4 (41) and GRE (47); the same IP-in-IP to the
// second fan's underlay (198.19.0.2), and to 203.0.113.9, outside every
// underlay (inner 10.9.9.9 -> 10.1.2.3).
const IPIP_TO_UNDERLAY: &str = "020000000001 0200000000aa 0800
    45000034 12344000 40046773 fa00010a c6120002
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
const IPV6_IN_IPV4_TO_UNDERLAY: &str = "020000000001 0200000000aa 0800
    4500001c 12344000 40296766 fa00010a c6120002
    60000000 00000000";
const GRE_TO_UNDERLAY: &str = "020000000001 0200000000aa 0800
    45000018 12344000 402f6764 fa00010a c6120002
    00000800";
const IPIP_TO_SECOND_UNDERLAY: &str = "020000000001 0200000000aa 0800
    45000034 12344000 40046772 fa00010a c6130002
    45000020 12344000 4001458a f0000214 f000010a
    0800e139 42420001 66616e21";
const IPIP_ELSEWHERE: &str = "020000000001 0200000000aa 0800
    45000034 12344000 4004f17d fa00010a cb007109
    45000020 12344000 40010994 0a090909 0a010203
    0800e139 42420001 66616e21";
// UDP, total length 1400, to 250.0.9.90: host 198.18.0.9 has a locked route MTU of 1400.
const UDP_1400_TO_NARROW_ROUTE: &str = "020000000001 0200000000aa 0800
    45000578 12344000 401124dc fa00010a fa00095a";
// Total lengths whose outer total length would not fit 16 bits: 65516, and
// BIG TCP's 0 (the frame itself is short: only the header is read).
const ENCAP_LEN_65516: &str = "020000000001 0200000000aa 0800
    4500ffec 12344000 400131bd fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_LEN_0: &str = "020000000001 0200000000aa 0800
    45000000 12344000 400131aa fa00010a fa000214
    0800e139 42420001 66616e21";

// Path MTU (frames of the router's and the answers, checksums computed independently).
// A router (198.18.0.254) to us: our 1500-byte packet to 198.18.0.2 (inner 250.0.1.10 ->
// 250.0.2.20, UDP) needs fragmentation, next-hop MTU 1400. Quote: outer and inner
// headers and 8 bytes.
const PMTU_1400: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f783 00000578 450005dc 00004000 4004a8f6
    c6120001 c6120002 450005c8 12344000 40112bd2
    fa00010a fa000214 00000000 00000000";
// The same from a router that quotes only the 28 bytes RFC 792 asks for, MTU 1300.
const PMTU_1300_TRUNCATED: &str = "020000000011 020000000022 0800
    45000038 00000000 4001eda1 c61200fe c6120001
    03045aeb 00000514 450005dc 00004000 4004a8f6
    c6120001 c6120002 450005c8 12344000";
// A higher MTU than the one known (1400) for 198.18.0.2: ignored until it expires.
const PMTU_1450_HIGHER: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f751 000005aa 450005dc 00004000 4004a8f6
    c6120001 c6120002 450005c8 12344000 40112bd2
    fa00010a fa000214 00000000 00000000";
// An MTU not below the quoted packet (1500 of 1500).
const PMTU_AS_LONG: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f71f 000005dc 450005dc 00004000 4004a8f4
    c6120001 c6120004 450005c8 12344000 401129be
    fa00010a fa000428 00000000 00000000";
// MTU 0 and 67: below any link.
const PMTU_0: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304fcfb 00000000 450005dc 00004000 4004a8f4
    c6120001 c6120004 450005c8 12344000 401129be
    fa00010a fa000428 00000000 00000000";
const PMTU_67: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304fcb8 00000043 450005dc 00004000 4004a8f4
    c6120001 c6120004 450005c8 12344000 401129be
    fa00010a fa000428 00000000 00000000";
// MTU 68, about 198.18.0.3: learned as the kernel's min_pmtu, 552.
const PMTU_68: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304fcb7 00000044 450005dc 00004000 4004a8f5
    c6120001 c6120003 450005c8 12344000 40112ac8
    fa00010a fa00031e 00000000 00000000";
// Forged: the quoted packet was not ours (from 198.18.0.7).
const PMTU_WRONG_QUOTED_SOURCE: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f783 00000578 450005dc 00004000 4004a8ee
    c6120007 c6120004 450005c8 12344000 401123be
    fa00070a fa000428 00000000 00000000";
// Forged: the quoted destination is no fan host (outside the underlay; its broadcast).
const PMTU_QUOTED_DST_NOT_A_HOST: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f783 00000578 450005dc 00004000 40043301
    c6120001 cb007109 450005c8 12344000 401129be
    fa00010a fa000428 00000000 00000000";
const PMTU_QUOTED_DST_BROADCAST: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f783 00000578 450005dc 00004000 4004a8f8
    c6120001 c612ffff 450005c8 12344000 40112de1
    fa00010a faffff05 00000000 00000000";
// Forged: the quoted inner source is not in our slice.
const PMTU_INNER_NOT_OURS: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed8d c61200fe c6120001
    0304f783 00000578 450005dc 00004000 4004a8f4
    c6120001 c6120004 450005c8 12344000 401127c5
    fa000303 fa000428 00000000 00000000";
// Not addressed to us.
const PMTU_NOT_FOR_US: &str = "020000000011 020000000022 0800
    4500004c 00000000 4001ed87 c61200fe c6120007
    0304f783 00000578 450005dc 00004000 4004a8ee
    c6120007 c6120004 450005c8 12344000 401123be
    fa00070a fa000428 00000000 00000000";
// UDP with DF, total length 1381, to 250.0.2.20: 1381 + 20 is over the learned 1400.
const UDP_DF_1381_HEADER: &str = "020000000001 0200000000aa 0800
    45000565 12344000 40112c35 fa00010a fa000214";
// Its answer: to the container (02:..:aa) from the gateway's MAC, 250.0.1.1 ->
// 250.0.1.10, ICMP fragmentation needed, MTU 1380, quoting the header and 64 bytes.
const UDP_DF_1381_ANSWER: &str = "0200000000aa 020000000001 0800
    45c00070 00000000 400183c1 fa000101 fa00010a
    0304f797 00000564 45000565 12344000 40112c35
    fa00010a fa000214 00000000 00000000 00000000
    00000000 00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000 00000000
    00000000 00000000 00000000";
// The host's own (from its gateway address 250.0.1.1), with DF, 1381 bytes.
const HOST_UDP_DF_1381_HEADER: &str = "020000000001 0200000000aa 0800
    45000565 12344000 40112c3e fa000101 fa000214";
// Its answer, into fan-host: from the destination it was sent to (250.0.2.20,
// an address the host does not own) to 250.0.1.1, the same MTU and quote.
const HOST_UDP_DF_1381_ANSWER: &str = "0200000000aa 020000000001 0800
    45c00070 00000000 400182b7 fa000214 fa000101
    0304f797 00000564 45000565 12344000 40112c3e
    fa000101 fa000214 00000000 00000000 00000000
    00000000 00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000 00000000
    00000000 00000000 00000000";
// Without DF: the stack fragments it.
const UDP_1381_HEADER: &str = "020000000001 0200000000aa 0800
    45000565 12340000 40116c35 fa00010a fa000214";
// An ICMP error (destination unreachable) with DF, 1381 bytes: never answered.
const ICMP_ERROR_1381_HEADER: &str = "020000000001 0200000000aa 0800
    45000565 12344000 40012c45 fa00010a fa000214 03010000";

// 1380 + 20 fits the learned path exactly: encapsulated as usual.
const UDP_DF_1380_HEADER: &str = "020000000001 0200000000aa 0800
    45000564 12344000 40112c36 fa00010a fa000214";
const UDP_DF_1380_FORWARD_OUT_HEADERS: &str = "020000000022 020000000011 0800
    45000578 00004000 4004a95a c6120001 c6120002
    45000564 12344000 3f112d36 fa00010a fa000214";

// A first fragment (MF) of 1000 bytes to 250.0.2.20: it fits, but its datagram's
// other fragments may not.
const UDP_FRAGMENT_1000_HEADER: &str = "020000000001 0200000000aa 0800
    450003e8 12342000 40114db2 fa00010a fa000214";

/// A fan dataplane loaded inside a fresh namespace whose `eth0` (a veth with
/// MTU 1500) is the underlay device, configured as host 198.18.0.1.
///
/// The underlay as the programs' route lookups see it: 198.18.0.2 and
/// 198.19.0.2 have resolved neighbour entries; 198.18.0.4 none yet; the route
/// to 198.18.0.5 is a blackhole, to .6 unreachable, to .7 prohibited, to .8
/// through another device (`eth1`), and to .9 has a locked MTU of 1400.
struct Bed {
    ns: Netns,
    dataplane: Dataplane,
    /// The ingress interface of the next runs (0: none), for the port program.
    ingress_ifindex: u32,
}

impl Bed {
    fn new() -> Self {
        let (ns, dataplane, _) = topology::single_host_dataplane("progs").unwrap();
        for (host, mac) in [
            ("198.18.0.2", "02:00:00:00:00:22"),
            ("198.19.0.2", "02:00:00:00:00:22"),
        ] {
            ns.ip(&[
                "neigh",
                "add",
                host,
                "lladdr",
                mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .unwrap();
        }
        ns.ip(&[
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            "eth1-peer",
        ])
        .unwrap();
        ns.ip(&["link", "set", "eth1-peer", "up"]).unwrap();
        ns.ip(&["link", "set", "eth1", "up"]).unwrap();
        for route in [
            &["blackhole", "198.18.0.5/32"][..],
            &["unreachable", "198.18.0.6/32"],
            &["prohibit", "198.18.0.7/32"],
            &["198.18.0.8/32", "dev", "eth1"],
            &["198.18.0.9/32", "dev", "eth0", "mtu", "lock", "1400"],
        ] {
            ns.ip(&[&["route", "add"][..], route].concat()).unwrap();
        }
        Self {
            ns,
            dataplane,
            ingress_ifindex: 0,
        }
    }

    /// Adds a third fan over the first one's underlay: 10.0.0.0/8 over
    /// 198.18.0.0/16 as host 198.18.0.1 (slice 10.0.1.0/24).
    fn with_fan_on_the_same_underlay(mut self) -> Self {
        let ifindex = self
            .ns
            .enter(|| topology::ifindex("eth0"))
            .unwrap()
            .unwrap();
        let map = FanMap::new(
            u32::from_be_bytes([10, 0, 0, 0]),
            8,
            u32::from_be_bytes([198, 18, 0, 0]),
            16,
        );
        validate_fans(&[topology::fan_map(), map]).unwrap();
        self.dataplane
            .insert_fan(&FanEntry::ipip(
                map,
                u32::from_be_bytes([198, 18, 0, 1]),
                ifindex,
                1480,
            ))
            .unwrap();
        self
    }

    fn ifindex(&self, name: &str) -> u32 {
        let name = name.to_string();
        self.ns
            .enter(move || topology::ifindex(&name))
            .unwrap()
            .unwrap()
    }

    /// Adds the second fan: 240.0.0.0/8 over 198.19.0.0/16 as host 198.19.0.1.
    fn with_second_fan(mut self) -> Self {
        let ifindex = self
            .ns
            .enter(|| topology::ifindex("eth0"))
            .unwrap()
            .unwrap();
        let map = FanMap::new(
            u32::from_be_bytes([240, 0, 0, 0]),
            8,
            u32::from_be_bytes([198, 19, 0, 0]),
            16,
        );
        validate_fans(&[topology::fan_map(), map]).unwrap();
        self.dataplane
            .insert_fan(&FanEntry::ipip(
                map,
                u32::from_be_bytes([198, 19, 0, 1]),
                ifindex,
                1480,
            ))
            .unwrap();
        self
    }

    /// Runs program `name` ("xdp" for the XDP program) on `input` once and
    /// checks verdict, output bytes and that exactly `reason` counted one packet.
    #[track_caller]
    fn check(&mut self, name: &str, input: &[u8], verdict: u32, output: &[u8], reason: StatReason) {
        self.check_counts(name, input, verdict, output, &[reason]);
    }

    /// As `check`, for a frame the program leaves as it is (passed or dropped).
    #[track_caller]
    fn check_untouched(&mut self, name: &str, frame: &str, verdict: u32, reason: StatReason) {
        let frame = hex(frame);
        self.check(name, &frame, verdict, &frame, reason);
    }

    /// As `check`, with every counter that must count the packet once.
    #[track_caller]
    fn check_counts(
        &mut self,
        name: &str,
        input: &[u8],
        verdict: u32,
        output: &[u8],
        reasons: &[StatReason],
    ) {
        let (got, out, case) = self.run_counted(name, input, reasons);
        assert_eq!(got, verdict, "verdict of {case}");
        assert_eq!(hex_string(&out), hex_string(output), "bytes out of {case}");
    }

    /// Runs program `name` on `input` once, checks that exactly the
    /// counters `reasons` counted it, and returns the verdict, the bytes
    /// out and the case's name for messages.
    #[track_caller]
    fn run_counted(
        &mut self,
        name: &str,
        input: &[u8],
        reasons: &[StatReason],
    ) -> (u32, Vec<u8>, String) {
        let before = self.dataplane.stats().unwrap();
        let mut out = vec![0u8; input.len() + 256];
        let dataplane = &mut self.dataplane;
        // The start of a `struct __sk_buff`: only `ingress_ifindex` (offset 36) set.
        let mut skb = [0u8; 40];
        skb[36..40].copy_from_slice(&self.ingress_ifindex.to_ne_bytes());
        let ctx_in = (self.ingress_ifindex != 0 && name != "xdp").then_some(&skb[..]);
        let result = self
            .ns
            .enter(|| {
                let opts = TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ctx_in,
                    ..Default::default()
                };
                if name == "xdp" {
                    dataplane.xdp().unwrap().test_run(opts)
                } else {
                    dataplane.classifier(name).unwrap().test_run(opts)
                }
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{name} on {} bytes: test run failed: {e:?}", input.len()));
        let case = format!("{name} on {}", hex_string(&input[..input.len().min(40)]));
        out.truncate(result.data_size_out as usize);
        let delta = self.dataplane.stats().unwrap().since(&before);
        for &r in StatReason::ALL.iter().filter(|r| r.is_outcome()) {
            let expected = u64::from(reasons.contains(&r));
            assert_eq!(
                delta.get(r).packets,
                expected,
                "counter {} after {case}",
                r.name()
            );
        }
        (result.return_value, out, case)
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame made of the literal headers followed by zero payload up to `len` bytes.
fn padded(headers: &str, len: usize) -> Vec<u8> {
    let mut frame = hex(headers);
    frame.resize(len, 0);
    frame
}

#[test]
fn encapsulation_forward_hook() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    // The port program encapsulates exactly as the bridge's does; what it
    // passes, the bridge's program sees next and counts by its reason, so
    // the port counts it as port_passed alone.
    for (f, passes_counted) in [(ENCAP_FORWARD, true), (ENCAP_PORT, false)] {
        let passed = |reason| {
            if passes_counted {
                vec![reason]
            } else {
                vec![StatReason::PortPassed]
            }
        };
        bed.check(
            f,
            &hex(ENCAP_IN),
            TC_ACT_REDIRECT,
            &hex(ENCAP_FORWARD_OUT),
            StatReason::Encapsulated,
        );
        bed.check(
            f,
            &hex(ENCAP_TOS_IN),
            TC_ACT_REDIRECT,
            &hex(ENCAP_TOS_OUT),
            StatReason::Encapsulated,
        );
        bed.check(
            f,
            &hex(ENCAP_INNER_OPTIONS_IN),
            TC_ACT_REDIRECT,
            &hex(ENCAP_INNER_OPTIONS_OUT),
            StatReason::Encapsulated,
        );
        bed.check(
            f,
            &hex(ENCAP_TTL2),
            TC_ACT_REDIRECT,
            &hex(ENCAP_TTL2_FORWARD_OUT),
            StatReason::Encapsulated,
        );
        bed.check_counts(
            f,
            &hex(ENCAP_TTL1),
            TC_ACT_UNSPEC,
            &hex(ENCAP_TTL1),
            &passed(StatReason::StackTtlExpired),
        );
        let big = padded(UDP_1481_HEADER, 14 + 1481);
        bed.check_counts(
            f,
            &big,
            TC_ACT_UNSPEC,
            &big,
            &passed(StatReason::StackTooBig),
        );
        let fits = padded(UDP_1480_HEADER, 14 + 1480);
        let fits_out = padded(UDP_1480_FORWARD_OUT_HEADERS, 14 + 20 + 1480);
        bed.check(
            f,
            &fits,
            TC_ACT_REDIRECT,
            &fits_out,
            StatReason::Encapsulated,
        );
    }
}

#[test]
fn encapsulation_output_hook() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    let o = ENCAP_OUTPUT;
    bed.check(
        o,
        &hex(ENCAP_IN),
        TC_ACT_REDIRECT,
        &hex(ENCAP_OUTPUT_OUT),
        StatReason::Encapsulated,
    );
    // TTL is the host's own business here: TTL 1 is sent, unchanged.
    bed.check(
        o,
        &hex(ENCAP_TTL1),
        TC_ACT_REDIRECT,
        &hex(ENCAP_TTL1_OUTPUT_OUT),
        StatReason::Encapsulated,
    );
    let big = padded(UDP_1481_HEADER, 14 + 1481);
    bed.check(o, &big, TC_ACT_SHOT, &big, StatReason::DropTooBig);
}

#[test]
fn encapsulation_leaves_other_traffic_alone_and_refuses_what_names_no_host() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    for program in [ENCAP_FORWARD, ENCAP_PORT, ENCAP_OUTPUT] {
        for (frame, verdict, reason) in [
            (ENCAP_NOT_OVERLAY, TC_ACT_UNSPEC, StatReason::PassNotOverlay),
            (ENCAP_LOCAL_SLICE, TC_ACT_UNSPEC, StatReason::PassLocalSlice),
            (ARP, TC_ACT_UNSPEC, StatReason::PassNotIpv4),
            (IPV6, TC_ACT_UNSPEC, StatReason::PassNotIpv4),
            (
                ENCAP_RESERVED_NETWORK,
                TC_ACT_SHOT,
                StatReason::DropReservedHost,
            ),
            (
                ENCAP_RESERVED_BROADCAST,
                TC_ACT_SHOT,
                StatReason::DropReservedHost,
            ),
            (
                ENCAP_SOURCE_NOT_LOCAL,
                TC_ACT_SHOT,
                StatReason::DropSourceNotLocal,
            ),
        ] {
            // What the container edge refuses before anything else
            // (docs/security.md): at a port and at the bridge, ARP whose
            // sender (198.18.0.2) is outside this host's slices and any
            // frame neither IPv4 nor ARP; at a port, sources outside the
            // slices.
            let (verdict, reason) = match (program, frame) {
                (ENCAP_PORT | ENCAP_FORWARD, ARP) | (ENCAP_PORT, ENCAP_SOURCE_NOT_LOCAL) => {
                    (TC_ACT_SHOT, StatReason::DropSourceOutsideSlice)
                }
                (ENCAP_PORT | ENCAP_FORWARD, IPV6) => (TC_ACT_SHOT, StatReason::DropNotIpv4OrArp),
                _ => (verdict, reason),
            };
            let frame = hex(frame);
            // Drops are the port's to count; passes the bridge counts next,
            // the port only as port_passed.
            let reason = if program == ENCAP_PORT && verdict != TC_ACT_SHOT {
                StatReason::PortPassed
            } else {
                reason
            };
            bed.check(program, &frame, verdict, &frame, reason);
        }
    }
}

#[test]
fn encapsulation_of_truncated_headers() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    // The kernel refuses skb test runs of IPv4 frames shorter than a basic
    // IPv4 header (EINVAL), so TC sees cuts inside the options: IHL 6 claims
    // 24 bytes and 20 to 23 are there. (The XDP runs below cut everywhere.)
    let full = hex(ENCAP_INNER_OPTIONS_IN);
    for len in 34..38 {
        let frame = &full[..len];
        for program in [ENCAP_FORWARD, ENCAP_OUTPUT] {
            bed.check(
                program,
                frame,
                TC_ACT_UNSPEC,
                frame,
                StatReason::PassMalformedIpv4,
            );
        }
    }
}

/// Decapsulation expectations shared by the TC and the XDP program.
/// `shortest` is the shortest frame the kernel will test-run.
fn decapsulation_cases(bed: &mut Bed, program: &str, verdicts: [u32; 3], shortest: usize) {
    let [ok, pass, drop] = verdicts;
    let d = StatReason::Decapsulated;
    bed.check(program, &hex(DECAP_IN), ok, &hex(DECAP_OUT), d);
    bed.check(
        program,
        &hex(DECAP_OUTER_OPTIONS_IN),
        ok,
        &hex(DECAP_OUT),
        d,
    );
    bed.check(
        program,
        &hex(DECAP_INNER_OPTIONS_IN),
        ok,
        &hex(DECAP_INNER_OPTIONS_OUT),
        d,
    );
    bed.check(program, &hex(DECAP_CE_IN), ok, &hex(DECAP_CE_OUT), d);
    for (frame, verdict, reason) in [
        (DECAP_CE_NOT_ECT, drop, StatReason::DropCeNotEct),
        (DECAP_SPOOFED, drop, StatReason::DropSpoofedSource),
        (
            DECAP_OUTER_SRC_OUTSIDE_UNDERLAY,
            drop,
            StatReason::DropOuterSrcOutsideUnderlay,
        ),
        (
            DECAP_INNER_SRC_OUTSIDE_OVERLAY,
            drop,
            StatReason::DropInnerSrcOutsideOverlay,
        ),
        (
            DECAP_INNER_DST_OUTSIDE_OVERLAY,
            drop,
            StatReason::DropInnerDstNotLocal,
        ),
        (
            DECAP_OUTER_SRC_IS_LOCAL,
            drop,
            StatReason::DropOuterSrcIsLocal,
        ),
        (
            DECAP_OUTER_SRC_BROADCAST,
            drop,
            StatReason::DropOuterSrcReserved,
        ),
        (
            DECAP_OUTER_SRC_NETWORK,
            drop,
            StatReason::DropOuterSrcReserved,
        ),
        (DECAP_FOR_OTHER_HOST, drop, StatReason::DropInnerDstNotLocal),
        (
            DECAP_TO_SLICE_BROADCAST,
            drop,
            StatReason::DropInnerDstReserved,
        ),
        (
            DECAP_TO_SLICE_NETWORK,
            drop,
            StatReason::DropInnerDstReserved,
        ),
        (
            DECAP_TO_LIMITED_BROADCAST,
            drop,
            StatReason::DropInnerDstNotLocal,
        ),
        (DECAP_TO_MULTICAST, drop, StatReason::DropInnerDstNotLocal),
        (DECAP_NOT_FAN, pass, StatReason::PassNotOverlay),
        (DECAP_NOT_FOR_US, pass, StatReason::PassNotLocalUnderlay),
        (DECAP_OUTER_FRAGMENT, pass, StatReason::PassOuterFragment),
        (UNDERLAY_PING, pass, StatReason::PassNotIpip),
        (ARP, pass, StatReason::PassNotIpv4),
        (IPV6, pass, StatReason::PassNotIpv4),
    ] {
        let frame = hex(frame);
        bed.check(program, &frame, verdict, &frame, reason);
    }
    // Every cut inside the headers: outer IPv4 incomplete (left to the stack
    // to reject), then inner IPv4 incomplete (fan traffic for us, dropped);
    // the same with outer options.
    for (fixture, outer_end, inner_end) in [(DECAP_IN, 34, 54), (DECAP_OUTER_OPTIONS_IN, 38, 58)] {
        let full = hex(fixture);
        for len in shortest..inner_end {
            let frame = &full[..len];
            let (verdict, reason) = if len < outer_end {
                (pass, StatReason::PassMalformedIpv4)
            } else {
                (drop, StatReason::DropMalformedInner)
            };
            bed.check(program, frame, verdict, frame, reason);
        }
    }
}

#[test]
fn decapsulation_tc() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    // The kernel refuses skb test runs of IPv4 frames shorter than 34 bytes.
    // Decapsulated packets for the stack go on down the TCX chain (UNSPEC),
    // so programs attached after ours see them too.
    decapsulation_cases(
        &mut bed,
        DECAP_TC,
        [TC_ACT_UNSPEC, TC_ACT_UNSPEC, TC_ACT_SHOT],
        34,
    );
}

#[test]
fn decapsulation_xdp() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    decapsulation_cases(&mut bed, "xdp", [XDP_PASS, XDP_PASS, XDP_DROP], 14);
}

#[test]
fn several_fans_on_one_host() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().with_second_fan();
    let (e, s) = (StatReason::Encapsulated, StatReason::Decapsulated);
    // The first fan is unaffected by the second.
    bed.check(
        ENCAP_FORWARD,
        &hex(ENCAP_IN),
        TC_ACT_REDIRECT,
        &hex(ENCAP_FORWARD_OUT),
        e,
    );
    bed.check(DECAP_TC, &hex(DECAP_IN), TC_ACT_UNSPEC, &hex(DECAP_OUT), s);
    bed.check(
        ENCAP_FORWARD,
        &hex(ENCAP2_IN),
        TC_ACT_REDIRECT,
        &hex(ENCAP2_OUT),
        e,
    );
    let frame = hex(ENCAP_CROSS_IN);
    for program in [ENCAP_FORWARD, ENCAP_PORT, ENCAP_OUTPUT] {
        bed.check(
            program,
            &frame,
            TC_ACT_SHOT,
            &frame,
            StatReason::DropCrossUnderlay,
        );
    }
    for program in [DECAP_TC, "xdp"] {
        let (ok, drop) = if program == "xdp" {
            (XDP_PASS, XDP_DROP)
        } else {
            (TC_ACT_UNSPEC, TC_ACT_SHOT)
        };
        bed.check(program, &hex(DECAP2_IN), ok, &hex(DECAP2_OUT), s);
        for (fixture, reason) in [
            (DECAP2_WRONG_LOCAL, StatReason::DropInnerDstNotLocal),
            (DECAP_CROSS_IN, StatReason::DropOuterSrcOutsideUnderlay),
            (
                DECAP_CROSS_WRONG_UNDERLAY,
                StatReason::DropOuterSrcOutsideUnderlay,
            ),
        ] {
            let frame = hex(fixture);
            bed.check(program, &frame, drop, &frame, reason);
        }
    }
}

#[test]
fn two_overlays_over_one_underlay() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().with_fan_on_the_same_underlay();
    bed.check(
        ENCAP_FORWARD,
        &hex(ENCAP3_IN),
        TC_ACT_REDIRECT,
        &hex(ENCAP3_OUT),
        StatReason::Encapsulated,
    );
    let d = StatReason::Decapsulated;
    bed.check(
        DECAP_TC,
        &hex(DECAP3_IN),
        TC_ACT_UNSPEC,
        &hex(DECAP3_OUT),
        d,
    );
    bed.check("xdp", &hex(DECAP3_IN), XDP_PASS, &hex(DECAP3_OUT), d);
}

#[test]
fn encapsulation_follows_the_underlay_route() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    for program in [ENCAP_FORWARD, ENCAP_PORT, ENCAP_OUTPUT] {
        let forwards = program != ENCAP_OUTPUT;
        let out = if forwards {
            hex(ENCAP_UNRESOLVED_OUT)
        } else {
            // The host's own packet keeps its TTL.
            hex(&ENCAP_UNRESOLVED_OUT.replace("3f013076", "40012f76"))
        };
        bed.check_counts(
            program,
            &hex(ENCAP_UNRESOLVED_IN),
            TC_ACT_REDIRECT,
            &out,
            &[
                StatReason::Encapsulated,
                StatReason::EncapsulatedNeighPending,
            ],
        );
        for (fixture, reason) in [
            (ENCAP_TO_BLACKHOLE, StatReason::DropFibBlackhole),
            (ENCAP_TO_UNREACHABLE, StatReason::DropFibUnreachable),
            (ENCAP_TO_PROHIBITED, StatReason::DropFibProhibit),
            (ENCAP_TO_OTHER_DEVICE, StatReason::DropFibNotForwarded),
        ] {
            let frame = hex(fixture);
            bed.check(program, &frame, TC_ACT_SHOT, &frame, reason);
        }
        // The route's locked MTU counts, not only the device's: 1400 + 20 > 1400.
        let narrow = padded(UDP_1400_TO_NARROW_ROUTE, 14 + 1400);
        if forwards {
            let counted = if program == ENCAP_PORT {
                StatReason::PortPassed
            } else {
                StatReason::StackTooBig
            };
            bed.check(program, &narrow, TC_ACT_UNSPEC, &narrow, counted);
        } else {
            bed.check(
                program,
                &narrow,
                TC_ACT_SHOT,
                &narrow,
                StatReason::DropTooBig,
            );
        }
    }
    bed.ns.sysctl("net.ipv4.conf.eth0.forwarding", "0").unwrap();
    let frame = hex(ENCAP_IN);
    bed.check(
        ENCAP_FORWARD,
        &frame,
        TC_ACT_SHOT,
        &frame,
        StatReason::DropFibForwardingDisabled,
    );
}

#[test]
fn encapsulation_never_writes_a_wrapped_length() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    for program in [ENCAP_FORWARD, ENCAP_PORT, ENCAP_OUTPUT] {
        for fixture in [ENCAP_LEN_65516, ENCAP_LEN_0] {
            let frame = hex(fixture);
            bed.check(
                program,
                &frame,
                TC_ACT_SHOT,
                &frame,
                StatReason::DropInnerTooLong,
            );
        }
    }
}

/// A bed where 250.0.1.10 is bound to one port (`eth1-peer`); the other
/// (`eth0-peer`) is its sibling's. Returns the bed and the two ifindexes.
fn bed_with_250_0_1_10_bound() -> (Bed, u32, u32) {
    use fan_common::maps::Endpoint;
    let mut bed = Bed::new();
    let (port, sibling) = (bed.ifindex("eth1-peer"), bed.ifindex("eth0-peer"));
    let endpoint = Endpoint {
        ifindex: port,
        mac: [0x0a, 0, 0, 0, 0, 2],
        gateway_mac: [0x0a, 0, 0, 0, 0, 1],
    };
    let container = fan_common::WireAddr::from_octets([250, 0, 1, 10]);
    bed.dataplane.insert_endpoint(container, &endpoint).unwrap();
    (bed, port, sibling)
}

#[test]
fn a_port_sends_only_from_addresses_bound_to_it() {
    if !privileged() {
        return;
    }
    let (mut bed, port, sibling) = bed_with_250_0_1_10_bound();
    let (frame, gateway) = (hex(ENCAP_IN), hex(ENCAP_FROM_GATEWAY));
    // 250.0.1.10 is bound to `port`: sent from the sibling's port it is dropped.
    bed.ingress_ifindex = sibling;
    bed.check(
        ENCAP_PORT,
        &frame,
        TC_ACT_SHOT,
        &frame,
        StatReason::DropSourceNotBound,
    );
    bed.check(
        ENCAP_PORT,
        &gateway,
        TC_ACT_SHOT,
        &gateway,
        StatReason::DropSourceReserved,
    );
    // From its own port it goes out as usual.
    bed.ingress_ifindex = port;
    bed.check(
        ENCAP_PORT,
        &frame,
        TC_ACT_REDIRECT,
        &hex(ENCAP_FORWARD_OUT),
        StatReason::Encapsulated,
    );
}

#[test]
fn a_port_sends_no_arp_claim_for_an_address_bound_elsewhere() {
    if !privileged() {
        return;
    }
    let (mut bed, port, sibling) = bed_with_250_0_1_10_bound();
    // From the sibling's port, claims of 250.0.1.10 or of the gateway would
    // teach the host's neighbour table (which the stack path follows).
    bed.ingress_ifindex = sibling;
    for (claim, reason) in [
        (ARP_FROM_BOUND, StatReason::DropSourceNotBound),
        (ARP_FROM_GATEWAY, StatReason::DropSourceReserved),
    ] {
        let frame = hex(claim);
        bed.check(ENCAP_PORT, &frame, TC_ACT_SHOT, &frame, reason);
    }
    // An unbound sender, and the owner's own claim, pass (counted as
    // port_passed alone: the bridge's program counts the outcome).
    let unbound = hex(ARP_FROM_UNBOUND);
    bed.check(
        ENCAP_PORT,
        &unbound,
        TC_ACT_UNSPEC,
        &unbound,
        StatReason::PortPassed,
    );
    bed.ingress_ifindex = port;
    let own = hex(ARP_FROM_BOUND);
    bed.check(
        ENCAP_PORT,
        &own,
        TC_ACT_UNSPEC,
        &own,
        StatReason::PortPassed,
    );
    // The bridge's program has no bindings: it refuses a claim of the
    // gateway's address, and passes any container address's.
    bed.check_untouched(
        ENCAP_FORWARD,
        ARP_FROM_GATEWAY,
        TC_ACT_SHOT,
        StatReason::DropSourceReserved,
    );
    bed.check_untouched(
        ENCAP_FORWARD,
        ARP_FROM_BOUND,
        TC_ACT_UNSPEC,
        StatReason::PassNotIpv4,
    );
}

#[test]
fn a_port_never_sends_dhcp_server_replies() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    bed.ingress_ifindex = bed.ifindex("eth1-peer");
    // A container's own DHCP server: dropped at its port, broadcast or not,
    // and however the bridge's program would have treated it.
    for offer in [DHCP_OFFER_BROADCAST, DHCP_OFFER_REMOTE] {
        let frame = hex(offer);
        bed.check(
            ENCAP_PORT,
            &frame,
            TC_ACT_SHOT,
            &frame,
            StatReason::DropDhcpServerReply,
        );
    }
    // A client's request passes the port (port_passed: the bridge's program
    // counts its outcome next, as not fan traffic) and is never encapsulated.
    let discover = hex(DHCP_DISCOVER);
    bed.check(
        ENCAP_PORT,
        &discover,
        TC_ACT_UNSPEC,
        &discover,
        StatReason::PortPassed,
    );
    bed.check(
        ENCAP_FORWARD,
        &discover,
        TC_ACT_UNSPEC,
        &discover,
        StatReason::PassNotOverlay,
    );
    // Only a datagram's first fragment carries its ports.
    bed.check(
        ENCAP_PORT,
        &hex(DHCP_LIKE_FRAGMENT),
        TC_ACT_REDIRECT,
        &hex(DHCP_LIKE_FRAGMENT_OUT),
        StatReason::Encapsulated,
    );
    // The bridge's program refuses what a server answers into the host
    // (forwarded or not); between ports, the bridge carries it unseen.
    for offer in [DHCP_OFFER_BROADCAST, DHCP_OFFER_REMOTE] {
        bed.check_untouched(
            ENCAP_FORWARD,
            offer,
            TC_ACT_SHOT,
            StatReason::DropDhcpServerReply,
        );
    }
}

#[test]
fn a_port_sends_only_ethernet_ipv4_arp_from_its_own_address() {
    if !privileged() {
        return;
    }
    let (mut bed, port, sibling) = bed_with_250_0_1_10_bound();
    // Hardware type 6 claiming 250.0.1.10 is refused from any port, the
    // owner's too: Ethernet/IPv4 is all a container's ARP may be.
    for from in [sibling, port] {
        bed.ingress_ifindex = from;
        bed.check_untouched(
            ENCAP_PORT,
            ARP_IEEE802_FROM_BOUND,
            TC_ACT_SHOT,
            StatReason::DropArpNotEthernetIpv4,
        );
    }
    // A probe (sender 0.0.0.0, RFC 5227) claims nothing: it passes.
    bed.check_untouched(ENCAP_PORT, ARP_PROBE, TC_ACT_UNSPEC, StatReason::PortPassed);
    // The bridge's program, with no bindings, refuses the same kind.
    bed.check_untouched(
        ENCAP_FORWARD,
        ARP_IEEE802_FROM_BOUND,
        TC_ACT_SHOT,
        StatReason::DropArpNotEthernetIpv4,
    );
    bed.check_untouched(
        ENCAP_FORWARD,
        ARP_PROBE,
        TC_ACT_UNSPEC,
        StatReason::PassNotIpv4,
    );
}

#[test]
fn a_port_sends_dhcp_only_as_a_client() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    bed.ingress_ifindex = bed.ifindex("eth1-peer");
    // A client takes what comes to port 68 from any port: a container's
    // UDP to 68, or from 67, or from 68 to anything but 67, is refused.
    // The bridge's program refuses them too, as they enter the host.
    for program in [ENCAP_PORT, ENCAP_FORWARD] {
        for frame in [
            UDP_TO_CLIENT_PORT,
            UDP_FROM_SERVER_PORT,
            UDP_CLIENT_PORT_ELSEWHERE,
        ] {
            bed.check_untouched(program, frame, TC_ACT_SHOT, StatReason::DropDhcpServerReply);
        }
    }
    // 0.0.0.0 is a source for a client's message to the server (or to
    // 255.255.255.255: DHCP_DISCOVER above), and nothing else.
    bed.check_untouched(
        ENCAP_PORT,
        DHCP_REQUEST_TO_SERVER,
        TC_ACT_UNSPEC,
        StatReason::PortPassed,
    );
    bed.check_untouched(
        ENCAP_PORT,
        UNSPECIFIED_TO_ELSEWHERE,
        TC_ACT_SHOT,
        StatReason::DropSourceOutsideSlice,
    );
    // The bridge's program has no bindings and leaves both to the stack.
    bed.check_untouched(
        ENCAP_FORWARD,
        UNSPECIFIED_TO_ELSEWHERE,
        TC_ACT_UNSPEC,
        StatReason::PassNotOverlay,
    );
}

#[test]
fn a_port_sends_only_ipv4_and_arp_and_containers_no_vlan_tags() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    bed.ingress_ifindex = bed.ifindex("eth1-peer");
    // IPv6 (router advertisements among it) stops at the port, and at the
    // bridge's program: the fan is IPv4 only.
    for program in [ENCAP_PORT, ENCAP_FORWARD] {
        bed.check_untouched(program, IPV6, TC_ACT_SHOT, StatReason::DropNotIpv4OrArp);
    }
    // A VLAN tag in the frame, VLAN 0 included, is refused by the port and
    // by the bridge's program. (A tag the kernel moved into the skb's
    // metadata is refused too; BPF_PROG_TEST_RUN cannot set one.)
    for program in [ENCAP_PORT, ENCAP_FORWARD] {
        for frame in [VLAN_0_ENCAP_IN, VLAN_0_ARP_FROM_BOUND, QINQ_0_ENCAP_IN] {
            bed.check_untouched(program, frame, TC_ACT_SHOT, StatReason::DropVlanTagged);
        }
    }
}

#[test]
fn containers_send_no_tunnel_packets_to_an_underlay() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().with_second_fan();
    bed.ingress_ifindex = bed.ifindex("eth1-peer");
    // The host would masquerade them onto the underlay, where the receiver
    // sees this host's own fan packets: refused by the port and by the
    // bridge's program, which runs without the agent and on every kernel.
    for program in [ENCAP_FORWARD, ENCAP_PORT] {
        for frame in [
            IPIP_TO_UNDERLAY,
            IPV6_IN_IPV4_TO_UNDERLAY,
            GRE_TO_UNDERLAY,
            IPIP_TO_SECOND_UNDERLAY,
        ] {
            bed.check_untouched(
                program,
                frame,
                TC_ACT_SHOT,
                StatReason::DropTunnelToUnderlay,
            );
        }
        // A tunnel to an address outside every underlay is the container's own.
        let passed = match program {
            ENCAP_PORT => StatReason::PortPassed,
            _ => StatReason::PassNotOverlay,
        };
        bed.check_untouched(program, IPIP_ELSEWHERE, TC_ACT_UNSPEC, passed);
    }
}

#[test]
fn containers_never_send_from_their_slices_reserved_addresses() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    bed.ingress_ifindex = bed.ifindex("eth1-peer");
    // The gateway's, network and broadcast addresses, refused by the port
    // and by the bridge's program, which has no bindings to go by.
    for program in [ENCAP_FORWARD, ENCAP_PORT] {
        for frame in [ENCAP_FROM_GATEWAY, ENCAP_FROM_NETWORK, ENCAP_FROM_BROADCAST] {
            bed.check_untouched(program, frame, TC_ACT_SHOT, StatReason::DropSourceReserved);
        }
    }
    // A port sends from this host's slices only, wherever to.
    bed.check_untouched(
        ENCAP_PORT,
        OUTSIDE_SLICE_TO_ELSEWHERE,
        TC_ACT_SHOT,
        StatReason::DropSourceOutsideSlice,
    );
    bed.check_untouched(
        ENCAP_FORWARD,
        OUTSIDE_SLICE_TO_ELSEWHERE,
        TC_ACT_UNSPEC,
        StatReason::PassNotOverlay,
    );
}

#[test]
fn decapsulation_delivers_straight_to_a_known_container() {
    use fan_common::maps::Endpoint;
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    let veth = bed
        .ns
        .enter(|| topology::ifindex("eth0-peer"))
        .unwrap()
        .unwrap();
    let container = fan_common::WireAddr::from_octets([250, 0, 1, 10]);
    let endpoint = Endpoint {
        ifindex: veth,
        mac: [0x0a, 0, 0, 0, 0, 2],
        gateway_mac: [0x0a, 0, 0, 0, 0, 1],
    };
    bed.dataplane.insert_endpoint(container, &endpoint).unwrap();
    let (d, direct) = (StatReason::Decapsulated, StatReason::DecapsulatedDirect);
    // The endpoint map counts only while its keeper beats: never beaten,
    // or beaten longer ago than the timeout, it is not followed.
    bed.check(DECAP_TC, &hex(DECAP_IN), TC_ACT_UNSPEC, &hex(DECAP_OUT), d);
    let now = fan_userspace::dataplane::monotonic_ns();
    let timeout = fan_common::maps::AGENT_HEARTBEAT_TIMEOUT_NS;
    // Past the timeout by more than a tick: the programs read the coarse
    // clock, which lags the agent's by up to one.
    bed.dataplane
        .set_heartbeat(now - timeout - 100_000_000)
        .unwrap();
    bed.check(DECAP_TC, &hex(DECAP_IN), TC_ACT_UNSPEC, &hex(DECAP_OUT), d);
    bed.dataplane.set_heartbeat(now).unwrap();
    bed.check_counts(
        DECAP_TC,
        &hex(DECAP_IN),
        TC_ACT_REDIRECT,
        &hex(DECAP_DIRECT_OUT),
        &[d, direct],
    );
    // TTL 1 is the stack's to answer; XDP never takes the shortcut.
    bed.check(
        DECAP_TC,
        &hex(DECAP_TTL1_IN),
        TC_ACT_UNSPEC,
        &hex(DECAP_TTL1_OUT),
        d,
    );
    bed.check("xdp", &hex(DECAP_IN), XDP_PASS, &hex(DECAP_OUT), d);
    // A stale entry (its veth is gone) falls back to the stack.
    let gone = Endpoint {
        ifindex: 9999,
        ..endpoint
    };
    bed.dataplane.insert_endpoint(container, &gone).unwrap();
    bed.check(DECAP_TC, &hex(DECAP_IN), TC_ACT_UNSPEC, &hex(DECAP_OUT), d);
}

/// The path MTU learned towards 198.18.0.2 and its value, if any.
fn learned(bed: &Bed, host: [u8; 4]) -> Option<u32> {
    let host = u32::from_be_bytes(host);
    bed.dataplane.path_mtu(host).unwrap().map(|p| p.mtu)
}

#[test]
fn path_mtu_is_learned_by_the_kernels_rules_and_only_from_our_packets() {
    if !privileged() {
        return;
    }
    for program in [DECAP_TC, "xdp"] {
        let mut bed = Bed::new();
        let pass = if program == "xdp" {
            XDP_PASS
        } else {
            TC_ACT_UNSPEC
        };
        let check = |bed: &mut Bed, fixture: &str, reasons: &[StatReason]| {
            let frame = hex(fixture);
            bed.check_counts(program, &frame, pass, &frame, reasons);
        };
        let (learned_new, ignored) = (
            &[StatReason::PmtuLearned, StatReason::PmtuHostAdded][..],
            |r| vec![r],
        );
        check(&mut bed, PMTU_1400, learned_new);
        assert_eq!(learned(&bed, [198, 18, 0, 2]), Some(1400), "{program}");
        // An increase waits for the entry to expire; a decrease is learned,
        // also from the shortest quote RFC 792 allows.
        check(
            &mut bed,
            PMTU_1450_HIGHER,
            &ignored(StatReason::PmtuIgnoredNotLower),
        );
        check(&mut bed, PMTU_1300_TRUNCATED, &[StatReason::PmtuLearned]);
        assert_eq!(learned(&bed, [198, 18, 0, 2]), Some(1300), "{program}");
        // 68 is clamped up to the kernel's min_pmtu.
        check(&mut bed, PMTU_68, learned_new);
        assert_eq!(learned(&bed, [198, 18, 0, 3]), Some(552), "{program}");
        for (fixture, reason) in [
            (PMTU_0, StatReason::PmtuIgnoredTooSmall),
            (PMTU_67, StatReason::PmtuIgnoredTooSmall),
            (PMTU_AS_LONG, StatReason::PmtuIgnoredNotSmaller),
            (PMTU_WRONG_QUOTED_SOURCE, StatReason::PmtuRejectedQuote),
            (PMTU_QUOTED_DST_NOT_A_HOST, StatReason::PmtuRejectedQuote),
            (PMTU_QUOTED_DST_BROADCAST, StatReason::PmtuRejectedQuote),
            (PMTU_INNER_NOT_OURS, StatReason::PmtuRejectedInner),
            (PMTU_NOT_FOR_US, StatReason::PassNotIpip),
        ] {
            check(&mut bed, fixture, &ignored(reason));
        }
        // None of those changed what is known.
        assert_eq!(learned(&bed, [198, 18, 0, 4]), None, "{program}");
        assert_eq!(learned(&bed, [203, 0, 113, 9]), None, "{program}");
        assert_eq!(learned(&bed, [198, 18, 0, 2]), Some(1300), "{program}");
    }
}

#[test]
fn packets_too_big_for_the_learned_path_are_answered_or_fragmented() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    let frame = hex(PMTU_1400);
    bed.check_counts(
        DECAP_TC,
        &frame,
        TC_ACT_UNSPEC,
        &frame,
        &[StatReason::PmtuLearned, StatReason::PmtuHostAdded],
    );
    let df = padded(UDP_DF_1381_HEADER, 14 + 1381);
    let answer = hex(UDP_DF_1381_ANSWER);
    let no_df = padded(UDP_1381_HEADER, 14 + 1381);
    let icmp_error = padded(ICMP_ERROR_1381_HEADER, 14 + 1381);
    let fragment = padded(UDP_FRAGMENT_1000_HEADER, 14 + 1000);
    for program in [ENCAP_FORWARD, ENCAP_PORT] {
        // The port counts its passes as port_passed, not by their reason.
        let counted = |reason| {
            if program == ENCAP_PORT {
                StatReason::PortPassed
            } else {
                reason
            }
        };
        bed.check(
            program,
            &fragment,
            TC_ACT_UNSPEC,
            &fragment,
            counted(StatReason::StackFragmentForPath),
        );
        bed.check(
            program,
            &df,
            TC_ACT_REDIRECT,
            &answer,
            StatReason::PmtuAnswered,
        );
        bed.check(
            program,
            &no_df,
            TC_ACT_UNSPEC,
            &no_df,
            counted(StatReason::StackTooBigForPath),
        );
        bed.check(
            program,
            &icmp_error,
            TC_ACT_SHOT,
            &icmp_error,
            StatReason::DropTooBigForPath,
        );
    }
    // The host's own packet (its route carries the path MTU once `fan-xdp
    // run` keeps it): with DF answered into fan-host as its stack would
    // answer for a tunnel; without DF dropped (the answers to its DF
    // packets, or the agent's route, teach the stack to fragment).
    bed.check(
        ENCAP_OUTPUT,
        &padded(HOST_UDP_DF_1381_HEADER, 14 + 1381),
        TC_ACT_REDIRECT,
        &hex(HOST_UDP_DF_1381_ANSWER),
        StatReason::PmtuAnswered,
    );
    bed.check(
        ENCAP_OUTPUT,
        &no_df,
        TC_ACT_SHOT,
        &no_df,
        StatReason::DropTooBigForPath,
    );
    // 1380 + 20 fits the path: encapsulated as usual.
    let fits = padded(UDP_DF_1380_HEADER, 14 + 1380);
    let fits_out = padded(UDP_DF_1380_FORWARD_OUT_HEADERS, 14 + 20 + 1380);
    bed.check(
        ENCAP_FORWARD,
        &fits,
        TC_ACT_REDIRECT,
        &fits_out,
        StatReason::Encapsulated,
    );
}

#[test]
fn answers_are_rate_limited_per_cpu() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new();
    let frame = hex(PMTU_1400);
    bed.check_counts(
        DECAP_TC,
        &frame,
        TC_ACT_UNSPEC,
        &frame,
        &[StatReason::PmtuLearned, StatReason::PmtuHostAdded],
    );
    let df = padded(UDP_DF_1381_HEADER, 14 + 1381);
    let before = bed.dataplane.stats().unwrap();
    let runs = 1200u64;
    let started = std::time::Instant::now();
    let dataplane = &mut bed.dataplane;
    bed.ns
        .enter(|| {
            let program = dataplane.classifier(ENCAP_FORWARD).unwrap();
            let mut out = vec![0u8; df.len() + 64];
            for _ in 0..runs {
                let opts = TestRunOptions {
                    data_in: Some(&df),
                    data_out: Some(&mut out),
                    ..Default::default()
                };
                program.test_run(opts).unwrap();
            }
        })
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let delta = bed.dataplane.stats().unwrap().since(&before);
    let answered = delta.get(StatReason::PmtuAnswered).packets;
    let suppressed = delta.get(StatReason::PmtuAnswerSuppressed).packets;
    assert_eq!(answered + suppressed, runs);
    // A burst of 1000, then 1000 a second per CPU; the runs may move
    // between the CPUs.
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let allowed = cpus * (1000.0 + 1000.0 * elapsed) + 1.0;
    assert!(
        (answered as f64) <= allowed,
        "{answered} answers in {elapsed:.3} s on {cpus} CPUs"
    );
    assert!(
        answered >= 1000,
        "{answered} answers: the burst was not granted"
    );
    if cpus * (1000.0 + 1000.0 * elapsed) < runs as f64 {
        assert!(suppressed > 0, "no answer suppressed in {elapsed:.3} s");
    }
}
