//! The grammar on literal files: every fan it takes, every error it gives
//! (file, line, column, token).

use std::net::Ipv4Addr;

use super::*;

fn net(text: &str) -> Ipv4Network {
    text.parse().unwrap()
}

/// The error for `text` as file "fan", as (line, column, token, message start).
fn error(text: &str) -> (usize, usize, String, String) {
    let e = parse("fan", text).expect_err("the file should be refused");
    assert_eq!(e.file.as_deref(), Some("fan"));
    (e.line, e.column, e.token, e.message)
}

fn assert_error(text: &str, line: usize, column: usize, token: &str, message: &str) {
    let (l, c, t, m) = error(text);
    assert_eq!((l, c, t.as_str()), (line, column, token), "{m}");
    assert!(m.contains(message), "{m:?} does not say {message:?}");
}

#[test]
fn a_file_with_comments_blank_lines_and_every_keyword() {
    let text = "\
# fanctl's file, as the seed ships it
250.0.0.0/8 eth0/16 dhcp

  10.0.0.0/8\t198.18.0.5/16 host-reserve 4 bridge fanbr off  # not now
251.0.0.0/8 default mode tc mtu 1400 no-nat bypass off
";
    let fans = parse("fan", text).unwrap();
    assert_eq!(fans.len(), 3);
    assert_eq!(
        fans[0],
        FanLine {
            overlay: net("250.0.0.0/8"),
            underlay: Underlay::Interface("eth0".into(), 16),
            dhcp: true,
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
            line: 2,
        }
    );
    let second = &fans[1];
    assert_eq!(second.overlay, net("10.0.0.0/8"));
    assert_eq!(
        second.underlay,
        Underlay::Address(Ipv4Addr::new(198, 18, 0, 5), 16)
    );
    assert_eq!(second.host_reserve, Some(4));
    assert_eq!(second.bridge.as_deref(), Some("fanbr"));
    assert!(second.off && !second.dhcp);
    assert_eq!(second.line, 4);
    let third = &fans[2];
    assert_eq!(third.underlay, Underlay::Default);
    assert_eq!(third.mode, Some(Mode::Tc));
    assert_eq!(third.mtu, Some(1400));
    assert!(third.no_nat);
    assert_eq!(third.bypass, Some(Bypass::Off));
}

#[test]
fn an_empty_file_has_no_fans() {
    assert_eq!(parse("fan", "").unwrap(), vec![]);
    assert_eq!(parse("fan", "# nothing\n\n   \n").unwrap(), vec![]);
}

#[test]
fn every_error_names_file_line_column_and_token() {
    let ok = "250.0.0.0/8 eth0/16\n";
    assert_error(
        &format!("{ok}250.0.0/8 eth0/16\n"),
        2,
        1,
        "250.0.0/8",
        "IPv4 prefix",
    );
    assert_error("fd00::/8 eth0/16", 1, 1, "fd00::/8", "IPv6");
    assert_error(
        "250.1.0.0/8 eth0/16",
        1,
        1,
        "250.1.0.0/8",
        "host bits set (did you mean 250.0.0.0/8?)",
    );
    assert_error("250.0.0.0/8", 1, 1, "250.0.0.0/8", "expected the underlay");
    assert_error("250.0.0.0/8 eth0", 1, 13, "eth0", "no prefix length");
    assert_error(
        "250.0.0.0/8 eth0/40",
        1,
        13,
        "eth0/40",
        "prefix length is 1 to 32",
    );
    assert_error(
        "250.0.0.0/8 10.0.0.300/16",
        1,
        13,
        "10.0.0.300/16",
        "not an IPv4 address",
    );
    assert_error("250.0.0.0/8 fd00::1/64", 1, 13, "fd00::1/64", "IPv6");
    assert_error(
        "250.0.0.0/8 averyveryverylongname/16",
        1,
        13,
        "averyveryverylongname/16",
        "1 to 15 bytes",
    );
    assert_error("250.0.0.0/16 10.1.2.3/8", 1, 14, "10.1.2.3/8", "shorter");
    assert_error("250.0.0.0/8 10.1.255.255/16", 1, 13, "10.1.255.255/16", "");
    assert_error("250.0.0.0/8 250.1.0.5/16", 1, 13, "250.1.0.5/16", "overlap");
    assert_error("250.0.0.0/8 eth0/31", 1, 13, "eth0/31", "");
    assert_error("250.0.0.0/8 eth0/16 dchp", 1, 21, "dchp", "unknown keyword");
    assert_error(
        "250.0.0.0/8 eth0/16 bridge",
        1,
        21,
        "bridge",
        "bridge needs a value",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 host-reserve 0",
        1,
        34,
        "0",
        "at least 1",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 host-reserve x",
        1,
        34,
        "x",
        "count of addresses",
    );
    assert_error("250.0.0.0/8 eth0/16 mtu 100", 1, 25, "100", "576 to 65535");
    assert_error(
        "250.0.0.0/8 eth0/16 mode fast",
        1,
        26,
        "fast",
        "tc, xdp or auto",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 bypass maybe",
        1,
        28,
        "maybe",
        "off, on or auto",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 bridge a/b",
        1,
        28,
        "a/b",
        "not an interface name",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 bridge fan-0123456789abc",
        1,
        28,
        "fan-0123456789abc",
        "1 to 15 bytes",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 dhcp dhcp",
        1,
        26,
        "dhcp",
        "given twice",
    );
    assert_error(
        &format!("{ok}# again\n250.0.0.0/8 eth1/16\n"),
        3,
        1,
        "250.0.0.0/8",
        "already on line 1",
    );
    assert_error(
        &format!("{ok}250.1.0.0/16 eth1/24\n"),
        2,
        1,
        "250.1.0.0/16",
        "overlaps 250.0.0.0/8 on line 1",
    );
    // Columns count characters, tabs as one.
    assert_error(
        "\t 250.0.0.0/8\teth0/16 \tnat",
        1,
        24,
        "nat",
        "unknown keyword",
    );
}

#[test]
fn a_vxlan_fan_s_words_and_their_refusals() {
    let text = "\
250.0.0.0/8 eth0/16 dhcp type vxlan
240.0.0.0/8 198.18.0.5/16 type vxlan vni 42 port 4789 mode tc
10.0.0.0/8 eth1/16 type ipip
";
    let fans = parse("fan", text).unwrap();
    assert_eq!(fans[0].fan_type, Some(FanType::Vxlan));
    assert_eq!((fans[0].vni, fans[0].port), (None, None));
    assert_eq!(fans[1].fan_type, Some(FanType::Vxlan));
    assert_eq!((fans[1].vni, fans[1].port), (Some(42), Some(4789)));
    assert_eq!(fans[1].mode, Some(Mode::Tc));
    assert_eq!(fans[2].fan_type, Some(FanType::Ipip));
    assert_error(
        "250.0.0.0/8 eth0/16 type gre",
        1,
        26,
        "gre",
        "ipip or vxlan",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 type vxlan vni 16777216",
        1,
        36,
        "16777216",
        "24 bits",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 type vxlan port 0",
        1,
        37,
        "0",
        "1 to 65535",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 port 4789",
        1,
        21,
        "port",
        "port needs type vxlan",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 vni 5 type ipip",
        1,
        21,
        "vni",
        "vni needs type vxlan",
    );
    assert_error(
        "250.0.0.0/8 eth0/16 mode xdp type vxlan",
        1,
        21,
        "mode",
        "mode xdp does not decapsulate VXLAN",
    );
    let up = parse_args(&words("eth0/16 type vxlan vni 7")).unwrap();
    assert_eq!((up.fan_type, up.vni), (Some(FanType::Vxlan), Some(7)));
}

#[test]
fn the_error_message_reads_like_a_compiler_s() {
    let e = parse("/etc/network/fan", "250.0.0.0/8 eth0/16 dchp\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/network/fan:1:21: \"dchp\": unknown keyword (expected dhcp, host-reserve N, bridge NAME, off, type T, vni N, port P, mode M, mtu N, no-nat or bypass B)"
    );
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_verbs_take_the_same_words_with_the_overlay_optional() {
    let seed = parse_args(&words("eth0/16 dhcp")).unwrap();
    assert_eq!(seed.overlay, default_overlay());
    assert_eq!(seed.underlay, Underlay::Interface("eth0".into(), 16));
    assert!(seed.dhcp);
    let address_only = parse_args(&words("198.18.0.5/16")).unwrap();
    assert_eq!(address_only.overlay, default_overlay());
    assert_eq!(
        address_only.underlay,
        Underlay::Address(Ipv4Addr::new(198, 18, 0, 5), 16)
    );
    let both = parse_args(&words("10.0.0.0/8 198.18.0.5/16 bridge b0")).unwrap();
    assert_eq!(both.overlay, net("10.0.0.0/8"));
    assert_eq!(both.bridge.as_deref(), Some("b0"));
    let default = parse_args(&words("251.0.0.0/8 default host-reserve 3")).unwrap();
    assert_eq!(default.underlay, Underlay::Default);
    assert_eq!(default.host_reserve, Some(3));
    // The same as the file's line.
    assert_eq!(
        parse_args(&words("250.0.0.0/8 eth0/16 dhcp")).unwrap(),
        FanLine {
            line: 0,
            ..parse("f", "250.0.0.0/8 eth0/16 dhcp").unwrap()[0].clone()
        }
    );
}

#[test]
fn the_verbs_errors_name_the_word() {
    let e = parse_args(&words("eth0/16 dhcp hostreserve 2")).unwrap_err();
    assert_eq!(
        (e.file.as_deref(), e.line, e.column, e.token.as_str()),
        (None, 0, 3, "hostreserve")
    );
    assert_eq!(
        e.to_string(),
        "word 3 \"hostreserve\": unknown keyword (expected dhcp, host-reserve N, bridge NAME, off, type T, vni N, port P, mode M, mtu N, no-nat or bypass B)"
    );
    let e = parse_args(&words("eth0")).unwrap_err();
    assert_eq!((e.column, e.token.as_str()), (1, "eth0"));
    assert!(
        parse_args(&[])
            .unwrap_err()
            .message
            .contains("[OVERLAY] UNDERLAY")
    );
}

#[test]
fn only_root_may_own_or_write_the_file() {
    let path = Path::new("/etc/network/fan");
    assert!(owner_allows(path, 0, 0o100644).is_ok());
    assert!(owner_allows(path, 0, 0o100600).is_ok());
    let e = owner_allows(path, 1000, 0o100644).unwrap_err().to_string();
    assert_eq!(
        e,
        "/etc/network/fan is owned by uid 1000, not root: refusing it (it configures the host's network)"
    );
    let e = owner_allows(path, 0, 0o100664).unwrap_err().to_string();
    assert!(e.contains("writable by its group (mode 664)"), "{e}");
    let e = owner_allows(path, 0, 0o100646).unwrap_err().to_string();
    assert!(e.contains("writable by others (mode 646)"), "{e}");
}

/// The Debian package's /etc/network/fan: comments only, so no fans
/// until the operator adds a line; its example, uncommented, is one fan.
#[test]
fn the_packaged_file_has_no_fans_and_its_example_is_one() {
    let shipped = include_str!("../../../packaging/debian/fan");
    assert_eq!(parse("/etc/network/fan", shipped).unwrap(), []);
    let example = shipped
        .lines()
        .find_map(|line| line.strip_prefix("#   250."))
        .map(|rest| format!("250.{rest}"))
        .expect("the file shows an example line");
    let fans = parse("/etc/network/fan", &example).unwrap();
    assert_eq!(fans.len(), 1);
    assert_eq!(fans[0].overlay, net("250.0.0.0/8"));
    assert_eq!(fans[0].underlay, Underlay::Interface("eth0".into(), 16));
    assert!(fans[0].dhcp);
}
