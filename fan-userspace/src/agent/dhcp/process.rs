//! dnsmasq as a process: started in a session of its own, recognised by
//! its command line, stopped through a pidfd.

use std::{
    fs,
    os::{fd::AsRawFd as _, fd::FromRawFd as _, fd::OwnedFd, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::config::PACKAGE;

/// Starts dnsmasq in its own session (signals to the agent's group do not
/// reach it, and it outlives the agent), with no inherited descriptors but
/// stderr (the agent's log).
pub fn spawn(argv: &[String]) -> Result<Child> {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, close_range) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting {} (apt-get install {PACKAGE})", argv[0]))
}

/// The command line of `pid`, if it runs (a zombie's is empty: None).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}

pub fn recorded_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `pid` is a dnsmasq that writes `pid_file`: one of ours.
pub fn is_ours(pid: u32, pid_file: &Path) -> bool {
    let flag = format!("--pid-file={}", pid_file.display());
    cmdline(pid).is_some_and(|argv| {
        argv.first().is_some_and(|a| a.ends_with("dnsmasq")) && argv.contains(&flag)
    })
}

/// Stops `pid` if its command line is still `argv`: SIGTERM through a pidfd,
/// then SIGKILL after 3 s. Reaps `child` if given.
pub fn stop(pid: u32, argv: &[String], child: Option<&mut Child>) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0u32) };
    if fd < 0 {
        return Ok(()); // gone already
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Checked after the pidfd is held: the process it names cannot change.
    if cmdline(pid).as_deref() != Some(argv) {
        return Ok(());
    }
    let signal = |sig: libc::c_int| {
        // SAFETY: a pidfd we hold, a signal number, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<u8>(),
                0u32,
            )
        }
    };
    signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut child = child;
    loop {
        if let Some(child) = child.as_deref_mut()
            && !matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        if cmdline(pid).is_none() {
            return Ok(());
        }
        if Instant::now() > deadline {
            signal(libc::SIGKILL);
            if let Some(child) = child {
                let _ = child.wait();
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
