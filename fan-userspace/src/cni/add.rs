//! ADD: an address (the plugin's own from the plan's CNI range, or the
//! delegated IPAM plugin's), a veth pair with the container end in the
//! container's namespace (MTU, address, routes) and the host end on the
//! slice bridge, and the binding registered with the agent, acknowledged
//! before the result is printed: the first packet already takes the fast
//! path, and ARP can never move the address. A failure at any step undoes
//! the steps before it.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{Map, Value};

use super::{
    config::NetConf,
    context, delegate,
    env::{Command, Invocation},
    error::{
        ADDRESS_BOUND_ELSEWHERE, AGENT, CniError, CniResult, Code as _, INVALID_CONFIG, IO_FAILURE,
        PLUMBING, RANGE_FULL,
    },
    ids::{attachment_key, port_name},
    result::{CniOutput, Interface, IpConfig, Route},
    store::{Allocation, Store},
};
use crate::{
    agent::bindings::{self, Binding, Origin, format_mac},
    host::{Net, container::in_netns},
    state::record::Fan,
};

/// Where the address came from, so a failure gives it back the same way.
enum Source {
    Own(Store),
    Delegated,
}

pub async fn add(
    conf: &NetConf,
    inv: &Invocation,
    path: &[std::path::PathBuf],
) -> CniResult<Value> {
    let fan = context::require_fan(conf.overlay)?;
    let run = context::require_agent()?;
    let mtu = conf.mtu.unwrap_or(fan.mtu);
    if mtu > fan.mtu {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!(
                "mtu {mtu} is larger than the fan's MTU {} on this host",
                fan.mtu
            ),
        ));
    }
    let prev = match &conf.prev_result {
        Some(value) => CniOutput::from_value(value, "prevResult")?,
        None => CniOutput::default(),
    };
    let netns = inv.netns.as_deref().expect("ADD has CNI_NETNS");
    let key = attachment_key(&conf.name, &inv.container_id, &inv.ifname);
    let port = port_name(&key);

    let net = Net::connect().code(PLUMBING, "opening rtnetlink")?;
    let bridge = net
        .device(&fan.bridge)
        .await
        .code(PLUMBING, "looking up the slice bridge")?
        .ok_or_else(|| {
            CniError::new(
                PLUMBING,
                format!(
                    "the slice bridge {} of fan {} is missing",
                    fan.bridge, fan.overlay
                ),
            )
        })?;

    // The address. Own: under the store's lock, with the ADD marked in
    // flight (so a GC now leaves it alone) until this function returns.
    let own = Store::of(&conf.name, fan.slice);
    let _in_flight = own
        .in_flight(&key)
        .code(IO_FAILURE, "marking the ADD in flight")?;
    let (address, gateway, ipam, source) = match &conf.ipam {
        None => {
            let address = allocate(&own, &fan, inv, &port)?;
            (address, fan.gateway, None, Source::Own(own))
        }
        Some(_) => {
            let out = delegate::run(conf, Command::Add, path)?.expect("ADD prints a result");
            let (address, gateway) = delegated_address(&out, &fan).inspect_err(|_| {
                // Refused: the plugin's allocation is given back.
                let _ = delegate::run(conf, Command::Del, path);
            })?;
            (address, gateway, Some(out), Source::Delegated)
        }
    };
    let undo_address = |source: &Source| match source {
        Source::Own(store) => {
            if let Ok(lock) = store.lock() {
                let _ = store.release(&lock, address);
            }
        }
        Source::Delegated => {
            let _ = delegate::run(conf, Command::Del, path);
        }
    };

    let routes = routes(conf, ipam.as_ref(), gateway);
    let routes_in = &routes;
    let plumbed = async {
        let host = net
            .create_container_veth(&port, bridge.index, netns, &inv.ifname, mtu)
            .await
            .code(PLUMBING, "creating the container's veth pair")?;
        let inside = in_netns(netns, |inner| async move {
            inner
                .configure_container_link(&inv.ifname, (address, fan.slice.prefix()), routes_in)
                .await
        })
        .code(PLUMBING, "configuring the container's interface")?;
        Ok::<_, CniError>((host, inside))
    }
    .await;
    let (host, inside) = match plumbed {
        Ok(links) => links,
        Err(e) => {
            let _ = net.del_link_named(&port).await;
            undo_address(&source);
            return Err(e);
        }
    };
    let mac = format_mac(inside.mac.unwrap_or_default());
    let binding = Binding {
        address,
        mac: mac.clone(),
        port: Some(port.clone()),
        origin: Origin::Cni,
        owner: inv.container_id.clone(),
        pod: inv.pod.clone(),
    };
    if let Err(e) = bindings::bind(&run, &binding) {
        let _ = net.del_link_named(&port).await;
        undo_address(&source);
        let text = format!("{e:#}");
        // The agent's words for an address another live port holds.
        let code = if text.contains("is already bound to") {
            ADDRESS_BOUND_ELSEWHERE
        } else {
            AGENT
        };
        return Err(CniError::new(
            code,
            format!("the agent refused the binding of {address}: {text}"),
        ));
    }

    let mut out = prev;
    let first = out.interfaces.len();
    out.interfaces.push(Interface {
        name: port,
        mac: host.mac.map(format_mac),
        mtu: Some(mtu),
        ..Interface::default()
    });
    out.interfaces.push(Interface {
        name: inv.ifname.clone(),
        mac: Some(mac),
        mtu: Some(mtu),
        sandbox: Some(netns.display().to_string()),
        other: Map::new(),
    });
    out.ips.push(IpConfig {
        address: format!("{address}/{}", fan.slice.prefix()),
        gateway: Some(gateway.to_string()),
        interface: Some(first + 1),
        other: Map::new(),
    });
    out.routes.extend(routes.iter().map(|(dst, gw)| Route {
        dst: dst.to_string(),
        gw: gw.map(|g| g.to_string()),
        other: Map::new(),
    }));
    if let Some(dns) = conf.dns.clone().or_else(|| ipam.and_then(|i| i.dns)) {
        out.dns = Some(dns);
    }
    Ok(out.to_value(conf.version))
}

/// The plugin's own address for the attachment: its existing allocation
/// (an ADD retried after a crash), else the next free one of the plan's
/// CNI range that the agent has not bound otherwise.
fn allocate(store: &Store, fan: &Fan, inv: &Invocation, port: &str) -> CniResult<Ipv4Addr> {
    let plan = fan
        .plan()
        .code(INVALID_CONFIG, "the slice has no address plan")?;
    let bound: Vec<Ipv4Addr> = context::bindings_if_any()
        .into_iter()
        .map(|b| b.address)
        .collect();
    let lock = store
        .lock()
        .code(IO_FAILURE, "locking the CNI allocations")?;
    if let Some(existing) = store
        .find(&lock, &inv.container_id, &inv.ifname)
        .code(IO_FAILURE, "reading the CNI allocations")?
    {
        return Ok(existing.address);
    }
    let wanted = Allocation {
        address: Ipv4Addr::UNSPECIFIED,
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        port: port.to_string(),
        pod: inv.pod.clone(),
    };
    store
        .allocate(&lock, plan.cni, &wanted, &bound)
        .code(IO_FAILURE, "writing the CNI allocation")?
        .ok_or_else(|| {
            CniError::new(
                RANGE_FULL,
                format!(
                    "every address of the CNI range {} of slice {} is allocated",
                    plan.cni, fan.slice
                ),
            )
        })
}

/// The delegated plugin's IPv4 address, which must be a host of this
/// host's slice (not its network, gateway or broadcast address).
fn delegated_address(out: &CniOutput, fan: &Fan) -> CniResult<(Ipv4Addr, Ipv4Addr)> {
    let refuse = |msg: String| CniError::new(INVALID_CONFIG, msg);
    let ip = out
        .ips
        .iter()
        .find_map(|ip| ip.address.parse::<Ipv4Network>().ok().map(|n| (n, ip)))
        .ok_or_else(|| refuse("the IPAM plugin returned no IPv4 address".into()))?;
    let (net, config) = ip;
    let address = net.ip();
    if !fan.slice.contains(address)
        || address == fan.slice.network()
        || address == fan.slice.broadcast()
        || address == fan.gateway
    {
        return Err(refuse(format!(
            "the IPAM plugin gave {address}, which is not a container address of this host's slice {} (ipam's range must lie inside it, past the gateway {})",
            fan.slice, fan.gateway
        )));
    }
    let gateway = match &config.gateway {
        Some(text) => text
            .parse()
            .map_err(|_| refuse(format!("the IPAM plugin's gateway {text:?} is not IPv4")))?,
        None => fan.gateway,
    };
    Ok((address, gateway))
}

/// The container's routes: the configuration's (a missing `gw` is the
/// gateway), else the IPAM plugin's IPv4 ones, else a default route via the gateway.
fn routes(
    conf: &NetConf,
    ipam: Option<&CniOutput>,
    gateway: Ipv4Addr,
) -> Vec<(Ipv4Network, Option<Ipv4Addr>)> {
    if let Some(routes) = &conf.routes {
        return routes
            .iter()
            .map(|r| (r.dst, Some(r.gw.unwrap_or(gateway))))
            .collect();
    }
    let from_ipam: Vec<_> = ipam
        .map(|out| {
            out.routes
                .iter()
                .filter_map(|r| {
                    let dst = r.dst.parse::<Ipv4Network>().ok()?;
                    let gw = r.gw.as_deref().map_or(Some(gateway), |g| g.parse().ok());
                    Some((dst, gw))
                })
                .collect()
        })
        .unwrap_or_default();
    if !from_ipam.is_empty() {
        return from_ipam;
    }
    vec![(
        Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0"),
        Some(gateway),
    )]
}
