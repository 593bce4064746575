//! Installs the toolchain and test tools, only what is missing.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// What a task needs installed: each README command asks for its own, so
/// that the demo does not bring in Docker, LXD or a VM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Use {
    /// Building fan-xdp: the eBPF toolchain.
    Build,
    /// The demo: namespaces, ping, iperf3, nftables.
    Demo,
    /// The bench: the demo's tools and the containers part's DHCP.
    Bench,
    /// The second kernel in qemu (qemu itself comes privately: `vm::qemu`).
    Vm,
    /// fan-xdp's DaemonSet image: the programs and the shell it carries.
    Image,
    /// Every test: all of the above and the container runtimes.
    Tests,
}

impl Use {
    /// The uses a task's needs include: the tests need everything, the
    /// bench and the VM what the demo and the build need.
    fn includes(self, other: Use) -> bool {
        use Use::*;
        match self {
            Tests => true,
            Bench => matches!(other, Build | Demo | Bench),
            Demo => matches!(other, Build | Demo),
            Vm => matches!(other, Build | Vm),
            Image => matches!(other, Build | Image),
            Build => other == Build,
        }
    }
}

/// Debian packages: LLVM 22 for bpf-linker, and the tools the demo, bench
/// and tests drive, each with the first use that needs it and what shows
/// it is already here from any source. qemu is not among them: Debian 12's
/// qemu-system-x86 would remove a newer qemu-utils the machine may have, so
/// `cargo xtask vm` unpacks its own copy under target/ instead.
const PACKAGES: &[Need] = &[
    Need::package(
        Use::Build,
        "llvm-22-dev",
        "LLVM 22, which bpf-linker links against",
    ),
    Need::package(
        Use::Build,
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    Need::program(
        Use::Build,
        "dpkg-dev",
        "dpkg-shlibdeps",
        "dpkg-shlibdeps: the libraries `cargo xtask deb`'s package depends on",
    ),
    Need::program(Use::Demo, "iproute2", "ip", "ip: namespaces, veth, bridges"),
    Need::program(Use::Demo, "iputils-ping", "ping", "ping between containers"),
    Need::program(
        Use::Demo,
        "procps",
        "sysctl",
        "sysctl in the simulated hosts",
    ),
    Need::program(
        Use::Demo,
        "iperf3",
        "iperf3",
        "throughput in the demo and the bench",
    ),
    Need::program(
        Use::Demo,
        "nftables",
        "nft",
        "nft: fan-xdp's masquerade rules",
    )
    .also(Use::Image),
    Need::program(
        Use::Bench,
        "ethtool",
        "ethtool",
        "turning TSO off in the bench and tests",
    ),
    Need::program(
        Use::Bench,
        "util-linux",
        "setpriv",
        "setpriv in the bench and tests",
    ),
    Need::program(
        Use::Bench,
        "dnsmasq-base",
        "dnsmasq",
        "the DHCP server `attach --dhcp` runs, in the containers bench and tests",
    )
    .also(Use::Image),
    Need {
        used_by: Use::Bench,
        also: None,
        package: "udhcpc",
        why: "the DHCP client of the containers bench and the DHCP tests",
        // Its script applies the router and the MTU; busybox's sample does not.
        present: Present::File("/etc/udhcpc/default.script"),
    },
    Need {
        used_by: Use::Bench,
        also: None,
        package: "fonts-dejavu-core",
        why: "the font of the bench's chart",
        present: Present::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    },
    Need::program(
        Use::Tests,
        "tcpdump",
        "tcpdump",
        "underlay captures in the tests",
    ),
    // Installed, never started (the policy-rc.d below); not PID 1 here.
    Need::program(
        Use::Tests,
        "systemd",
        "systemd-analyze",
        "systemd-analyze verify: the install test checks the unit with it",
    ),
    Need::program(
        Use::Tests,
        "man-db",
        "man",
        "man: systemd-analyze verify looks up the unit's man page",
    ),
    Need::program(
        Use::Tests,
        "lintian",
        "lintian",
        "lintian: the package test checks `cargo xtask deb`'s package with it",
    ),
    // Only Debian's static build will do: the VM copies /bin/busybox alone.
    Need::package(
        Use::Vm,
        "busybox-static",
        "the VM's userland, and the DaemonSet image's shell",
    )
    .also(Use::Image),
    Need::program(
        Use::Vm,
        "kmod",
        "depmod",
        "depmod and modprobe, to pick the VM's kernel modules",
    ),
    Need::program(
        Use::Vm,
        "binutils",
        "strip",
        "strip, to keep the VM's initramfs small",
    ),
    // The CNI plugin's tests: Podman with its CNI backend (which runs
    // containers with runc: crun refuses this machine's hybrid cgroups), and
    // Debian's reference plugins (host-local delegated, portmap chained).
    // Their packages enable services; the policy-rc.d keeps them stopped.
    Need::program(
        Use::Tests,
        "podman",
        "podman",
        "a real CNI runtime in the CNI tests",
    ),
    Need::program(
        Use::Tests,
        "runc",
        "runc",
        "the OCI runtime of Podman in the CNI tests",
    ),
    Need {
        used_by: Use::Tests,
        also: None,
        package: "containernetworking-plugins",
        why: "the reference CNI plugins (host-local, portmap) the CNI tests chain",
        present: Present::File("/usr/lib/cni/portmap"),
    },
    // Kubernetes's path in the CRI tests: containerd's CRI plugin (Debian's
    // containerd has it built in), a CRI client of the tests' own generated
    // from the CRI proto (protoc), and the pause image built offline from a
    // static C program (gcc and libc's static archive).
    Need::program(
        Use::Tests,
        "containerd",
        "containerd",
        "containerd 1.6 and its CRI plugin, in the CRI tests",
    ),
    Need::program(
        Use::Tests,
        "protobuf-compiler",
        "protoc",
        "protoc: the CRI tests' client is generated from the CRI proto",
    ),
    Need::program(
        Use::Tests,
        "gcc",
        "gcc",
        "gcc: the CRI tests' static pause program",
    ),
    Need {
        used_by: Use::Tests,
        also: None,
        package: "libc6-dev",
        why: "libc's static archive, for the CRI tests' static pause program",
        present: Present::File("/usr/lib/x86_64-linux-gnu/libc.a"),
    },
    // The container runtimes the runtimes tests drive, each inside the
    // namespace of the host it serves. Docker and LXD by Debian's package:
    // the versions docs/containers.md describes (the docker client some
    // machines have in /usr/local/bin is not Debian's daemon, and a snap's
    // LXD is another program). Their services never start on install: the
    // deny-all policy-rc.d that `apt::install` holds while apt runs.
    Need::package(
        Use::Tests,
        "docker.io",
        "Docker 20.10 on the fan, in the runtimes tests",
    ),
    Need::program(
        Use::Tests,
        "lxc",
        "lxc-start",
        "LXC containers on the fan, in the runtimes tests",
    ),
    Need::package(
        Use::Tests,
        "lxd",
        "LXD 5.0 containers on the fan, in the runtimes tests",
    ),
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Installs what `task` needs and is missing.
pub fn run(task: Use) -> Result<()> {
    let missing: Vec<&Need> = needed_by(task).filter(|need| !need.satisfied()).collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        install_packages(&missing)?;
    }

    if !nightly_has_rust_src()? {
        println!("setup: adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
        let has_nightly = output("rustup", &["toolchain", "list"])?
            .lines()
            .any(|l| l.starts_with("nightly"));
        if has_nightly {
            run_cmd(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        } else {
            run_cmd(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("installing the nightly toolchain (the eBPF side builds with nightly)")?;
        }
    } else {
        println!("setup: nightly rust-src present");
    }

    if task.includes(Use::Vm) {
        let kernel = crate::vm::kernel().context("fetching the VM's kernel package")?;
        println!("setup: VM kernel {} present", kernel.version);
        let qemu = crate::vm::qemu_program().context("fetching the VM's qemu")?;
        println!("setup: qemu {}", qemu.describe());
    }

    if bpf_linker_ok() {
        println!("setup: bpf-linker present");
    } else {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )
        .context("building bpf-linker")?;
    }
    Ok(())
}

/// The packages `task` needs.
fn needed_by(task: Use) -> impl Iterator<Item = &'static Need> {
    PACKAGES.iter().filter(move |need| {
        task.includes(need.used_by) || need.also.is_some_and(|also| task.includes(also))
    })
}

/// A Debian package setup installs unless what it brings is already here.
struct Need {
    /// The first use that needs it.
    used_by: Use,
    /// A use outside `used_by`'s that needs it too.
    also: Option<Use>,
    package: &'static str,
    /// Why the project needs it, said when it is installed.
    why: &'static str,
    present: Present,
}

/// What shows a package's contents are here without dpkg knowing the
/// package by that name: a program or a file from another package, a
/// backport or a local build.
enum Present {
    /// Only dpkg's record of the package.
    Package,
    /// A program on PATH.
    Program(&'static str),
    File(&'static str),
}

impl Need {
    const fn package(used_by: Use, package: &'static str, why: &'static str) -> Self {
        Self {
            used_by,
            also: None,
            package,
            why,
            present: Present::Package,
        }
    }

    /// Needed by `use_` too.
    const fn also(self, use_: Use) -> Self {
        Self {
            also: Some(use_),
            ..self
        }
    }

    const fn program(
        used_by: Use,
        package: &'static str,
        program: &'static str,
        why: &'static str,
    ) -> Self {
        Self {
            used_by,
            also: None,
            package,
            why,
            present: Present::Program(program),
        }
    }

    fn satisfied(&self) -> bool {
        if package_installed(self.package) {
            return true;
        }
        let found = match self.present {
            Present::Package => None,
            Present::Program(program) => on_path(program),
            Present::File(path) => Some(std::path::PathBuf::from(path)).filter(|p| p.exists()),
        };
        if let Some(found) = &found {
            println!(
                "setup: using {} (package {} is not installed, what it brings is here)",
                found.display(),
                self.package
            );
        }
        found.is_some()
    }
}

/// The first executable called `program` in PATH's directories.
pub fn on_path(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `program --version` reports at least `minimum`.
pub fn program_at_least(program: &std::path::Path, minimum: (u32, u32)) -> bool {
    let Ok(out) = Command::new(program).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let enough = new_enough(&text, minimum);
    if !enough {
        println!(
            "setup: {} reports {:?}, not at least {}.{}: not used",
            program.display(),
            text.lines().next().unwrap_or(""),
            minimum.0,
            minimum.1
        );
    }
    enough
}

/// Whether a `--version` text names a version of at least `minimum`.
fn new_enough(version_text: &str, minimum: (u32, u32)) -> bool {
    reported_version(version_text).is_some_and(|version| version >= minimum)
}

/// (major, minor) of the first word of a `--version` text that reads as a
/// dotted version: "QEMU emulator version 8.2.1 (Debian ...)" is (8, 2).
fn reported_version(text: &str) -> Option<(u32, u32)> {
    text.split_whitespace().find_map(|word| {
        let mut parts = word.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    })
}

pub fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn install_packages(missing: &[&Need]) -> Result<()> {
    let names: Vec<&str> = missing.iter().map(|need| need.package).collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "setup: missing Debian packages {names:?}; run `sudo cargo xtask setup` (apt-get needs root)"
        );
    }
    for need in missing {
        println!("setup: installing {} ({})", need.package, need.why);
    }
    let before = crate::services::present_units(crate::services::unit_dir());
    crate::apt::install(&names)?;
    let new: Vec<&str> = crate::services::present_units(crate::services::unit_dir())
        .into_iter()
        .filter(|unit| !before.contains(unit))
        .collect();
    crate::services::disable_at_boot(&new)
}

fn nightly_has_rust_src() -> Result<bool> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .stderr(Stdio::null())
        .output()
        .context("running rustup (the eBPF build needs rustup's nightly toolchain)")?;
    Ok(installed.status.success()
        && String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|l| l.starts_with("rust-src")))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_from_version_texts() {
        assert_eq!(
            reported_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022"
            ),
            Some((7, 2))
        );
        assert_eq!(
            reported_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)"),
            Some((10, 0))
        );
        assert_eq!(reported_version("qemu: no version here"), None);
    }

    #[test]
    fn a_newer_qemu_is_new_enough_an_older_or_unreadable_one_is_not() {
        let minimum = (7, 2);
        assert!(new_enough("QEMU emulator version 10.0.2", minimum));
        assert!(new_enough("QEMU emulator version 7.2.0", minimum));
        assert!(!new_enough("QEMU emulator version 7.1.5", minimum));
        assert!(!new_enough("QEMU emulator version 6.2.0", minimum));
        assert!(!new_enough("", minimum));
    }

    /// The image's case: qemu-utils from bookworm-backports, which Debian
    /// 12's qemu-system-x86 would remove. Setup asks apt for no qemu
    /// package, and apt's plan for everything the tests need removes or
    /// downgrades nothing on this machine (whatever of it is installed
    /// already is no change in the plan).
    #[test]
    fn the_tests_needs_would_remove_or_downgrade_nothing_here() {
        assert!(
            PACKAGES
                .iter()
                .all(|need| !need.package.starts_with("qemu")),
            "qemu comes unpacked under target/, never from apt"
        );
        let names: Vec<&str> = needed_by(Use::Tests).map(|need| need.package).collect();
        assert_eq!(names.len(), PACKAGES.len());
        let refused = crate::apt::refused_changes(&names).unwrap();
        assert!(refused.is_empty(), "apt would: {refused:?}");
    }

    #[test]
    fn the_demo_installs_no_runtime_vm_or_bench_tool() {
        let demo: Vec<&str> = needed_by(Use::Demo).map(|need| need.package).collect();
        for package in [
            "docker.io",
            "lxd",
            "lxc",
            "podman",
            "busybox-static",
            "udhcpc",
        ] {
            assert!(!demo.contains(&package), "the demo installs {package}");
        }
        assert!(demo.contains(&"llvm-22-dev") && demo.contains(&"iperf3"));
        let build: Vec<&str> = needed_by(Use::Build).map(|need| need.package).collect();
        assert_eq!(build, ["llvm-22-dev", "libpolly-22-dev", "dpkg-dev"]);
    }

    #[test]
    fn the_image_installs_what_it_carries_and_no_runtime() {
        let image: Vec<&str> = needed_by(Use::Image).map(|need| need.package).collect();
        for package in ["nftables", "dnsmasq-base", "busybox-static", "llvm-22-dev"] {
            assert!(image.contains(&package), "the image lacks {package}");
        }
        for package in ["docker.io", "podman", "containerd", "iperf3"] {
            assert!(!image.contains(&package), "the image installs {package}");
        }
    }

    #[test]
    fn programs_are_found_on_path_only_when_executable() {
        assert!(on_path("sh").is_some());
        assert!(on_path("no-such-program-fan-xdp").is_none());
    }
}
