//! `fan-xdp __generate DIR`: the man pages and shell completions, made from
//! the clap definitions in [`crate::cli`], so they never disagree with the
//! command. `cargo xtask install` runs it and copies the result:
//!
//! - `DIR/man8/fan-xdp.8` and `DIR/man8/fan-xdp-<command>.8`;
//! - `DIR/bash/fan-xdp`, `DIR/zsh/_fan-xdp`, `DIR/fish/fan-xdp.fish`.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn run(dir: &Path) -> Result<()> {
    let command = Cli::command();
    let man = dir.join("man8");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    write_man(&man, "fan-xdp", command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("fan-xdp-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("fan-xdp {}", sub.get_name()));
        write_man(&man, &name, page)?;
    }
    for (shell, sub, file) in [
        (Shell::Bash, "bash", "fan-xdp"),
        (Shell::Zsh, "zsh", "_fan-xdp"),
        (Shell::Fish, "fish", "fan-xdp.fish"),
    ] {
        let out = dir.join(sub);
        fs::create_dir_all(&out)?;
        let mut file = fs::File::create(out.join(file))?;
        clap_complete::generate(shell, &mut Cli::command(), "fan-xdp", &mut file);
    }
    Ok(())
}

fn write_man(dir: &Path, name: &str, command: clap::Command) -> Result<()> {
    let path = dir.join(format!("{name}.8"));
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .section("8")
        .manual("fan-xdp")
        .render(&mut out)?;
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}
