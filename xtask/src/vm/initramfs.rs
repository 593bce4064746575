//! The guest's initramfs: busybox, the host tools the tests drive and their
//! shared libraries, the payload, the kernel modules in load order, and an
//! init that runs one command and prints its exit status.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{EXIT_MARKER, Kernel, cpio::Cpio, run, vm_dir};

/// The modules the tests need, dependencies resolved by modprobe.
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "ipip",
    "vxlan",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "sch_ingress",
    "cls_bpf",
    "sch_tbf",
    "virtio_net",
    "virtio_pci",
];

/// Host tools copied into the guest, with their shared libraries.
const TOOLS: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/bridge",
    "/usr/sbin/nft",
    "/usr/bin/ping",
    "/usr/bin/tcpdump",
    "/usr/bin/iperf3",
    "/usr/sbin/ethtool",
    "/usr/bin/setpriv",
    "/usr/sbin/sysctl",
    // Busybox's tc lists no BPF filters and shapes with no tbf.
    "/usr/sbin/tc",
];

/// The guest's modules in load order.
fn module_order(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for module in MODULES {
        let out = run(Command::new("modprobe")
            .args(["--show-depends", "-d"])
            .arg(&kernel.root)
            .args(["-S", &kernel.version, module]))?;
        for line in out.lines() {
            if let Some(path) = line
                .strip_prefix("insmod ")
                .map(|p| p.split_whitespace().next().unwrap_or(p))
                && seen.insert(path.to_string())
            {
                order.push(PathBuf::from(path));
            }
        }
    }
    Ok(order)
}

/// Shared libraries a binary needs, as ldd resolves them on this host.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = l
                .split("=>")
                .nth(1)
                .unwrap_or(l)
                .split_whitespace()
                .next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Builds the initramfs: busybox, tools and their libraries, modules,
/// `payload` (host path, guest path) and an init that runs `command`.
pub(super) fn initramfs(
    kernel: &Kernel,
    payload: &[(PathBuf, String)],
    command: &str,
) -> Result<PathBuf> {
    let mut cpio = Cpio::new();
    for dir in [
        "/proc", "/sys", "/dev", "/tmp", "/run", "/var", "/etc", "/root",
    ] {
        cpio.dir(Path::new(dir));
    }
    cpio.copy(Path::new("/bin/busybox"), "/bin/busybox")
        .context("busybox-static (cargo xtask setup)")?;
    let mut libs = BTreeSet::new();
    for tool in TOOLS {
        cpio.copy(Path::new(tool), tool)?;
        libs.extend(libraries(Path::new(tool))?);
    }
    let stripped = vm_dir().join("stripped");
    fs::create_dir_all(&stripped)?;
    for (host, guest) in payload {
        // Debug info would make the initramfs hundreds of MB.
        let small = stripped.join(host.file_name().context("payload file name")?);
        let ok = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&small)
            .arg(host)
            .status()
            .is_ok_and(|s| s.success());
        cpio.copy(if ok { &small } else { host }, guest)?;
        libs.extend(libraries(host)?);
    }
    for lib in &libs {
        // Keep the path the binaries were linked against, following symlinks for the data.
        cpio.copy(&fs::canonicalize(lib)?, &lib.to_string_lossy())?;
    }
    let modules = module_order(kernel)?;
    let mut load = String::new();
    for module in &modules {
        let guest = format!(
            "/modules/{}",
            module.file_name().unwrap_or_default().to_string_lossy()
        );
        cpio.copy(module, &guest)?;
        load += &format!("insmod {guest} || echo \"vm: insmod {guest} failed\"\n");
    }
    cpio.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        false,
    );
    cpio.file("/etc/group", b"root:x:0:\nnogroup:x:65534:\n", false);
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin CI=true HOME=/root RUST_BACKTRACE=1\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         ln -sf /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin\n\
         ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         ip link set lo up\n\
         {load}\
         echo \"vm: kernel $(uname -r), $(nproc) CPUs\"\n\
         cd /fan\n\
         ( {command} )\n\
         echo \"{EXIT_MARKER}$?\"\n\
         poweroff -f\n"
    );
    cpio.file("/init", init.as_bytes(), true);
    let path = vm_dir().join("initramfs.cpio");
    fs::write(&path, cpio.finish())?;
    Ok(path)
}
