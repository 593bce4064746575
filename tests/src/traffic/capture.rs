//! Underlay captures: tcpdump in a namespace, and the frames of its pcap file.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::netns::Netns;

/// A packet capture running in a namespace; stopped when dropped.
pub struct Capture {
    child: Child,
    pub path: std::path::PathBuf,
}

impl Capture {
    /// Captures the first 128 bytes of every frame on `iface` in `ns`.
    pub fn start(ns: &Netns, iface: &str, path: std::path::PathBuf) -> Result<Self> {
        Self::start_with(ns, iface, path, &[])
    }

    /// [`Capture::start`] with more of tcpdump's words after its own: `-c N`
    /// (stop after N frames), then a filter expression.
    pub fn start_with(
        ns: &Netns,
        iface: &str,
        path: std::path::PathBuf,
        words: &[&str],
    ) -> Result<Self> {
        let mut child = ns
            .command("tcpdump")
            // Immediate mode: each frame is handed over as it arrives, not in
            // blocks that a stop may leave unread (the emulated guest lost the
            // last second of its captures so).
            .args([
                "-Z",
                "root",
                "-i",
                iface,
                "-s",
                "128",
                "-U",
                "--immediate-mode",
                "-n",
                "-w",
            ])
            .arg(&path)
            .args(words)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (install it with `cargo xtask setup`)")?;
        // tcpdump says "listening on" once the socket is open.
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line)?;
        ensure!(line.contains("listening"), "tcpdump did not start: {line}");
        // It says so a moment before frames reach the file: measured here,
        // frames sent right after the line were missing from it, the same
        // ones sent half a second later were there.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child, path })
    }

    /// Stops the capture and returns the captured frames.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        read_pcap(&std::fs::read(&self.path)?)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The frames of a classic little-endian pcap file.
pub fn read_pcap(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    ensure!(
        data.len() >= 24 && data[..4] == [0xd4, 0xc3, 0xb2, 0xa1],
        "not a pcap file"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into()?) as usize;
        at += 16;
        ensure!(at + caplen <= data.len(), "truncated pcap record");
        frames.push(data[at..at + caplen].to_vec());
        at += caplen;
    }
    Ok(frames)
}
