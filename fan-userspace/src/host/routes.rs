//! IPv4 routes of the main table (`ip route`): finding one and putting it
//! back as it was, adding, replacing (with a route MTU) and deleting.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteType,
    },
};

use super::Net;

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// The routing protocol number that marks fan-xdp's path MTU routes
/// (`ip route show proto 250`): unassigned in the kernel's and iproute2's
/// lists, and the overlay's first octet by default.
pub const RTPROT_FAN_XDP_PMTU: u8 = 250;

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

impl Net {
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
        Ok(self
            .main_table_routes()
            .await?
            .into_iter()
            .find(|(d, l, _)| *d == dest && *l == len)
            .map(|(_, _, found)| found))
    }

    /// Every IPv4 route of the main table: its destination (0.0.0.0 for a
    /// default route, which carries none), prefix length, and what it says.
    async fn main_table_routes(&self) -> Result<Vec<(Ipv4Addr, u8, FoundRoute)>> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = routes.try_next().await.context("listing routes")? {
            let mut found = FoundRoute {
                oif: None,
                src: None,
                multipath: false,
                unicast: msg.header.kind == RouteType::Unicast,
                message: msg.clone(),
            };
            let (mut dst, mut table) = (Ipv4Addr::UNSPECIFIED, u32::from(msg.header.table));
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Oif(i) => found.oif = Some(*i),
                    RouteAttribute::PrefSource(RouteAddress::Inet(a)) => found.src = Some(*a),
                    RouteAttribute::MultiPath(_) => found.multipath = true,
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN {
                out.push((dst, msg.header.destination_prefix_length, found));
            }
        }
        Ok(out)
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
    /// with route MTU `mtu`, marked as fan-xdp's path MTU route
    /// ([`RTPROT_FAN_XDP_PMTU`]) so that an agent restarted after a crash
    /// finds the routes its predecessor left.
    pub async fn replace_route_with_mtu(
        &self,
        dest: Ipv4Addr,
        len: u8,
        oif: u32,
        src: Ipv4Addr,
        mtu: u32,
    ) -> Result<()> {
        let mut route = Self::route(dest, len, oif, Some(src));
        route.header.protocol = RouteProtocol::Other(RTPROT_FAN_XDP_PMTU);
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

    /// The main-table routes marked [`RTPROT_FAN_XDP_PMTU`], as
    /// (destination, prefix length, output device).
    pub async fn path_mtu_routes(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>> {
        let marked = RouteProtocol::Other(RTPROT_FAN_XDP_PMTU);
        Ok(self
            .main_table_routes()
            .await?
            .into_iter()
            .filter(|(_, _, found)| found.message.header.protocol == marked)
            .filter_map(|(dst, len, found)| Some((dst, len, found.oif?)))
            .collect())
    }

    /// Deletes the route to `dest/len` through `oif`, whichever protocol
    /// put it there (fan-xdp's routes through its own device are all its).
    pub async fn del_route(&self, dest: Ipv4Addr, len: u8, oif: u32) -> Result<()> {
        let mut route = Self::route(dest, len, oif, None);
        // The builder says "static"; a deletion matches only that protocol
        // unless none is given.
        route.header.protocol = RouteProtocol::Unspec;
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting route {dest}/{len}")),
        }
    }
}
