//! DEL and GC: give back what ADD took (the binding, the veth, the
//! address). DEL is idempotent: twice in a row, after the container's
//! namespace is gone, for a container it never saw, or after its fan was
//! detached, it succeeds, releasing whatever is still there.

use std::net::Ipv4Addr;

use super::{
    config::{Attachment, NetConf},
    context, delegate,
    env::{Command, Invocation},
    error::{CniError, CniResult, Code as _, INVALID_CONFIG, IO_FAILURE, PLUMBING},
    ids::{attachment_key, port_name},
    store::Store,
};
use crate::{
    agent::bindings::{self, Origin},
    host::Net,
};

pub async fn del(conf: &NetConf, inv: &Invocation, path: &[std::path::PathBuf]) -> CniResult<()> {
    let port = port_name(&attachment_key(&conf.name, &inv.container_id, &inv.ifname));
    // Bindings first, so the agent delivers nothing more to the port.
    unbind_port(&port);
    let net = Net::connect().code(PLUMBING, "opening rtnetlink")?;
    net.del_link_named(&port)
        .await
        .code(PLUMBING, "deleting the container's veth pair")?;
    if conf.ipam.is_some() {
        delegate::run(conf, Command::Del, path)?;
        return Ok(());
    }
    // The fan's slice names the store; with the fan detached, every slice's
    // store of this network is searched for the attachment.
    let stores = match context::attached_fan(conf.overlay) {
        Ok(fan) => vec![Store::of(&conf.name, fan.slice)],
        Err(_) => Store::all_of(&conf.name),
    };
    for store in stores {
        let lock = store
            .lock()
            .code(IO_FAILURE, "locking the CNI allocations")?;
        if let Some(allocation) = store
            .find(&lock, &inv.container_id, &inv.ifname)
            .code(IO_FAILURE, "reading the CNI allocations")?
        {
            store
                .release(&lock, allocation.address)
                .code(IO_FAILURE, "releasing the CNI allocation")?;
        }
    }
    Ok(())
}

/// Removes the agent's CNI bindings of `port` (none, or the agent down, is fine:
/// a binding goes with its port anyway).
fn unbind_port(port: &str) {
    let Ok(run) = context::agent() else { return };
    let Ok(bound) = bindings::list(&run) else {
        return;
    };
    for binding in bound
        .iter()
        .filter(|b| b.origin == Origin::Cni && b.port.as_deref() == Some(port))
    {
        if let Err(e) = bindings::unbind(&run, binding.address, Origin::Cni) {
            eprintln!("fan: unbinding {}: {e:#}", binding.address);
        }
    }
}

/// GC: releases the allocations of this host's slice whose attachment is not
/// in `cni.dev/valid-attachments`, except those of an ADD still in flight,
/// with their binding and any veth left behind.
pub async fn gc(conf: &NetConf, path: &[std::path::PathBuf]) -> CniResult<()> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "cni.dev/valid-attachments is missing: GC releases everything not listed there, so it needs the list",
        )
    })?;
    if conf.ipam.is_some() {
        delegate::run(conf, Command::Gc, path)?;
    }
    // Without the fan attached there is no telling which slice's
    // allocations are this host's: nothing to collect.
    let Ok(fan) = context::attached_fan(conf.overlay) else {
        return Ok(());
    };
    let store = Store::of(&conf.name, fan.slice);
    let lock = store
        .lock()
        .code(IO_FAILURE, "locking the CNI allocations")?;
    let net = Net::connect().code(PLUMBING, "opening rtnetlink")?;
    let keep = |id: &str, ifname: &str| {
        valid.contains(&Attachment {
            container_id: id.to_string(),
            ifname: ifname.to_string(),
        })
    };
    let mut released: Vec<Ipv4Addr> = Vec::new();
    for allocation in store
        .list(&lock)
        .code(IO_FAILURE, "reading the CNI allocations")?
    {
        let key = attachment_key(&conf.name, &allocation.container_id, &allocation.ifname);
        if keep(&allocation.container_id, &allocation.ifname) || store.is_in_flight(&key) {
            continue;
        }
        unbind_port(&allocation.port);
        net.del_link_named(&allocation.port)
            .await
            .code(PLUMBING, "deleting a stale veth pair")?;
        store
            .release(&lock, allocation.address)
            .code(IO_FAILURE, "releasing a CNI allocation")?;
        released.push(allocation.address);
    }
    // Bindings whose port is gone (a DEL while the agent was down), then
    // addresses set aside as unreadable once no attachment can hold them.
    let bound = unbind_portless(&net, &store.ports_in_flight()).await;
    let freed = store
        .release_unowned_reservations(&lock, valid, &bound)
        .code(IO_FAILURE, "releasing reserved CNI addresses")?;
    released.extend(&freed);
    if !released.is_empty() {
        eprintln!("fan: GC released {released:?}");
    }
    Ok(())
}

/// Asks the agent to drop its CNI bindings whose port no longer exists
/// (none if no agent runs), except those of ports an ADD in flight is
/// plugging; returns the addresses still bound.
async fn unbind_portless(net: &Net, in_flight: &[String]) -> Vec<Ipv4Addr> {
    let Ok(run) = context::agent() else {
        return Vec::new();
    };
    let Ok(bound) = bindings::list(&run) else {
        return Vec::new();
    };
    let mut still = Vec::new();
    for binding in bound {
        let portless = match &binding.port {
            Some(port) if binding.origin == Origin::Cni && !in_flight.contains(port) => {
                matches!(net.device(port).await, Ok(None))
            }
            _ => false,
        };
        if !portless {
            still.push(binding.address);
        } else if let Err(e) = bindings::unbind(&run, binding.address, Origin::Cni) {
            eprintln!("fan: unbinding {}: {e:#}", binding.address);
            still.push(binding.address);
        }
    }
    still
}
