//! The agent's optional Prometheus endpoint (`fan-xdp run --metrics
//! ADDR:PORT`): GET /metrics, the counters `stats --prometheus` prints.
//!
//! Off by default, and never on a wildcard address unless asked for
//! explicitly: containers reach every address of their host. It runs on a
//! thread of its own, off the agent's netlink loop, so a slow scrape never
//! delays a sync; a few connections at a time, each with short timeouts.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use log::{debug, info};

use crate::{dataplane::PinnedMaps, state::StateDir};

/// Scrapes served at once; more are answered 503 and closed.
const MOST_CONNECTIONS: usize = 4;
/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read.
const REQUEST_LINE_MAX: usize = 1024;

/// Refuses a wildcard address unless `any_address`.
pub fn check(addr: SocketAddr, any_address: bool) -> Result<()> {
    if addr.ip().is_unspecified() && !any_address {
        bail!(
            "--metrics {addr} listens on every address of the host, which its containers reach too; \
             give one address (e.g. 127.0.0.1:9469), or add --metrics-any-address if that is meant"
        );
    }
    Ok(())
}

/// Starts serving on `addr` (checked by [`check`]).
pub fn serve(addr: SocketAddr, dir: StateDir) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    info!("metrics on http://{addr}/metrics");
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if busy.fetch_add(1, Ordering::AcqRel) >= MOST_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    let _ = answer(
                        &stream,
                        "503 Service Unavailable",
                        "too many scrapes at once\n",
                    );
                    continue;
                }
                let (busy, dir) = (busy.clone(), dir.clone());
                let _ = std::thread::Builder::new()
                    .name("scrape".into())
                    .spawn(move || {
                        if let Err(e) = scrape(&stream, &dir) {
                            debug!("metrics client: {e:#}");
                        }
                        busy.fetch_sub(1, Ordering::AcqRel);
                    });
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn scrape(stream: &TcpStream, dir: &StateDir) -> Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, REQUEST_LINE_MAX as u64)).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => {}
        (Some("GET"), Some(_)) => return answer(stream, "404 Not Found", "only /metrics\n"),
        _ => return answer(stream, "405 Method Not Allowed", "only GET /metrics\n"),
    }
    let body = match metrics(dir) {
        Ok(text) => text,
        Err(e) => return answer(stream, "503 Service Unavailable", &format!("{e:#}\n")),
    };
    answer(stream, "200 OK", &body)
}

/// The counters, read from the pins for each scrape.
fn metrics(dir: &StateDir) -> Result<String> {
    if !dir.exists() {
        bail!("nothing attached in this network namespace");
    }
    let maps = PinnedMaps::open(dir)?;
    let stats = maps.stats()?;
    Ok(stats.prometheus(maps.path_mtus_evicted(&stats)?, &maps.stats_of_fans()?))
}

fn answer(mut stream: &TcpStream, status: &str, body: &str) -> Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}
