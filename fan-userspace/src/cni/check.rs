//! CHECK: the attachment is still as ADD's result (`prevResult`) says,
//! and STATUS: whether an ADD could be served now.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{
    config::NetConf,
    context, delegate,
    env::{Command, Invocation},
    error::{
        CHECK_FAILED, CniError, CniResult, Code as _, INVALID_CONFIG, IO_FAILURE, NOT_AVAILABLE,
        PLUMBING,
    },
    ids::{attachment_key, port_name},
    result::CniOutput,
    store::Store,
};
use crate::{
    agent::bindings::{self, Origin},
    host::{Net, container::in_netns},
};

fn failed(msg: String) -> CniError {
    CniError::new(CHECK_FAILED, msg)
}

pub async fn check(conf: &NetConf, inv: &Invocation, path: &[std::path::PathBuf]) -> CniResult<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "prevResult is missing: CHECK compares with the result of ADD",
        )
    })?;
    let prev = CniOutput::from_value(prev, "prevResult")?;
    let fan = context::require_fan(conf.overlay)?;
    let run = context::require_agent()?;
    let netns = inv.netns.as_deref().expect("CHECK has CNI_NETNS");
    let port = port_name(&attachment_key(&conf.name, &inv.container_id, &inv.ifname));

    let sandbox = netns.display().to_string();
    let (index, expected) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == inv.ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in {sandbox}",
                inv.ifname
            ))
        })?;
    let address = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .find_map(|ip| ip.address.parse::<Ipv4Network>().ok())
        .ok_or_else(|| failed(format!("prevResult gives {} no IPv4 address", inv.ifname)))?;

    // The host end: there, up, a port of the slice bridge.
    let net = Net::connect().code(PLUMBING, "opening rtnetlink")?;
    let bridge = net
        .device(&fan.bridge)
        .await
        .code(PLUMBING, "looking up the slice bridge")?;
    let host = net
        .device(&port)
        .await
        .code(PLUMBING, "looking up the host end")?;
    match (host, bridge) {
        (Some(h), Some(b)) if h.controller == Some(b.index) && h.up => {}
        (Some(_), _) => {
            return Err(failed(format!(
                "{port} is not an up port of {}",
                fan.bridge
            )));
        }
        (None, _) => {
            return Err(failed(format!(
                "the host end {port} of {} is missing",
                inv.ifname
            )));
        }
    }
    // The container end: its MAC, MTU, address and routes.
    let inside = in_netns(netns, |inner| async move {
        inner.container_link(&inv.ifname).await
    })
    .code(PLUMBING, "reading the container's interface")?
    .ok_or_else(|| failed(format!("{} is missing in {sandbox}", inv.ifname)))?;
    let mac = bindings::format_mac(inside.link.mac.unwrap_or_default());
    if let Some(want) = &expected.mac
        && !want.eq_ignore_ascii_case(&mac)
    {
        return Err(failed(format!(
            "{} has MAC {mac}, prevResult says {want}",
            inv.ifname
        )));
    }
    if let Some(want) = expected.mtu
        && want != inside.link.mtu
    {
        return Err(failed(format!(
            "{} has MTU {}, prevResult says {want}",
            inv.ifname, inside.link.mtu
        )));
    }
    if !inside.addrs.contains(&(address.ip(), address.prefix())) {
        return Err(failed(format!(
            "{} lacks its address {address}",
            inv.ifname
        )));
    }
    for route in &prev.routes {
        let Ok(dst) = route.dst.parse::<Ipv4Network>() else {
            continue;
        };
        let gw = route.gw.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok());
        if !inside
            .routes
            .iter()
            .any(|(d, g)| *d == dst && (gw.is_none() || *g == gw))
        {
            return Err(failed(format!(
                "the route to {dst} in the container is missing"
            )));
        }
    }
    // The reservation and the binding.
    if conf.ipam.is_some() {
        delegate::run(conf, Command::Check, path)?;
    } else {
        let store = Store::of(&conf.name, fan.slice);
        let lock = store
            .lock()
            .code(IO_FAILURE, "locking the CNI allocations")?;
        let held = store
            .find(&lock, &inv.container_id, &inv.ifname)
            .code(IO_FAILURE, "reading the CNI allocations")?;
        if held.map(|a| a.address) != Some(address.ip()) {
            return Err(failed(format!(
                "{} is not allocated to this attachment",
                address.ip()
            )));
        }
    }
    let bound = bindings::list(&run).code(CHECK_FAILED, "listing the agent's bindings")?;
    if !bound.iter().any(|b| {
        b.address == address.ip()
            && b.origin == Origin::Cni
            && b.port.as_deref() == Some(port.as_str())
    }) {
        return Err(failed(format!(
            "the agent holds no CNI binding of {} to {port}",
            address.ip()
        )));
    }
    Ok(())
}

/// STATUS: available while the fan is attached here and the agent runs.
pub fn status(conf: &NetConf, path: &[std::path::PathBuf]) -> CniResult<()> {
    let not_available = |why: String| CniError::new(NOT_AVAILABLE, why);
    context::attached_fan(conf.overlay).map_err(not_available)?;
    context::agent().map_err(not_available)?;
    if conf.ipam.is_some() {
        delegate::run(conf, Command::Status, path)?;
    }
    Ok(())
}
