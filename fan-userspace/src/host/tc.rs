//! Traffic control (`tc`): a device's clsact qdisc and the BPF programs of
//! its filters, where the port programs hang before Linux 6.6.

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};

use super::Net;

impl Net {
    /// Whether device `index` has a clsact qdisc (where TC filters hang
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

    /// Deletes the clsact qdisc of device `index`, and with it its filters; a
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

    /// Whether any filter, of any kind, hangs on the clsact qdisc of link
    /// `index` (ingress or egress).
    pub async fn has_tc_filters(&self, index: u32) -> Result<bool> {
        for egress in [false, true] {
            if !self.tc_filters(index, egress).await?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The ids of the BPF programs in the tc filters on the ingress (or
    /// egress) clsact hook of link `index`.
    pub async fn tc_bpf_programs(&self, index: u32, egress: bool) -> Result<Vec<u32>> {
        let filters = self.tc_bpf_filters(index, egress).await?;
        Ok(filters.into_iter().map(|f| f.program).collect())
    }

    /// The BPF filters on the ingress (or egress) clsact hook of link
    /// `index`: which program each runs and where it sits.
    pub async fn tc_bpf_filters(&self, index: u32, egress: bool) -> Result<Vec<TcBpfFilter>> {
        let mut out = Vec::new();
        for msg in self.tc_filters(index, egress).await? {
            for attr in &msg.attributes {
                if let TcAttribute::Options(options) = attr {
                    for option in options {
                        if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = option {
                            out.push(TcBpfFilter {
                                program: *id,
                                // tcm_info: the priority above the protocol.
                                priority: (msg.header.info >> 16) as u16,
                                handle: u32::from(msg.header.handle),
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every filter on the ingress (or egress) clsact hook of link `index`,
    /// of any kind.
    async fn tc_filters(&self, index: u32, egress: bool) -> Result<Vec<TcMessage>> {
        let mut request = self.handle.traffic_filter(index as i32).get();
        request = if egress {
            request.egress()
        } else {
            request.ingress()
        };
        let mut filters = request.execute();
        let mut out = Vec::new();
        loop {
            match filters.try_next().await {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => break,
                // No clsact qdisc on the device (a re-created one): no filters.
                Err(rtnetlink::Error::NetlinkError(e))
                    if [-libc::EINVAL, -libc::ENOENT].contains(&e.raw_code()) =>
                {
                    break;
                }
                Err(e) => return Err(e).context("listing tc filters"),
            }
        }
        Ok(out)
    }
}

/// A BPF filter on a clsact hook: its program's id, and the priority and
/// handle that name it, under which its program can be replaced in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcBpfFilter {
    pub program: u32,
    pub priority: u16,
    pub handle: u32,
}
