//! The agent's side of its control socket: reading a connection's request
//! (only root may ask), and answering it once the loop in
//! [`crate::agent::run`] has acted. The line format is
//! [`crate::agent::parse_request`]'s; clients use [`crate::agent::send`].

use std::{io::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use log::debug;

use crate::{
    agent,
    agent::bindings::{Binding, Origin},
};

/// What a control connection asked for.
pub(super) enum Request {
    Status,
    Reload,
    Stop,
    Bind(Binding),
    Unbind(Ipv4Addr, Origin),
    Bindings,
    /// A stream of the programs' events from now on (passes: samples too).
    Monitor {
        passes: bool,
    },
}

/// Reads a control connection's request; the caller acts, then answers
/// with [`reply`]. Only root may ask anything.
pub(super) fn read_request(
    stream: tokio::net::UnixStream,
) -> Result<(std::os::unix::net::UnixStream, Request)> {
    let peer = stream
        .peer_cred()
        .context("reading the client's credentials")?;
    let mut stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    if peer.uid() != 0 {
        reply(
            &mut stream,
            Err(anyhow::anyhow!("only root may control the agent")),
        );
        bail!("refused a request from uid {}", peer.uid());
    }
    let request = agent::parse_request(&stream);
    let parsed = request.and_then(|request| {
        Ok(match request["op"].as_str().unwrap_or_default() {
            "status" => Request::Status,
            "reload" => Request::Reload,
            "stop" => Request::Stop,
            "bind" => Request::Bind(field(&request, "binding")?),
            "unbind" => Request::Unbind(field(&request, "address")?, field(&request, "origin")?),
            "bindings" => Request::Bindings,
            "monitor" => Request::Monitor {
                passes: request["passes"].as_bool().unwrap_or(false),
            },
            other => bail!("unknown op {other:?}"),
        })
    });
    match parsed {
        Ok(request) => Ok((stream, request)),
        Err(e) => {
            reply(&mut stream, Err(anyhow::anyhow!("{e:#}")));
            Err(e)
        }
    }
}

/// A request's field `name`, or an error naming it.
fn field<T: serde::de::DeserializeOwned>(request: &serde_json::Value, name: &str) -> Result<T> {
    serde_json::from_value(request[name].clone())
        .with_context(|| format!("the request's {name:?} field"))
}

/// Answers a control request: `{"ok":true, ...}` or `{"ok":false,"error":..}`.
pub(super) fn reply(
    stream: &mut std::os::unix::net::UnixStream,
    answer: Result<serde_json::Value>,
) {
    let line = match answer {
        Ok(mut value) => {
            value["ok"] = true.into();
            value
        }
        Err(e) => serde_json::json!({ "ok": false, "error": format!("{e:#}") }),
    };
    if let Err(e) = writeln!(stream, "{line}") {
        debug!("answering a control request: {e}");
    }
}
