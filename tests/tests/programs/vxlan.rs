//! The VXLAN fan's programs on literal frames: `fan_vxlan_out` at the
//! overlay port, the receive policy's VXLAN branch at the underlay (TC and
//! XDP). The fan: overlay 250.0.0.0/8 over 198.18.0.0/16 as VXLAN, port
//! 8472, VNI 16384000, this host 198.18.0.1 (slice 250.0.1.0/24).
//! Fixtures were built and their checksums computed by a separate script,
//! not by fan-xdp; the outer UDP source port, hashed from the flow with a
//! per-boot key, is written 0000 there and checked for its range here.

use fan_common::{
    Encap, FanEntry, StatReason,
    maps::Endpoint,
    vxlan::{SOURCE_PORT_MAX, SOURCE_PORT_MIN, VXLAN_DEFAULT_PORT, default_vni},
};
use fan_tests::{hex, privileged, topology};
use fan_userspace::dataplane::{DECAP_TC, ENCAP_FORWARD, ENCAP_PORT, VXLAN_OUT};

use super::{
    Bed, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, hex_string, padded,
};

// A container (0a:..:01:0a) on-link to a remote one (0a:..:02:14), 250.0.1.10 -> 250.0.2.20 ICMP.
const VXLAN_OUT_IPV4_IN: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
// Encapsulated to 198.18.0.2: outer UDP 17, DF, TTL 64, ID 0, total 82; UDP (source port
// masked: hashed from the flow) to 8472, length 62, checksum 0; VXLAN I flag, VNI 16384000;
// the inner frame as it was (switched: TTL 64 kept).
const VXLAN_OUT_IPV4_OUT: &str = "020000000022 020000000011 0800
    45000052 00004000 4011ae73 c6120001 c6120002
    00002118 003e0000 08000000 fa000000
    0a0000000214 0a000000010a 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
// TOS 0xb9 is copied to the outer header.
const VXLAN_OUT_TOS_IN: &str = "0a0000000214 0a000000010a 0800
    45b90020 12344000 400130d1 fa00010a fa000214
    0800e139 42420001 66616e21";

const VXLAN_OUT_TOS_OUT: &str = "020000000022 020000000011 0800
    45b90052 00004000 4011adba c6120001 c6120002
    00002118 003e0000 08000000 fa000000
    0a0000000214 0a000000010a 0800
    45b90020 12344000 400130d1 fa00010a fa000214
    0800e139 42420001 66616e21";
// ARP request who-has 250.0.2.20 tell 250.0.1.10, broadcast.
const VXLAN_OUT_ARP_IN: &str = "ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 010a0000
    00000000 fa000214";
// Unicast to the target's host, 198.18.0.2: TOS 0, UDP length 58, the frame as it was.
const VXLAN_OUT_ARP_OUT: &str = "020000000022 020000000011 0800
    4500004e 00004000 4011ae77 c6120001 c6120002
    00002118 003a0000 08000000 fa000000
    ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 010a0000
    00000000 fa000214";
// ARP reply 250.0.1.10 is-at 0a:..:01:0a to 250.0.2.20.
const VXLAN_OUT_ARP_REPLY_IN: &str = "0a0000000214 0a000000010a 0806
    00010800 06040002 0a000000 010afa00 010a0a00
    00000214 fa000214";

const VXLAN_OUT_ARP_REPLY_OUT: &str = "020000000022 020000000011 0800
    4500004e 00004000 4011ae77 c6120001 c6120002
    00002118 003a0000 08000000 fa000000
    0a0000000214 0a000000010a 0806
    00010800 06040002 0a000000 010afa00 010a0a00
    00000214 fa000214";
// IPv6: the Fan's VXLAN carries none.
const VXLAN_OUT_IPV6: &str = "0a0000000214 0a000000010a 86dd
    60000000 00003b40 fe800000 00000000 00000000
    00000002 fe800000 00000000 00000000 00000001";
// IPv6 to a multicast MAC (all nodes), as the bridge floods it.
const VXLAN_OUT_IPV6_MULTICAST: &str = "333300000001 0a000000010a 86dd
    60000000 00003b40 fe800000 00000000 00000000
    00000002 ff020000 00000000 00000000 00000001";
// 250.0.1.10 -> 10.1.2.3: outside the overlay.
const VXLAN_OUT_NOT_OVERLAY: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 4001219b fa00010a 0a010203
    0800e139 42420001 66616e21";
// 250.0.1.10 -> 250.0.1.20: this host's slice.
const VXLAN_OUT_LOCAL_SLICE: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 4001328a fa00010a fa000114
    0800e139 42420001 66616e21";
// 250.0.0.5 maps to 198.18.0.0, the underlay's network address.
const VXLAN_OUT_RESERVED: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 40013399 fa00010a fa000005
    0800e139 42420001 66616e21";
// Source 250.0.3.3 is 198.18.0.3's.
const VXLAN_OUT_SOURCE_NOT_LOCAL: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 40012f91 fa000303 fa000214
    0800e139 42420001 66616e21";
// ARP for 250.0.1.20, in this host's slice.
const VXLAN_OUT_ARP_TARGET_LOCAL: &str = "ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 010a0000
    00000000 fa000114";
// ARP from 250.0.3.3, 198.18.0.3's.
const VXLAN_OUT_ARP_SENDER_NOT_LOCAL: &str = "ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 03030000
    00000000 fa000214";
// ARP operation 3 (a RARP request): neither request nor reply.
const VXLAN_OUT_ARP_OP3: &str = "ffffffffffff 0a000000010a 0806
    00010800 06040003 0a000000 010afa00 010a0000
    00000000 fa000214";
// ARP of hardware type 6 (IEEE 802).
const VXLAN_OUT_ARP_HW6: &str = "ffffffffffff 0a000000010a 0806
    00060800 06040001 0a000000 010afa00 010a0000
    00000000 fa000214";
// ARP cut short before its target.
const VXLAN_OUT_ARP_SHORT: &str = "ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 010a0000";
// 250.0.1.10 -> 240.0.2.20: an IP-in-IP fan's overlay.
const VXLAN_OUT_SECOND_FAN: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 40013b8a fa00010a f0000214
    0800e139 42420001 66616e21";
// UDP of total length 1451 (zeros follow): over the 1450 a 1500 underlay leaves.
const VXLAN_OUT_UDP_1451_HEADERS: &str = "0a0000000214 0a000000010a 0800
    450005ab 12344000 40112bef fa00010a fa000214";
// Total length 1450: fits exactly.
const VXLAN_OUT_UDP_1450_HEADERS: &str = "0a0000000214 0a000000010a 0800
    450005aa 12344000 40112bf0 fa00010a fa000214";

const VXLAN_OUT_UDP_1450_OUT_HEADERS: &str = "020000000022 020000000011 0800
    450005dc 00004000 4011a8e9 c6120001 c6120002
    00002118 05c80000 08000000 fa000000
    0a0000000214 0a000000010a 0800
    450005aa 12344000 40112bf0 fa00010a fa000214";
// From 198.18.0.2 (UDP 40000 -> 8472, VNI 16384000): 0a:..:02:14 to 0a:..:01:0a,
// 250.0.2.20 -> 250.0.1.10 ICMP.
const VXLAN_RX_IPV4: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// What the bridge gets through the overlay port: the inner frame as it was sent.
const VXLAN_RX_IPV4_INNER: &str = "0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// VNI 16384001: no fan's.
const VXLAN_RX_OTHER_VNI: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000100
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// To port 4789: no fan's.
const VXLAN_RX_OTHER_PORT: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c4012b5 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// The I flag clear: no VNI.
const VXLAN_RX_NO_I_FLAG: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 00000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// To 198.18.0.7: not this host.
const VXLAN_RX_NOT_FOR_US: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae6d c6120002 c6120007
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// The outer header with MF: a first fragment.
const VXLAN_RX_FRAGMENT: &str = "020000000011 020000000022 0800
    45000052 00002000 4011ce73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer source 203.0.113.2: outside the underlay.
const VXLAN_RX_OUTER_SRC_OUTSIDE: &str = "020000000011 020000000022 0800
    45000052 00004000 40113885 cb007102 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer source 198.18.255.255: the underlay's broadcast address.
const VXLAN_RX_OUTER_SRC_RESERVED: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae75 c612ffff c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer source 198.18.0.1: this host itself.
const VXLAN_RX_OUTER_SRC_LOCAL: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae74 c6120001 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer source 198.18.0.3 does not own 250.0.2.20.
const VXLAN_RX_SPOOFED: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae72 c6120003 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Inner destination 250.0.3.3: 198.18.0.3's slice.
const VXLAN_RX_INNER_DST_NOT_LOCAL: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 40012f91 fa000214 fa000303
    0800e139 42420001 66616e21";
// Inner destination 250.0.1.255: the slice's broadcast address.
const VXLAN_RX_INNER_DST_RESERVED: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 40013095 fa000214 fa0001ff
    0800e139 42420001 66616e21";
// Inner source 10.9.9.9: outside every overlay.
const VXLAN_RX_INNER_SRC_OUTSIDE: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 40011a8d 0a090909 fa00010a
    0800e139 42420001 66616e21";
// Inner IPv6.
const VXLAN_RX_IPV6: &str = "020000000011 020000000022 0800
    4500005a 00004000 4011ae6b c6120002 c6120001
    9c402118 00460000 08000000 fa000000
    0a000000010a 0a0000000214 86dd
    60000000 00003b40 fe800000 00000000 00000000
    00000002 fe800000 00000000 00000000 00000001";
// Inner IPv4 to the broadcast MAC.
const VXLAN_RX_BROADCAST_IPV4: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    ffffffffffff 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Inner IPv4 header of version 5.
const VXLAN_RX_MALFORMED: &str = "020000000011 020000000022 0800
    45000052 00004000 4011ae73 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    55000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer CE over a Not-ECT inner packet.
const VXLAN_RX_CE_NOT_ECT: &str = "020000000011 020000000022 0800
    45030052 00004000 4011ae70 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
// Outer CE over inner ECT(0): the inner becomes CE.
const VXLAN_RX_CE_IN: &str = "020000000011 020000000022 0800
    45030052 00004000 4011ae70 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45020020 12344000 40013188 fa000214 fa00010a
    0800e139 42420001 66616e21";

const VXLAN_RX_CE_INNER: &str = "0a000000010a 0a0000000214 0800
    45030020 12344000 40013187 fa000214 fa00010a
    0800e139 42420001 66616e21";
// ARP request who-has 250.0.1.10 tell 250.0.2.20, broadcast.
const VXLAN_RX_ARP_REQUEST: &str = "020000000011 020000000022 0800
    4500004e 00004000 4011ae77 c6120002 c6120001
    9c402118 003a0000 08000000 fa000000
    ffffffffffff 0a0000000214 0806
    00010800 06040001 0a000000 0214fa00 02140000
    00000000 fa00010a";

const VXLAN_RX_ARP_REQUEST_INNER: &str = "ffffffffffff 0a0000000214 0806
    00010800 06040001 0a000000 0214fa00 02140000
    00000000 fa00010a";
// ARP reply 250.0.2.20 is-at 0a:..:02:14, unicast.
const VXLAN_RX_ARP_REPLY: &str = "020000000011 020000000022 0800
    4500004e 00004000 4011ae77 c6120002 c6120001
    9c402118 003a0000 08000000 fa000000
    0a000000010a 0a0000000214 0806
    00010800 06040002 0a000000 0214fa00 02140a00
    0000010a fa00010a";

const VXLAN_RX_ARP_REPLY_INNER: &str = "0a000000010a 0a0000000214 0806
    00010800 06040002 0a000000 0214fa00 02140a00
    0000010a fa00010a";
// An ARP reply to the broadcast MAC.
const VXLAN_RX_ARP_REPLY_BROADCAST: &str = "020000000011 020000000022 0800
    4500004e 00004000 4011ae77 c6120002 c6120001
    9c402118 003a0000 08000000 fa000000
    ffffffffffff 0a0000000214 0806
    00010800 06040002 0a000000 0214fa00 02140a00
    0000010a fa00010a";
// ARP operation 3.
const VXLAN_RX_ARP_OP3: &str = "020000000011 020000000022 0800
    4500004e 00004000 4011ae77 c6120002 c6120001
    9c402118 003a0000 08000000 fa000000
    ffffffffffff 0a0000000214 0806
    00010800 06040003 0a000000 0214fa00 02140000
    00000000 fa00010a";
// ARP from 250.0.3.3 sent by 198.18.0.2.
const VXLAN_RX_ARP_SPOOFED: &str = "020000000011 020000000022 0800
    4500004e 00004000 4011ae77 c6120002 c6120001
    9c402118 003a0000 08000000 fa000000
    ffffffffffff 0a0000000214 0806
    00010800 06040001 0a000000 0214fa00 03030000
    00000000 fa00010a";
// ARP for 250.0.3.3: 198.18.0.3's slice.
const VXLAN_RX_ARP_TARGET_NOT_LOCAL: &str = "020000000011 020000000022 0800
    4500004e 00004000 4011ae77 c6120002 c6120001
    9c402118 003a0000 08000000 fa000000
    ffffffffffff 0a0000000214 0806
    00010800 06040001 0a000000 0214fa00 02140000
    00000000 fa000303";

// A container routing through its gateway (02:..:01) to 250.0.2.20.
const VXLAN_PORT_ROUTED_IN: &str = "020000000001 0a000000010a 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
// Routed as the host would: to the remote container's MAC from the host's neighbour
// table, from the bridge's, TTL 63; then encapsulated.
const VXLAN_PORT_ROUTED_OUT: &str = "020000000022 020000000011 0800
    45000052 00004000 4011ae73 c6120001 c6120002
    00002118 003e0000 08000000 fa000000
    0a0000000214 020000000001 0800
    45000020 12344000 3f01328a fa00010a fa000214
    0800e139 42420001 66616e21";
// To 250.0.2.21 through the gateway: no neighbour entry yet.
const VXLAN_PORT_NO_NEIGHBOUR: &str = "020000000001 0a000000010a 0800
    45000020 12344000 40013189 fa00010a fa000215
    0800e139 42420001 66616e21";
// A container's UDP to 198.18.0.2 port 8472 with the fan's VNI: the fan's VXLAN.
const VXLAN_TUNNEL_TO_UNDERLAY: &str = "020000000001 0a000000010a 0800
    45000028 12344000 40116772 fa00010a c6120002
    9c402118 00140000 08000000 fa000000 66616e21";
// The same with VNI 16384001: no fan's.
const VXLAN_OTHER_VNI_TO_UNDERLAY: &str = "020000000001 0a000000010a 0800
    45000028 12344000 40116772 fa00010a c6120002
    9c402118 00140000 08000000 fa000100 66616e21";

// A router (198.18.0.254) says our VXLAN packet of 1500 bytes to 198.18.0.2 needs 1400,
// quoting the outer IPv4, UDP and VXLAN headers and the inner frame's Ethernet and IPv4 ones.
const VXLAN_PMTU_1400: &str = "020000000011 020000000022 0800
    45000062 00000000 4001ed77 c61200fe c6120001
    03041344 00000578 450005dc 00004000 4011a8e9
    c6120001 c6120002 9c402118 05c80000 08000000
    fa000000 0a000000 02140a00 0000010a 08004500
    05941234 40004011 2c06fa00 010afa00 0214";
// The same quoting only the 8 bytes RFC 792 promises: no VNI to tell it ours.
const VXLAN_PMTU_UDP_ONLY: &str = "020000000011 020000000022 0800
    45000038 00000000 4001eda1 c61200fe c6120001
    03043463 00000578 450005dc 00004000 4011a8e9
    c6120001 c6120002 9c402118 05c80000";
// Quoting VXLAN of another VNI: not ours.
const VXLAN_PMTU_OTHER_VNI: &str = "020000000011 020000000022 0800
    45000062 00000000 4001ed77 c61200fe c6120001
    03041244 00000578 450005dc 00004000 4011a8e9
    c6120001 c6120002 9c402118 05c80000 08000000
    fa000100 0a000000 02140a00 0000010a 08004500
    05941234 40004011 2c06fa00 010afa00 0214";
// Quoting an inner packet from 250.0.3.3, not from our slice.
const VXLAN_PMTU_INNER_NOT_OURS: &str = "020000000011 020000000022 0800
    45000062 00000000 4001ed77 c61200fe c6120001
    03041344 00000578 450005dc 00004000 4011a8e9
    c6120001 c6120002 9c402118 05c80000 08000000
    fa000000 0a000000 02140a00 0000010a 08004500
    05941234 40004011 2a0dfa00 0303fa00 0214";

// UDP of total length 1351: with 50 bytes over a learned 1400.
const VXLAN_OUT_UDP_1351_HEADERS: &str = "0a0000000214 0a000000010a 0800
    45000547 12344000 40112c53 fa00010a fa000214";
// Total length 1350: fits the learned 1400 exactly.
const VXLAN_OUT_UDP_1350_HEADERS: &str = "0a0000000214 0a000000010a 0800
    45000546 12344000 40112c54 fa00010a fa000214";

const VXLAN_OUT_UDP_1350_OUT_HEADERS: &str = "020000000022 020000000011 0800
    45000578 00004000 4011a94d c6120001 c6120002
    00002118 05640000 08000000 fa000000
    0a0000000214 0a000000010a 0800
    45000546 12344000 40112c54 fa00010a fa000214";

/// Where the outer UDP source port sits in an encapsulated frame.
const SOURCE_PORT: std::ops::Range<usize> = 34..36;

impl Bed {
    /// The bed with its fan made a VXLAN fan, whose overlay port is `eth1`
    /// and slice bridge `br0` (02:..:01, 250.0.1.1/8 on-link, one port
    /// `c0` for a carrier), where the host knows 250.0.2.20 at 0a:..:02:14.
    fn vxlan() -> Self {
        let mut bed = Bed::new();
        for args in [
            &[
                "link",
                "add",
                "br0",
                "address",
                "02:00:00:00:00:01",
                "type",
                "bridge",
            ][..],
            &[
                "link", "add", "c0", "type", "veth", "peer", "name", "c0-peer",
            ],
            &["link", "set", "c0", "master", "br0", "up"],
            &["link", "set", "c0-peer", "up"],
            &["link", "set", "br0", "up"],
            &["addr", "add", "250.0.1.1/8", "dev", "br0"],
            &[
                "neigh",
                "add",
                "250.0.2.20",
                "lladdr",
                "0a:00:00:00:02:14",
                "dev",
                "br0",
            ],
        ] {
            bed.ns.ip(args).unwrap();
        }
        let overlay_port = bed.ifindex("eth1");
        let underlay = bed.ifindex("eth0");
        let entry = FanEntry {
            encap: Encap::Vxlan as u8,
            vxlan_port: VXLAN_DEFAULT_PORT,
            vni: default_vni(u32::from(topology::OVERLAY.0)),
            overlay_port_ifindex: overlay_port,
            bridge_ifindex: bed.ifindex("br0"),
            ..FanEntry::ipip(
                topology::fan_map(),
                u32::from_be_bytes([198, 18, 0, 1]),
                underlay,
                1450,
            )
        };
        bed.dataplane.insert_fan(&entry).unwrap();
        bed
    }

    /// Runs `fan_vxlan_out` on `input`, which it must encapsulate into
    /// `output` (its source port aside), counting `encapsulated` once.
    /// Returns the source port.
    #[track_caller]
    fn check_vxlan_out(&mut self, input: &[u8], output: &[u8]) -> u16 {
        let encapsulated = [StatReason::Encapsulated];
        let (verdict, mut out, case) = self.run_counted(VXLAN_OUT, input, &encapsulated);
        assert_eq!(verdict, TC_ACT_REDIRECT, "verdict of {case}");
        assert!(out.len() >= SOURCE_PORT.end, "{case}: {}", hex_string(&out));
        let port = u16::from_be_bytes([out[34], out[35]]);
        assert!(
            (SOURCE_PORT_MIN..SOURCE_PORT_MAX).contains(&port),
            "source port {port} of {case}"
        );
        out[SOURCE_PORT].fill(0);
        assert_eq!(hex_string(&out), hex_string(output), "bytes out of {case}");
        port
    }
}

#[test]
fn the_overlay_port_encapsulates_ipv4_by_destination_and_arp_by_target() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    let first = bed.check_vxlan_out(&hex(VXLAN_OUT_IPV4_IN), &hex(VXLAN_OUT_IPV4_OUT));
    let again = bed.check_vxlan_out(&hex(VXLAN_OUT_IPV4_IN), &hex(VXLAN_OUT_IPV4_OUT));
    assert_eq!(first, again, "one flow, one source port");
    bed.check_vxlan_out(&hex(VXLAN_OUT_TOS_IN), &hex(VXLAN_OUT_TOS_OUT));
    bed.check_vxlan_out(&hex(VXLAN_OUT_ARP_IN), &hex(VXLAN_OUT_ARP_OUT));
    bed.check_vxlan_out(&hex(VXLAN_OUT_ARP_REPLY_IN), &hex(VXLAN_OUT_ARP_REPLY_OUT));
    // 1450 + 50 fills the 1500-byte underlay exactly.
    bed.check_vxlan_out(
        &padded(VXLAN_OUT_UDP_1450_HEADERS, 14 + 1450),
        &padded(VXLAN_OUT_UDP_1450_OUT_HEADERS, 14 + 1450 + 50),
    );
}

#[test]
fn the_overlay_port_drops_what_the_fan_does_not_send() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan().with_second_fan();
    for (frame, reason) in [
        (VXLAN_OUT_IPV6, StatReason::DropVxlanNotIpv4OrArp),
        (VXLAN_OUT_NOT_OVERLAY, StatReason::DropVxlanNotOverlay),
        (VXLAN_OUT_SECOND_FAN, StatReason::DropVxlanNotOverlay),
        (VXLAN_OUT_LOCAL_SLICE, StatReason::DropVxlanLocalSlice),
        (VXLAN_OUT_RESERVED, StatReason::DropReservedHost),
        (VXLAN_OUT_SOURCE_NOT_LOCAL, StatReason::DropSourceNotLocal),
        (
            VXLAN_OUT_ARP_SENDER_NOT_LOCAL,
            StatReason::DropSourceNotLocal,
        ),
        (VXLAN_OUT_ARP_OP3, StatReason::DropVxlanArpNotRequestOrReply),
        (VXLAN_OUT_ARP_HW6, StatReason::DropVxlanArpNotRequestOrReply),
        (
            VXLAN_OUT_ARP_SHORT,
            StatReason::DropVxlanArpNotRequestOrReply,
        ),
    ] {
        bed.check_untouched(VXLAN_OUT, frame, TC_ACT_SHOT, reason);
    }
    // What the bridge floods to every port and names no other host: not
    // sent, and no drop event either.
    for frame in [VXLAN_OUT_ARP_TARGET_LOCAL, VXLAN_OUT_IPV6_MULTICAST] {
        let not_sent = StatReason::VxlanFloodNotSent;
        bed.check_untouched(VXLAN_OUT, frame, TC_ACT_SHOT, not_sent);
    }
    // One byte over the fan's MTU: switched, so nobody could be told.
    let too_big = padded(VXLAN_OUT_UDP_1451_HEADERS, 14 + 1451);
    let shot = StatReason::DropVxlanTooBig;
    bed.check(VXLAN_OUT, &too_big, TC_ACT_SHOT, &too_big, shot);
}

#[test]
fn vxlan_is_decapsulated_into_the_frame_that_was_sent_and_handed_to_the_bridge() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    let d = StatReason::Decapsulated;
    for (input, inner) in [
        (VXLAN_RX_IPV4, VXLAN_RX_IPV4_INNER),
        (VXLAN_RX_ARP_REQUEST, VXLAN_RX_ARP_REQUEST_INNER),
        (VXLAN_RX_ARP_REPLY, VXLAN_RX_ARP_REPLY_INNER),
        // The outer CE mark carried into the ECN-capable inner header.
        (VXLAN_RX_CE_IN, VXLAN_RX_CE_INNER),
    ] {
        bed.check(DECAP_TC, &hex(input), TC_ACT_REDIRECT, &hex(inner), d);
    }
    // XDP leaves VXLAN to the TC program, as it is.
    let xdp_pass = StatReason::PassVxlanAtXdp;
    bed.check_untouched("xdp", VXLAN_RX_IPV4, XDP_PASS, xdp_pass);
    bed.check_untouched("xdp", VXLAN_RX_ARP_REQUEST, XDP_PASS, xdp_pass);
}

#[test]
fn vxlan_of_no_fan_is_left_to_the_stack() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    for (frame, reason) in [
        (VXLAN_RX_OTHER_VNI, StatReason::PassNotIpip),
        (VXLAN_RX_OTHER_PORT, StatReason::PassNotIpip),
        (VXLAN_RX_NO_I_FLAG, StatReason::PassNotIpip),
        (VXLAN_RX_NOT_FOR_US, StatReason::PassNotIpip),
        (VXLAN_RX_FRAGMENT, StatReason::PassOuterFragment),
    ] {
        bed.check_untouched(DECAP_TC, frame, TC_ACT_UNSPEC, reason);
        bed.check_untouched("xdp", frame, XDP_PASS, reason);
    }
}

#[test]
fn the_vxlan_receive_policy_names_every_drop() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    for (frame, reason) in [
        (
            VXLAN_RX_OUTER_SRC_OUTSIDE,
            StatReason::DropOuterSrcOutsideUnderlay,
        ),
        (
            VXLAN_RX_OUTER_SRC_RESERVED,
            StatReason::DropOuterSrcReserved,
        ),
        (VXLAN_RX_OUTER_SRC_LOCAL, StatReason::DropOuterSrcIsLocal),
        (VXLAN_RX_SPOOFED, StatReason::DropSpoofedSource),
        (
            VXLAN_RX_INNER_DST_NOT_LOCAL,
            StatReason::DropInnerDstNotLocal,
        ),
        (
            VXLAN_RX_INNER_DST_RESERVED,
            StatReason::DropInnerDstReserved,
        ),
        (
            VXLAN_RX_INNER_SRC_OUTSIDE,
            StatReason::DropInnerSrcOutsideOverlay,
        ),
        (VXLAN_RX_IPV6, StatReason::DropVxlanNotIpv4OrArp),
        (
            VXLAN_RX_BROADCAST_IPV4,
            StatReason::DropVxlanBroadcastNotArp,
        ),
        (VXLAN_RX_MALFORMED, StatReason::DropMalformedInner),
        (VXLAN_RX_CE_NOT_ECT, StatReason::DropCeNotEct),
        (
            VXLAN_RX_ARP_REPLY_BROADCAST,
            StatReason::DropVxlanBroadcastNotArp,
        ),
        (VXLAN_RX_ARP_OP3, StatReason::DropVxlanArpNotRequestOrReply),
        (VXLAN_RX_ARP_SPOOFED, StatReason::DropSpoofedSource),
        (
            VXLAN_RX_ARP_TARGET_NOT_LOCAL,
            StatReason::DropInnerDstNotLocal,
        ),
    ] {
        bed.check_untouched(DECAP_TC, frame, TC_ACT_SHOT, reason);
        bed.check_untouched("xdp", frame, XDP_DROP, reason);
    }
}

#[test]
fn vxlan_switched_to_a_known_container_goes_straight_in() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    let veth = bed.ifindex("eth0-peer");
    let container = fan_common::WireAddr::from_octets([250, 0, 1, 10]);
    let endpoint = Endpoint {
        ifindex: veth,
        mac: [0x0a, 0, 0, 0, 0x01, 0x0a],
        gateway_mac: [0x02, 0, 0, 0, 0, 0x01],
    };
    bed.dataplane.insert_endpoint(container, &endpoint).unwrap();
    bed.dataplane
        .set_heartbeat(fan_userspace::dataplane::monotonic_ns())
        .unwrap();
    let (input, inner) = (hex(VXLAN_RX_IPV4), hex(VXLAN_RX_IPV4_INNER));
    let (d, direct) = (StatReason::Decapsulated, StatReason::DecapsulatedDirect);
    // Switched, not routed: the frame as it was sent, TTL and MACs kept.
    bed.check_counts(DECAP_TC, &input, TC_ACT_REDIRECT, &inner, &[d, direct]);
    // ARP is the bridge's to deliver.
    let (arp, arp_inner) = (hex(VXLAN_RX_ARP_REQUEST), hex(VXLAN_RX_ARP_REQUEST_INNER));
    bed.check(DECAP_TC, &arp, TC_ACT_REDIRECT, &arp_inner, d);
    // A frame for another MAC than the container's goes through the bridge.
    let elsewhere = Endpoint {
        mac: [0x0a, 0, 0, 0, 0x01, 0x0b],
        ..endpoint
    };
    bed.dataplane
        .insert_endpoint(container, &elsewhere)
        .unwrap();
    bed.check(DECAP_TC, &input, TC_ACT_REDIRECT, &inner, d);
}

#[test]
fn a_vxlan_fans_ports_encapsulate_switched_frames_as_they_are_and_route_the_rest() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    let port = bed.ifindex("c0");
    bed.ingress_ifindex = port;
    let sender = Endpoint {
        ifindex: port,
        mac: [0x0a, 0, 0, 0, 0x01, 0x0a],
        gateway_mac: [0x02, 0, 0, 0, 0, 0x01],
    };
    let passed = StatReason::PortPassed;
    // A sender the agent does not know yet: left to the bridge.
    bed.check_untouched(ENCAP_PORT, VXLAN_OUT_IPV4_IN, TC_ACT_UNSPEC, passed);
    let container = fan_common::WireAddr::from_octets([250, 0, 1, 10]);
    bed.dataplane.insert_endpoint(container, &sender).unwrap();
    let encapsulated = [StatReason::Encapsulated];
    for (input, output) in [
        // To a remote container's MAC (the overlay on-link): switched, TTL kept.
        (VXLAN_OUT_IPV4_IN, VXLAN_OUT_IPV4_OUT),
        // To the gateway: routed to the neighbour's MAC, TTL taken.
        (VXLAN_PORT_ROUTED_IN, VXLAN_PORT_ROUTED_OUT),
    ] {
        let (verdict, mut out, case) = bed.run_counted(ENCAP_PORT, &hex(input), &encapsulated);
        assert_eq!(verdict, TC_ACT_REDIRECT, "verdict of {case}");
        out[SOURCE_PORT].fill(0);
        assert_eq!(hex_string(&out), hex_string(&hex(output)), "{case}");
    }
    // No neighbour entry yet: the host resolves it through the overlay port.
    bed.check_untouched(ENCAP_PORT, VXLAN_PORT_NO_NEIGHBOUR, TC_ACT_UNSPEC, passed);
    // The bridge's program leaves a VXLAN fan's packets to the host, which
    // routes them back to the bridge.
    bed.ingress_ifindex = 0;
    let via_port = StatReason::PassVxlanViaOverlayPort;
    bed.check_untouched(ENCAP_FORWARD, VXLAN_PORT_ROUTED_IN, TC_ACT_UNSPEC, via_port);
    // A remote container's ARP, handed to the bridge by the overlay port,
    // reaches the host (the receive policy checked its sender).
    let not_ipv4 = StatReason::PassNotIpv4;
    bed.check_untouched(
        ENCAP_FORWARD,
        VXLAN_RX_ARP_REQUEST_INNER,
        TC_ACT_UNSPEC,
        not_ipv4,
    );
}

#[test]
fn containers_send_no_vxlan_of_a_fan_to_an_underlay() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    // Masqueraded by the host, it would reach 198.18.0.2 as this host's
    // own VXLAN.
    let tunnel = StatReason::DropTunnelToUnderlay;
    bed.check_untouched(ENCAP_FORWARD, VXLAN_TUNNEL_TO_UNDERLAY, TC_ACT_SHOT, tunnel);
    // Another VNI names no fan: ordinary UDP, not fan traffic.
    let not_overlay = StatReason::PassNotOverlay;
    bed.check_untouched(
        ENCAP_FORWARD,
        VXLAN_OTHER_VNI_TO_UNDERLAY,
        TC_ACT_UNSPEC,
        not_overlay,
    );
}

#[test]
fn path_mtu_is_learned_from_routers_quoting_our_vxlan() {
    if !privileged() {
        return;
    }
    for (program, pass) in [(DECAP_TC, TC_ACT_UNSPEC), ("xdp", XDP_PASS)] {
        let mut bed = Bed::vxlan();
        let learned = |bed: &Bed| {
            let host = u32::from_be_bytes([198, 18, 0, 2]);
            bed.dataplane.path_mtu(host).unwrap().map(|p| p.mtu)
        };
        for (fixture, reason) in [
            // No VNI to tell it ours, or another's.
            (VXLAN_PMTU_UDP_ONLY, StatReason::PmtuRejectedQuote),
            (VXLAN_PMTU_OTHER_VNI, StatReason::PmtuRejectedQuote),
            (VXLAN_PMTU_INNER_NOT_OURS, StatReason::PmtuRejectedInner),
        ] {
            bed.check_untouched(program, fixture, pass, reason);
        }
        assert_eq!(learned(&bed), None, "{program}");
        let frame = hex(VXLAN_PMTU_1400);
        let learned_new = [StatReason::PmtuLearned, StatReason::PmtuHostAdded];
        bed.check_counts(program, &frame, pass, &frame, &learned_new);
        assert_eq!(learned(&bed), Some(1400), "{program}");
    }
    // 1350 + 50 fits the learned 1400; 1351 + 50 does not, and at the
    // overlay port nobody could be told.
    let mut bed = Bed::vxlan();
    let frame = hex(VXLAN_PMTU_1400);
    let learned_new = [StatReason::PmtuLearned, StatReason::PmtuHostAdded];
    bed.check_counts(DECAP_TC, &frame, TC_ACT_UNSPEC, &frame, &learned_new);
    bed.check_vxlan_out(
        &padded(VXLAN_OUT_UDP_1350_HEADERS, 14 + 1350),
        &padded(VXLAN_OUT_UDP_1350_OUT_HEADERS, 14 + 1350 + 50),
    );
    let too_big = padded(VXLAN_OUT_UDP_1351_HEADERS, 14 + 1351);
    let shot = StatReason::DropVxlanTooBig;
    bed.check(VXLAN_OUT, &too_big, TC_ACT_SHOT, &too_big, shot);
}

#[test]
fn drop_events_name_a_vxlan_packets_inner_addresses() {
    use fan_common::WireAddr;
    if !privileged() {
        return;
    }
    let mut bed = Bed::vxlan();
    let addr = WireAddr::from_octets;
    let spoofed = StatReason::DropSpoofedSource;
    bed.check_untouched(DECAP_TC, VXLAN_RX_SPOOFED, TC_ACT_SHOT, spoofed);
    let event = bed.dataplane.next_event().unwrap().expect("a drop event");
    assert_eq!(event.reason, spoofed as u32);
    assert_eq!(
        (
            event.outer_src,
            event.outer_dst,
            event.inner_src,
            event.inner_dst
        ),
        (
            addr([198, 18, 0, 3]),
            addr([198, 18, 0, 1]),
            addr([250, 0, 2, 20]),
            addr([250, 0, 1, 10])
        )
    );
    assert_eq!(event.protocol, 1, "the inner packet's protocol");
    // An ARP message's sender and target, as the overlay port refused it.
    let not_local = StatReason::DropSourceNotLocal;
    bed.check_untouched(
        VXLAN_OUT,
        VXLAN_OUT_ARP_SENDER_NOT_LOCAL,
        TC_ACT_SHOT,
        not_local,
    );
    let event = bed.dataplane.next_event().unwrap().expect("a drop event");
    assert_eq!(event.program, fan_common::Program::VxlanOut as u8);
    assert_eq!(
        (event.inner_src, event.inner_dst),
        (addr([250, 0, 3, 3]), addr([250, 0, 2, 20]))
    );
    assert_eq!(bed.dataplane.next_event().unwrap(), None);
}
