//! A container's end of a bridge port's veth, read from the host's side:
//! the MAC and IPv4 addresses its runtime configured there. The kernel
//! answers for another namespace by its id here (`IFLA_TARGET_NETNSID`,
//! `IFA_TARGET_NETNSID`), so nothing enters the container's namespace.
//! What a container can send (ARP, any frame) changes none of it; only a
//! process with CAP_NET_ADMIN inside the namespace could.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{AddressFamily, address::AddressAttribute, link::LinkAttribute},
};

use super::{Device, Net};

/// The container's end of a veth, as its runtime configured it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerEnd {
    pub mac: [u8; 6],
    pub addresses: Vec<Ipv4Addr>,
}

impl Net {
    /// The container's end of the veth `port`, if `port` is a veth whose
    /// peer lives in another namespace and still exists.
    pub async fn container_end(&self, port: &Device) -> Result<Option<ContainerEnd>> {
        let (Some(netns_id), Some(index)) = (port.peer_netns_id, port.peer_index) else {
            return Ok(None);
        };
        let mut request = self.handle.link().get().match_index(index);
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(netns_id));
        let peer = match request.execute().try_next().await {
            Ok(Some(msg)) => Device::from_message(&msg),
            Ok(None) => return Ok(None),
            // Gone meanwhile (ENODEV), or its namespace is (EINVAL).
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::ENODEV, -libc::EINVAL].contains(&e.raw_code()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("reading the peer of {}", port.name)),
        };
        let Some(mac) = peer.mac else {
            return Ok(None);
        };
        let addresses = peer_addresses(&self.strict_handle()?, netns_id, index)
            .await
            .with_context(|| format!("reading the addresses of the peer of {}", port.name))?;
        Ok(Some(ContainerEnd { mac, addresses }))
    }
}

/// The IPv4 addresses of device `index` in the namespace `netns_id` names.
/// A dump honours the target namespace only on a socket with strict
/// checking, which also makes the kernel filter by `index`.
async fn peer_addresses(strict: &Handle, netns_id: i32, index: u32) -> Result<Vec<Ipv4Addr>> {
    let mut request = strict.address().get();
    let message = request.message_mut();
    message.header.family = AddressFamily::Inet;
    message.header.index = index;
    message
        .attributes
        .push(AddressAttribute::TargetNetNsId(netns_id));
    let mut dump = request.execute();
    let mut out = Vec::new();
    while let Some(msg) = dump.try_next().await? {
        if msg.header.family != AddressFamily::Inet || msg.header.index != index {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Local(IpAddr::V4(a)) = attr
                && !out.contains(a)
            {
                out.push(*a);
            }
        }
    }
    Ok(out)
}
