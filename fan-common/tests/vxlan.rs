//! The VXLAN wire format's pieces, against values computed by hand.

use fan_common::{
    Encap, FanEntry, FanMap,
    maps::MAP_LAYOUT_VERSION,
    vxlan::{
        Outer, SOURCE_PORT_MAX, SOURCE_PORT_MIN, VXLAN_DEFAULT_PORT, VXLAN_OVERHEAD, default_vni,
        header_vni, udp_header, vxlan_header, vxlan_source_port,
    },
};

#[test]
fn lxd_vnis_and_the_linux_port() {
    assert_eq!(default_vni(u32::from_be_bytes([250, 0, 0, 0])), 16_384_000);
    assert_eq!(default_vni(u32::from_be_bytes([240, 0, 0, 0])), 15_728_640);
    assert_eq!(VXLAN_DEFAULT_PORT, 8472);
    assert_eq!(VXLAN_OVERHEAD, 50);
    assert_eq!(Encap::Vxlan.overhead(), 50);
    assert_eq!(Encap::Ipip.overhead(), 20);
}

#[test]
fn encap_names_round_trip() {
    for encap in [Encap::Ipip, Encap::Vxlan] {
        assert_eq!(Encap::try_from(encap as u8), Ok(encap));
    }
    assert_eq!(Encap::Ipip.name(), "ipip");
    assert_eq!(Encap::Vxlan.name(), "vxlan");
    assert_eq!(Encap::try_from(2), Err(2));
}

#[test]
fn source_ports_stay_in_the_kernels_range_and_spread() {
    // The kernel's udp_flow_src_port: hash ^= hash << 16, then scaled.
    assert_eq!(vxlan_source_port(0), SOURCE_PORT_MIN);
    // Only the upper half scales: the fold moves the lower half up.
    assert_eq!(vxlan_source_port(0xffff_ffff), SOURCE_PORT_MIN);
    assert_eq!(vxlan_source_port(0xffff_0000), 60998);
    assert_eq!(vxlan_source_port(0x0000_ffff), 60998);
    assert_eq!(vxlan_source_port(0x0001_0000), 32768);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..4096u32 {
        let port = vxlan_source_port(i.wrapping_mul(0x9e37_79b9));
        assert!((SOURCE_PORT_MIN..SOURCE_PORT_MAX).contains(&port), "{port}");
        seen.insert(port);
    }
    assert!(
        seen.len() > 3500,
        "{} distinct ports of 4096 flows",
        seen.len()
    );
}

#[test]
fn headers_byte_for_byte() {
    // UDP 40000 -> 8472, around a 98-byte inner frame: length 8 + 8 + 98.
    assert_eq!(
        udp_header(40000, 8472, 98),
        [0x9c, 0x40, 0x21, 0x18, 0, 114, 0, 0]
    );
    // VNI 16384000 = 0xfa0000.
    assert_eq!(vxlan_header(16_384_000), [0x08, 0, 0, 0, 0xfa, 0, 0, 0]);
    assert_eq!(header_vni(&vxlan_header(16_384_000)), Some(16_384_000));
    assert_eq!(header_vni(&[0, 0, 0, 0, 0xfa, 0, 0, 0]), None);
    let outer = Outer {
        src: u32::from_be_bytes([198, 18, 0, 1]),
        dst: u32::from_be_bytes([198, 18, 0, 2]),
        tos: 0,
        src_port: 40000,
        dst_port: 8472,
        vni: 16_384_000,
    };
    // Outer total 36 + 98 = 134 (0x86); checksum computed by hand:
    // 4500+0086+0000+4000+4011+c612+0001+c612+0002 = 0x251be -> 0x51c0 -> ~ = 0xae3f.
    let expected: [u8; 36] = [
        0x45, 0, 0, 0x86, 0, 0, 0x40, 0, 64, 17, 0xae, 0x3f, 198, 18, 0, 1, 198, 18, 0, 2, //
        0x9c, 0x40, 0x21, 0x18, 0, 114, 0, 0, //
        0x08, 0, 0, 0, 0xfa, 0, 0, 0,
    ];
    assert_eq!(outer.headers(98), expected);
}

#[test]
fn an_ipip_entry_has_no_vxlan_fields() {
    let map = FanMap::new(
        u32::from_be_bytes([250, 0, 0, 0]),
        8,
        u32::from_be_bytes([198, 18, 0, 0]),
        16,
    );
    let entry = FanEntry::ipip(map, u32::from_be_bytes([198, 18, 0, 1]), 2, 1480);
    assert!(!entry.is_vxlan());
    assert_eq!(
        (entry.vni, entry.vxlan_port, entry.overlay_port_ifindex),
        (0, 0, 0)
    );
    assert_eq!(core::mem::size_of::<FanEntry>(), 40);
    assert_eq!(core::mem::size_of::<fan_common::maps::FanMeta>(), 68);
    assert_eq!(MAP_LAYOUT_VERSION, 4);
}
