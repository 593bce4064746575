//! The result of ADD (and of an IPAM plugin), read from any supported
//! version and written in the version asked for.
//!
//! 0.3.1 and 0.4.0 name each address's IP version (`"version":"4"`), 1.0.0
//! dropped the field, 1.1.0 added an interface's `mtu`. Fields this plugin
//! does not know (another plugin's, in a chain) are kept as they came.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    error::{CniError, CniResult, DECODE},
    version::Version,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `a.b.c.d/len` (another plugin's may be IPv6: kept as text).
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniOutput {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
}

impl CniOutput {
    /// Reads a result (a `prevResult`, an IPAM plugin's answer) of any version.
    pub fn from_value(value: &Value, what: &str) -> CniResult<Self> {
        let mut out: CniOutput = serde_json::from_value(value.clone())
            .map_err(|e| CniError::new(DECODE, format!("{what} is not a CNI result: {e}")))?;
        for ip in &mut out.ips {
            // The IP version is implied by the address from 1.0.0 on.
            ip.other.remove("version");
        }
        Ok(out)
    }

    /// The result as `version` writes it.
    pub fn to_value(&self, version: Version) -> Value {
        let mut copy = self.clone();
        for ip in &mut copy.ips {
            if version.ips_carry_version() {
                let v = if ip.address.contains(':') { "6" } else { "4" };
                ip.other.insert("version".into(), Value::String(v.into()));
            }
        }
        if !version.interfaces_carry_mtu() {
            for interface in &mut copy.interfaces {
                interface.mtu = None;
            }
        }
        let mut value = serde_json::to_value(&copy).expect("a result serializes");
        value
            .as_object_mut()
            .expect("a result is an object")
            .insert("cniVersion".into(), Value::String(version.as_str().into()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> CniOutput {
        CniOutput {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1480),
                sandbox: Some("/run/netns/c1".into()),
                other: Map::new(),
            }],
            ips: vec![IpConfig {
                address: "250.0.1.192/24".into(),
                gateway: Some("250.0.1.1".into()),
                interface: Some(0),
                other: Map::new(),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("250.0.1.1".into()),
                other: Map::new(),
            }],
            dns: None,
        }
    }

    #[test]
    fn each_version_writes_its_own_format() {
        let expect_031 = r#"{"cniVersion":"0.3.1","interfaces":[{"mac":"02:00:00:00:00:01","name":"eth0","sandbox":"/run/netns/c1"}],"ips":[{"address":"250.0.1.192/24","gateway":"250.0.1.1","interface":0,"version":"4"}],"routes":[{"dst":"0.0.0.0/0","gw":"250.0.1.1"}]}"#;
        let expect_100 = r#"{"cniVersion":"1.0.0","interfaces":[{"mac":"02:00:00:00:00:01","name":"eth0","sandbox":"/run/netns/c1"}],"ips":[{"address":"250.0.1.192/24","gateway":"250.0.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"250.0.1.1"}]}"#;
        let expect_110 = r#"{"cniVersion":"1.1.0","interfaces":[{"mac":"02:00:00:00:00:01","mtu":1480,"name":"eth0","sandbox":"/run/netns/c1"}],"ips":[{"address":"250.0.1.192/24","gateway":"250.0.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"250.0.1.1"}]}"#;
        assert_eq!(ours().to_value(Version::V031).to_string(), expect_031);
        assert_eq!(
            ours().to_value(Version::V040).to_string(),
            expect_031.replace("0.3.1", "0.4.0")
        );
        assert_eq!(ours().to_value(Version::V100).to_string(), expect_100);
        assert_eq!(ours().to_value(Version::V110).to_string(), expect_110);
    }

    #[test]
    fn a_result_of_any_version_reads_back_and_keeps_foreign_fields() {
        for version in [Version::V031, Version::V040, Version::V100, Version::V110] {
            let mut read = CniOutput::from_value(&ours().to_value(version), "x").unwrap();
            if !version.interfaces_carry_mtu() {
                read.interfaces[0].mtu = Some(1480);
            }
            assert_eq!(read, ours(), "{version:?}");
        }
        let foreign: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"x","socketPath":"/s"}],"ips":[{"address":"fd00::2/64"}],"dns":{"nameservers":["9.9.9.9"]}}"#,
        )
        .unwrap();
        let read = CniOutput::from_value(&foreign, "prevResult").unwrap();
        assert_eq!(read.interfaces[0].other["socketPath"], "/s");
        assert_eq!(
            read.to_value(Version::V040)["ips"][0]["version"],
            "6",
            "an IPv6 address of another plugin is labelled as such"
        );
        let e = CniOutput::from_value(&serde_json::json!({"ips": 3}), "prevResult").unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.starts_with("prevResult"));
    }
}
