//! The agent's side of its control socket: reading a connection's request
//! (only root may ask), handing it to the controller that owns what it
//! asks about, and answering once that one has acted. The line format is
//! [`crate::agent::parse_request`]'s; clients use [`crate::agent::send`].

use std::{io::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use log::{debug, warn};
use tokio::sync::oneshot;

use crate::{
    agent,
    agent::bindings::{Binding, Origin},
    agent::delivery::ToDelivery,
    agent::dhcp::controller::{ToDhcp, round_now},
    agent::fans::ToFans,
    agent::notify,
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

/// Where a control request is carried out: the controllers' inboxes.
#[derive(Clone)]
pub(super) struct Controllers {
    pub(super) delivery: tokio::sync::mpsc::Sender<ToDelivery>,
    pub(super) fans: tokio::sync::mpsc::UnboundedSender<ToFans>,
    pub(super) dhcp: std::sync::mpsc::Sender<ToDhcp>,
    /// Asks the agent to stop.
    pub(super) stop: tokio::sync::mpsc::UnboundedSender<()>,
}

/// The control socket's controller: accepts connections, each served by a
/// task of its own (read off the runtime: a slow or silent client holds
/// up its own thread, 1 s a read at most), which hands the request to the
/// controller that owns it and answers once that one has acted.
pub(super) async fn serve(listener: tokio::net::UnixListener, controllers: Controllers) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, controllers.clone()));
    }
}

async fn answer(stream: tokio::net::UnixStream, controllers: Controllers) {
    let read = tokio::task::spawn_blocking(move || read_request(stream)).await;
    let (mut stream, request) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            warn!("control request: {e:#}");
            return;
        }
        Err(e) => {
            warn!("control request: {e}");
            return;
        }
    };
    let delivery = &controllers.delivery;
    let answer = match request {
        Request::Status => ask(delivery, ToDelivery::Status)
            .await
            .map(|status| serde_json::json!({ "status": status })),
        // Answered once done, so that `fan-xdp reload` (the unit's
        // ExecReload) returns when the file is applied, or with why not.
        Request::Reload => {
            let applied = match ask_fans(&controllers.fans).await {
                Ok(applied) => applied,
                Err(e) => Err(e),
            };
            round_now(&controllers.dhcp).await;
            let status = ask(delivery, ToDelivery::FullSync).await;
            notify::notify("STATUS=reloaded");
            applied.and(status.map(|status| serde_json::json!({ "status": status })))
        }
        Request::Stop => {
            reply(&mut stream, Ok(serde_json::json!({})));
            let _ = controllers.stop.send(());
            return;
        }
        Request::Bind(binding) => ask(delivery, |answer| ToDelivery::Bind(binding, answer))
            .await
            .and_then(|answered| answered),
        Request::Unbind(address, origin) => ask(delivery, |answer| {
            ToDelivery::Unbind(address, origin, answer)
        })
        .await
        .and_then(|answered| answered),
        Request::Bindings => ask(delivery, ToDelivery::Bindings).await,
        Request::Monitor { passes } => {
            reply(&mut stream, Ok(serde_json::json!({})));
            let _ = delivery.send(ToDelivery::Monitor(stream, passes)).await;
            return;
        }
    };
    let _ = tokio::task::spawn_blocking(move || reply(&mut stream, answer)).await;
}

/// Asks the delivery controller, and waits for its answer.
async fn ask<T>(
    delivery: &tokio::sync::mpsc::Sender<ToDelivery>,
    message: impl FnOnce(oneshot::Sender<T>) -> ToDelivery,
) -> Result<T> {
    let (answer, answered) = oneshot::channel();
    delivery
        .send(message(answer))
        .await
        .map_err(|_| anyhow::anyhow!("the agent is stopping"))?;
    answered
        .await
        .map_err(|_| anyhow::anyhow!("the agent is stopping"))
}

/// Asks the fans controller to apply the file again.
async fn ask_fans(fans: &tokio::sync::mpsc::UnboundedSender<ToFans>) -> Result<Result<()>> {
    let (answer, answered) = oneshot::channel();
    fans.send(ToFans::Reload(answer))
        .map_err(|_| anyhow::anyhow!("the agent is stopping"))?;
    answered
        .await
        .map_err(|_| anyhow::anyhow!("the agent is stopping"))
}
