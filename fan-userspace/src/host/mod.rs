//! Host plumbing over rtnetlink: links, addresses, routes; and sysctls.

pub mod bypass;
pub mod container;
pub mod events;
pub mod naming;
pub mod nat;
pub mod netns;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{
            InfoBridge, InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
            LinkXdp, State,
        },
        neighbour::{NeighbourFlags, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcOption},
    },
};

/// What fan-xdp needs to know about one interface.
#[derive(Clone, Debug)]
pub struct Link {
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
    /// The bridge (or other master) this link is a port of.
    pub controller: Option<u32>,
    /// For a bridge: how long it keeps a forwarding entry nobody refreshes.
    pub ageing: Option<Duration>,
    /// The operational state is up: for a veth, its peer is up too.
    pub oper_up: bool,
    /// For a veth (or other link with a peer): the id, in this namespace,
    /// of the namespace its peer is in, when that is another one.
    pub peer_netns_id: Option<i32>,
}

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// A route as the kernel listed it, kept whole so it can be put back as it was.
#[derive(Clone, Debug)]
pub struct FoundRoute {
    /// The output device, if the route has one next hop.
    pub oif: Option<u32>,
    pub src: Option<Ipv4Addr>,
    /// Several next hops (RTA_MULTIPATH): no single output device.
    pub multipath: bool,
    /// A plain unicast route (not blackhole, unreachable, prohibit, ...).
    pub unicast: bool,
    pub message: RouteMessage,
}

/// One learned entry of a bridge's forwarding database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub port: u32,
    /// Since the bridge last saw a frame from `mac` on `port`.
    pub idle: Duration,
    /// Added by hand (`bridge fdb add ... static`): it never ages.
    pub permanent: bool,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
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
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::OperState(state) => link.oper_up = *state == State::Up,
                LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
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

/// A netlink connection in the calling thread's network namespace.
pub struct Net {
    handle: Handle,
}

impl Net {
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).context("looking up an interface by index"),
        }
    }

    /// The ports of bridge `bridge`.
    pub async fn ports(&self, bridge: u32) -> Result<Vec<Link>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.context("listing interfaces")? {
            let link = Link::from_message(&msg);
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

    /// IPv4 addresses of a link with their prefix lengths, primary first.
    /// This host's own address is IFA_LOCAL; IFA_ADDRESS is the same on a
    /// broadcast link but the peer's on a point-to-point one, so it is not read.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .all_ipv4_addrs(Some(index))
            .await?
            .into_iter()
            .map(|(_, addr, len)| (addr, len))
            .collect())
    }

    /// (ifindex, address, prefix length) of every IPv4 address, or of one
    /// link's, primary first.
    pub async fn all_ipv4_addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut out: Vec<(u32, Ipv4Addr, u8)> = Vec::new();
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let mut addrs = request.execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            let link = msg.header.index;
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr
                    && !out.iter().any(|(l, o, _)| *l == link && o == a)
                {
                    out.push((link, *a, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
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
    pub async fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<Link> {
        self.handle
            .link()
            .add(LinkBridge::new(name).address(mac.to_vec()).build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        let created = self
            .link(name)
            .await?
            .ok_or_else(|| anyhow!("bridge {name} vanished after creation"))?;
        if created.mtu == mtu {
            // Attach allows no fan MTU below 576, so mtu - 1 is valid.
            let other = mtu - 1;
            self.set_mtu(created.index, other).await?;
        }
        self.set_mtu(created.index, mtu).await?;
        self.link(name)
            .await?
            .ok_or_else(|| anyhow!("bridge {name} vanished after creation"))
    }

    /// A veth pair whose first end does not ARP: routes to it need no neighbour.
    pub async fn create_noarp_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<Link> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).arp(false).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {name}/{peer}"))?;
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| anyhow!("{name} vanished after creation"))?;
        if let Some(p) = self.link(peer).await? {
            self.set_up(p.index).await?;
        }
        Ok(link)
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

    pub async fn add_addr(&self, index: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), len)
            .execute()
            .await
            .with_context(|| format!("adding address {addr}/{len}"))
    }

    /// Removes `addr/len` from link `index`; an address already gone is fine.
    pub async fn del_addr(&self, index: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(addr))
            .set_prefix_length_filter(len)
            .execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .with_context(|| format!("deleting address {addr}/{len}"))?;
        }
        Ok(())
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(e).context("deleting a link"),
        }
    }

    /// Whether link `index` has a clsact qdisc (where TC filters hang
    /// before Linux 6.6).
    pub async fn has_clsact(&self, index: u32) -> Result<bool> {
        let mut qdiscs = self.handle.qdisc().get().index(index as i32).execute();
        while let Some(msg) = qdiscs.try_next().await.context("listing qdiscs")? {
            if msg.header.index == index as i32
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == "clsact"))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes the clsact qdisc of link `index`, and with it its filters; a
    /// qdisc or link already gone is fine.
    pub async fn del_clsact(&self, index: u32) -> Result<()> {
        let mut request = self.handle.qdisc().del(index as i32);
        request.message_mut().header.parent = TcHandle::CLSACT;
        request.message_mut().header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::ENOENT, -libc::EINVAL, -libc::ENODEV].contains(&e.raw_code()) =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("deleting a clsact qdisc"),
        }
    }

    /// The ids of the BPF programs in the tc filters on the ingress (or
    /// egress) clsact hook of link `index`.
    pub async fn tc_bpf_programs(&self, index: u32, egress: bool) -> Result<Vec<u32>> {
        let mut request = self.handle.traffic_filter(index as i32).get();
        request = if egress {
            request.egress()
        } else {
            request.ingress()
        };
        let mut filters = request.execute();
        let mut out = Vec::new();
        loop {
            let msg = match filters.try_next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                // No clsact qdisc on the device (a re-created one): no filters.
                Err(rtnetlink::Error::NetlinkError(e))
                    if [-libc::EINVAL, -libc::ENOENT].contains(&e.raw_code()) =>
                {
                    break;
                }
                Err(e) => return Err(e).context("listing tc filters"),
            };
            for attr in &msg.attributes {
                if let TcAttribute::Options(options) = attr {
                    for option in options {
                        if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = option {
                            out.push(*id);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn route(dest: Ipv4Addr, len: u8, oif: u32, src: Option<Ipv4Addr>) -> RouteMessage {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, len)
            .output_interface(oif);
        if let Some(src) = src {
            builder = builder.pref_source(src);
        }
        builder.build()
    }

    /// The main-table route to exactly `dest/len`, if any. Other tables
    /// (policy routing, the local table) are someone else's business.
    pub async fn find_route(&self, dest: Ipv4Addr, len: u8) -> Result<Option<FoundRoute>> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = routes.try_next().await.context("listing routes")? {
            if msg.header.destination_prefix_length != len {
                continue;
            }
            let mut found = FoundRoute {
                oif: None,
                src: None,
                multipath: false,
                unicast: msg.header.kind == RouteType::Unicast,
                message: msg.clone(),
            };
            let (mut dst, mut table) = (None, u32::from(msg.header.table));
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                    RouteAttribute::Oif(i) => found.oif = Some(*i),
                    RouteAttribute::PrefSource(RouteAddress::Inet(a)) => found.src = Some(*a),
                    RouteAttribute::MultiPath(_) => found.multipath = true,
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            // A default route carries no destination attribute.
            if dst.unwrap_or(Ipv4Addr::UNSPECIFIED) == dest && table == RT_TABLE_MAIN {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Deletes exactly the route `found` describes.
    pub async fn del_found_route(&self, found: &FoundRoute) -> Result<()> {
        self.handle
            .route()
            .del(found.message.clone())
            .execute()
            .await
            .context("deleting a route")
    }

    /// Adds the route `found` described again, as it was.
    pub async fn restore_route(&self, found: &FoundRoute) -> Result<()> {
        self.handle
            .route()
            .add(found.message.clone())
            .execute()
            .await
            .context("restoring a route")
    }

    pub async fn add_route(
        &self,
        dest: Ipv4Addr,
        len: u8,
        oif: u32,
        src: Option<Ipv4Addr>,
    ) -> Result<()> {
        self.handle
            .route()
            .add(Self::route(dest, len, oif, src))
            .execute()
            .await
            .with_context(|| format!("adding route {dest}/{len}"))
    }

    /// Adds or replaces the route to `dest/len` through `oif` from `src`
    /// with route MTU `mtu`.
    pub async fn replace_route_with_mtu(
        &self,
        dest: Ipv4Addr,
        len: u8,
        oif: u32,
        src: Ipv4Addr,
        mtu: u32,
    ) -> Result<()> {
        let mut route = Self::route(dest, len, oif, Some(src));
        route
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding route {dest}/{len} with MTU {mtu}"))
    }

    pub async fn del_route(&self, dest: Ipv4Addr, len: u8, oif: u32) -> Result<()> {
        match self
            .handle
            .route()
            .del(Self::route(dest, len, oif, None))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting route {dest}/{len}")),
        }
    }
}

impl Net {
    /// Usable IPv4 neighbours on `ifindex`: address and MAC.
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let mut out = Vec::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = dump.try_next().await.context("listing neighbours")? {
            if msg.header.ifindex != ifindex || !events::is_usable(msg.header.state) {
                continue;
            }
            if let Some((ip, Some(mac))) = events::inet_neighbour_of(&msg) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// The forwarding database of bridge `bridge`: which port each MAC was
    /// learned on, and how long ago the bridge last saw it there.
    pub async fn fdb(&self, bridge: u32) -> Result<Vec<FdbEntry>> {
        let mut out = Vec::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .context("listing the bridge forwarding database")?
        {
            if let Some((of, entry)) = events::fdb_entry_of(&msg)
                && of == bridge
            {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Tells bridge of `port` that `mac` is in use there, as a frame from it
    /// would (`bridge fdb replace ... master use`): the entry's age restarts.
    pub async fn refresh_fdb(&self, port: u32, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(port, &mac)
            .state(NeighbourState::Reachable)
            .flags(NeighbourFlags::Use | NeighbourFlags::Controller)
            .replace()
            .execute()
            .await
            .context("refreshing a bridge forwarding entry")
    }
}

/// The forwarding switch of the namespace.
pub const IP_FORWARD: &str = "ip_forward";
/// Loose reverse-path filtering: a source must be routable through some interface.
pub const RP_FILTER_LOOSE: u8 = 2;
const RP_FILTER_STRICT: u8 = 1;

/// The rp_filter sysctl of one interface.
pub fn rp_filter_key(iface: &str) -> String {
    format!("conf/{iface}/rp_filter")
}

/// Whether reverse-path filtering on `iface` is strict: the kernel applies
/// the larger of `conf/all/rp_filter` and the device's own value.
pub fn rp_filter_is_strict(iface: &str) -> Result<bool> {
    let effective = read_sysctl("conf/all/rp_filter")?.max(read_sysctl(&rp_filter_key(iface))?);
    Ok(effective == RP_FILTER_STRICT)
}

/// Reads an IPv4 sysctl of the calling thread's namespace, e.g. `ip_forward`
/// or `conf/eth0/rp_filter`.
pub fn read_sysctl(key: &str) -> Result<u8> {
    let path = format!("/proc/sys/net/ipv4/{key}");
    let value = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))
}

pub fn write_sysctl(key: &str, value: u8) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/{key}");
    std::fs::write(&path, value.to_string()).with_context(|| format!("writing {path}"))
}
