//! Booting the guest in qemu: the machine, the accelerator (KVM where a
//! probe boot shows it works, else TCG), and the run itself, its console
//! forwarded and logged, under a time limit.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    EXIT_MARKER, Kernel,
    emulator::{Qemu, qemu_program},
    initramfs::initramfs,
    kernel, vm_dir,
};

/// The guest machine: two CPUs, 3 GB, the serial console on stdio, and no
/// reboot, so that a guest that powers off or panics ends qemu.
fn qemu(qemu: &Qemu, kernel: &Kernel, accel: &str) -> Command {
    let mut cmd = qemu.command();
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
fn kvm_boots(program: &Qemu, kernel: &Kernel) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let mut cmd = qemu(program, kernel, "kvm");
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
fn accelerator(program: &Qemu, kernel: &Kernel) -> Result<String> {
    match std::env::var("FAN_VM_ACCEL") {
        Ok(forced) if forced == "kvm" || forced == "tcg" => Ok(forced),
        Ok(other) => bail!("FAN_VM_ACCEL={other}: expected kvm or tcg"),
        Err(_) if kvm_boots(program, kernel) => Ok("kvm".into()),
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

/// Where the guest's console goes besides its log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Printed as it comes, at the usual priority.
    Live,
    /// Only logged (the caller prints the lines it gets back), and qemu
    /// niced: the guest runs beside the host's tests and yields the CPUs to
    /// them, using what they leave idle.
    Background,
}

/// How much lower qemu's priority is in the background.
const BACKGROUND_NICENESS: libc::c_int = 10;

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
    console: Console,
) -> Result<(i32, Vec<String>)> {
    let kernel = kernel()?;
    let initrd = initramfs(&kernel, payload, command)?;
    let program = qemu_program()?;
    let accel = accelerator(&program, &kernel)?;
    println!(
        "vm: booting {} under {accel} (limit {} s)",
        kernel.version,
        limit.as_secs()
    );
    let mut cmd = qemu(&program, &kernel, &accel);
    // no_timer_check: an emulated CPU on a busy host (the guest runs beside
    // the host's suites) can miss the IO-APIC timer check's deadline, and
    // the kernel then panics at boot ("IO-APIC + timer doesn't work").
    cmd.arg("-initrd").arg(&initrd).args([
        "-append",
        "console=ttyS0 panic=-1 softlockup_panic=1 no_timer_check quiet loglevel=5",
    ]);
    if console == Console::Background {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: setpriority is async-signal-safe, and it runs in the child
        // before exec, so qemu and every thread it starts inherit it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICENESS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
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
        .context("starting qemu-system-x86_64")?;
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
                if console == Console::Live {
                    println!("{line}");
                }
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
