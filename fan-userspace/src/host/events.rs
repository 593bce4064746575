//! Netlink messages as the changes they announce: one device, one neighbour,
//! one forwarding entry. The dumps in [`super::Net`] parse their messages
//! with the same functions, so an event and a dump never disagree.

use std::{net::Ipv4Addr, time::Duration};

use rtnetlink::packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};

use super::{Device, FdbEntry};

/// One change the kernel announced.
#[derive(Clone, Debug)]
pub enum Change {
    /// A device appeared or changed (its state, its master, its name).
    Device(Device),
    /// The device with this index is gone.
    LinkGone(u32),
    /// An IPv4 neighbour on `ifindex`: its MAC, or `None` once it is gone or unusable.
    Neighbour {
        ifindex: u32,
        address: Ipv4Addr,
        mac: Option<[u8; 6]>,
    },
    /// A forwarding entry of bridge `bridge`; `gone` once the bridge forgot it.
    Fdb {
        bridge: u32,
        entry: FdbEntry,
        gone: bool,
    },
}

/// The change a netlink message announces, if it is one fan-xdp follows.
pub fn change_of(message: &RouteNetlinkMessage) -> Option<Change> {
    match message {
        // A bridge also announces its ports' bridging state as link messages
        // of family AF_BRIDGE, which carry neither the port's kind nor its
        // peer: only the device's own (AF_UNSPEC) messages say what it is.
        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link)
            if link.header.interface_family != AddressFamily::Unspec =>
        {
            None
        }
        RouteNetlinkMessage::NewLink(link) => Some(Change::Device(Device::from_message(link))),
        RouteNetlinkMessage::DelLink(link) => Some(Change::LinkGone(link.header.index)),
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let gone = matches!(message, RouteNetlinkMessage::DelNeighbour(_));
            match n.header.family {
                AddressFamily::Inet => {
                    let (address, mac) = inet_neighbour_of(n)?;
                    let mac = mac.filter(|_| !gone && is_usable(n.header.state));
                    Some(Change::Neighbour {
                        ifindex: n.header.ifindex,
                        address,
                        mac,
                    })
                }
                AddressFamily::Bridge => {
                    let (bridge, entry) = fdb_entry_of(n)?;
                    Some(Change::Fdb {
                        bridge,
                        entry,
                        gone,
                    })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a neighbour in `state` names a MAC that frames can go to.
pub fn is_usable(state: NeighbourState) -> bool {
    !matches!(
        state,
        NeighbourState::Failed
            | NeighbourState::Incomplete
            | NeighbourState::Noarp
            | NeighbourState::None
    )
}

/// An IPv4 neighbour's address and, when the message has one, its MAC.
pub fn inet_neighbour_of(message: &NeighbourMessage) -> Option<(Ipv4Addr, Option<[u8; 6]>)> {
    let (mut address, mut mac) = (None, None);
    for attr in &message.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = l.as_slice().try_into().ok(),
            _ => {}
        }
    }
    Some((address?, mac))
}

/// A bridge forwarding entry learned on a port (not the bridge's own): its
/// bridge and the entry.
pub fn fdb_entry_of(message: &NeighbourMessage) -> Option<(u32, FdbEntry)> {
    let (mut mac, mut bridge, mut idle) = (None, None, Duration::ZERO);
    for attr in &message.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Controller(m) => bridge = Some(*m),
            // In clock ticks of USER_HZ, which is 100 on Linux.
            NeighbourAttribute::CacheInfo(info) => {
                idle = Duration::from_millis(u64::from(info.updated) * 10)
            }
            _ => {}
        }
    }
    let bridge = bridge.filter(|b| *b != message.header.ifindex)?;
    Some((
        bridge,
        FdbEntry {
            mac: mac?,
            port: message.header.ifindex,
            idle,
            permanent: message.header.state == NeighbourState::Permanent,
        },
    ))
}
