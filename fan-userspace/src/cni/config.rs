//! The network configuration on stdin, checked field by field so that an
//! error names the field it refuses.
//!
//! `{"cniVersion":"1.0.0","name":"fan","type":"fan","overlay":"250.0.0.0/8"}`
//! is the whole of it, the same on every host. Optional: `ipam` (delegated
//! to that IPAM plugin), `routes`, `mtu`, `dns`; a runtime adds
//! `prevResult`, `runtimeConfig`, `args` and, for GC,
//! `cni.dev/valid-attachments`. Unknown fields are left alone, as the
//! specification asks.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use super::{
    error::{CniError, CniResult, DECODE, INVALID_CONFIG},
    version::Version,
};

/// A route the container gets: `dst` via `gw` (default: the slice gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: Ipv4Network,
    pub gw: Option<Ipv4Addr>,
}

/// One attachment a GC must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug)]
pub struct NetConf {
    /// The configuration as the runtime sent it: a delegated plugin gets it unchanged.
    pub raw: Vec<u8>,
    pub version: Version,
    pub name: String,
    pub overlay: Ipv4Network,
    /// The delegated IPAM plugin's type, if any.
    pub ipam: Option<String>,
    pub routes: Option<Vec<RouteConf>>,
    pub mtu: Option<u32>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(INVALID_CONFIG, msg)
}

/// Decodes stdin as a JSON object (code 6 if it is not one).
pub fn decode(raw: &[u8]) -> CniResult<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::new(
            DECODE,
            format!("the configuration on stdin is JSON but not an object: {other}"),
        )),
        Err(e) => Err(CniError::new(
            DECODE,
            format!("the configuration on stdin is not JSON: {e}"),
        )),
    }
}

/// The `cniVersion` of a decoded configuration.
pub fn version_of(map: &serde_json::Map<String, Value>) -> CniResult<Version> {
    match map.get("cniVersion") {
        Some(Value::String(v)) => Version::parse(v),
        Some(other) => Err(invalid(format!("cniVersion must be a string, not {other}"))),
        None => Err(invalid("cniVersion is missing".into())),
    }
}

/// The specification's rule for network names (and, in libcni, container
/// ids): an alphanumeric, then alphanumerics, `_`, `.` or `-`.
pub fn is_plain_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl NetConf {
    pub fn parse(raw: &[u8]) -> CniResult<Self> {
        let map = decode(raw)?;
        let version = version_of(&map)?;
        let name = match map.get("name") {
            Some(Value::String(n)) if is_plain_name(n) && n.len() <= 200 => n.clone(),
            Some(Value::String(n)) => {
                return Err(invalid(format!(
                    "name {n:?} is not a network name (a letter or digit, then letters, digits, '_', '.' or '-')"
                )));
            }
            Some(other) => return Err(invalid(format!("name must be a string, not {other}"))),
            None => return Err(invalid("name is missing".into())),
        };
        let overlay = match map.get("overlay") {
            Some(Value::String(text)) => text
                .parse::<Ipv4Network>()
                .map_err(|e| invalid(format!("overlay {text:?} is not an IPv4 prefix: {e}")))?,
            Some(other) => return Err(invalid(format!("overlay must be a string, not {other}"))),
            None => {
                return Err(invalid(
                    "overlay is missing (the fan's overlay prefix, e.g. \"250.0.0.0/8\")".into(),
                ));
            }
        };
        if overlay.network() != overlay.ip() {
            return Err(invalid(format!(
                "overlay {overlay} has host bits set (the prefix is {}/{})",
                overlay.network(),
                overlay.prefix()
            )));
        }
        let ipam = match map.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(ipam)) => match ipam.get("type") {
                Some(Value::String(t)) if is_plain_name(t) => Some(t.clone()),
                Some(other) => {
                    return Err(invalid(format!(
                        "ipam.type {other} is not the name of an IPAM plugin"
                    )));
                }
                None => return Err(invalid("ipam is given without ipam.type".into())),
            },
            Some(other) => return Err(invalid(format!("ipam must be an object, not {other}"))),
        };
        let mtu = match map.get("mtu") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(m @ 68..=65535) => Some(m as u32),
                _ => return Err(invalid(format!("mtu {n} is not between 68 and 65535"))),
            },
            Some(other) => return Err(invalid(format!("mtu must be a number, not {other}"))),
        };
        let routes = match map.get("routes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| route(i, item))
                    .collect::<CniResult<Vec<_>>>()?,
            ),
            Some(other) => return Err(invalid(format!("routes must be a list, not {other}"))),
        };
        let dns = match map.get("dns") {
            None | Some(Value::Null) => None,
            Some(dns @ Value::Object(_)) => Some(dns.clone()),
            Some(other) => return Err(invalid(format!("dns must be an object, not {other}"))),
        };
        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(prev @ Value::Object(_)) => Some(prev.clone()),
            Some(other) => {
                return Err(invalid(format!(
                    "prevResult must be an object, not {other}"
                )));
            }
        };
        let valid_attachments = match map.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(attachment)
                    .collect::<CniResult<Vec<_>>>()?,
            ),
            Some(other) => {
                return Err(invalid(format!(
                    "cni.dev/valid-attachments must be a list, not {other}"
                )));
            }
        };
        Ok(Self {
            raw: raw.to_vec(),
            version,
            name,
            overlay,
            ipam,
            routes,
            mtu,
            dns,
            prev_result,
            valid_attachments,
        })
    }
}

fn route(i: usize, item: &Value) -> CniResult<RouteConf> {
    let dst = match item.get("dst") {
        Some(Value::String(text)) => text.parse::<Ipv4Network>().map_err(|e| {
            invalid(format!(
                "routes[{i}].dst {text:?} is not an IPv4 prefix: {e}"
            ))
        })?,
        _ => {
            return Err(invalid(format!(
                "routes[{i}].dst is missing or not a string"
            )));
        }
    };
    let gw = match item.get("gw") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.parse::<Ipv4Addr>().map_err(|e| {
            invalid(format!(
                "routes[{i}].gw {text:?} is not an IPv4 address: {e}"
            ))
        })?),
        Some(other) => {
            return Err(invalid(format!(
                "routes[{i}].gw must be a string, not {other}"
            )));
        }
    };
    Ok(RouteConf { dst, gw })
}

fn attachment(item: &Value) -> CniResult<Attachment> {
    match (item.get("containerID"), item.get("ifname")) {
        (Some(Value::String(id)), Some(Value::String(ifname))) => Ok(Attachment {
            container_id: id.clone(),
            ifname: ifname.clone(),
        }),
        _ => Err(invalid(format!(
            "cni.dev/valid-attachments holds {item}, not {{\"containerID\":..,\"ifname\":..}}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CniResult<NetConf> {
        NetConf::parse(text.as_bytes())
    }

    #[test]
    fn the_minimal_configuration_is_the_whole_configuration() {
        let conf =
            parse(r#"{"cniVersion":"1.0.0","name":"fan","type":"fan","overlay":"250.0.0.0/8"}"#)
                .unwrap();
        assert_eq!(conf.version, Version::V100);
        assert_eq!(conf.name, "fan");
        assert_eq!(conf.overlay, "250.0.0.0/8".parse().unwrap());
        assert_eq!(
            (conf.ipam, conf.mtu, conf.routes, conf.dns),
            (None, None, None, None)
        );
    }

    #[test]
    fn each_refusal_names_its_field_with_the_right_code() {
        let cases = [
            ("not json", 6, "not JSON"),
            ("[1]", 6, "not an object"),
            (
                r#"{"name":"fan","overlay":"250.0.0.0/8"}"#,
                7,
                "cniVersion is missing",
            ),
            (
                r#"{"cniVersion":"0.1.0","name":"fan","overlay":"250.0.0.0/8"}"#,
                1,
                "0.1.0",
            ),
            (
                r#"{"cniVersion":"1.0.0","overlay":"250.0.0.0/8"}"#,
                7,
                "name is missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a/b","overlay":"250.0.0.0/8"}"#,
                7,
                "name \"a/b\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan"}"#,
                7,
                "overlay is missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.1/8"}"#,
                7,
                "host bits",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"fe80::/10"}"#,
                7,
                "overlay \"fe80::/10\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","mtu":20}"#,
                7,
                "mtu 20",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","mtu":"1400"}"#,
                7,
                "mtu must",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","routes":[{"gw":"1.2.3.4"}]}"#,
                7,
                "routes[0].dst",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","routes":[{"dst":"0.0.0.0/0","gw":"x"}]}"#,
                7,
                "routes[0].gw",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","dns":[]}"#,
                7,
                "dns must",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","ipam":{}}"#,
                7,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fan","overlay":"250.0.0.0/8","ipam":{"type":"../x"}}"#,
                7,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"fan","overlay":"250.0.0.0/8","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
                7,
                "valid-attachments",
            ),
        ];
        for (text, code, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, code, "{text}: {e}");
            assert!(e.msg.contains(needle), "{text}: {} lacks {needle}", e.msg);
        }
    }

    #[test]
    fn optional_fields_are_read() {
        let conf = parse(
            r#"{"cniVersion":"0.4.0","name":"fan","type":"fan","overlay":"250.0.0.0/8",
                "mtu":1400,"routes":[{"dst":"10.0.0.0/8","gw":"250.0.1.9"},{"dst":"0.0.0.0/0"}],
                "dns":{"nameservers":["250.0.1.1"]},"ipam":{"type":"host-local"},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(conf.ipam.as_deref(), Some("host-local"));
        let routes = conf.routes.unwrap();
        assert_eq!(routes[0].gw, Some(Ipv4Addr::new(250, 0, 1, 9)));
        assert_eq!(routes[1].gw, None);
        assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn plain_names_follow_the_specification() {
        for good in ["fan", "a", "0x", "a_b.c-d"] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "a:b", "ä"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
