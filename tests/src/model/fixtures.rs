//! The model against programs.rs's literal fixtures (checksums computed
//! independently of fan-xdp), without a kernel: the model must predict
//! what the programs are known to do before it judges them.

use fan_common::FanMap;

use super::{
    Config, Fate, Program, RunContext, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_PASS,
    config::{Device, Endpoint, Fan, Neighbour, Route, RouteKind, Underlay, Vxlan},
    predict,
};
use crate::hex;

const ETH0: u32 = 2;
const PORT: u32 = 3;

/// programs.rs's bed: 250.0.0.0/8 over 198.18.0.0/16 as 198.18.0.1, the
/// peer .2 resolved, .4 not, .5 a blackhole.
fn bed() -> Config {
    let underlay = |a: [u8; 4]| u32::from_be_bytes(a);
    Config {
        fans: vec![Fan {
            map: FanMap::new(underlay([250, 0, 0, 0]), 8, underlay([198, 18, 0, 0]), 16),
            local_host: underlay([198, 18, 0, 1]),
            underlay_ifindex: ETH0,
            overlay_mtu: 1480,
            vxlan: None,
        }],
        endpoints: vec![Endpoint {
            addr: underlay([250, 0, 1, 10]),
            ifindex: PORT,
            mac: [0x0a, 0, 0, 0, 0, 2],
            gateway_mac: [0x0a, 0, 0, 0, 0, 1],
        }],
        underlay: Underlay {
            routes: vec![
                Route {
                    prefix: underlay([198, 18, 0, 0]),
                    len: 16,
                    kind: RouteKind::Unicast,
                    dev: ETH0,
                    locked_mtu: None,
                },
                Route {
                    prefix: underlay([198, 18, 0, 5]),
                    len: 32,
                    kind: RouteKind::Blackhole,
                    dev: ETH0,
                    locked_mtu: None,
                },
            ],
            local_table: vec![underlay([198, 18, 0, 1])],
            devices: vec![
                Device {
                    ifindex: ETH0,
                    mtu: 1500,
                    mac: [2, 0, 0, 0, 0, 0x11],
                    forwarding: true,
                },
                Device {
                    ifindex: PORT,
                    mtu: 1500,
                    mac: [0; 6],
                    forwarding: true,
                },
            ],
            neighbours: vec![Neighbour {
                addr: underlay([198, 18, 0, 2]),
                dev: ETH0,
                mac: [2, 0, 0, 0, 0, 0x22],
            }],
        },
        enforce: vec![],
        bypass_off: false,
        path_mtus: vec![],
    }
}

const ARP_FROM_BOUND: &str = "ffffffffffff 0200000000aa 0806
    0001 0800 06 04 0001 0200000000aa fa00010a 000000000000 fa000101";
const ENCAP_IN: &str = "020000000001 0200000000aa 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_FORWARD_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 3f01328a fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_OUTPUT_OUT: &str = "020000000022 020000000011 0800
    45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_TOS_IN: &str = "020000000001 0200000000aa 0800
    45b90020 12344000 400130d1 fa00010a fa000214
    0800e139 42420001 66616e21";
const ENCAP_TOS_OUT: &str = "020000000022 020000000011 0800
    45b90034 00004000 4004ade5 c6120001 c6120002
    45b90020 12344000 3f0131d1 fa00010a fa000214
    0800e139 42420001 66616e21";
const DECAP_IN: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9e c6120002 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_OUT: &str = "020000000011 020000000022 0800
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_DIRECT_OUT: &str = "0a0000000002 0a0000000001 0800
    45000020 12344000 3f01328a fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_CE_IN: &str = "020000000011 020000000022 0800
    45030034 00004000 4004ae9b c6120002 c6120001
    45020020 12344000 40013188 fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_CE_OUT: &str = "020000000011 020000000022 0800
    45030020 12344000 40013187 fa000214 fa00010a
    0800e139 42420001 66616e21";
const DECAP_SPOOFED: &str = "020000000011 020000000022 0800
    45000034 00004000 4004ae9d c6120003 c6120001
    45000020 12344000 4001318a fa000214 fa00010a
    0800e139 42420001 66616e21";
const ENCAP_TO_BLACKHOLE: &str = "020000000001 0200000000aa 0800
    45000020 12344000 40012e6c fa00010a fa000532
    0800e139 42420001 66616e21";

/// A run; the port program's frames arrive on the port 250.0.1.10 is bound to.
fn run(program: Program, frame: &str) -> super::Prediction {
    let ctx = RunContext {
        ingress_ifindex: if program == Program::EncapPort {
            PORT
        } else {
            0
        },
        gso_size: 0,
    };
    predict(&bed(), program, &hex(frame), ctx).expect("a runnable frame")
}

#[test]
fn encapsulation_fixtures() {
    for (program, out) in [
        (Program::EncapForward, ENCAP_FORWARD_OUT),
        (Program::EncapPort, ENCAP_FORWARD_OUT),
        (Program::EncapOutput, ENCAP_OUTPUT_OUT),
    ] {
        let p = run(program, ENCAP_IN);
        assert_eq!((p.verdict, p.frame), (TC_ACT_REDIRECT, hex(out)));
        assert_eq!(p.counters, vec![("encapsulated", 66)]);
    }
    // From the sibling's port (none here), 250.0.1.10 is not the sender's.
    let p = predict(
        &bed(),
        Program::EncapPort,
        &hex(ENCAP_IN),
        RunContext::default(),
    )
    .unwrap();
    assert_eq!(p.counters, vec![("drop_source_not_bound", 46)]);
    // The same rule for an ARP claim of 250.0.1.10 (a request for the gateway).
    let p = predict(
        &bed(),
        Program::EncapPort,
        &hex(ARP_FROM_BOUND),
        RunContext::default(),
    )
    .unwrap();
    assert_eq!(p.verdict, TC_ACT_SHOT);
    assert_eq!(p.counters, vec![("drop_source_not_bound", 42)]);
    let p = run(Program::EncapForward, ENCAP_TOS_IN);
    assert_eq!(p.frame, hex(ENCAP_TOS_OUT));
    let p = run(Program::EncapForward, ENCAP_TO_BLACKHOLE);
    assert_eq!(p.verdict, TC_ACT_SHOT);
    assert_eq!(p.counters, vec![("drop_fib_blackhole", 46)]);
}

#[test]
fn decapsulation_fixtures() {
    let p = run(Program::DecapXdp, DECAP_IN);
    assert_eq!((p.verdict, p.frame), (XDP_PASS, hex(DECAP_OUT)));
    // 250.0.1.10 has direct delivery: straight into the container, TTL 63.
    let p = run(Program::DecapTc, DECAP_IN);
    assert_eq!(
        (p.verdict, p.frame),
        (TC_ACT_REDIRECT, hex(DECAP_DIRECT_OUT))
    );
    assert_eq!(p.fate, Fate::DeliveredDirect);
    let p = run(Program::DecapXdp, DECAP_CE_IN);
    assert_eq!(p.frame, hex(DECAP_CE_OUT));
    let p = run(Program::DecapXdp, DECAP_SPOOFED);
    assert_eq!(p.counters, vec![("drop_spoofed_source", 66)]);
    // The same fan packet sent by a container (raw IP-in-IP to the
    // underlay) is the container edge's forgery, refused at the bridge.
    let p = run(Program::EncapForward, DECAP_IN);
    assert_eq!(p.verdict, TC_ACT_SHOT);
    assert_eq!(
        p.counters.first().map(|c| c.0),
        Some("drop_tunnel_to_underlay")
    );
}

/// programs.rs's VXLAN bed: its fan made a VXLAN fan (port 8472, VNI
/// 16384000, MTU 1450), whose overlay port and bridge the runs need not see.
fn vxlan_bed() -> Config {
    let mut config = bed();
    config.fans[0].overlay_mtu = 1450;
    config.fans[0].vxlan = Some(Vxlan {
        port: 8472,
        vni: 16_384_000,
        overlay_port: 7,
        bridge: 8,
    });
    config
}

// The same fixtures as tests/programs/vxlan.rs's (the source port there
// masked, here the model's 0).
const VXLAN_OUT_IPV4_IN: &str = "0a0000000214 0a000000010a 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
const VXLAN_OUT_IPV4_OUT: &str = "020000000022 020000000011 0800
    45000052 00004000 4011ae73 c6120001 c6120002
    00002118 003e0000 08000000 fa000000
    0a0000000214 0a000000010a 0800
    45000020 12344000 4001318a fa00010a fa000214
    0800e139 42420001 66616e21";
const VXLAN_OUT_ARP_IN: &str = "ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 010a0000
    00000000 fa000214";
const VXLAN_OUT_ARP_OUT: &str = "020000000022 020000000011 0800
    4500004e 00004000 4011ae77 c6120001 c6120002
    00002118 003a0000 08000000 fa000000
    ffffffffffff 0a000000010a 0806
    00010800 06040001 0a000000 010afa00 010a0000
    00000000 fa000214";
const VXLAN_RX_CE_IN: &str = "020000000011 020000000022 0800
    45030052 00004000 4011ae70 c6120002 c6120001
    9c402118 003e0000 08000000 fa000000
    0a000000010a 0a0000000214 0800
    45020020 12344000 40013188 fa000214 fa00010a
    0800e139 42420001 66616e21";
const VXLAN_RX_CE_INNER: &str = "0a000000010a 0a0000000214 0800
    45030020 12344000 40013187 fa000214 fa00010a
    0800e139 42420001 66616e21";

#[test]
fn vxlan_fixtures() {
    let config = vxlan_bed();
    let ctx = RunContext::default();
    let predict = |program, frame| predict(&config, program, &hex(frame), ctx).unwrap();
    for (input, output) in [
        (VXLAN_OUT_IPV4_IN, VXLAN_OUT_IPV4_OUT),
        (VXLAN_OUT_ARP_IN, VXLAN_OUT_ARP_OUT),
    ] {
        let p = predict(Program::VxlanOut, input);
        assert_eq!((p.verdict, p.frame), (TC_ACT_REDIRECT, hex(output)));
        let len = hex(output).len() as u64;
        assert_eq!(p.counters, vec![("encapsulated", len)]);
    }
    // At the bridge's program, a VXLAN fan's packet goes to the host.
    let p = predict(Program::EncapForward, VXLAN_OUT_IPV4_IN);
    assert_eq!(p.counters, vec![("pass_vxlan_via_overlay_port", 46)]);
    // The inner frame as sent, CE carried in, to the bridge by the overlay port.
    let p = predict(Program::DecapTc, VXLAN_RX_CE_IN);
    assert_eq!(
        (p.verdict, p.frame),
        (TC_ACT_REDIRECT, hex(VXLAN_RX_CE_INNER))
    );
    assert_eq!(p.fate, Fate::Decapsulated);
    // XDP leaves it to TC, untouched.
    let p = predict(Program::DecapXdp, VXLAN_RX_CE_IN);
    assert_eq!((p.verdict, p.frame), (XDP_PASS, hex(VXLAN_RX_CE_IN)));
    assert_eq!(p.counters, vec![("pass_vxlan_at_xdp", 96)]);
}
