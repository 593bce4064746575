//! A container's device on a slice bridge, over rtnetlink: the veth pair (the
//! host end a port of the bridge, the container end created straight in the
//! container's namespace under its final name), and inside that namespace
//! the address, the device's state and the routes. Used by the CNI plugin.

use std::{net::Ipv4Addr, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{InfoData, InfoKind, InfoVeth},
        route::{RouteAddress, RouteAttribute, RouteScope},
    },
};

use super::{Device, Net};

/// What a container's interface looks like from inside its namespace.
#[derive(Clone, Debug)]
pub struct ContainerLink {
    pub link: Device,
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Main-table IPv4 routes through the device: destination and gateway.
    pub routes: Vec<(Ipv4Network, Option<Ipv4Addr>)>,
}

/// Runs `f` with a netlink connection inside the network namespace at
/// `netns` (a thread of its own enters it, with a runtime of its own).
pub fn in_netns<T, F>(netns: &Path, f: impl FnOnce(Net) -> F + Send) -> Result<T>
where
    T: Send,
    F: Future<Output = Result<T>>,
{
    let file = std::fs::File::open(netns).with_context(|| {
        format!(
            "opening the container's network namespace {}",
            netns.display()
        )
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, which exits when done;
                // the descriptor is open for the call.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!("entering the network namespace {}", netns.display())
                    });
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async { f(Net::connect()?).await })
            })
            .join()
            .map_err(|_| anyhow!("the thread inside {} panicked", netns.display()))?
    })
}

impl Net {
    /// A veth pair: `host_end` here, a port of bridge `bridge`, up; its peer
    /// `ifname` in the namespace at `netns` (down until configured). Both
    /// with `mtu`. Refused if `ifname` exists there already.
    pub async fn create_container_veth(
        &self,
        host_end: &str,
        bridge: u32,
        netns: &Path,
        ifname: &str,
        mtu: u32,
    ) -> Result<Device> {
        let ns = std::fs::File::open(netns).with_context(|| {
            format!(
                "opening the container's network namespace {}",
                netns.display()
            )
        })?;
        let peer = LinkMessageBuilder::<LinkUnspec>::default()
            .name(ifname.to_string())
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_end.to_string())
            .mtu(mtu)
            .controller(bridge)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => bail!(
                "an interface {host_end} exists here or {ifname} exists in the container already"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("creating veth pair {host_end}/{ifname}"));
            }
        }
        let link = self
            .device(host_end)
            .await?
            .ok_or_else(|| anyhow!("{host_end} vanished after creation"))?;
        self.set_up(link.index).await?;
        Ok(link)
    }

    /// Inside the container: `addr/len` on `ifname`, the device up, then each
    /// route (`dst` via `gw`, or on the device without one). Returns the device.
    pub async fn configure_container_link(
        &self,
        ifname: &str,
        addr: (Ipv4Addr, u8),
        routes: &[(Ipv4Network, Option<Ipv4Addr>)],
    ) -> Result<Device> {
        let link = self
            .device(ifname)
            .await?
            .ok_or_else(|| anyhow!("{ifname} is not in the container's namespace"))?;
        self.add_addr(link.index, addr.0, addr.1).await?;
        self.set_up(link.index).await?;
        for (dst, gw) in routes {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix())
                .output_interface(link.index);
            builder = match gw {
                Some(gw) => builder.gateway(*gw),
                None => builder.scope(RouteScope::Link),
            };
            self.handle
                .route()
                .add(builder.build())
                .execute()
                .await
                .with_context(|| match gw {
                    Some(gw) => format!("adding route {dst} via {gw} in the container"),
                    None => format!("adding route {dst} dev {ifname} in the container"),
                })?;
        }
        Ok(link)
    }

    /// Inside the container: `ifname` with its addresses and routes, if it exists.
    pub async fn container_link(&self, ifname: &str) -> Result<Option<ContainerLink>> {
        let Some(link) = self.device(ifname).await? else {
            return Ok(None);
        };
        let addrs = self.ipv4_addrs(link.index).await?;
        let mut routes = Vec::new();
        let mut dump = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = dump.try_next().await.context("listing routes")? {
            let (mut dst, mut gw, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if oif == Some(link.index)
                && let Ok(net) = Ipv4Network::new(dst, msg.header.destination_prefix_length)
            {
                routes.push((net, gw));
            }
        }
        Ok(Some(ContainerLink {
            link,
            addrs,
            routes,
        }))
    }

    /// Deletes the device named `name` if it exists (with a veth, its peer goes too).
    pub async fn del_link_named(&self, name: &str) -> Result<bool> {
        match self.device(name).await? {
            Some(link) => self.del_link(link.index).await.map(|()| true),
            None => Ok(false),
        }
    }
}
