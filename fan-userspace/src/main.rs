//! `fan-xdp`: the Fan as an eBPF/XDP data plane.

use anyhow::Result;
use clap::Parser as _;
use fan_userspace::{
    agent::run,
    cli::{Cli, Command},
    commands::{attach, bind, detach, doctor, generate, map, monitor, show, stats},
    config, state,
};

/// `fan-xdp check`: does the data plane load here?
fn check() -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!("kernel {}", kernel.trim());
    let dataplane = fan_userspace::dataplane::Dataplane::load()?;
    for (name, count) in dataplane.verified_instructions()? {
        println!("verified instructions: {name:<20} {count}");
    }
    let tcx = fan_userspace::dataplane::tcx_supported();
    println!(
        "tc hook: {}",
        if tcx {
            "TCX links"
        } else {
            "clsact qdisc filters (no TCX before Linux 6.6)"
        }
    );
    Ok(())
}

/// A failure prints `error: <message>` and each cause below it, and exits
/// 1: never the `Debug` form, which carries a backtrace whenever
/// `RUST_BACKTRACE` is set (it is on many machines).
fn main() -> std::process::ExitCode {
    // Run as `fan` (a link in a CNI binary directory), fan-xdp is the CNI
    // plugin: the protocol is environment, stdin and stdout, not arguments.
    if std::env::args_os()
        .next()
        .and_then(|argv0| {
            std::path::Path::new(&argv0)
                .file_name()
                .map(|n| n == fan_userspace::cni::PLUGIN_NAME)
        })
        .unwrap_or(false)
    {
        std::process::exit(fan_userspace::cni::main());
    }
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    let level = if cli.global.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    // The mount helper must stay single-threaded (setns into a mount
    // namespace requires it), so it runs before any runtime starts.
    match &cli.command {
        Command::MountHelper { pid } => return state::mount_helper(pid),
        Command::Generate { dir } => return generate::run(dir),
        _ => {}
    }
    if matches!(
        cli.command,
        Command::Show(_)
            | Command::Stats(_)
            | Command::Monitor(_)
            | Command::Map(_)
            | Command::Doctor
    ) {
        // Read-only reports end quietly when their reader does (`| head`),
        // as other tools do; commands that change the host keep Rust's
        // default and finish what they started.
        // SAFETY: restoring a signal's default action has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match &cli.command {
            Command::Attach(args) => attach::run(args, &cli.global).await,
            Command::Detach(args) => detach::run(args, &cli.global).await,
            Command::Up(args) => config::apply::up(args, &cli.global).await,
            Command::Down(args) => config::apply::down(args, &cli.global).await,
            Command::Run(args) => run::run(args, &cli.global).await,
            Command::Reload => run::reload(&cli.global),
            Command::Bind(args) => bind::bind(args, &cli.global),
            Command::Unbind(args) => bind::unbind(args, &cli.global),
            Command::Show(args) => show::run(args, &cli.global).await,
            Command::Stats(args) => stats::run(args, &cli.global).await,
            Command::Monitor(args) => monitor::run(args, &cli.global),
            Command::Map(args) => map::run(args),
            Command::Doctor => doctor::run(&cli.global).await,
            Command::Check => check(),
            Command::MountHelper { .. } | Command::Generate { .. } => {
                unreachable!("handled above")
            }
        }
    })
}
