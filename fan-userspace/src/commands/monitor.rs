//! `fan-xdp monitor`: the programs' drop events as they happen, from the
//! agent (see `agent::monitor`), one line each (or one JSON object).

use std::io::{BufRead as _, BufReader, Write as _};

use anyhow::{Context as _, Result};

use crate::{
    agent::monitor::{EventRecord, subscribe},
    cli::{Global, MonitorArgs},
    state::rundir::RunDir,
};

pub fn run(args: &MonitorArgs, global: &Global) -> Result<()> {
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    let stream = subscribe(&run_dir, args.passes)?;
    let mut out = std::io::stdout().lock();
    // The count first: zip asks it before reading the next line, so the
    // last event ends the command without waiting for another.
    let limit = args.count.unwrap_or(u64::MAX);
    for (_, line) in (0..limit).zip(BufReader::new(stream).lines()) {
        let line = line.context("reading the agent's events")?;
        if args.json {
            writeln!(out, "{line}")?;
        } else {
            let record: EventRecord =
                serde_json::from_str(&line).with_context(|| format!("the agent sent {line:?}"))?;
            writeln!(out, "{record}")?;
        }
        out.flush()?;
    }
    Ok(())
}
