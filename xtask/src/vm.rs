//! A second kernel in qemu: Debian's 6.1 LTS cloud kernel, booted with an
//! initramfs that holds busybox, the tools the tests drive, the test binaries
//! and the kernel modules they load. The guest runs one command, prints its
//! exit status on the serial console and powers off; the host enforces a time
//! limit and keeps the console log under target/vm/.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::workspace_root;

/// The modules the tests need, dependencies resolved by modprobe.
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "ipip",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "sch_ingress",
    "cls_bpf",
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
];

/// Printed by the guest's init after the command: the host reads the status from it.
const EXIT_MARKER: &str = "FAN-VM-EXIT ";

pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    pub root: PathBuf,
}

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads (once) Debian's cloud kernel package and unpacks it under target/vm.
pub fn kernel() -> Result<Kernel> {
    let dir = vm_dir();
    fs::create_dir_all(&dir)?;
    // The metapackage names the current 6.1 ABI: linux-image-6.1.0-N-cloud-amd64.
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .context("apt-cache names no linux-image-*-cloud-amd64 (run apt-get update)")?
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = dir.join(format!("kernel-{version}"));
    let image = root.join(format!("boot/vmlinuz-{version}"));
    if !image.exists() {
        println!("vm: downloading {package}");
        let download = dir.join("download");
        fs::create_dir_all(&download)?;
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&download))?;
        let deb = fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy().contains(&version) && p.extension().is_some_and(|e| e == "deb")
            })
            .context("the downloaded kernel package")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    }
    Ok(Kernel {
        version,
        image,
        root,
    })
}

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

/// A newc cpio archive, written directly: the initramfs format the kernel reads.
struct Cpio {
    out: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<PathBuf>,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.inode += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, path: &Path) {
        for ancestor in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            let s = ancestor
                .to_string_lossy()
                .trim_start_matches('/')
                .to_string();
            if !s.is_empty() && self.dirs.insert(ancestor.to_path_buf()) {
                self.entry(&s, 0o040755, &[]);
            }
        }
    }

    fn file(&mut self, path: &str, data: &[u8], executable: bool) {
        let p = Path::new(path);
        if let Some(parent) = p.parent() {
            self.dir(parent);
        }
        let mode = if executable { 0o100755 } else { 0o100644 };
        self.entry(path.trim_start_matches('/'), mode, data);
    }

    fn copy(&mut self, from: &Path, to: &str) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let executable = fs::metadata(from)?.permissions().mode() & 0o111 != 0;
        self.file(to, &data, executable);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Builds the initramfs: busybox, tools and their libraries, modules,
/// `payload` (host path, guest path) and an init that runs `command`.
fn initramfs(kernel: &Kernel, payload: &[(PathBuf, String)], command: &str) -> Result<PathBuf> {
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

/// The guest machine: two CPUs, 3 GB, the serial console on stdio, and no
/// reboot, so that a guest that powers off or panics ends qemu.
fn qemu(kernel: &Kernel, accel: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        &format!("q35,accel={accel}"),
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "3072",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&kernel.image)
    .stdin(Stdio::null());
    cmd
}

/// Ends qemu and reaps it, whatever state the guest is in.
fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How long a kernel boot under KVM may take before KVM counts as broken:
/// it takes about a second where KVM works.
const KVM_PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Whether the guest kernel really runs under KVM here. `/dev/kvm` may exist
/// while qemu aborts on it (an MSR it cannot set), or while a guest stalls
/// before its first line or dies in a KVM emulation failure, as on nested
/// hosts: so this boots the real kernel without a root file system, and
/// KVM counts as working only if the kernel gets as far as panicking for
/// want of one and qemu then exits by itself.
fn kvm_boots(kernel: &Kernel) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let mut cmd = qemu(kernel, "kvm");
    cmd.args(["-append", "console=ttyS0 panic=-1 loglevel=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let deadline = Instant::now() + KVM_PROBE_LIMIT;
    let exited = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => break false,
        }
    };
    if !exited {
        stop(&mut child);
        return false;
    }
    let mut console = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut console);
    }
    console.contains("Kernel panic") && console.contains("VFS")
}

/// The accelerator: `FAN_VM_ACCEL` (kvm or tcg) if set, else KVM where a
/// probe boot shows it works, else TCG (emulation: slower, always there).
fn accelerator(kernel: &Kernel) -> Result<String> {
    match std::env::var("FAN_VM_ACCEL") {
        Ok(forced) if forced == "kvm" || forced == "tcg" => Ok(forced),
        Ok(other) => bail!("FAN_VM_ACCEL={other}: expected kvm or tcg"),
        Err(_) if kvm_boots(kernel) => Ok("kvm".into()),
        Err(_) => {
            println!(
                "vm: KVM unusable here (no /dev/kvm, or a probe boot did not finish within {} s); \
                 emulating (TCG)",
                KVM_PROBE_LIMIT.as_secs()
            );
            Ok("tcg".into())
        }
    }
}

/// What qemu printed: a console line, or a line of its own on stderr.
enum Output {
    Console(String),
    Qemu(String),
}

fn forward_lines(
    from: impl std::io::Read + Send + 'static,
    tx: std::sync::mpsc::Sender<Output>,
    wrap: fn(String) -> Output,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

/// Boots the guest, runs `command` in it, and returns its exit status and
/// console lines.
/// `payload` is copied into the guest; `nics` adds that many virtio-net
/// devices, each pair (0-1, 2-3, ...) joined by a qemu hub of its own: real
/// NIC drivers and separate segments for the tests to wire namespaces to.
/// A guest soft lockup panics the guest (`softlockup_panic`), so a wedged
/// kernel ends the run at once with its stack trace on the console instead
/// of idling until `limit`.
pub fn run_in_vm(
    payload: &[(PathBuf, String)],
    command: &str,
    limit: Duration,
    nics: usize,
) -> Result<(i32, Vec<String>)> {
    let kernel = kernel()?;
    let initrd = initramfs(&kernel, payload, command)?;
    let accel = accelerator(&kernel)?;
    println!(
        "vm: booting {} under {accel} (limit {} s)",
        kernel.version,
        limit.as_secs()
    );
    let mut cmd = qemu(&kernel, &accel);
    cmd.arg("-initrd").arg(&initrd).args([
        "-append",
        "console=ttyS0 panic=-1 softlockup_panic=1 quiet loglevel=5",
    ]);
    for i in 0..nics {
        cmd.args(["-netdev", &format!("hubport,id=n{i},hubid={}", i / 2)]);
        cmd.args([
            "-device",
            &format!(
                "virtio-net-pci,netdev=n{i},mac=52:54:00:fa:00:{:02x}",
                i + 1
            ),
        ]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let log_path = vm_dir().join("console.log");
    let mut log = fs::File::create(&log_path)?;
    let (tx, rx) = std::sync::mpsc::channel();
    forward_lines(
        child.stdout.take().context("qemu stdout")?,
        tx.clone(),
        Output::Console,
    );
    forward_lines(
        child.stderr.take().context("qemu stderr")?,
        tx,
        Output::Qemu,
    );
    let deadline = Instant::now() + limit;
    let mut status = None;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(Output::Qemu(line)) => {
                writeln!(log, "qemu: {line}")?;
                eprintln!("qemu: {line}");
                if line.contains("KVM internal error") {
                    stop(&mut child);
                    bail!(
                        "KVM failed while running the guest ({line}); \
                         FAN_VM_ACCEL=tcg runs it emulated; console log: {}",
                        log_path.display()
                    );
                }
            }
            Ok(Output::Console(line)) => {
                let line = line.replace('\r', "");
                writeln!(log, "{line}")?;
                println!("{line}");
                if let Some(code) = line.trim().strip_prefix(EXIT_MARKER) {
                    status = code.trim().parse().ok();
                }
                lines.push(line.clone());
                if line.contains("Kernel panic") {
                    stop(&mut child);
                    bail!(
                        "the guest kernel panicked; console log: {}",
                        log_path.display()
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    stop(&mut child);
                    bail!(
                        "the guest hung: no exit after {} s; console log: {}",
                        limit.as_secs(),
                        log_path.display()
                    );
                }
            }
        }
    }
    let _ = child.wait();
    let status = status.with_context(|| {
        format!(
            "the guest stopped without an exit status; console log: {}",
            log_path.display()
        )
    })?;
    Ok((status, lines))
}

/// The test executables of `fan-tests` (built if needed), by target name.
pub fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "fan-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the test executables")?;
    ensure!(out.status.success(), "building the test executables failed");
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            exes.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(exes)
}

/// The guest payload: fan-xdp and every test executable, laid out as the
/// tests expect (`fan-xdp` one level above the executables' `deps/`).
pub fn test_payload() -> Result<Vec<(PathBuf, String)>> {
    crate::cargo(&[&["build"][..], &crate::TEST_FAN_XDP].concat())?;
    let mut payload = vec![(
        workspace_root().join("target/debug/fan-xdp"),
        "/fan/fan-xdp".to_string(),
    )];
    for (name, exe) in test_executables()? {
        payload.push((exe, format!("/fan/deps/{name}")));
    }
    Ok(payload)
}
