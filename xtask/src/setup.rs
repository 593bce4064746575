//! Installs the toolchain and test tools, only what is missing.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker, and the tools the tests drive.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "LLVM 22, which bpf-linker links against"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("iproute2", "ip: namespaces, veth, bridges in the tests"),
    ("iputils-ping", "ping in the tests"),
    ("ethtool", "turning TSO off in the tests"),
    ("tcpdump", "underlay captures in the tests"),
    ("procps", "sysctl in the tests"),
    ("iperf3", "throughput in the demo and the bench"),
    ("nftables", "nft: fan-xdp's masquerade rules"),
    ("util-linux", "setpriv in the tests"),
    ("fonts-dejavu-core", "the font of the bench's chart"),
    (
        "qemu-system-x86",
        "the VM that runs the tests on a second kernel",
    ),
    ("busybox-static", "the VM's userland"),
    (
        "kmod",
        "depmod and modprobe, to pick the VM's kernel modules",
    ),
    ("binutils", "strip, to keep the VM's initramfs small"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(name, _)| !package_installed(name))
        .map(|(name, _)| *name)
        .collect();
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

    let kernel = crate::vm::kernel().context("fetching the VM's kernel package")?;
    println!("setup: VM kernel {} present", kernel.version);

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

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn install_packages(missing: &[&str]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "setup: missing Debian packages {missing:?}; run `sudo cargo xtask setup` (apt-get needs root)"
        );
    }
    println!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install {}", missing.join(" ")))
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

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
