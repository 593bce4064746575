//! IPv4 addresses (`ip address`): listing, adding and removing them.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::packet_route::{AddressFamily, address::AddressAttribute};

use super::Net;

impl Net {
    /// IPv4 addresses of a device with their prefix lengths, primary first.
    /// This host's own address is IFA_LOCAL; IFA_ADDRESS is the same on a
    /// broadcast device but the peer's on a point-to-point one, so it is not read.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .all_ipv4_addrs(Some(index))
            .await?
            .into_iter()
            .map(|(_, addr, len)| (addr, len))
            .collect())
    }

    /// (ifindex, address, prefix length) of every IPv4 address, or of one
    /// device's, primary first.
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

    pub async fn add_addr(&self, index: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), len)
            .execute()
            .await
            .with_context(|| format!("adding address {addr}/{len}"))
    }

    /// Removes `addr/len` from device `index`; an address already gone is fine.
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
}
