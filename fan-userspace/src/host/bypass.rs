//! Whether the fast path may bypass the host's netfilter for fan traffic.
//!
//! Encapsulating at the bridge or a container's port, and delivering
//! straight into a container, skip FORWARD, POSTROUTING, conntrack and
//! bridge netfilter. That is what makes them fast, and it breaks NAT (replies
//! of a DNATed flow are never un-NATed; with bridge netfilter a DNAT at the
//! bridge port is never confirmed) and silently skips firewall rules. So
//! the bypass is on only where netfilter could not act on forwarded fan
//! traffic anyway, by this rule, which errs towards off:
//!
//! - no legacy iptables table is loaded (those are invisible to nft);
//! - the nftables ruleset (every table but fan-xdp's own masquerade) has no
//!   NAT chain with a rule, no chain of the bridge family with a rule, and no
//!   forward chain that drops by default or has a rule other than a plain
//!   accept (a counter may count it);
//! - and the ruleset can be read at all (nft is installed).
//!
//! `--bypass on|off` sets it outright. The setting and the verdict live in
//! the pinned map `FAN_BYPASS`, which the programs read; `attach` writes it
//! and the agent re-decides on every sync.

use std::collections::HashMap;

use fan_common::maps::bypass;
use serde_json::Value;

use crate::{cli::Bypass, host::nat};

/// The verdict, and why when it is off.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub on: bool,
    pub why: String,
}

/// The value for `FAN_BYPASS` given the setting, and the verdict behind it.
pub fn decide(setting: Bypass) -> (u32, Verdict) {
    match setting {
        Bypass::On => (
            bypass::FORCED_ON,
            Verdict {
                on: true,
                why: "--bypass on".into(),
            },
        ),
        Bypass::Off => (
            bypass::FORCED_OFF,
            Verdict {
                on: false,
                why: "--bypass off".into(),
            },
        ),
        Bypass::Auto => match netfilter_could_act() {
            None => (
                bypass::AUTO_ON,
                Verdict {
                    on: true,
                    why: "netfilter has nothing for forwarded fan traffic".into(),
                },
            ),
            Some(why) => (bypass::AUTO_OFF, Verdict { on: false, why }),
        },
    }
}

/// The setting a `FAN_BYPASS` value was decided from.
pub fn setting_of(value: u32) -> Bypass {
    match value {
        bypass::FORCED_ON => Bypass::On,
        bypass::FORCED_OFF => Bypass::Off,
        _ => Bypass::Auto,
    }
}

/// Why netfilter could act on forwarded fan traffic here, if it could.
pub fn netfilter_could_act() -> Option<String> {
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    let legacy: Vec<&str> = legacy.split_whitespace().collect();
    if !legacy.is_empty() {
        return Some(format!(
            "legacy iptables tables are loaded ({})",
            legacy.join(", ")
        ));
    }
    match nat::nft(None, &["list", "ruleset"]) {
        Ok(ruleset) => ruleset_could_act(&ruleset),
        Err(_) => Some("the nftables ruleset cannot be read (is nft installed?)".into()),
    }
}

/// The nftables part of the rule, on `nft -j list ruleset` output.
pub fn ruleset_could_act(ruleset: &Value) -> Option<String> {
    let items = ruleset["nftables"].as_array()?;
    let ours = |item: &Value| item["family"] == "ip" && item["table"] == nat::TABLE;
    let mut chains: HashMap<(String, String, String), &Value> = HashMap::new();
    for chain in items.iter().map(|i| &i["chain"]).filter(|c| c.is_object()) {
        if ours(chain) {
            continue;
        }
        let name = |k: &str| chain[k].as_str().unwrap_or_default().to_string();
        if chain["hook"] == "forward" && chain["policy"] == "drop" {
            return Some(format!(
                "{} {} chain {} drops forwarded packets by default",
                name("family"),
                name("table"),
                name("name")
            ));
        }
        chains.insert((name("family"), name("table"), name("name")), chain);
    }
    for rule in items.iter().map(|i| &i["rule"]).filter(|r| r.is_object()) {
        if ours(rule) {
            continue;
        }
        let key = |k: &str| rule[k].as_str().unwrap_or_default().to_string();
        let (family, table, chain) = (key("family"), key("table"), key("chain"));
        let Some(base) = chains.get(&(family.clone(), table.clone(), chain.clone())) else {
            continue;
        };
        let what = if base["type"] == "nat" {
            "rewrites addresses (NAT)"
        } else if family == "bridge" {
            "filters bridged frames"
        } else if base["hook"] == "forward" && !plain_accept(rule) {
            "filters forwarded packets"
        } else {
            continue;
        };
        return Some(format!("{family} {table} chain {chain} {what}"));
    }
    None
}

/// A rule that accepts everything (a counter may count it).
fn plain_accept(rule: &Value) -> bool {
    rule["expr"].as_array().is_some_and(|exprs| {
        exprs
            .iter()
            .all(|e| e.get("counter").is_some() || e.get("accept").is_some())
            && exprs.iter().any(|e| e.get("accept").is_some())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::ruleset_could_act;

    fn ruleset(items: serde_json::Value) -> serde_json::Value {
        json!({ "nftables": items })
    }

    #[test]
    fn an_empty_ruleset_and_fan_xdps_own_table_leave_the_bypass_on() {
        assert_eq!(ruleset_could_act(&ruleset(json!([]))), None);
        let own = ruleset(json!([
            {"chain": {"family": "ip", "table": "fan-xdp", "name": "postrouting", "type": "nat", "hook": "postrouting", "policy": "accept"}},
            {"rule": {"family": "ip", "table": "fan-xdp", "chain": "postrouting", "expr": [{"masquerade": null}]}}
        ]));
        assert_eq!(ruleset_could_act(&own), None);
    }

    #[test]
    fn forward_chains_with_only_accepts_leave_it_on() {
        let accepting = ruleset(json!([
            {"chain": {"family": "inet", "table": "filter", "name": "forward", "type": "filter", "hook": "forward", "policy": "accept"}},
            {"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}
        ]));
        assert_eq!(ruleset_could_act(&accepting), None);
    }

    #[test]
    fn nat_filters_and_drop_policies_turn_it_off() {
        let dnat = ruleset(json!([
            {"chain": {"family": "ip", "table": "nat", "name": "prerouting", "type": "nat", "hook": "prerouting", "policy": "accept"}},
            {"rule": {"family": "ip", "table": "nat", "chain": "prerouting", "expr": [{"dnat": {"addr": "250.0.2.11"}}]}}
        ]));
        assert_eq!(
            ruleset_could_act(&dnat).unwrap(),
            "ip nat chain prerouting rewrites addresses (NAT)"
        );
        let filter = ruleset(json!([
            {"chain": {"family": "inet", "table": "filter", "name": "forward", "type": "filter", "hook": "forward", "policy": "accept"}},
            {"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "250.0.1.11"}}, {"drop": null}]}}
        ]));
        assert_eq!(
            ruleset_could_act(&filter).unwrap(),
            "inet filter chain forward filters forwarded packets"
        );
        let policy = ruleset(json!([
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward", "policy": "drop"}}
        ]));
        assert_eq!(
            ruleset_could_act(&policy).unwrap(),
            "ip filter chain FORWARD drops forwarded packets by default"
        );
        let bridged = ruleset(json!([
            {"chain": {"family": "bridge", "table": "filter", "name": "forward", "type": "filter", "hook": "forward", "policy": "accept"}},
            {"rule": {"family": "bridge", "table": "filter", "chain": "forward", "expr": [{"counter": null}, {"accept": null}]}}
        ]));
        assert_eq!(
            ruleset_could_act(&bridged).unwrap(),
            "bridge filter chain forward filters bridged frames"
        );
    }
}
