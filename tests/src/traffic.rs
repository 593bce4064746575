//! Traffic between namespaces: ping, a verified TCP bulk transfer, and
//! underlay captures. Every loop here is bounded in bytes and in time.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::netns::Netns;

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
    let listener = server
        .enter(|| TcpListener::bind(listen))?
        .with_context(|| format!("listening on {listen}"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + TIME_LIMIT;
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

/// A packet capture running in a namespace; stopped when dropped.
pub struct Capture {
    child: Child,
    pub path: std::path::PathBuf,
}

impl Capture {
    /// Captures the first 128 bytes of every frame on `iface` in `ns`.
    pub fn start(ns: &Netns, iface: &str, path: std::path::PathBuf) -> Result<Self> {
        let mut child = ns
            .command("tcpdump")
            .args(["-Z", "root", "-i", iface, "-s", "128", "-U", "-n", "-w"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (install it with `cargo xtask setup`)")?;
        // tcpdump says "listening on" once the socket is open.
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line)?;
        ensure!(line.contains("listening"), "tcpdump did not start: {line}");
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

/// Starts a one-shot iperf3 server in `ns` on `addr` and waits until it listens.
fn iperf3_server(ns: &Netns, addr: Ipv4Addr) -> Result<Child> {
    let mut daemon = ns
        .command("iperf3")
        .args(["-s", "-1", "-B", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (install it with `cargo xtask setup`)")?;
    // Listening shows in this namespace's /proc/net/tcp as local port 5201
    // (0x1451) in state LISTEN (0A); a probe connection would use up -1.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listening = ns.enter(|| {
            std::fs::read_to_string("/proc/thread-self/net/tcp")
                .map(|t| {
                    t.lines()
                        .any(|l| l.contains(":1451 ") && l.split_whitespace().nth(3) == Some("0A"))
                })
                .unwrap_or(false)
        })?;
        if listening {
            return Ok(daemon);
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            let _ = daemon.wait();
            bail!("iperf3 server did not start listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs an iperf3 client against a fresh server and returns its JSON report.
fn iperf3_json(
    server: &Netns,
    client: &Netns,
    addr: Ipv4Addr,
    args: &[&str],
) -> Result<serde_json::Value> {
    let mut daemon = iperf3_server(server, addr)?;
    let out = client.output("iperf3", &[&["-c", &addr.to_string(), "-J"], args].concat());
    let _ = daemon.kill();
    let _ = daemon.wait();
    let out = out?;
    ensure!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).context("iperf3 JSON")
}

/// TCP throughput in Gbit/s from `client` to an iperf3 server started in
/// `server` on `addr`, over `seconds` seconds with `streams` parallel streams.
pub fn iperf3(
    server: &Netns,
    client: &Netns,
    addr: Ipv4Addr,
    seconds: u32,
    streams: u32,
) -> Result<f64> {
    iperf3_tcp(server, client, addr, seconds, streams, None).map(|(gbps, _)| gbps)
}

/// Keeps the calling thread on `cpu`.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// iperf3's option putting both its client and its server on `cpu`.
fn affinity(pin: Option<usize>) -> Vec<String> {
    pin.map(|cpu| vec!["-A".to_string(), format!("{cpu},{cpu}")])
        .unwrap_or_default()
}

/// As [`iperf3`], also returning the sender's TCP retransmissions; with
/// `pin`, client and server both run on that CPU.
pub fn iperf3_tcp(
    server: &Netns,
    client: &Netns,
    addr: Ipv4Addr,
    seconds: u32,
    streams: u32,
    pin: Option<usize>,
) -> Result<(f64, u64)> {
    let mut args = vec![
        "-t".to_string(),
        seconds.to_string(),
        "-P".to_string(),
        streams.to_string(),
    ];
    args.extend(affinity(pin));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = iperf3_json(server, client, addr, &args)?;
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 reported no result: {}", report["error"]))?;
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    Ok((bps / 1e9, retransmits))
}

/// Request/response latency over TCP: one byte each way, back to back, for
/// `seconds`. Returns (transactions per second, p50 µs, p99 µs). With
/// `pin`, both ends run on that CPU.
pub fn tcp_rr(
    server: &Netns,
    client: &Netns,
    addr: Ipv4Addr,
    seconds: u32,
    pin: Option<usize>,
) -> Result<(f64, f64, f64)> {
    let port = 5202;
    let listener = server
        .enter(|| TcpListener::bind((addr, port)))?
        .context("rr listener")?;
    let duration = Duration::from_secs(seconds.into());
    std::thread::scope(|scope| {
        let echo = scope.spawn(move || -> Result<()> {
            if let Some(cpu) = pin {
                pin_thread(cpu)?;
            }
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut byte = [0u8; 1];
            while stream.read(&mut byte)? == 1 {
                stream.write_all(&byte)?;
            }
            Ok(())
        });
        let samples = client.enter(|| -> Result<Vec<Duration>> {
            if let Some(cpu) = pin {
                pin_thread(cpu)?;
            }
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::from((addr, port)),
                Duration::from_secs(5),
            )?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut samples = Vec::new();
            let started = Instant::now();
            let mut byte = [7u8; 1];
            while started.elapsed() < duration && samples.len() < 5_000_000 {
                let t = Instant::now();
                stream.write_all(&byte)?;
                stream.read_exact(&mut byte)?;
                samples.push(t.elapsed());
            }
            Ok(samples)
        })??;
        echo.join()
            .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
        let mut sorted = samples;
        ensure!(!sorted.is_empty(), "no transaction completed");
        sorted.sort();
        let total: Duration = sorted.iter().sum();
        let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
        Ok((
            sorted.len() as f64 / total.as_secs_f64(),
            pct(0.5),
            pct(0.99),
        ))
    })
}

/// UDP packets per second received by an iperf3 server in `server` from a
/// client sending `payload`-byte datagrams as fast as it can for `seconds`.
pub fn udp_pps(
    server: &Netns,
    client: &Netns,
    addr: Ipv4Addr,
    seconds: u32,
    payload: u32,
) -> Result<f64> {
    let report = iperf3_json(
        server,
        client,
        addr,
        &[
            "-u",
            "-b",
            "0",
            "-l",
            &payload.to_string(),
            "-t",
            &seconds.to_string(),
        ],
    )?;
    let sum = &report["end"]["sum"];
    match (
        sum["packets"].as_f64(),
        sum["lost_packets"].as_f64(),
        sum["seconds"].as_f64(),
    ) {
        (Some(p), Some(l), Some(s)) if s > 0.0 => Ok((p - l) / s),
        _ => bail!("iperf3 -u reported no result: {}", report["error"]),
    }
}

/// Writes each frame (Ethernet header included) onto `iface` in `ns` as it
/// is, through a packet socket: how a hostile host on the same segment puts
/// forged packets on the wire. A bounded number of frames, sent once each.
pub fn send_frames(ns: &Netns, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    ensure!(
        frames.len() <= 1000,
        "send_frames sends at most 1000 frames"
    );
    let iface = iface.to_string();
    ns.enter(move || -> Result<()> {
        let name = std::ffi::CString::new(iface.clone())?;
        // SAFETY: a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {iface}");
        // SAFETY: plain socket creation; protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: we own the descriptor just created; OwnedFd closes it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        for frame in frames {
            ensure!(frame.len() >= 14, "a frame needs its Ethernet header");
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: buffer and address are valid for the call's duration.
            let sent = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            ensure!(
                sent == frame.len() as isize,
                "sending a frame on {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}

/// A gratuitous ARP reply, broadcast from `mac`, claiming `addr` for it:
/// how a container takes over a sibling's address.
pub fn gratuitous_arp(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend(mac);
    arp.extend(crate::hex("0806 0001 0800 06 04 0002"));
    arp.extend(mac);
    arp.extend(addr.octets());
    arp.extend([0xff; 6]);
    arp.extend(addr.octets());
    arp
}

/// The MAC address of `iface` in `ns`, as 6 bytes.
pub fn mac_of(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let text = ns.run("cat", &[&format!("/sys/class/net/{iface}/address")])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address of {iface}: {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address of {iface} is not 6 bytes: {text}"))
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
