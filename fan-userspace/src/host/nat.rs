//! Masquerading slice traffic that leaves the overlay, and spotting firewalls
//! that would drop forwarded fan traffic.
//!
//! nftables is driven through `nft -j`, its stable JSON interface: rules are
//! built as JSON values and the ruleset is read back as JSON, so nothing
//! parses nft's human output and no libnftables binding is linked. fan-xdp
//! owns one table, `ip fan-xdp`, with one rule per fan tagged by a comment.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use ipnetwork::Ipv4Network;
use serde_json::{Value, json};

pub const TABLE: &str = "fan-xdp";
const CHAIN: &str = "postrouting";

fn comment(overlay: Ipv4Network) -> String {
    format!("fan-xdp masquerade {overlay}")
}

pub(crate) fn nft(input: Option<&Value>, args: &[&str]) -> Result<Value> {
    let mut cmd = Command::new("nft");
    cmd.arg("-j").args(args);
    if input.is_some() {
        cmd.args(["-f", "-"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables, or attach with --no-nat)")?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(input.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout).context("parsing nft JSON output")
}

/// Whether the `nft` command works here.
pub fn available() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The handles of our rules for `overlay` (every overlay if None).
fn rule_handles(overlay: Option<Ipv4Network>) -> Result<Vec<u64>> {
    Ok(rules(overlay)?.into_iter().map(|(h, _)| h).collect())
}

/// Our rules for `overlay` (every overlay if None): handle, and the source
/// prefix the rule masquerades if it reads as one of ours.
fn rules(overlay: Option<Ipv4Network>) -> Result<Vec<(u64, Option<Ipv4Network>)>> {
    let listing = match nft(None, &["list", "table", "ip", TABLE]) {
        Ok(v) => v,
        Err(_) => return Ok(Vec::new()), // no table: no rules
    };
    let wanted = overlay.map(comment);
    let mut handles = Vec::new();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule.is_null() {
            continue;
        }
        let matches = match &wanted {
            Some(c) => rule["comment"].as_str() == Some(c),
            None => true,
        };
        if matches && let Some(h) = rule["handle"].as_u64() {
            handles.push((h, source_prefix(rule)));
        }
    }
    Ok(handles)
}

/// The prefix of a rule's first match, `ip saddr == PREFIX`, as nft lists it.
fn source_prefix(rule: &Value) -> Option<Ipv4Network> {
    let right = &rule["expr"][0]["match"]["right"]["prefix"];
    let addr = right["addr"].as_str()?.parse().ok()?;
    Ipv4Network::new(addr, u8::try_from(right["len"].as_u64()?).ok()?).ok()
}

pub fn table_exists() -> bool {
    nft(None, &["list", "table", "ip", TABLE]).is_ok()
}

/// What [`ensure_masquerade`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masquerade {
    /// The overlay's rule was there, for this slice.
    Unchanged,
    Added,
    /// The overlay's rule masqueraded this other slice; now it is replaced.
    Replaced(Ipv4Network),
}

/// Masquerades traffic from `slice` to anywhere outside `overlay` behind the
/// underlay address. A rule already there for this overlay and slice is
/// kept as it is; one for another slice is replaced in the same nft
/// transaction, so masquerading never stops in between.
///
/// No fan's traffic to any overlay attached here is masqueraded: it would
/// leave the overlay with a source no receiver accepts. The rule excludes
/// the set `@overlays`, which holds every attached overlay; this adds
/// `others` to it, and [`include_overlay`] each fan's own.
pub fn ensure_masquerade(
    slice: Ipv4Network,
    overlay: Ipv4Network,
    others: &[Ipv4Network],
) -> Result<Masquerade> {
    let existing = rules(Some(overlay))?;
    if existing.len() == 1 && existing[0].1 == Some(slice) && excludes_overlays(overlay)? {
        return Ok(Masquerade::Unchanged);
    }
    let field = |name: &str| json!({"payload": {"protocol": "ip", "field": name}});
    let mut commands = vec![
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": CHAIN,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        add_overlays_set(),
    ];
    if !others.is_empty() {
        commands.push(elements("add", others));
    }
    for (handle, _) in &existing {
        commands.push(json!({"delete": {"rule": {
            "family": "ip", "table": TABLE, "chain": CHAIN, "handle": handle}}}));
    }
    commands.push(
        json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": CHAIN,
        "comment": comment(overlay),
        "expr": [
            {"match": {"op": "==", "left": field("saddr"), "right": prefix(slice)}},
            {"match": {"op": "!=", "left": field("daddr"), "right": format!("@{OVERLAYS}")}},
            {"masquerade": null}
        ]}}}),
    );
    nft(Some(&json!({"nftables": commands})), &[]).context("adding the masquerade rule")?;
    Ok(match existing.first() {
        Some((_, Some(old))) => Masquerade::Replaced(*old),
        _ => Masquerade::Added,
    })
}

/// The set of every overlay attached here, which no masquerade rule touches.
const OVERLAYS: &str = "overlays";

fn prefix(net: Ipv4Network) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix()}})
}

fn add_overlays_set() -> Value {
    json!({"add": {"set": {"family": "ip", "table": TABLE, "name": OVERLAYS,
        "type": "ipv4_addr", "flags": ["interval"]}}})
}

/// `verb` ("add" or "delete") `overlays` in the set.
fn elements(verb: &str, overlays: &[Ipv4Network]) -> Value {
    let elem: Vec<Value> = overlays.iter().map(|o| prefix(*o)).collect();
    json!({verb: {"element": {"family": "ip", "table": TABLE, "name": OVERLAYS, "elem": elem}}})
}

/// Whether the rule for `overlay` excludes `@overlays` (older versions'
/// rules excluded only their own overlay).
fn excludes_overlays(overlay: Ipv4Network) -> Result<bool> {
    let listing = nft(None, &["list", "chain", "ip", TABLE, CHAIN])?;
    let wanted = comment(overlay);
    let set = format!("@{OVERLAYS}");
    Ok(listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| &item["rule"])
        .filter(|rule| rule["comment"].as_str() == Some(wanted.as_str()))
        .all(|rule| rule["expr"][1]["match"]["right"].as_str() == Some(set.as_str())))
}

/// The overlays in the set, if the table exists.
fn overlays_in_set() -> Result<Option<Vec<Ipv4Network>>> {
    if !table_exists() {
        return Ok(None);
    }
    let listing = match nft(None, &["list", "set", "ip", TABLE, OVERLAYS]) {
        Ok(listing) => listing,
        Err(_) => return Ok(Some(Vec::new())), // a table of an older version
    };
    let mut out = Vec::new();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        for elem in item["set"]["elem"].as_array().into_iter().flatten() {
            let p = &elem["prefix"];
            if let (Some(addr), Some(len)) = (p["addr"].as_str(), p["len"].as_u64())
                && let (Ok(addr), Ok(len)) = (addr.parse(), u8::try_from(len))
                && let Ok(net) = Ipv4Network::new(addr, len)
            {
                out.push(net);
            }
        }
    }
    Ok(Some(out))
}

/// Puts `overlay` in the set no masquerade rule touches, if fan-xdp's table
/// exists (no table: nothing is masqueraded). Returns whether it added it.
pub fn include_overlay(overlay: Ipv4Network) -> Result<bool> {
    let Some(present) = overlays_in_set()? else {
        return Ok(false);
    };
    if present.contains(&overlay) {
        return Ok(false);
    }
    let commands = json!({"nftables": [add_overlays_set(), elements("add", &[overlay])]});
    nft(Some(&commands), &[]).context("adding an overlay to the masquerade exceptions")?;
    Ok(true)
}

/// Takes `overlay` out of the set again, if it is there.
pub fn exclude_overlay(overlay: Ipv4Network) -> Result<()> {
    if overlays_in_set()?.is_some_and(|present| present.contains(&overlay)) {
        let commands = json!({"nftables": [elements("delete", &[overlay])]});
        nft(Some(&commands), &[]).context("removing an overlay from the masquerade exceptions")?;
    }
    Ok(())
}

/// Removes the rule for `overlay`, and the table once no rule is left.
pub fn remove_masquerade(overlay: Ipv4Network) -> Result<()> {
    for handle in rule_handles(Some(overlay))? {
        let cmd = json!({"nftables": [{"delete": {"rule": {
            "family": "ip", "table": TABLE, "chain": CHAIN, "handle": handle}}}]});
        nft(Some(&cmd), &[]).context("deleting a masquerade rule")?;
    }
    if table_exists() && rule_handles(None)?.is_empty() {
        remove_table()?;
    }
    Ok(())
}

pub fn remove_table() -> Result<()> {
    if table_exists() {
        let cmd = json!({"nftables": [{"delete": {"table": {"family": "ip", "name": TABLE}}}]});
        nft(Some(&cmd), &[]).context("deleting the nft table")?;
    }
    Ok(())
}

/// A description of the first nftables chain (iptables-nft included) that
/// drops forwarded packets by default, if any.
pub fn forward_drop_policy() -> Option<String> {
    let ruleset = nft(None, &["list", "ruleset"]).ok()?;
    for item in ruleset["nftables"].as_array()? {
        let chain = &item["chain"];
        if chain["hook"].as_str() == Some("forward") && chain["policy"].as_str() == Some("drop") {
            return Some(format!(
                "{} {} chain {}",
                chain["family"].as_str().unwrap_or("?"),
                chain["table"].as_str().unwrap_or("?"),
                chain["name"].as_str().unwrap_or("?")
            ));
        }
    }
    None
}
