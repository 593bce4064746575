//! A full description of a host namespace's state, to prove that a failed or
//! undone attach left nothing behind.

use anyhow::Result;

use crate::netns::Netns;

/// Links, addresses, routes, rules, neighbours, the nft ruleset, the sysctls
/// fan-xdp touches, fan-xdp's bpffs contents and every BPF program, map and
/// link id on the machine (tests run one at a time, so those are ours).
pub fn snapshot(ns: &Netns) -> Result<String> {
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
    let sysctls = ns.run(
        "sh",
        &["-c", "for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/rp_filter; do echo $f $(cat $f); done"],
    )?;
    out += &format!("== sysctl\n{sysctls}");
    let bpffs = std::process::Command::new("sh")
        .args([
            "-c",
            "find /sys/fs/bpf/fan-xdp -mindepth 1 2>/dev/null | sort",
        ])
        .output()?;
    out += &format!("== bpffs\n{}", String::from_utf8_lossy(&bpffs.stdout));
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

/// Asserts that the snapshot of `ns` equals `before`. The kernel frees BPF
/// objects after their last reference in deferred work, so ids of objects
/// just released may linger a moment: wait up to two seconds for that to
/// settle (a real leak never does).
#[track_caller]
pub fn assert_unchanged(ns: &Netns, before: &str, what: &str) {
    let mut now = snapshot(ns).expect("snapshot");
    for _ in 0..20 {
        if now == before {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = snapshot(ns).expect("snapshot");
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
