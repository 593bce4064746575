//! The corpus of regression cases: one case per line,
//!
//! ```text
//! <program> port=<device|0|missing> gso=<size> <frame hex> [known=<label>]
//! ```
//!
//! `#` starts a comment. `known=<label>` marks a reproducer of a known
//! finding in the programs (see docs/testing.md): it is replayed and reported,
//! and does not fail the run while the finding stands.

use std::{fs, io::Write as _, path::Path};

use anyhow::{Context as _, Result, bail};

use super::generate::Case;
use crate::model::{Program, wire};

#[derive(Clone, Debug)]
pub struct Entry {
    pub case: Case,
    pub known: Option<String>,
    pub line: usize,
}

pub fn format(case: &Case) -> String {
    format!(
        "{} port={} gso={} {}",
        case.program.name(),
        case.port,
        case.gso_size,
        wire::to_hex(&case.frame)
    )
}

pub fn parse_line(text: &str) -> Result<Option<(Case, Option<String>)>> {
    let text = text.split('#').next().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let [program, port, gso, hex, rest @ ..] = words.as_slice() else {
        bail!("expected: <program> port=<p> gso=<n> <hex> [known=<label>]");
    };
    let program = Program::from_name(program).context("unknown program")?;
    let port = port.strip_prefix("port=").context("port=")?.to_string();
    let gso_size = gso
        .strip_prefix("gso=")
        .context("gso=")?
        .parse()
        .context("gso size")?;
    let frame = wire::from_hex(hex).context("frame hex")?;
    let known = match rest {
        [] => None,
        [label] => Some(label.strip_prefix("known=").context("known=")?.to_string()),
        _ => bail!("trailing words"),
    };
    Ok(Some((
        Case {
            program,
            port,
            gso_size,
            frame,
        },
        known,
    )))
}

/// Every case of a corpus file's text (`name` for error messages).
pub fn parse(name: &str, text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let parsed = parse_line(line).with_context(|| format!("{name}:{}", i + 1))?;
        if let Some((case, known)) = parsed {
            entries.push(Entry {
                case,
                known,
                line: i + 1,
            });
        }
    }
    Ok(entries)
}

/// Appends a new regression case (with the reason as a comment) unless the
/// file already has it.
pub fn record(file: &Path, case: &Case, why: &str) -> Result<()> {
    let line = format(case);
    let existing = fs::read_to_string(file).unwrap_or_default();
    if existing.lines().any(|l| l.starts_with(&line)) {
        return Ok(());
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    let why = why.replace('\n', " ");
    writeln!(out, "# {why}")?;
    writeln!(out, "{line}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips() {
        let case = Case {
            program: Program::EncapPort,
            port: "eth1-peer".into(),
            gso_size: 1448,
            frame: vec![0x02, 0x00, 0xff],
        };
        let line = format(&case);
        let (parsed, known) = parse_line(&format!("{line} known=x # why"))
            .unwrap()
            .unwrap();
        assert_eq!(parsed, case);
        assert_eq!(known.as_deref(), Some("x"));
        assert!(parse_line("  # only a comment").unwrap().is_none());
    }
}
