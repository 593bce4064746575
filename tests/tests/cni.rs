//! The CNI plugin `fan`, driven by the specification's own protocol (a
//! runner of the tests' own: `fan_tests::cni`), by Debian's reference
//! plugins (host-local delegated, portmap chained after it) and by a real
//! runtime (Podman 4.3 with its CNI backend). Host kernel only.
//!
//! Longer than 400 lines: one file per runtime is the rule of the runtimes'
//! tests, and these are the plugin's: the protocol, every error path, the
//! reference plugins and Podman, each a few dozen lines.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use fan_tests::{
    cni::{Answer, Attachment, BinDir, TempDir, invoke},
    netns::Netns,
    privileged,
    topology::{Fleet, Host},
    traffic::{ping, tcp_transfer_via},
};
use fan_userspace::{
    agent::bindings::{self, Binding, Origin},
    cni::ids::{attachment_key, port_name},
    state::rundir::RunDir,
};
use serde_json::{Value, json};

const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn conf(version: &str) -> String {
    format!(r#"{{"cniVersion":"{version}","name":"fan","type":"fan","overlay":"250.0.0.0/8"}}"#)
}

/// `conf` with `key` set to `value`.
fn conf_with(version: &str, key: &str, value: Value) -> String {
    let mut c: Value = serde_json::from_str(&conf(version)).unwrap();
    c[key] = value;
    c.to_string()
}

/// One host's plugin: its binary directory and a private state directory.
struct Plugin {
    bin: BinDir,
    state: TempDir,
}

impl Plugin {
    fn new(label: &str) -> Self {
        Self {
            bin: BinDir::new(label).unwrap(),
            state: TempDir::new(&format!("state-{label}")).unwrap(),
        }
    }

    fn run(&self, host: &Host, command: &str, a: Option<&Attachment>, conf: &str) -> Answer {
        let state = self.state.path.to_str().unwrap();
        invoke(&host.ns, &self.bin, "fan", command, a, conf, &[("FAN_XDP_STATE_DIR", state)])
            .unwrap()
    }

    /// The plugin's allocations on `host`'s slice.
    fn allocations(&self, host: &Host) -> BTreeSet<Ipv4Addr> {
        let dir = self.state.path.join(format!("cni/fan/{}-24", host.slice));
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The agent's bindings on `host`.
fn bound(host: &Host) -> Vec<Binding> {
    host.ns
        .enter(|| bindings::list(&RunDir::locate(None)?))
        .unwrap()
        .unwrap()
}

/// The plugin's ports (`fv...`) on `host`'s slice bridge.
fn ports(host: &Host) -> Vec<String> {
    let out = host.ns.ip(&["-o", "link", "show", "master", &host.bridge]).unwrap();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("fv"))
        .collect()
}

fn mac(ns_args: &[&str]) -> String {
    let out = fan_tests::netns::run(std::process::Command::new("ip").args(ns_args)).unwrap();
    let at = out.find("link/ether ").expect("an ethernet link") + "link/ether ".len();
    out[at..at + 17].to_string()
}

fn port(id: &str) -> String {
    port_name(&attachment_key("fan", id, "eth0"))
}

fn one_host() -> Fleet {
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&[]).unwrap();
    fleet
}

#[test]
fn every_command_in_every_advertised_version() {
    if !privileged() {
        return;
    }
    let fleet = one_host();
    let host = &fleet.hosts[0];
    let plugin = Plugin::new("versions");
    for (i, version) in VERSIONS.iter().enumerate() {
        let answer = plugin.run(host, "VERSION", None, &format!(r#"{{"cniVersion":"{version}"}}"#));
        assert_eq!(
            answer.result().to_string(),
            format!(r#"{{"cniVersion":"{version}","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}}"#)
        );
        let ns = Netns::new(&format!("cv{i}")).unwrap();
        let id = format!("ver-{version}");
        let a = Attachment::of(&id, &ns);
        let added = plugin.run(host, "ADD", Some(&a), &conf(version));
        let result = added.result().clone();
        // The literal result of this version, with the MACs the kernel chose.
        let address = Ipv4Addr::new(250, 0, 1, 192 + i as u8);
        let host_mac = mac(&["-n", host.ns.name(), "link", "show", &port(&id)]);
        let inner_mac = mac(&["-n", ns.name(), "link", "show", "eth0"]);
        let mtu = if *version == "1.1.0" { r#""mtu":1480,"# } else { "" };
        let ip_version = if version.starts_with("0.") { r#","version":"4""# } else { "" };
        let expected = format!(
            r#"{{"cniVersion":"{version}","interfaces":[{{"mac":"{host_mac}",{mtu}"name":"{}"}},{{"mac":"{inner_mac}",{mtu}"name":"eth0","sandbox":"/run/netns/{}"}}],"ips":[{{"address":"{address}/24","gateway":"250.0.1.1","interface":1{ip_version}}}],"routes":[{{"dst":"0.0.0.0/0","gw":"250.0.1.1"}}]}}"#,
            port(&id),
            ns.name()
        );
        assert_eq!(result.to_string(), expected);
        // Addressed, routed and bound before the result came back.
        let expected_binding = Binding {
            address,
            mac: inner_mac.clone(),
            port: Some(port(&id)),
            origin: Origin::Cni,
            owner: id.clone(),
        };
        assert_eq!(bound(host), vec![expected_binding]);
        assert!(ping(&ns, host.gateway, 1).unwrap(), "{version}: the container cannot reach its gateway");
        let with_prev = conf_with(version, "prevResult", result.clone());
        let check = plugin.run(host, "CHECK", Some(&a), &with_prev);
        if *version == "0.3.1" {
            assert_eq!(check.code(), 1, "0.3.1 has no CHECK: {}", check.msg());
        } else {
            assert!(check.ok && check.json.is_null(), "{version} CHECK: {check:?}");
        }
        let status = plugin.run(host, "STATUS", None, &conf(version));
        let valid = json!([{"containerID": id, "ifname": "eth0"}]);
        let gc = plugin.run(host, "GC", None, &conf_with(version, "cni.dev/valid-attachments", valid));
        if *version == "1.1.0" {
            assert!(status.ok && status.json.is_null(), "STATUS: {status:?}");
            assert!(gc.ok && gc.json.is_null(), "GC: {gc:?}");
        } else {
            assert_eq!((status.code(), gc.code()), (1, 1), "{version} has no STATUS or GC");
        }
        assert_eq!(plugin.allocations(host), BTreeSet::from([address]), "GC kept the valid attachment");
        let del = plugin.run(host, "DEL", Some(&a), &with_prev);
        assert!(del.ok && del.json.is_null(), "{version} DEL: {del:?}");
        assert_eq!((ports(host), plugin.allocations(host), bound(host)), (vec![], BTreeSet::new(), vec![]));
    }
    fleet.detach_all().unwrap();
}
