//! A full description of a host namespace's state, to prove that a failed or
//! undone attach left nothing behind.

use anyhow::Result;

use crate::netns::Netns;

/// [`netns_snapshot`], and every BPF program, map and link id on the
/// machine (tests run one at a time, so those are ours; where other test
/// runs share the machine, compare [`netns_snapshot`] instead).
pub fn snapshot(ns: &Netns) -> Result<String> {
    let mut out = netns_snapshot(ns)?;
    let programs: Vec<u32> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .collect();
    let maps: Vec<u32> = aya::maps::loaded_maps().flatten().map(|m| m.id()).collect();
    let links: Vec<u32> = aya::programs::loaded_links()
        .flatten()
        .map(|l| l.id())
        .collect();
    out += &format!("== bpf\nprograms {programs:?}\nmaps {maps:?}\nlinks {links:?}\n");
    Ok(out)
}

/// What one namespace holds: links, addresses, routes, rules, neighbours,
/// the nft ruleset, the sysctls fan-xdp touches, and fan-xdp's bpffs
/// directory for this namespace.
pub fn netns_snapshot(ns: &Netns) -> Result<String> {
    let mut out = String::new();
    for args in [
        &["-d", "link", "show"][..],
        &["addr", "show"],
        &["route", "show", "table", "all"],
        &["rule", "show"],
        &["neigh", "show"],
    ] {
        let text = ns.ip(args)?;
        out += &format!("== ip {}\n{}", args.join(" "), without_timers(&text));
    }
    out += &format!("== nft\n{}", ns.run("nft", &["list", "ruleset"])?);
    // Before 6.6, TC programs need a clsact qdisc, which attach may add.
    out += &format!("== tc\n{}", ns.run("tc", &["qdisc", "show"])?);
    let sysctls = ns.run(
        "sh",
        &["-c", "for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/rp_filter; do echo $f $(cat $f); done"],
    )?;
    out += &format!("== sysctl\n{sysctls}");
    let cookie = ns.enter(fan_userspace::host::netns::current_cookie)??;
    let bpffs = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("find /sys/fs/bpf/fan-xdp/netns-{cookie} 2>/dev/null | sort"),
        ])
        .output()?;
    out += &format!("== bpffs\n{}", String::from_utf8_lossy(&bpffs.stdout));
    Ok(out)
}

/// [`snapshot`], and what else a lifecycle must give back: fan-xdp's run
/// directory for this namespace less its lock files (`state.lock` and the
/// agent's are never deleted, by design: deleting one while another process
/// waits on it would let two processes lock two different files), anything
/// under `/var/lib/fan-xdp`, and how many descriptors this test process has
/// open (the commands run as children; a handle the test's own calls into
/// the crate leaked would show here).
///
/// Neighbour entries the kernel learned from the test's traffic (reachable,
/// stale and the like) are left out: fan-xdp makes none. Where other
/// processes load BPF on the same machine (a developer's shared one),
/// `FAN_TEST_SHARED_MACHINE=1` leaves out the machine-wide BPF ids, which
/// they change; CI (`CI=true`) refuses it.
pub fn lifecycle_snapshot(ns: &Netns) -> Result<String> {
    let shared = std::env::var("FAN_TEST_SHARED_MACHINE").is_ok_and(|v| v == "1");
    if shared && std::env::var("CI").is_ok_and(|v| v == "true") {
        anyhow::bail!("FAN_TEST_SHARED_MACHINE=1 under CI=true: CI compares the BPF ids");
    }
    let whole = if shared {
        netns_snapshot(ns)?
    } else {
        snapshot(ns)?
    };
    let learned = [
        "REACHABLE",
        "STALE",
        "DELAY",
        "PROBE",
        "FAILED",
        "INCOMPLETE",
    ];
    let mut out: String = whole
        .lines()
        .filter(|l| !learned.iter().any(|state| l.trim_end().ends_with(state)))
        .map(|l| format!("{l}\n"))
        .collect();
    let cookie = ns.enter(fan_userspace::host::netns::current_cookie)??;
    let listing = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "find /run/fan-xdp/netns-{cookie} -mindepth 1 ! -name '*.lock' 2>/dev/null | sort; \
                 find /var/lib/fan-xdp 2>/dev/null | sort"
            ),
        ])
        .output()?;
    out += &format!("== run, var\n{}", String::from_utf8_lossy(&listing.stdout));
    let fds = std::fs::read_dir("/proc/self/fd")?.count();
    out += &format!("== fds\n{fds}\n");
    Ok(out)
}

/// Asserts that the snapshot of `ns` equals `before`. The kernel frees BPF
/// objects after their last reference in deferred work, so ids of objects
/// just released may linger a moment: wait up to two seconds for that to
/// settle (a real leak never does).
#[track_caller]
pub fn assert_unchanged(ns: &Netns, before: &str, what: &str) {
    assert_same(ns, snapshot, before, what)
}

/// [`assert_unchanged`] for a [`lifecycle_snapshot`].
#[track_caller]
pub fn assert_lifecycle_unchanged(ns: &Netns, before: &str, what: &str) {
    assert_same(ns, lifecycle_snapshot, before, what)
}

/// [`assert_unchanged`] for a [`netns_snapshot`].
#[track_caller]
pub fn assert_netns_unchanged(ns: &Netns, before: &str, what: &str) {
    assert_same(ns, netns_snapshot, before, what)
}

/// Asserts that `take` of `ns` equals `before` (waiting as [`assert_unchanged`]
/// does), and names the lines gone and added if it never does.
#[track_caller]
pub fn assert_same(ns: &Netns, take: fn(&Netns) -> Result<String>, before: &str, what: &str) {
    let mut now = take(ns).expect("snapshot");
    for _ in 0..20 {
        if now == before {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = take(ns).expect("snapshot");
    }
    let gone: Vec<&str> = before
        .lines()
        .filter(|l| !now.lines().any(|n| n == *l))
        .collect();
    let added: Vec<&str> = now
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect();
    panic!("{what}:\n  gone:  {gone:#?}\n  added: {added:#?}");
}

/// `ip -d link` prints a bridge's running timers; they are not state.
fn without_timers(text: &str) -> String {
    let mut out = Vec::new();
    let mut words = text.split(' ').peekable();
    while let Some(word) = words.next() {
        if word.ends_with("_timer") {
            // Skip the value (possibly preceded by padding spaces).
            while words.peek().is_some_and(|w| w.is_empty()) {
                words.next();
            }
            words.next();
            continue;
        }
        out.push(word);
    }
    out.join(" ")
}
