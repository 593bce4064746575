//! dnsmasq's lease file, read as it writes it.

use std::{fs, net::Ipv4Addr, path::Path, time::SystemTime};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::agent::bindings::{Binding, Origin};

/// One line of dnsmasq's lease file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Unix time the lease ends (0: never).
    pub expiry: u64,
    pub mac: String,
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
    pub client_id: Option<String>,
}

impl Lease {
    pub(super) fn binding(&self) -> Binding {
        Binding {
            address: self.address,
            mac: self.mac.clone(),
            port: None,
            origin: Origin::Dhcp,
            owner: self.client_id.clone().unwrap_or_else(|| self.mac.clone()),
            pod: None,
        }
    }
}

/// The leases in a dnsmasq lease file (`EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID`,
/// `*` for none); IPv6 and malformed lines are skipped. No file: no leases.
pub fn read_leases(path: &Path) -> Result<Vec<Lease>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(parse_leases(&text))
}

fn parse_leases(text: &str) -> Vec<Lease> {
    let named = |field: Option<&str>| field.filter(|f| *f != "*").map(str::to_string);
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let expiry = fields.next()?.parse().ok()?;
            let mac = fields.next()?.to_ascii_lowercase();
            let address = fields.next()?.parse().ok()?;
            Some(Lease {
                expiry,
                mac,
                address,
                hostname: named(fields.next()),
                client_id: named(fields.next()),
            })
        })
        .collect()
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines_are_read_and_bad_ones_skipped() {
        let text = "1767225600 02:00:00:00:00:0A 250.0.28.7 c7 01:02:00:00:00:00:0a\n\
                    1767225601 02:00:00:00:00:0b 250.0.28.8 * *\n\
                    duid 00:01:00:01\n\
                    1767225602 02:00:00:00:00:0c not-an-address * *\n";
        let leases = parse_leases(text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].mac, "02:00:00:00:00:0a");
        assert_eq!(leases[0].hostname.as_deref(), Some("c7"));
        assert_eq!(leases[0].binding().owner, "01:02:00:00:00:00:0a");
        assert_eq!(leases[1].binding().owner, "02:00:00:00:00:0b");
        assert_eq!(leases[1].binding().origin, Origin::Dhcp);
        assert_eq!(leases[1].address, "250.0.28.8".parse::<Ipv4Addr>().unwrap());
    }
}
