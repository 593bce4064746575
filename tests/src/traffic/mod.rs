//! Traffic between namespaces: ping, a verified TCP bulk transfer, and
//! underlay captures. Every loop here is bounded in bytes and in time.
//!
//! Here ping, the transfer and the IP stack's counters; captures are in
//! `capture`, iperf3 and request/response in `iperf`, forged frames in
//! `frames`.

mod capture;
mod frames;
mod iperf;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::netns::Netns;

pub use capture::{Capture, read_pcap};
pub use frames::{arp_request, gratuitous_arp, mac_of, send_frames};
pub use iperf::{iperf3, iperf3_tcp, pin_thread, tcp_rr, udp_pps};

/// No single transfer, capture or wait may take longer than this.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Whether `count` pings from `from` to `to` are all answered.
pub fn ping(from: &Netns, to: Ipv4Addr, count: u32) -> Result<bool> {
    let out = from.output(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &to.to_string(),
        ],
    )?;
    Ok(out.status.success())
}

/// The byte at position `i` of a transfer: a pattern that catches reordered,
/// duplicated, dropped or corrupted data.
fn pattern(i: u64) -> u8 {
    (i ^ (i >> 8) ^ (i >> 16)).wrapping_mul(31) as u8
}

/// Sends `bytes` bytes over TCP from `client` to a listener in `server` at
/// `addr`, and checks every byte on arrival. Returns the bytes verified.
pub fn tcp_transfer(server: &Netns, client: &Netns, addr: Ipv4Addr, bytes: u64) -> Result<u64> {
    let target = SocketAddr::from((addr, 5201));
    tcp_transfer_via(server, target, client, target, bytes)
}

/// [`tcp_transfer`] to a listener at `listen` in `server` from a client
/// that connects to `target` (a published port that NAT leads to `listen`).
pub fn tcp_transfer_via(
    server: &Netns,
    listen: SocketAddr,
    client: &Netns,
    target: SocketAddr,
    bytes: u64,
) -> Result<u64> {
    let listener = listen_in(server, listen)?;
    tcp_transfer_over(&listener, client, target, bytes)
}

/// A listener at `addr` in `ns`, for [`tcp_transfer_over`].
pub fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    let listener = ns
        .enter(|| TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// [`tcp_transfer_via`] to a listener of [`listen_in`], which takes one
/// connection after another: a run of transfers binds its port once.
pub fn tcp_transfer_over(
    listener: &TcpListener,
    client: &Netns,
    target: SocketAddr,
    bytes: u64,
) -> Result<u64> {
    tcp_transfer_over_within(listener, client, target, bytes, TIME_LIMIT)
}

/// [`tcp_transfer`] with a time limit of its own, for a transfer sized to
/// outlast something slow (a shaped link in the emulated guest).
pub fn tcp_transfer_within(
    server: &Netns,
    client: &Netns,
    addr: Ipv4Addr,
    bytes: u64,
    limit: Duration,
) -> Result<u64> {
    let target = SocketAddr::from((addr, 5201));
    let listener = listen_in(server, target)?;
    tcp_transfer_over_within(&listener, client, target, bytes, limit)
}

/// [`tcp_transfer_over`] within `limit`.
pub fn tcp_transfer_over_within(
    listener: &TcpListener,
    client: &Netns,
    target: SocketAddr,
    bytes: u64,
    limit: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + limit;
    let client_failed = AtomicBool::new(false);

    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| -> Result<u64> {
            let (mut stream, _) = loop {
                match listener.accept() {
                    Ok(conn) => break conn,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        ensure!(!client_failed.load(Ordering::Relaxed), "the client gave up");
                        ensure!(
                            Instant::now() < deadline,
                            "no connection within the time limit"
                        );
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; 1 << 16];
            let mut received = 0u64;
            loop {
                ensure!(
                    Instant::now() < deadline,
                    "transfer exceeded the time limit"
                );
                let n = stream.read(&mut buf).context("receiving")?;
                if n == 0 {
                    break;
                }
                for (k, &b) in buf[..n].iter().enumerate() {
                    if b != pattern(received + k as u64) {
                        bail!("byte {} arrived corrupted", received + k as u64);
                    }
                }
                received += n as u64;
            }
            Ok(received)
        });

        let sent = client.enter(|| -> Result<u64> {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .with_context(|| format!("connecting to {target}"))?;
            stream.set_write_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; 1 << 16];
            let mut sent = 0u64;
            while sent < bytes {
                ensure!(
                    Instant::now() < deadline,
                    "transfer exceeded the time limit"
                );
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                stream.write_all(&buf[..n]).context("sending")?;
                sent += n as u64;
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        });
        let sent = match sent {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) | Err(e) => {
                client_failed.store(true, Ordering::Relaxed);
                let _ = receiver.join();
                return Err(e);
            }
        };
        let received = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        ensure!(received == sent, "sent {sent} bytes but {received} arrived");
        Ok(received)
    })
}

/// One of device `dev`'s counters in `ns` (`rx_bytes`, `tx_packets`, ...),
/// from /sys/class/net/DEV/statistics.
pub fn link_statistic(ns: &Netns, dev: &str, which: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/{which}");
    ns.run("cat", &[&path])?
        .trim()
        .parse()
        .with_context(|| format!("{path} in {}", ns.name()))
}

/// A counter of the IP stack of `ns` from /proc/net/snmp, e.g. ("Ip",
/// "ForwDatagrams") or ("Icmp", "InEchos").
pub fn snmp_counter(ns: &Netns, group: &str, name: &str) -> Result<u64> {
    let text = ns.run("cat", &["/proc/net/snmp"])?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no {group} counters in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .with_context(|| format!("no counter {group}:{name}"))?
        .1
        .parse()
        .context("counter value")
}
