//! Host plumbing over rtnetlink: links, addresses, routes; and sysctls.
//!
//! One connection, [`Net`], whose methods live by topic: links (and tc
//! filters), addresses, routes, neighbours and forwarding entries, each in
//! a file of its own; the sysctls are plain files under /proc.

mod addresses;
pub mod arp_table;
pub mod bypass;
pub mod container;
mod devices;
pub mod events;
pub mod naming;
pub mod nat;
mod neighbours;
pub mod netns;
mod peers;
mod routes;
mod sysctl;
mod tc;

use anyhow::{Context as _, Result};
use rtnetlink::Handle;

pub use devices::Device;
pub use neighbours::FdbEntry;
pub use peers::ContainerEnd;
pub use routes::FoundRoute;
pub use sysctl::{
    IP_FORWARD, RP_FILTER_LOOSE, accept_ra_key, read_ipv6_sysctl, read_sysctl, rp_filter_is_strict,
    rp_filter_key, write_ipv6_sysctl, write_sysctl,
};
pub use tc::TcBpfFilter;

/// A netlink connection in the calling thread's network namespace.
pub struct Net {
    handle: Handle,
    /// A second connection with strict checking (`NETLINK_GET_STRICT_CHK`),
    /// opened when first needed: only with it does the kernel honour a
    /// dump's filters and target namespace.
    strict: std::sync::OnceLock<Handle>,
}

impl Net {
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            strict: std::sync::OnceLock::new(),
        })
    }

    fn strict_handle(&self) -> Result<Handle> {
        if let Some(handle) = self.strict.get() {
            return Ok(handle.clone());
        }
        let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()
            .context("opening rtnetlink with strict checking")?;
        tokio::spawn(connection);
        Ok(self.strict.get_or_init(|| handle).clone())
    }
}
