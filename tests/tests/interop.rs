//! Runs in the VM (Debian's 6.1 kernel, which has the ipip module and
//! virtio-net NICs): fan-xdp against Linux's own ipip driver configured like
//! the original Ubuntu Fan, over a real NIC driver, and across a router with
//! a narrower MTU. `cargo xtask test` runs these only there.

use std::net::Ipv4Addr;

use fan_common::ipv4::{IP_DF, IPPROTO_IPIP, OUTER_TTL, checksum};
use fan_tests::{
    netns::Netns,
    paths::{kernel_has_ipip, kernel_ipip_host},
    privileged,
    topology::{Fleet, Host, add_bridge, plug_container},
    traffic::{Capture, link_statistic, ping, tcp_transfer},
};

const OVERLAY: &str = "250.0.0.0/8";
const BULK: u64 = 100 * 1024 * 1024;

/// Host `host` configured like the original Fan, with its slice bridge.
fn kernel_fan(fleet: &Fleet, host: &Host) {
    add_bridge(host).unwrap();
    kernel_ipip_host(fleet, host).unwrap();
}

fn ipip_counter(host: &Host, which: &str) -> u64 {
    link_statistic(&host.ns, "fan-ipip", which).unwrap()
}

fn stats(host: &Host) -> serde_json::Value {
    serde_json::from_str(&host.fan_xdp_ok(&["stats", "--json"]).unwrap()).unwrap()
}

fn must_have_ipip(ns: &Netns) {
    assert!(
        kernel_has_ipip(ns),
        "no ipip module on this kernel: the interop tests run in the VM (cargo xtask test)"
    );
}

/// Outer headers between the fan-xdp host `fan` and the kernel-ipip host
/// `ipip`, each checked against its own specification.
fn check_wire(frames: &[Vec<u8>], fan: Ipv4Addr, ipip: Ipv4Addr) -> (usize, usize) {
    let (mut from_fan, mut from_ipip) = (0, 0);
    for frame in frames {
        if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != IPPROTO_IPIP {
            continue;
        }
        let outer = &frame[14..34];
        let inner = &frame[34..54];
        let src = Ipv4Addr::new(outer[12], outer[13], outer[14], outer[15]);
        let dst = Ipv4Addr::new(outer[16], outer[17], outer[18], outer[19]);
        let words: Vec<u16> = outer
            .chunks(2)
            .map(|w| u16::from_ne_bytes([w[0], w[1]]))
            .collect();
        assert_eq!(checksum(&words), 0, "outer checksum from {src}");
        // Addresses follow the arithmetic: the slice's third octet is the host's last.
        let (inner_src, inner_dst) = (inner[14], inner[18]);
        assert_eq!(
            inner_src,
            src.octets()[3],
            "inner source not in {src}'s slice"
        );
        assert_eq!(
            inner_dst,
            dst.octets()[3],
            "outer destination is not the inner destination's host"
        );
        let df = u16::from_be_bytes([outer[6], outer[7]]) & IP_DF == IP_DF;
        if src == fan && dst == ipip {
            // fan-xdp: TTL 64, DF always, TOS copied.
            assert_eq!(outer[8], OUTER_TTL);
            assert!(df, "fan-xdp sent an outer header without DF");
            assert_eq!(outer[1], inner[1], "TOS not copied");
            from_fan += 1;
        } else if src == ipip && dst == fan {
            // Linux ipip defaults: ttl inherit (the inner TTL), pmtudisc (DF set).
            assert_eq!(
                outer[8], inner[8],
                "kernel ipip did not inherit the inner TTL"
            );
            assert!(df, "kernel ipip with pmtudisc sent no DF");
            from_ipip += 1;
        }
    }
    (from_fan, from_ipip)
}

#[test]
fn fan_xdp_and_the_kernel_ipip_fan_interoperate() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(3).unwrap();
    must_have_ipip(&fleet.hosts[0].ns);
    for host in &fleet.hosts[..2] {
        host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
            .unwrap();
    }
    kernel_fan(&fleet, &fleet.hosts[2]);
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h3) = (&fleet.hosts[0], &fleet.hosts[2]);
    let (c1, c2, c3) = (
        &h1.containers[0],
        &fleet.hosts[1].containers[0],
        &h3.containers[0],
    );

    let capture =
        Capture::start(&h3.ns, "eth0", std::env::temp_dir().join("interop.pcap")).unwrap();
    for (from, to) in [(c1, c3), (c3, c1), (c2, c3), (c3, c2)] {
        assert!(
            ping(&from.ns, to.addr, 2).unwrap(),
            "{} -> {}",
            from.addr,
            to.addr
        );
    }
    let frames = capture.finish().unwrap();
    let (from_fan, from_ipip) = check_wire(&frames, h1.underlay_addr, h3.underlay_addr);
    let seen: Vec<String> = frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00])
        .map(|f| {
            let inner = if f[23] == IPPROTO_IPIP && f.len() >= 54 {
                format!(
                    " [{}.{}.{}.{} > {}.{}.{}.{} p{}]",
                    f[46], f[47], f[48], f[49], f[50], f[51], f[52], f[53], f[43]
                )
            } else {
                String::new()
            };
            format!(
                "{}.{}.{}.{} > {}.{}.{}.{} p{}{inner}",
                f[26], f[27], f[28], f[29], f[30], f[31], f[32], f[33], f[23]
            )
        })
        .collect();
    assert!(
        from_fan >= 4 && from_ipip >= 4,
        "captured {from_fan} fan-xdp and {from_ipip} kernel ipip packets: {seen:#?}; h1 {}",
        stats(h1)
    );

    // 100 MB each way; the kernel's ipip device counts what it carried.
    let (rx, tx) = (ipip_counter(h3, "rx_bytes"), ipip_counter(h3, "tx_bytes"));
    assert_eq!(
        tcp_transfer(&c3.ns, &c1.ns, c3.addr, BULK).unwrap(),
        BULK,
        "fan-xdp -> kernel ipip"
    );
    assert_eq!(
        tcp_transfer(&c1.ns, &c3.ns, c1.addr, BULK).unwrap(),
        BULK,
        "kernel ipip -> fan-xdp"
    );
    assert!(
        ipip_counter(h3, "rx_bytes") - rx >= BULK,
        "the ipip device did not receive the transfer"
    );
    assert!(
        ipip_counter(h3, "tx_bytes") - tx >= BULK,
        "the ipip device did not send the transfer"
    );
    let s = stats(h1);
    assert_eq!(s["drop_spoofed_source"]["packets"], 0);

    // The kernel host sends with an inner source outside its slice: dropped and counted.
    h3.ns
        .ip(&["addr", "add", "250.0.9.9/32", "dev", &h3.bridge])
        .unwrap();
    let before = stats(h1)["drop_spoofed_source"]["packets"]
        .as_u64()
        .unwrap();
    let out = h3
        .ns
        .output(
            "ping",
            &[
                "-n",
                "-c",
                "2",
                "-W",
                "1",
                "-I",
                "250.0.9.9",
                &c1.addr.to_string(),
            ],
        )
        .unwrap();
    assert!(!out.status.success(), "a spoofed source got through");
    let after = stats(h1)["drop_spoofed_source"]["packets"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before + 2,
        "spoofed packets not counted ({before} -> {after})"
    );

    for host in &fleet.hosts[..2] {
        host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    }
}

/// A host namespace whose underlay is a virtio-net NIC of the VM.
fn nic_host(name: &str, nic: &str, addr: &str) -> Netns {
    let ns = Netns::new(name).unwrap();
    fan_tests::netns::run(std::process::Command::new("ip").args([
        "link",
        "set",
        nic,
        "netns",
        ns.name(),
        "name",
        "eth0",
    ]))
    .unwrap();
    ns.ip(&["addr", "add", addr, "dev", "eth0"]).unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns
}

fn nics() -> Vec<String> {
    let mut nics: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            std::fs::read_link(format!("/sys/class/net/{n}/device/driver"))
                .is_ok_and(|d| d.ends_with("virtio_net"))
        })
        .collect();
    nics.sort();
    nics
}

#[test]
fn fan_over_virtio_nics_and_a_narrower_routed_path() {
    if !privileged() {
        return;
    }
    let nics = nics();
    assert!(
        nics.len() >= 4,
        "the VM has {} virtio NICs, 4 needed: run in `cargo xtask test`'s VM",
        nics.len()
    );
    // NICs 0-1 share one qemu hub (segment A), 2-3 another (segment B). A
    // router joins the segments with a narrower MTU on B.
    let h1 = nic_host("vh1", &nics[0], "198.18.1.1/24");
    let router = nic_host("vrouter", &nics[1], "198.18.1.254/24");
    fan_tests::netns::run(std::process::Command::new("ip").args([
        "link",
        "set",
        &nics[2],
        "netns",
        router.name(),
        "name",
        "eth1",
    ]))
    .unwrap();
    router
        .ip(&["addr", "add", "198.18.2.254/24", "dev", "eth1"])
        .unwrap();
    router
        .ip(&["link", "set", "eth1", "mtu", "1400", "up"])
        .unwrap();
    router.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let h2 = nic_host("vh2", &nics[3], "198.18.2.2/24");
    h1.ip(&["route", "add", "198.18.0.0/16", "via", "198.18.1.254"])
        .unwrap();
    h2.ip(&["route", "add", "198.18.0.0/16", "via", "198.18.2.254"])
        .unwrap();

    let binary = fan_tests::topology::fan_xdp_binary();
    let fan = |ns: &Netns, args: &[&str]| -> String {
        let out = ns
            .command(binary.to_str().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fan-xdp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The path carries 1400 bytes; attached with the defaults (overlay MTU
    // 1480), the hosts learn the path MTU from the router.
    for ns in [&h1, &h2] {
        fan(
            ns,
            &[
                "attach",
                "eth0",
                "--overlay",
                OVERLAY,
                "--underlay",
                "198.18.0.0/16",
            ],
        );
        let shown: serde_json::Value = serde_json::from_str(&fan(ns, &["show", "--json"])).unwrap();
        // virtio-net runs native XDP (it turns the guest offloads off itself): auto must pick it.
        assert_eq!(shown[0]["mode"], "xdp", "{shown}");
        assert_eq!(shown[0]["mode_reason"], "auto: the driver runs native XDP");
        let link = ns.ip(&["-d", "link", "show", "dev", "eth0"]).unwrap();
        assert!(
            link.contains("prog/xdp") && !link.contains("xdpgeneric"),
            "not native XDP: {link}"
        );
    }
    // Containers keep a 1480 link MTU: what exceeds the learned path MTU
    // gets "fragmentation needed" from their host, and TCP adapts.
    // Underlay host parts 1.1 and 2.2 of 198.18.0.0/16: slices 250.1.1.0/24 and 250.2.2.0/24.
    let c1 = container(&h1, "250.1.1.10", "250.1.1.1");
    let c2 = container(&h2, "250.2.2.10", "250.2.2.1");
    let a2: Ipv4Addr = "250.2.2.10".parse().unwrap();
    assert!(ping(&c1, a2, 3).unwrap(), "ping across the router");
    let moved = tcp_transfer(&c2, &c1, a2, 32 << 20).unwrap();
    assert_eq!(moved, 32 << 20);
    let stats: serde_json::Value = serde_json::from_str(&fan(&h2, &["stats", "--json"])).unwrap();
    assert!(
        stats["decapsulated"]["bytes"].as_u64().unwrap() >= 32 << 20,
        "XDP did not decapsulate the transfer: {stats}"
    );
    let stats: serde_json::Value = serde_json::from_str(&fan(&h1, &["stats", "--json"])).unwrap();
    for learned_and_answered in ["pmtu_learned", "pmtu_answered"] {
        assert!(
            stats[learned_and_answered]["packets"].as_u64().unwrap() >= 1,
            "no {learned_and_answered} on the sending host: {stats}"
        );
    }
    drop((c1, c2));
    for ns in [&h1, &h2] {
        fan(ns, &["detach", "eth0"]);
    }
    // Deleting the namespaces hands the NICs back to the VM's root namespace.
}

/// A container namespace on `host`'s slice bridge with link MTU 1480.
fn container(host: &Netns, addr: &str, gateway: &str) -> Netns {
    let bridge = format!(
        "fan-{}",
        gateway.rsplit_once('.').unwrap().0.replace('.', "-")
    );
    let (addr, gateway) = (addr.parse().unwrap(), gateway.parse().unwrap());
    plug_container(host, &bridge, "vc0", "vc", (addr, 24), gateway).unwrap()
}
