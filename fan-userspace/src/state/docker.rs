//! The Docker options that put Docker's default network on a fan's slice
//! bridge, as the Fan's own recipe ran it (`DOCKER_OPTS="-b fan-250-0-28
//! --mtu=1480 --iptables=false"`), with the address plan's Docker range as
//! `--fixed-cidr` so Docker never hands out an address DHCP, the CNI plugin
//! or the host reserve owns.

use anyhow::Result;
use serde::Serialize;

use super::record::Fan;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DockerOptions {
    /// dockerd's arguments, one per element.
    pub args: Vec<String>,
    /// The same as a line for /etc/default/docker.
    pub docker_opts: String,
}

impl DockerOptions {
    pub fn for_fan(fan: &Fan) -> Result<Self> {
        let plan = fan.plan()?;
        let args = vec![
            "-b".to_string(),
            fan.bridge.clone(),
            format!("--mtu={}", fan.mtu),
            // Docker's own NAT and filter rules would turn the bypass off
            // and masquerade fan traffic; fan-xdp masquerades what leaves.
            "--iptables=false".to_string(),
            format!("--fixed-cidr={}", plan.docker),
        ];
        let docker_opts = format!("DOCKER_OPTS=\"{}\"", args.join(" "));
        Ok(Self { args, docker_opts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::record::name_bytes;
    use fan_common::maps::FanMeta;

    fn fan(overlay: [u32; 2], host: [u8; 4], underlay_len: u8, mtu: u32, bridge: &str) -> Fan {
        let meta = FanMeta {
            iface: name_bytes("eth0"),
            bridge: name_bytes(bridge),
            decap_mode: 0,
            mode_reason: 0,
            nat: 1,
            complete: 1,
            orig_forwarding: 0,
            orig_rp_filter: 0,
            orig_rp_filter_all: 0,
            underlay_len,
            host: u32::from_be_bytes(host),
            host_reserve: 1,
            mtu,
            layout_version: 0,
            owned: 0,
            _pad: [0; 3],
        };
        Fan::from_record(overlay, meta).expect("a valid record")
    }

    #[test]
    fn the_seeds_line_with_the_plans_docker_range() {
        // 250.0.0.0/8 over 172.30.0.0/16: host 172.30.0.28 owns 250.0.28.0/24.
        let options =
            DockerOptions::for_fan(&fan([8, 0xfa00_0000], [172, 30, 0, 28], 16, 1480, "fan-250-0-28"))
                .unwrap();
        assert_eq!(
            options.docker_opts,
            r#"DOCKER_OPTS="-b fan-250-0-28 --mtu=1480 --iptables=false --fixed-cidr=250.0.28.128/26""#
        );
        assert_eq!(options.args[1], "fan-250-0-28");
    }

    #[test]
    fn a_larger_slice_gives_its_third_quarter() {
        // 10.0.0.0/8 over 192.168.0.0/24 leaves /16 slices: host .5 owns 10.5.0.0/16.
        let options =
            DockerOptions::for_fan(&fan([8, 0x0a00_0000], [192, 168, 0, 5], 24, 8980, "fan-10-5"))
                .unwrap();
        assert_eq!(
            options.docker_opts,
            r#"DOCKER_OPTS="-b fan-10-5 --mtu=8980 --iptables=false --fixed-cidr=10.5.128.0/18""#
        );
    }
}
