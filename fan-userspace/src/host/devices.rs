//! Network devices (`ip link`; "link" in fan-xdp means a BPF link only):
//! what fan-xdp reads of an interface, looking one up,
//! a bridge's ports, and creating, setting and deleting bridges and veths.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use rtnetlink::{
    LinkBridge, LinkUnspec, LinkVeth,
    packet_route::link::{
        InfoBridge, InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
        State,
    },
};

use super::Net;

/// What fan-xdp needs to know about one interface.
#[derive(Clone, Debug)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// "bridge", "veth", ... or None for a physical NIC.
    pub kind: Option<String>,
    /// The XDP program attached to the device, if any.
    pub xdp_prog_id: Option<u32>,
    pub noarp: bool,
    /// Administratively up (`ip link set ... up`).
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    /// The bridge (or other master) this device is a port of.
    pub controller: Option<u32>,
    /// For a bridge: how long it keeps a forwarding entry nobody refreshes.
    pub ageing: Option<Duration>,
    /// The operational state is up: for a veth, its peer is up too.
    pub oper_up: bool,
    /// For a veth (or other device with a peer): the id, in this namespace,
    /// of the namespace its peer is in, when that is another one.
    pub peer_netns_id: Option<i32>,
    /// For a veth: its peer's index (in the peer's namespace when
    /// `peer_netns_id` is set).
    pub peer_index: Option<u32>,
}

impl Device {
    pub(crate) fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Device {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            kind: None,
            xdp_prog_id: None,
            noarp: msg.header.flags.contains(LinkFlags::Noarp),
            up: msg.header.flags.contains(LinkFlags::Up),
            mac: None,
            controller: None,
            ageing: None,
            oper_up: false,
            peer_netns_id: None,
            peer_index: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::OperState(state) => link.oper_up = *state == State::Up,
                LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
                LinkAttribute::Link(index) => link.peer_index = Some(*index),
                LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                            LinkInfo::Data(InfoData::Bridge(attrs)) => {
                                for attr in attrs {
                                    // In hundredths of a second.
                                    if let InfoBridge::AgeingTime(t) = attr {
                                        link.ageing =
                                            Some(Duration::from_millis(u64::from(*t) * 10));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        if let LinkXdp::ProgId(id) = x
                            && *id != 0
                        {
                            link.xdp_prog_id = Some(*id);
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Net {
    /// The ifindex of device `name`, which must exist.
    pub async fn index_of(&self, name: &str) -> Result<u32> {
        match self.device(name).await? {
            Some(device) => Ok(device.index),
            None => anyhow::bail!("no such interface: {name}"),
        }
    }

    pub async fn device(&self, name: &str) -> Result<Option<Device>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(Device::from_message(&msg))),
            Ok(None) => Ok(None),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    pub async fn device_by_index(&self, index: u32) -> Result<Option<Device>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.map(|m| Device::from_message(&m))),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).context("looking up an interface by index"),
        }
    }

    /// The ports of bridge `bridge`.
    pub async fn ports(&self, bridge: u32) -> Result<Vec<Device>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.context("listing interfaces")? {
            let link = Device::from_message(&msg);
            if link.controller == Some(bridge) {
                out.push(link);
            }
        }
        Ok(out)
    }

    /// The names of bridge `bridge`'s ports.
    pub async fn port_names(&self, bridge: u32) -> Result<Vec<String>> {
        Ok(self
            .ports(bridge)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect())
    }

    /// A bridge with MAC address `mac` whose MTU stays `mtu` whatever is
    /// plugged into it. Both are given explicitly so that they stay: a
    /// bridge left to pick its own MAC takes the lowest among its ports
    /// (it would change as containers come and go, under their ARP caches);
    /// and the kernel keeps a bridge's MTU only once it was set by a change
    /// request: one given at creation follows the ports, rising with a port
    /// of a larger MTU (a DHCP container's veth left at 1500) and falling
    /// back to 1500 when the last port leaves. A request for the MTU the
    /// device already has is ignored, so that case goes through another
    /// value first, while nothing is plugged in yet.
    pub async fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<Device> {
        self.handle
            .link()
            .add(LinkBridge::new(name).address(mac.to_vec()).build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        let created = self
            .device(name)
            .await?
            .ok_or_else(|| anyhow!("bridge {name} vanished after creation"))?;
        if created.mtu == mtu {
            // Attach allows no fan MTU below 576, so mtu - 1 is valid.
            let other = mtu - 1;
            self.set_mtu(created.index, other).await?;
        }
        self.set_mtu(created.index, mtu).await?;
        self.device(name)
            .await?
            .ok_or_else(|| anyhow!("bridge {name} vanished after creation"))
    }

    /// A veth pair whose first end does not ARP: routes to it need no neighbour.
    pub async fn create_noarp_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<Device> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).arp(false).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {name}/{peer}"))?;
        let link = self
            .device(name)
            .await?
            .ok_or_else(|| anyhow!("{name} vanished after creation"))?;
        if let Some(p) = self.device(peer).await? {
            self.set_up(p.index).await?;
        }
        Ok(link)
    }

    /// A veth pair whose end `port` (with MAC `mac`) is a port of bridge
    /// `bridge`, its peer `inner` in this namespace; both with `mtu`, both
    /// down. Returns (`port`, `inner`).
    pub async fn create_bridge_veth(
        &self,
        (port, mac): (&str, [u8; 6]),
        inner: &str,
        bridge: u32,
        mtu: u32,
    ) -> Result<(Device, Device)> {
        let pair = LinkVeth::new(port, inner)
            .mtu(mtu)
            .address(mac.to_vec())
            .controller(bridge)
            .build();
        self.handle
            .link()
            .add(pair)
            .execute()
            .await
            .with_context(|| format!("creating veth pair {port}/{inner}"))?;
        let gone = |name: &str| anyhow!("{name} vanished after creation");
        let port = self.device(port).await?.ok_or_else(|| gone(port))?;
        let inner = self.device(inner).await?.ok_or_else(|| gone(inner))?;
        if inner.mtu != mtu {
            self.set_mtu(inner.index, mtu).await?;
        }
        Ok((port, inner))
    }

    /// Makes device `index` a port of bridge `bridge`.
    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge).build())
            .execute()
            .await
            .context("adding a port to a bridge")
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .context("setting a link up")
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .context("setting a link down")
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("setting MTU {mtu}"))
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(e).context("deleting a link"),
        }
    }
}
