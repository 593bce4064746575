//! Throughput and latency between namespaces: iperf3 runs (TCP streams,
//! UDP packet rates) and a TCP request/response loop, each end optionally
//! pinned to one CPU.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::netns::Netns;

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
