//! Project tasks: `cargo xtask setup | build | test | demo`.
//!
//! xtask depends on nothing that needs the eBPF toolchain, so it builds on a
//! fresh machine and can install that toolchain itself.

mod apt;
mod setup;
mod test;
mod vm;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "fan-xdp project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent: only what is missing).
    Setup,
    /// Build everything in release mode (the eBPF object is built by fan-userspace's build script).
    Build,
    /// Run setup if needed, then every test: unit, BPF test runs and the namespace tests.
    Test {
        /// Skip the setup check.
        #[arg(long)]
        no_setup: bool,
    },
    /// Build, then run a fleet of simulated Fan hosts with containers, talking over the fan.
    Demo,
    /// Boot the second kernel (Debian 6.1) in qemu with fan-xdp and the test
    /// executables under /fan, and run a command there.
    Vm {
        /// Time limit for the whole guest run, in seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// The command (a busybox sh command line), e.g. `uname -r` or `deps/programs`.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Measure fan-xdp against plain routing and the kernel's tunnels (target/bench/).
    Bench {
        /// A short smoke run (no speed asserted).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            cargo(&["build", "--release"])
        }
        Task::Test { no_setup } => {
            if !no_setup {
                setup::run()?;
            }
            test::run()
        }
        Task::Bench { quick } => {
            setup::run()?;
            bench(quick)
        }
        Task::Vm { timeout, command } => {
            setup::run()?;
            let payload = vm::test_payload()?;
            let (status, _) = vm::run_in_vm(
                &payload,
                &command.join(" "),
                std::time::Duration::from_secs(timeout),
                4,
            )?;
            if status != 0 {
                bail!("the command exited with {status} in the VM");
            }
            Ok(())
        }
        Task::Demo => {
            setup::run()?;
            run_release("fan-demo", &[])
        }
    }
}

/// Builds and runs the bench (`--quick`: the smoke run).
pub fn bench(quick: bool) -> Result<()> {
    run_release("fan-bench", if quick { &["--quick"] } else { &[] })
}

/// Builds `fan-xdp` and the tests crate's binary `name` in release, and runs
/// `name` with `args` (it drives `fan-xdp` from beside itself).
fn run_release(name: &str, args: &[&str]) -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "fan-userspace",
        "--bin",
        "fan-xdp",
    ])?;
    cargo(&["build", "--release", "-p", "fan-tests", "--bin", name])?;
    let status = Command::new(workspace_root().join("target/release").join(name))
        .args(args)
        .status()
        .with_context(|| format!("running {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Runs cargo with `args` in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
