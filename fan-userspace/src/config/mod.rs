//! fanctl's configuration, `/etc/network/fan`, and the words of its verbs
//! (`fan-xdp up [OVERLAY] UNDERLAY ...`): one grammar for both.
//!
//! A line is `OVERLAY UNDERLAY [KEYWORD ...]`, `#` starts a comment, blank
//! lines are skipped. UNDERLAY is `ADDR/LEN` (this host's address, or the
//! underlay network), `IFACE/LEN` (that interface's primary address with
//! that prefix length) or `default` (the interface of the default route).
//! fanctl's keywords are `dhcp`, `host-reserve N`, `bridge NAME`, `off` and
//! `type ipip|vxlan` (the wire format); fan-xdp's own are `vni N` and
//! `port P` (with `type vxlan`), `mode tc|xdp|auto`, `mtu N`, `no-nat` and
//! `bypass off|on|auto`.
//!
//! Parsing is all or nothing: the first bad token is an error naming the
//! file, line, column and token, and nothing of the file is returned. What
//! needs the host (which interface, which address) is [`resolve`]'s.

pub mod apply;
pub mod resolve;
mod words;

use std::{fmt, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, bail};
use ipnetwork::Ipv4Network;

use crate::cli::{Bypass, FanType, Mode};

/// Where fanctl keeps its fans, and so where `up -a` and `fan-xdp run` look.
pub const DEFAULT_PATH: &str = crate::cli::FAN_CONFIG;

/// The overlay of `up`/`down` when only the underlay is given, as fanctl's.
pub fn default_overlay() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(250, 0, 0, 0), 8).expect("250.0.0.0/8 is a network")
}

/// How a line names this host's underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// `ADDR/LEN`: this host's address (or the underlay network) and the
    /// underlay's prefix length.
    Address(Ipv4Addr, u8),
    /// `IFACE/LEN`: that interface's primary address, with this prefix length.
    Interface(String, u8),
    /// `default`: the interface of the default route, and its prefix.
    Default,
}

impl fmt::Display for Underlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Underlay::Address(addr, len) => write!(f, "{addr}/{len}"),
            Underlay::Interface(name, len) => write!(f, "{name}/{len}"),
            Underlay::Default => write!(f, "default"),
        }
    }
}

/// One fan as a line (or the verb's words) asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanLine {
    pub overlay: Ipv4Network,
    pub underlay: Underlay,
    pub dhcp: bool,
    pub host_reserve: Option<u32>,
    pub bridge: Option<String>,
    /// Listed, but not brought up by `up -a` or the agent.
    pub off: bool,
    pub mode: Option<Mode>,
    /// `type ipip|vxlan` (None: IP-in-IP).
    pub fan_type: Option<FanType>,
    /// `vni N`, `port P`: with `type vxlan` only.
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub mtu: Option<u32>,
    pub no_nat: bool,
    pub bypass: Option<Bypass>,
    /// The line it came from (0 for the command line), for messages.
    pub line: usize,
}

/// A refused token: where it is, what it is, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or None for the command line.
    pub file: Option<String>,
    /// 1-based; 0 on the command line.
    pub line: usize,
    /// 1-based, in characters; on the command line, the word's position.
    pub column: usize,
    pub token: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(
                f,
                "{file}:{}:{}: {:?}: {}",
                self.line, self.column, self.token, self.message
            ),
            None => write!(f, "word {} {:?}: {}", self.column, self.token, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A word and where it starts (1-based column, or word number).
#[derive(Clone, Copy)]
struct Word<'a> {
    column: usize,
    text: &'a str,
}

use words::parse_words;

/// Reads and parses a configuration file. The agent also checks who may
/// write it: see [`check_owner`].
pub fn read(path: &Path) -> Result<Vec<FanLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// Parses a whole file: every fan, or the first error.
pub fn parse(file: &str, text: &str) -> Result<Vec<FanLine>, ConfigError> {
    let mut fans: Vec<FanLine> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let words = split(line);
        if words.is_empty() {
            continue;
        }
        let error = |word: Word, message: String| ConfigError {
            file: Some(file.to_string()),
            line: index + 1,
            column: word.column,
            token: word.text.to_string(),
            message,
        };
        let mut fan = parse_words(&words, false).map_err(|(w, m)| error(w, m))?;
        fan.line = index + 1;
        if let Some(other) = fans.iter().find(|f| overlaps(f.overlay, fan.overlay)) {
            let message = if other.overlay == fan.overlay {
                format!("overlay {} is already on line {}", fan.overlay, other.line)
            } else {
                format!(
                    "overlay {} overlaps {} on line {}",
                    fan.overlay, other.overlay, other.line
                )
            };
            return Err(error(words[0], message));
        }
        fans.push(fan);
    }
    Ok(fans)
}

/// Parses the words of `up`/`down` (OVERLAY may be left out: then it is
/// [`default_overlay`]). Errors name the word by its position.
pub fn parse_args(args: &[String]) -> Result<FanLine, ConfigError> {
    let words: Vec<Word> = args
        .iter()
        .enumerate()
        .map(|(i, text)| Word {
            column: i + 1,
            text,
        })
        .collect();
    if words.is_empty() {
        return Err(ConfigError {
            file: None,
            line: 0,
            column: 0,
            token: String::new(),
            message: "expected [OVERLAY] UNDERLAY (e.g. `eth0/16` or `250.0.0.0/8 10.1.2.3/16`)"
                .into(),
        });
    }
    parse_words(&words, true).map_err(|(word, message)| ConfigError {
        file: None,
        line: 0,
        column: word.column,
        token: word.text.to_string(),
        message,
    })
}

/// The words of a line up to a comment, each with its 1-based column.
fn split(line: &str) -> Vec<Word<'_>> {
    let mut words = Vec::new();
    let mut start = None;
    let mut column = 0;
    for (offset, c) in line.char_indices() {
        column += 1;
        match (c.is_whitespace(), start) {
            (true, Some((at, col))) => {
                words.push(Word {
                    column: col,
                    text: &line[at..offset],
                });
                start = None;
            }
            (false, None) if c == '#' => return words,
            (false, None) => start = Some((offset, column)),
            _ => {}
        }
    }
    if let Some((at, col)) = start {
        words.push(Word {
            column: col,
            text: &line[at..],
        });
    }
    words
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The agent reads its file only if root owns it and only root may write
/// it: whoever can write it can reconfigure the host's network.
pub fn check_owner(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    owner_allows(path, meta.uid(), meta.mode())
}

fn owner_allows(path: &Path, uid: u32, mode: u32) -> Result<()> {
    if uid != 0 {
        bail!(
            "{} is owned by uid {uid}, not root: refusing it (it configures the host's network)",
            path.display()
        );
    }
    if mode & 0o022 != 0 {
        bail!(
            "{} is writable by {} (mode {:o}): refusing it; `chmod go-w {}`",
            path.display(),
            if mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
