use std::{collections::BTreeMap, sync::OnceLock, time::Duration};

use super::*;

/// The package the tests check, built once from the tests' build of
/// fan-xdp (the packaging is the same whichever build it holds).
fn package() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = workspace_root().join("target/debian-test");
        let _ = fs::remove_dir_all(&out);
        build(&install::test_binary(), &out).unwrap()
    })
}

/// `dpkg-deb --contents`, one entry a line as `MODE OWNER PATH` (and
/// `-> TARGET` for a link), sorted; with each entry's size.
fn contents(deb: &Path) -> Vec<(String, u64)> {
    let listing = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(deb)).unwrap();
    let mut entries: Vec<(String, u64)> = listing
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            // MODE OWNER SIZE DATE TIME PATH [-> TARGET]
            let size = words[2].parse().unwrap();
            (
                format!("{} {} {}", words[0], words[1], words[5..].join(" ")),
                size,
            )
        })
        .collect();
    entries.sort();
    entries
}

/// Every entry of the package, literally: the binary (with its eBPF
/// programs inside), the unit, the conffile, the CNI link, the man pages,
/// completions, copyright, changelog and lintian's override.
const FILES: &[&str] = &[
    "-rw-r--r-- root/root ./etc/network/fan",
    "-rw-r--r-- root/root ./lib/systemd/system/fan-xdp.service",
    "-rw-r--r-- root/root ./usr/share/bash-completion/completions/fan-xdp",
    "-rw-r--r-- root/root ./usr/share/doc/fan-xdp/changelog.gz",
    "-rw-r--r-- root/root ./usr/share/doc/fan-xdp/copyright",
    "-rw-r--r-- root/root ./usr/share/fish/vendor_completions.d/fan-xdp.fish",
    "-rw-r--r-- root/root ./usr/share/lintian/overrides/fan-xdp",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-attach.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-bind.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-check.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-detach.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-doctor.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-down.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-map.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-monitor.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-reload.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-run.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-show.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-stats.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-unbind.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp-up.8.gz",
    "-rw-r--r-- root/root ./usr/share/man/man8/fan-xdp.8.gz",
    "-rw-r--r-- root/root ./usr/share/zsh/vendor-completions/_fan-xdp",
    "-rwxr-xr-x root/root ./usr/bin/fan-xdp",
    "drwxr-xr-x root/root ./",
    "drwxr-xr-x root/root ./etc/",
    "drwxr-xr-x root/root ./etc/network/",
    "drwxr-xr-x root/root ./lib/",
    "drwxr-xr-x root/root ./lib/systemd/",
    "drwxr-xr-x root/root ./lib/systemd/system/",
    "drwxr-xr-x root/root ./opt/",
    "drwxr-xr-x root/root ./opt/cni/",
    "drwxr-xr-x root/root ./opt/cni/bin/",
    "drwxr-xr-x root/root ./usr/",
    "drwxr-xr-x root/root ./usr/bin/",
    "drwxr-xr-x root/root ./usr/share/",
    "drwxr-xr-x root/root ./usr/share/bash-completion/",
    "drwxr-xr-x root/root ./usr/share/bash-completion/completions/",
    "drwxr-xr-x root/root ./usr/share/doc/",
    "drwxr-xr-x root/root ./usr/share/doc/fan-xdp/",
    "drwxr-xr-x root/root ./usr/share/fish/",
    "drwxr-xr-x root/root ./usr/share/fish/vendor_completions.d/",
    "drwxr-xr-x root/root ./usr/share/lintian/",
    "drwxr-xr-x root/root ./usr/share/lintian/overrides/",
    "drwxr-xr-x root/root ./usr/share/man/",
    "drwxr-xr-x root/root ./usr/share/man/man8/",
    "drwxr-xr-x root/root ./usr/share/zsh/",
    "drwxr-xr-x root/root ./usr/share/zsh/vendor-completions/",
    "lrwxrwxrwx root/root ./opt/cni/bin/fan -> /usr/bin/fan-xdp",
];

/// The control fields, by name (a description's continuation lines left out).
fn fields(deb: &Path) -> BTreeMap<String, String> {
    stdout_of(Command::new("dpkg-deb").arg("--field").arg(deb))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with(' '))
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_string(), value.to_string())
        })
        .collect()
}

#[test]
fn the_changelog_names_the_version_of_its_latest_entry() {
    let entry = "fan-xdp (0.2.0) unstable; urgency=medium\n\n  * Two.\n\n -- A <a@b>  Sun, 06 Dec 2026 12:00:00 +0000\n\nfan-xdp (0.1.0) unstable; urgency=medium\n";
    assert_eq!(changelog_version(entry).unwrap(), "0.2.0");
    let e = changelog_version("fan (0.1.0) unstable; urgency=medium\n").unwrap_err();
    assert!(
        e.to_string().contains("is not `fan-xdp (VERSION) ...`"),
        "{e}"
    );
    assert!(changelog_version("").is_err());
    // The shipped one is the workspace's version, which fan-xdp reports.
    let shipped = fs::read_to_string(workspace_root().join("packaging/debian/changelog")).unwrap();
    assert_eq!(
        changelog_version(&shipped).unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn the_package_has_its_fields_and_files_and_lintian_finds_no_error() {
    let deb = package();
    let version = env!("CARGO_PKG_VERSION");
    let architecture = stdout_of(Command::new("dpkg").arg("--print-architecture")).unwrap();
    let architecture = architecture.trim();
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("fan-xdp_{version}_{architecture}.deb")
    );

    let fields = fields(deb);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    assert_eq!(field("Package"), "fan-xdp");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), architecture);
    assert_eq!(
        field("Maintainer"),
        "fan-xdp maintainers <maintainers@users.noreply.r-seed-f932ac09.example>"
    );
    assert_eq!(field("Section"), "net");
    assert_eq!(field("Priority"), "optional");
    assert_eq!(field("Recommends"), "dnsmasq-base, iproute2");
    assert_eq!(
        field("Description"),
        "Fan networking with an eBPF/XDP data plane"
    );
    // dpkg-shlibdeps' libraries, each with the minimum version the
    // binary's symbols need, then nft for attach's NAT.
    let depends: Vec<&str> = field("Depends").split(", ").collect();
    let names: Vec<&str> = depends
        .iter()
        .map(|d| d.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["libc6", "libgcc-s1", "nftables"], "{depends:?}");
    assert!(depends[0].starts_with("libc6 (>= 2."), "{depends:?}");
    assert!(depends[1].starts_with("libgcc-s1 (>= "), "{depends:?}");

    let contents = contents(deb);
    let listed: Vec<&str> = contents.iter().map(|(entry, _)| entry.as_str()).collect();
    assert_eq!(listed, FILES);
    // Installed-Size: each file's KiB rounded up, one for every other entry.
    let kib: u64 = contents
        .iter()
        .filter(|(entry, _)| !entry.ends_with(" ./"))
        .map(|(entry, size)| {
            if entry.starts_with('-') {
                size.div_ceil(1024)
            } else {
                1
            }
        })
        .sum();
    assert_eq!(field("Installed-Size"), kib.to_string());

    // The control archive and the tree as dpkg unpacks them.
    let unpacked = install::tempdir("deb-unpacked").unwrap();
    stdout_of(
        Command::new("dpkg-deb")
            .arg("--raw-extract")
            .arg(deb)
            .arg(&unpacked),
    )
    .unwrap();
    let control = |name: &str| fs::read_to_string(unpacked.join("DEBIAN").join(name)).unwrap();
    assert_eq!(control("conffiles"), "/etc/network/fan\n");
    let md5sums = control("md5sums");
    assert!(md5sums.contains("  usr/bin/fan-xdp\n"), "{md5sums}");
    assert!(!md5sums.contains("etc/network/fan"), "{md5sums}");
    // No script enables or starts anything.
    for script in ["postinst", "prerm", "postrm"] {
        let text = control(script);
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(
                !line.contains("enable") && !line.contains("start"),
                "{script}: {line}"
            );
        }
    }
    // The conffile holds only comments: no fans.
    let conffile = fs::read_to_string(unpacked.join("etc/network/fan")).unwrap();
    assert!(
        conffile.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "{conffile}"
    );
    let unit = fs::read_to_string(unpacked.join("lib/systemd/system/fan-xdp.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/fan-xdp run\n"),
        "{unit}"
    );
    let file = stdout_of(Command::new("file").arg(unpacked.join("usr/bin/fan-xdp"))).unwrap();
    assert!(file.contains(", stripped"), "{file}");
    fs::remove_dir_all(&unpacked).unwrap();

    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(deb)
        .output()
        .expect("lintian (cargo xtask setup installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    println!("lintian:\n{said}");
    assert!(
        out.status.success() && !said.lines().any(|l| l.starts_with("E: ")),
        "lintian found errors:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Skips with `reason`, except under CI (`CI=true`), where a skip is a failure.
fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI=true forbids skipping");
    }
    eprintln!("skipping: {reason}");
}

/// dpkg's state of the package here, if it knows it at all.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && status != "not-installed").then_some(status)
}

/// Runs dpkg with `args`, waiting (up to five minutes) while another
/// apt or dpkg holds its lock.
fn dpkg(args: &[&str]) -> Result<()> {
    for _ in 0..60 {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()?;
        let said = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(());
        }
        if !said.contains("lock") {
            bail!(
                "dpkg {} failed: {said}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    bail!("dpkg's lock stayed held for five minutes")
}

/// The package installed; purged when dropped unless [`Installed::purge`]
/// did it (so a failed assertion leaves nothing installed).
struct Installed(bool);

impl Installed {
    fn purge(mut self) -> Result<()> {
        self.0 = false;
        dpkg(&["--purge", PACKAGE])
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.0
            && let Err(e) = dpkg(&["--purge", PACKAGE])
        {
            eprintln!("could not purge {PACKAGE}: {e:#}");
        }
    }
}

/// The enablement `systemctl enable fan-xdp` would make (WantedBy=multi-user.target).
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/fan-xdp.service";

/// Processes running `program`.
fn running(program: &Path) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            if fs::read_link(dir.join("exe")).ok()? != program {
                return None;
            }
            Some(dir.file_name()?.to_string_lossy().into_owned())
        })
        .collect()
}

#[test]
fn the_package_installs_starting_nothing_and_purges_to_what_was_there() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("installing the package needs root");
    }
    if let Some(status) = dpkg_status() {
        return skip(&format!(
            "the package {PACKAGE} is on this machine already (dpkg: {status}): this test installs and purges it, and will not run over yours"
        ));
    }
    let deb = package();
    let paths: Vec<PathBuf> = contents(deb)
        .iter()
        .map(|(entry, _)| {
            let path = entry.split(' ').nth(2).unwrap();
            Path::new("/").join(path.trim_start_matches("./"))
        })
        .collect();
    let exists = |path: &Path| fs::symlink_metadata(path).is_ok();
    let taken: Vec<String> = paths
        .iter()
        .filter(|path| exists(path) && !path.is_dir())
        .map(|path| path.display().to_string())
        .collect();
    if !taken.is_empty() {
        return skip(&format!(
            "already on this machine: {} (another install of fan-xdp, or the Fan's own configuration?); this test will not overwrite them",
            taken.join(", ")
        ));
    }
    let before: Vec<bool> = paths.iter().map(|path| exists(path)).collect();
    let enabled_before = exists(Path::new(ENABLED));

    let _services = crate::apt::NoServiceStarts::at(Path::new(crate::apt::POLICY_RC)).unwrap();
    dpkg(&["--install", deb.to_str().unwrap()]).unwrap();
    let installed = Installed(true);
    assert_eq!(dpkg_status().as_deref(), Some("installed"));
    for path in &paths {
        assert!(exists(path), "{} is not installed", path.display());
    }
    assert_eq!(
        fs::read_link("/opt/cni/bin/fan").unwrap(),
        Path::new("/usr/bin/fan-xdp")
    );
    let said = stdout_of(Command::new("/usr/bin/fan-xdp").arg("--version")).unwrap();
    assert_eq!(
        said.trim(),
        format!("fan-xdp {}", env!("CARGO_PKG_VERSION"))
    );
    // Every file as the package's md5sums have it.
    let verify = stdout_of(Command::new("dpkg").args(["--verify", PACKAGE])).unwrap();
    assert_eq!(verify, "");
    let conffiles =
        stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE])).unwrap();
    assert!(conffiles.contains(" /etc/network/fan "), "{conffiles:?}");
    // Nothing started, nothing enabled.
    assert_eq!(running(Path::new("/usr/bin/fan-xdp")), Vec::<String>::new());
    assert_eq!(exists(Path::new(ENABLED)), enabled_before);

    installed.purge().unwrap();
    assert_eq!(dpkg_status(), None);
    for (path, existed) in paths.iter().zip(before) {
        assert_eq!(
            exists(path),
            existed,
            "{} {} before the install",
            path.display(),
            if existed { "existed" } else { "was absent" }
        );
    }
    assert_eq!(exists(Path::new(ENABLED)), enabled_before);
}
