//! Project tasks: `cargo xtask setup | build | install | deb | image | test | demo | fuzz | soak | vm | bench`.
//!
//! xtask depends on nothing that needs the eBPF toolchain, so it builds on a
//! fresh machine and can install that toolchain itself.

mod apt;
mod cni;
mod deb;
mod image;
mod install;
mod oci;
mod services;
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
    /// Install what building, the demo, the bench and every test need
    /// (idempotent: only what is missing). Each other task installs what
    /// it needs itself.
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
    /// Differential fuzzing: every program against the reference model
    /// (tests/src/model) on the corpus, then on generated cases.
    Fuzz {
        /// Generated cases per program.
        #[arg(long, default_value_t = 2_000_000)]
        cases: u64,
        /// The seed (decimal or 0x-hex); a random one if not given. Printed either way.
        #[arg(long)]
        seed: Option<String>,
    },
    /// The long runs over time: the soak (3 hosts, flows, containers
    /// coming and going) for `minutes`, and `cycles` leak cycles of attach,
    /// traffic and detach (tests/tests/soak.rs and lifecycle.rs).
    Soak {
        /// How long the soak runs.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Containers on each host, half of them long-lived, half replaced in turn.
        #[arg(long, default_value_t = 10)]
        containers: u64,
        /// Leak cycles (0: none).
        #[arg(long, default_value_t = 0)]
        cycles: u64,
    },
    /// Install fan-xdp as a service: the release binary, the systemd unit, man
    /// pages and shell completions (generated from the command's
    /// definitions) under PREFIX, and the CNI plugin `fan` (a link to the
    /// binary) into the CNI binary directory.
    Install {
        /// Where: bin/, lib/systemd/system/, share/man/, share/*completion*.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Where CNI runtimes look for plugins.
        #[arg(long, default_value = cni::DEFAULT_CNI_BIN_DIR)]
        cni_bin_dir: std::path::PathBuf,
        /// Write every file under DIR instead of /, as packagers stage an
        /// install: the unit and the CNI link still name PREFIX's paths.
        #[arg(long, value_name = "DIR")]
        destdir: Option<std::path::PathBuf>,
    },
    /// Build the Debian package target/debian/fan-xdp_<version>_<arch>.deb:
    /// what `install` installs, in Debian's places, with /etc/network/fan
    /// (no fans) as a conffile; installing it starts and enables nothing.
    Deb,
    /// Build fan-xdp's DaemonSet image from scratch, offline: the OCI archive
    /// target/image/fan-xdp_<version>.oci.tar, named fan-xdp:<version>
    /// (the release binary, nft, dnsmasq, their libraries, busybox's shell).
    Image,
    /// Measure fan-xdp against plain routing and the kernel's tunnels (target/bench/).
    Bench {
        /// A short smoke run (no speed asserted).
        #[arg(long)]
        quick: bool,
        /// Only the containers part: 2 hosts with 250 DHCP containers each
        /// (and 25 each, for the agent's CPU per container).
        #[arg(long)]
        containers: bool,
        /// Only these paths (and plain routing), only their table: a
        /// focused comparison, e.g. `fan-tc,fan-attach-only`.
        #[arg(long, conflicts_with = "containers")]
        paths: Option<String>,
        /// Runs per path (5 by default).
        #[arg(long)]
        runs: Option<usize>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as fan-xdp prints its own: `error: ` and each cause on a line
/// of its own, never a backtrace, whatever RUST_BACKTRACE says (these are
/// a user's errors, not the program's faults).
fn error_report(error: &anyhow::Error) -> String {
    let mut report = format!("error: {error}");
    for cause in error.chain().skip(1) {
        report += &format!("\n  caused by: {cause}");
    }
    report
}

fn run(task: Task) -> Result<()> {
    use setup::Use;
    match task {
        Task::Setup => setup::run(Use::Tests),
        Task::Build => {
            setup::run(Use::Build)?;
            cargo(&["build", "--release"])
        }
        Task::Test { no_setup } => {
            if !no_setup {
                setup::run(Use::Tests)?;
            }
            test::run()
        }
        Task::Fuzz { cases, seed } => {
            setup::run(Use::Build)?;
            fuzz(cases, seed)
        }
        Task::Soak {
            minutes,
            containers,
            cycles,
        } => {
            setup::run(Use::Tests)?;
            soak(minutes, containers, cycles)
        }
        Task::Bench {
            quick,
            containers,
            paths,
            runs,
        } => {
            setup::run(Use::Bench)?;
            if containers {
                return containers_bench();
            }
            let mut args: Vec<String> = Vec::new();
            if quick {
                args.push("--quick".into());
            }
            if let Some(runs) = runs {
                args.extend(["--runs".into(), runs.to_string()]);
            }
            let focused = paths.is_some();
            if let Some(paths) = paths {
                args.extend(["--paths".into(), paths]);
            }
            bench(&args)?;
            // Not in the smoke run: `cargo xtask test` runs 2 x 40 DHCP
            // containers for correctness (tests/tests/dhcp.rs).
            if !quick && !focused {
                containers_bench()?;
            }
            Ok(())
        }
        Task::Vm { timeout, command } => {
            setup::run(Use::Vm)?;
            let payload = vm::test_payload()?;
            let (status, _) = vm::run_in_vm(
                &payload,
                &command.join(" "),
                std::time::Duration::from_secs(timeout),
                4,
                vm::Console::Live,
            )?;
            if status != 0 {
                bail!("the command exited with {status} in the VM");
            }
            Ok(())
        }
        Task::Install {
            prefix,
            cni_bin_dir,
            destdir,
        } => {
            setup::run(Use::Build)?;
            install::run(&prefix, destdir.as_deref(), &cni_bin_dir)
        }
        Task::Deb => {
            setup::run(Use::Build)?;
            deb::run()
        }
        Task::Image => {
            setup::run(Use::Image)?;
            image::build().map(drop)
        }
        Task::Demo => {
            setup::run(Use::Demo)?;
            run_release("fan-demo", &[])
        }
    }
}

/// Runs the fuzz test executable (optimised: the long run is mostly the
/// model and the generator between syscalls) with `cases` per program.
fn fuzz(cases: u64, seed: Option<String>) -> Result<()> {
    let seed = seed.unwrap_or_else(|| format!("{:#x}", random_seed()));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["test", "--release", "-p", "fan-tests", "--test", "fuzz"])
        .args(["--", "--nocapture", "--test-threads=1"])
        .env("FAN_FUZZ_CASES", cases.to_string())
        .env("FAN_FUZZ_SEED", &seed)
        .current_dir(workspace_root())
        .status()
        .context("running the fuzz test")?;
    if !status.success() {
        bail!(
            "the fuzz run failed (seed {seed}; reproducers above and in tests/corpus/regressions.txt)"
        );
    }
    Ok(())
}

/// Runs the soak test for `minutes` with `containers` per host, then
/// `cycles` leak cycles if any, with the fan-xdp build the tests drive.
fn soak(minutes: u64, containers: u64, cycles: u64) -> Result<()> {
    cargo(&[&["build"][..], &TEST_FAN_XDP].concat())?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |test: &str, filter: &str| -> Result<()> {
        let status = Command::new(&cargo)
            .args(["test", "-p", "fan-tests", "--test", test])
            .args(["--", "--nocapture", "--test-threads=1", filter])
            .env("FAN_SOAK_SECONDS", (minutes * 60).to_string())
            .env("FAN_SOAK_CONTAINERS", containers.to_string())
            .env("FAN_LIFECYCLE_CYCLES", cycles.to_string())
            .current_dir(workspace_root())
            .status()
            .with_context(|| format!("running the {test} test"))?;
        anyhow::ensure!(status.success(), "the {test} run failed");
        Ok(())
    };
    run("soak", "soak")?;
    if cycles > 0 {
        run("lifecycle", "cycles")?;
    }
    Ok(())
}

/// A seed for a run nobody asked to repeat: the clock and the process id.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Builds and runs the bench (`--quick`: the smoke run).
pub fn bench(args: &[String]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_release("fan-bench", &args)
}

/// Hundreds of DHCP containers per host (`fan-containers`).
fn containers_bench() -> Result<()> {
    run_release("fan-containers", &[])
}

/// Builds `fan-xdp` and the tests crate's binary `name` in release, and runs
/// `name` with `args` (it drives `fan-xdp` from beside itself).
fn run_release(name: &str, args: &[&str]) -> Result<()> {
    build_release_fan_xdp()?;
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

/// `target/release/fan-xdp`, as users run it (no test features).
pub fn build_release_fan_xdp() -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "fan-userspace",
        "--bin",
        "fan-xdp",
    ])
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// The fan-xdp the tests drive, as cargo arguments: with fault injection
/// (`FAN_XDP_INJECT`), which only the tests' build has.
pub const TEST_FAN_XDP: [&str; 6] = [
    "-p",
    "fan-userspace",
    "--bin",
    "fan-xdp",
    "--features",
    "fault-injection",
];

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

/// Runs `cmd` and returns what it printed; its error output is the error's
/// if it fails.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    #[test]
    fn an_error_is_reported_with_its_causes_and_no_backtrace() {
        // Whatever RUST_BACKTRACE says (these machines set it to 1, and
        // anyhow then captures a backtrace), the report has none.
        let error = Err::<(), _>(anyhow::anyhow!("apt-get download failed"))
            .context("fetching the VM's qemu")
            .unwrap_err();
        assert_eq!(
            super::error_report(&error),
            "error: fetching the VM's qemu\n  caused by: apt-get download failed"
        );
    }
}
