//! Kubernetes's own path to the plugin: kubelet does not run CNI plugins,
//! it asks the container runtime (RunPodSandbox), and containerd's CRI
//! plugin sets the pod's network up through libcni with kubelet's
//! CNI_ARGS. Here a containerd 1.6 runs in each simulated node's namespace
//! and a CRI client of the tests' own (`fan_tests::cri`) stands in for
//! kubelet. Host kernel only.
//!
//! Over 400 lines: the issue asks for the CRI tests in a test executable of
//! their own; containerd, the client, the images, the cleanup and the
//! DaemonSet's helpers live in `fan_tests::cri`, what is left are the
//! tests and their bed.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use fan_tests::{
    cni::{BinDir, TempDir, addresses_in, bound, invoke, ports},
    cri::{Containerd, Images},
    lifecycle::agent_pid,
    netns::Netns,
    privileged,
    topology::{Fleet, Host},
    traffic::{ping, tcp_transfer, tcp_transfer_via},
};
use fan_userspace::{
    agent::bindings::{self, Origin},
    state::rundir::RunDir,
};

/// Every node's network configuration, byte for byte: nothing in it is per
/// node. 1.0.0: containerd 1.6.20 refuses a 1.1.0 result.
const CONFLIST: &str = "{\"cniVersion\":\"1.0.0\",\"name\":\"fan\",\"plugins\":[{\"type\":\"fan\",\"overlay\":\"250.0.0.0/8\"}]}\n";

/// Nodes with the fan attached, a containerd each, the plugin's state in a
/// directory of the test. Field order is drop order: the containerds remove
/// their pods while the agents still run.
struct Bed {
    containerds: Vec<Containerd>,
    _images: Images,
    state: TempDir,
    bin: BinDir,
    fleet: Fleet,
}

impl Bed {
    /// `nodes` nodes attached with `attach` (extra arguments), each with
    /// its containerd started and ready.
    fn new(label: &str, nodes: u8, attach: &[&str]) -> Self {
        let fleet = Fleet::new(nodes).unwrap();
        fleet.attach_all(attach).unwrap();
        let bin = BinDir::new(&format!("cri-{label}")).unwrap();
        let state = TempDir::new(&format!("cri-state-{label}")).unwrap();
        let images = Images::build().unwrap();
        let state_dir = state.path.to_str().unwrap().to_string();
        let containerds = fleet
            .hosts
            .iter()
            .map(|h| {
                Containerd::start(
                    &h.ns,
                    &bin.path,
                    Some(CONFLIST.as_bytes()),
                    &[("FAN_XDP_STATE_DIR", &state_dir)],
                    &images,
                )
                .unwrap()
            })
            .collect();
        Self {
            containerds,
            _images: images,
            state,
            bin,
            fleet,
        }
    }

    fn node(&self, i: usize) -> (&Host, &Containerd) {
        (&self.fleet.hosts[i], &self.containerds[i])
    }

    /// The plugin's allocations on `host`'s slice.
    fn allocations(&self, host: &Host) -> BTreeSet<Ipv4Addr> {
        addresses_in(&self.state.path.join(format!("cni/fan/{}-24", host.slice)))
    }

    /// Nothing of any pod left on `host`: no veth, allocation or binding.
    fn assert_nothing_left(&self, host: &Host, why: &str) {
        assert_eq!(ports(host), Vec::<String>::new(), "{why}: a veth was left");
        assert_eq!(
            self.allocations(host),
            BTreeSet::new(),
            "{why}: an allocation was left"
        );
        assert_eq!(bound(host), vec![], "{why}: a binding was left");
    }
}

/// The plugin's CNI range of `host`'s slice: .192 to .254 of the /24.
fn in_cni_range(host: &Host, address: Ipv4Addr) -> bool {
    let first = u32::from(host.slice) + 192;
    (first..=first + 62).contains(&u32::from(address))
}

/// Bytes for a transfer: `FAN_TEST_BULK_MB` (default 100) megabytes.
fn bulk_bytes() -> u64 {
    let megabytes: u64 = std::env::var("FAN_TEST_BULK_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    megabytes << 20
}

fn kill_agent(host: &Host) {
    let pid = agent_pid(host).unwrap() as i32;
    // SAFETY: signalling the agent by the pid its status names; it runs in
    // this test's namespace.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

fn restart_agent(host: &Host) {
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", "250.0.0.0/8"])
        .unwrap();
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_containerds_cri_and_leave_nothing() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let bed = Bed::new("two", 2, &[]);
    for (host, containerd) in bed.fleet.hosts.iter().zip(&bed.containerds) {
        assert_eq!(
            std::fs::read(containerd.conf_dir().join("10-fan.conflist")).unwrap(),
            CONFLIST.as_bytes(),
            "{}'s conflist",
            host.slice
        );
        let version = containerd.version().unwrap();
        assert_eq!(
            (
                version.runtime_name.as_str(),
                version.runtime_api_version.as_str()
            ),
            ("containerd", "v1")
        );
        assert!(version.runtime_version.starts_with("1.6."), "{version:?}");
        containerd.wait_until_network_ready().unwrap();
        let conditions = containerd.conditions().unwrap();
        for condition in ["RuntimeReady", "NetworkReady"] {
            assert!(
                conditions.get(condition).is_some_and(|c| c.0),
                "{condition}: {conditions:?}"
            );
        }
    }

    // A pod on each node, with a busybox workload.
    let mut pods = Vec::new();
    for i in 0..2 {
        let (host, containerd) = bed.node(i);
        let name = format!("web-{i}");
        let id = containerd.run_pod("default", &name).unwrap();
        assert!(containerd.pod_ready(&id).unwrap(), "SANDBOX_READY");
        let ip = containerd.pod_ip(&id).unwrap();
        assert!(
            in_cni_range(host, ip),
            "{ip} is not in {}'s CNI range",
            host.slice
        );
        let held = bound(host);
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(
            (held[0].address, held[0].origin, held[0].owner.as_str()),
            (ip, Origin::Cni, id.as_str()),
            "the pod's binding came from CNI"
        );
        assert_eq!(
            held[0].pod.as_ref().map(|p| p.to_string()),
            Some(format!("default/{name}"))
        );
        let shown = host.fan_xdp_ok(&["show"]).unwrap();
        let line = format!(
            "  {:<15} cni    pod default/{name}, container {id} at ",
            ip.to_string()
        );
        assert!(
            shown.lines().any(|l| l.starts_with(&line)),
            "show does not name the pod beside {ip}:\n{shown}"
        );
        let work = containerd.run_busybox(&id, "default", &name).unwrap();
        pods.push((id, ip, work));
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let (code, out) = bed.containerds[from]
            .exec(
                &pods[from].2,
                &["ping", "-c", "3", "-W", "2", &pods[to].1.to_string()],
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(code, 0, "busybox ping from pod {from} to pod {to}: {out}");
    }
    let pod_ns: Vec<Netns> = (0..2)
        .map(|i| bed.containerds[i].pod_ns(&pods[i].0).unwrap())
        .collect();
    let bytes = bulk_bytes();
    for (server, client) in [(1, 0), (0, 1)] {
        let moved = tcp_transfer(&pod_ns[server], &pod_ns[client], pods[server].1, bytes).unwrap();
        assert_eq!(moved, bytes, "pod {client} to pod {server}");
    }

    // A ClusterIP as kube-proxy's nftables mode makes it, in node 0: a DNAT
    // to the pod on node 1. With the rule committed, the agent turns the
    // bypass off (auto), so conntrack sees the answers and undoes the NAT.
    let (node0, _) = bed.node(0);
    let rules = format!(
        "add table ip fan-cri-svc; add chain ip fan-cri-svc prerouting {{ type nat hook prerouting priority dstnat; }}; add rule ip fan-cri-svc prerouting ip daddr 10.96.0.10 tcp dport 80 dnat to {}:5201",
        pods[1].1
    );
    node0.ns.run("nft", &[&rules]).unwrap();
    let service = SocketAddr::from(([10, 96, 0, 10], 80));
    let listen = SocketAddr::from((pods[1].1, 5201));
    let mut answered = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answered && Instant::now() < deadline {
        // The agent notices the ruleset within its check interval.
        answered = tcp_transfer_via(&pod_ns[1], listen, &pod_ns[0], service, 1 << 20)
            .is_ok_and(|n| n == 1 << 20);
        if !answered {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let shown = node0.fan_xdp_ok(&["show"]).unwrap();
    node0
        .ns
        .run("nft", &["delete", "table", "ip", "fan-cri-svc"])
        .unwrap();
    assert!(
        shown.contains("bypass: off ("),
        "the DNAT rule left the bypass on:\n{shown}"
    );
    assert!(
        answered,
        "the ClusterIP 10.96.0.10:80 of pod {} never answered",
        pods[1].1
    );

    // containerd restarted on node 1: the pod keeps running and answering.
    {
        let containerd = &bed.containerds[1];
        containerd.stop().unwrap();
        assert!(
            ping(&pod_ns[0], pods[1].1, 3).unwrap(),
            "while containerd is down"
        );
        containerd.launch().unwrap();
        assert!(containerd.pod_ready(&pods[1].0).unwrap());
        let (code, out) = containerd
            .exec(
                &pods[1].2,
                &["ping", "-c", "3", "-W", "2", &pods[0].1.to_string()],
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(code, 0, "after containerd's restart: {out}");
    }

    // The agent of node 1 killed and restarted (a DaemonSet rollout) under
    // a transfer between the pods, paced to outlast the restart.
    pod_ns[0]
        .run(
            "tc",
            &[
                "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "100mbit", "burst", "256kb",
                "latency", "50ms",
            ],
        )
        .unwrap();
    let (node1, _) = bed.node(1);
    let paced = 40u64 << 20;
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| tcp_transfer(&pod_ns[1], &pod_ns[0], pods[1].1, paced));
        std::thread::sleep(Duration::from_millis(500));
        kill_agent(node1);
        restart_agent(node1);
        assert!(
            !transfer.is_finished(),
            "the transfer ended before the agent was back: pace it slower"
        );
        let moved = transfer.join().unwrap();
        assert_eq!(
            moved.unwrap(),
            paced,
            "the connection broke across the agent's restart"
        );
    });
    pod_ns[0]
        .run("tc", &["qdisc", "del", "dev", "eth0", "root"])
        .unwrap();

    // StopPodSandbox and RemovePodSandbox leave nothing, and a DEL repeated
    // by the runtime (the same attachment, the namespace gone) is harmless.
    drop(pod_ns);
    for (i, (pod, _, _)) in pods.iter().enumerate() {
        let (host, containerd) = bed.node(i);
        let netns = containerd.pod_netns(pod).unwrap();
        containerd.remove_pod(pod).unwrap();
        bed.assert_nothing_left(host, "RemovePodSandbox");
        assert!(!netns.exists(), "{} outlived the pod", netns.display());
        assert_eq!(containerd.pods().unwrap(), Vec::<String>::new());
        let attachment = fan_tests::cni::Attachment {
            container_id: pod,
            ifname: "eth0",
            netns: None,
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{i};K8S_POD_INFRA_CONTAINER_ID={pod};K8S_POD_UID=uid-default-web-{i}"
        );
        let again = invoke(
            &host.ns,
            &bed.bin,
            "fan",
            "DEL",
            Some(&attachment),
            &plain_conf(),
            &[
                ("FAN_XDP_STATE_DIR", bed.state.path.to_str().unwrap()),
                ("CNI_ARGS", &args),
            ],
        )
        .unwrap();
        assert!(again.ok, "a repeated DEL: {again:?}");
        bed.assert_nothing_left(host, "a repeated DEL");
    }
    eprintln!("two nodes: {:.1} s", started.elapsed().as_secs_f64());
}

/// The plugin's configuration as libcni hands it to `fan` from [`CONFLIST`].
fn plain_conf() -> String {
    r#"{"cniVersion":"1.0.0","name":"fan","type":"fan","overlay":"250.0.0.0/8"}"#.into()
}

#[test]
fn fifty_pods_created_and_removed_on_one_node_leak_no_address() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let bed = Bed::new("fifty", 1, &[]);
    let (host, containerd) = bed.node(0);
    containerd.wait_until_network_ready().unwrap();
    let mut seen = BTreeSet::new();
    for round in 0..50 {
        let id = containerd.run_pod("load", &format!("p{round}")).unwrap();
        let ip = containerd.pod_ip(&id).unwrap();
        assert!(in_cni_range(host, ip), "round {round}: {ip}");
        seen.insert(ip);
        assert_eq!(bed.allocations(host), BTreeSet::from([ip]), "round {round}");
        containerd.remove_pod(&id).unwrap();
        bed.assert_nothing_left(host, &format!("round {round}"));
    }
    // A released address is not handed out again at once: 50 rounds, 50 addresses.
    assert_eq!(seen.len(), 50);
    eprintln!("fifty pods: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn an_add_before_the_agent_is_ready_fails_try_again_and_the_next_run_pod_succeeds() {
    if !privileged() {
        return;
    }
    let bed = Bed::new("early", 1, &["--no-agent"]);
    let (host, containerd) = bed.node(0);
    containerd.wait_until_network_ready().unwrap();
    let refused = containerd.run_pod("default", "early").unwrap_err();
    let text = format!("{refused:#}");
    assert!(
        text.contains("no agent (fan-xdp run) serves this network namespace"),
        "RunPodSandbox did not pass on the plugin's try-again error: {text}"
    );
    assert_eq!(ports(host), Vec::<String>::new());
    assert_eq!(bed.allocations(host), BTreeSet::new());
    // kubelet retries the pod; by then the agent is up.
    restart_agent(host);
    let id = containerd.run_pod("default", "early").unwrap();
    assert!(containerd.pod_ready(&id).unwrap());
    let ip = containerd.pod_ip(&id).unwrap();
    assert!(ping(&host.ns, ip, 1).unwrap(), "the pod does not answer");
    containerd.remove_pod(&id).unwrap();
    bed.assert_nothing_left(host, "RemovePodSandbox");
}

#[test]
fn the_daemonsets_image_attaches_the_fan_installs_the_plugin_and_pods_get_addresses() {
    use k8s_cri::v1 as cri;
    if !privileged() {
        return;
    }
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/fan-xdp-daemonset.yaml"
    ))
    .unwrap();
    let reference = fan_tests::cri::fan_xdp_reference();
    assert_eq!(
        yaml.matches(&format!("image: {reference}\n")).count(),
        2,
        "the DaemonSet names {reference} for both containers"
    );
    let install_script = fan_tests::cri::daemonset::yaml_block(&yaml, "name: install-cni");
    let agent_command = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("- fan-xdp attach"))
        .map(|rest| format!("fan-xdp attach{rest}"))
        .expect("the agent's command");
    let conflist = fan_tests::cri::daemonset::yaml_block(&yaml, "10-fan.conflist: |");
    let parsed: serde_json::Value = serde_json::from_str(&conflist).unwrap();
    assert_eq!(parsed["plugins"][0]["type"], "fan", "{conflist}");

    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let private = TempDir::new("cri-daemonset").unwrap();
    let dir = |name: &str| {
        let path = private.path.join(name);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        path
    };
    let (run, state, cni_bin, config) = (dir("run"), dir("state"), dir("bin"), dir("config"));
    // A node's CNI binary directory holds the reference plugins already.
    for plugin in ["loopback", "portmap"] {
        std::os::unix::fs::symlink(
            std::path::Path::new(fan_tests::cni::REFERENCE_PLUGINS).join(plugin),
            cni_bin.join(plugin),
        )
        .unwrap();
    }
    std::fs::write(config.join("10-fan.conflist"), &conflist).unwrap();
    let bpffs = fan_tests::cri::daemonset::PrivateBpffs::new(&host.ns, &run).unwrap();
    let images = Images::build().unwrap();
    let built = Instant::now();
    let archive = images.fan_xdp().unwrap();
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!(
        "the image {reference}: {:.1} MiB (the binary under test, debug information stripped), built in {:.1} s",
        size as f64 / f64::from(1 << 20),
        built.elapsed().as_secs_f64()
    );
    let (pin_dir, run_dir, state_dir) = (
        bpffs.path.to_str().unwrap(),
        run.to_str().unwrap(),
        state.to_str().unwrap(),
    );
    // The plugin, run by containerd on the node, finds what the agent in
    // its pod made: the same directories.
    let containerd = Containerd::start(
        &host.ns,
        &cni_bin,
        None,
        &[
            ("FAN_XDP_PIN_DIR", pin_dir),
            ("FAN_XDP_RUN_DIR", run_dir),
            ("FAN_XDP_STATE_DIR", state_dir),
        ],
        &images,
    )
    .unwrap();
    containerd.import(&archive).unwrap();
    containerd
        .wait_for_image(&fan_tests::cri::full_name(&reference))
        .unwrap();

    // The DaemonSet's pod: host network, privileged, the node's directories.
    let host_namespaces = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    };
    let mut sandbox = containerd.pod_config("kube-system", "fan-xdp-node1");
    // kubelet gives a host-network pod no hostname of its own (it shares the node's).
    sandbox.hostname = String::new();
    sandbox.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(host_namespaces.clone()),
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ds_pod = containerd.run_sandbox(sandbox.clone()).unwrap();
    let mount = |host_path: &std::path::Path, container_path: &str, propagation| cri::Mount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    };
    let private_mount = cri::MountPropagation::PropagationPrivate;
    let container =
        |name: &str, script: &str, mounts: Vec<cri::Mount>, envs| cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: fan_tests::cri::full_name(&reference),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            envs,
            mounts,
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    privileged: true,
                    namespace_options: Some(host_namespaces.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
    let init = containerd
        .run_container(
            &ds_pod,
            container(
                "install-cni",
                &install_script,
                vec![
                    mount(&cni_bin, "/host/opt/cni/bin", private_mount),
                    mount(&containerd.conf_dir(), "/host/etc/cni/net.d", private_mount),
                    mount(&config, "/config", private_mount),
                ],
                vec![],
            ),
            sandbox.clone(),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (state, code) = containerd.container_state(&init).unwrap();
        if state == cri::ContainerState::ContainerExited {
            assert_eq!(code, 0, "the init step failed");
            break;
        }
        assert!(Instant::now() < deadline, "the init step did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read(cni_bin.join("fan")).unwrap(),
        std::fs::read(archive_binary(&images)).unwrap(),
        "the init step installed fan-xdp as the plugin `fan`"
    );
    assert_eq!(
        std::fs::read_to_string(containerd.conf_dir().join("10-fan.conflist")).unwrap(),
        conflist
    );
    let env = |key: &str, value: &str| cri::KeyValue {
        key: key.into(),
        value: value.into(),
    };
    let agent = containerd
        .run_container(
            &ds_pod,
            container(
                "agent",
                &agent_command,
                vec![
                    mount(
                        &bpffs.path,
                        "/sys/fs/bpf",
                        cri::MountPropagation::PropagationBidirectional,
                    ),
                    mount(&run, "/run/fan-xdp", private_mount),
                    mount(&state, "/var/lib/fan-xdp", private_mount),
                ],
                vec![env("FAN_IFACE", "eth0"), env("FAN_OVERLAY", "250.0.0.0/8")],
            ),
            sandbox,
        )
        .unwrap();

    // The node is Ready once containerd has read the conflist the init step
    // wrote; a pod then, retried as kubelet retries it, until the agent in
    // the DaemonSet's pod serves the node.
    containerd.wait_until_network_ready().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pod = loop {
        match containerd.run_pod("default", "through-the-image") {
            Ok(id) => break id,
            Err(e) => {
                let (state, _) = containerd.container_state(&agent).unwrap();
                assert!(
                    Instant::now() < deadline && state == cri::ContainerState::ContainerRunning,
                    "no pod network from the DaemonSet's agent ({state:?}): {e:#}\n{}",
                    containerd.log_tail()
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    };
    let ip = containerd.pod_ip(&pod).unwrap();
    assert!(in_cni_range(host, ip), "{ip}");
    assert!(
        ping(&host.ns, ip, 2).unwrap(),
        "the pod does not answer its node"
    );
    let held = host
        .ns
        .enter(|| bindings::list(&RunDir::locate(Some(&run))?))
        .unwrap()
        .unwrap();
    assert_eq!(
        held.iter()
            .map(|b| (b.address, b.origin))
            .collect::<Vec<_>>(),
        [(ip, Origin::Cni)],
        "the agent in the DaemonSet's pod holds the pod's binding"
    );
    containerd.remove_pod(&pod).unwrap();
    assert_eq!(ports(host), Vec::<String>::new());
    assert_eq!(
        addresses_in(&state.join(format!("cni/fan/{}-24", host.slice))),
        BTreeSet::new()
    );
    drop(containerd);
    drop(bpffs);
}

/// The fan-xdp binary inside the test's image (what the init step copies).
fn archive_binary(images: &Images) -> std::path::PathBuf {
    images.dir().join("fan-xdp")
}
