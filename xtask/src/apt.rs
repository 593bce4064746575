//! Installing Debian packages without touching what the user already has:
//! apt's plan is simulated first and refused if it removes or downgrades
//! anything, the install itself runs with `--no-remove`, and no service
//! starts while it runs.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Where invoke-rc.d and deb-systemd-invoke look before starting a service.
pub const POLICY_RC: &str = "/usr/sbin/policy-rc.d";

/// A policy-rc.d that forbids every action (exit status 101 means "action
/// not allowed"): a package we install must not start its daemon (tcpdump,
/// nftables and qemu ship units or hooks) on the user's machine.
const DENY_ALL: &str =
    "#!/bin/sh\n# Written by cargo xtask setup while apt runs; restored afterwards.\nexit 101\n";

/// Installs `packages` (and what they depend on, without recommends), after
/// checking that apt would neither remove nor downgrade an installed package.
pub fn install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
    if !refused_changes(packages)?.is_empty() {
        bail!("{}", refusal_message(&culprits(packages)?));
    }
    let _guard = NoServiceStarts::at(Path::new(POLICY_RC))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "--no-remove",
        ])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {}", packages.join(" ")))
}

/// apt's plan for installing `packages`, as `apt-get -s` prints it. Without
/// `--no-remove`: with it apt stops before naming what it would remove.
fn simulate(packages: &[&str]) -> Result<String> {
    let out = Command::new("apt-get")
        .args(["install", "-s", "--no-install-recommends"])
        .args(packages)
        .env("LC_ALL", "C")
        .output()
        .context("running apt-get install -s")?;
    if !out.status.success() {
        bail!(
            "apt cannot install {}: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of apt's simulation that touches an installed package.
#[derive(Debug, PartialEq)]
pub enum Change<'a> {
    /// `Remv name [installed]` (or `Purg`).
    Remove {
        package: &'a str,
        installed: Option<&'a str>,
    },
    /// `Inst name [installed] (new ...)`: an upgrade or a downgrade.
    Replace {
        package: &'a str,
        installed: &'a str,
        new: &'a str,
    },
}

/// The changes to installed packages in `simulation` (`apt-get -s`
/// output). New installs (`Inst` without a bracketed version) and `Conf`
/// lines are not changes to anything the user has.
pub fn planned_changes(simulation: &str) -> Vec<Change<'_>> {
    simulation.lines().filter_map(change).collect()
}

fn change(line: &str) -> Option<Change<'_>> {
    let mut words = line.split_whitespace();
    let action = words.next()?;
    let package = words.next()?;
    let installed = words
        .next()
        .and_then(|w| w.strip_prefix('[')?.strip_suffix(']'));
    match action {
        "Remv" | "Purg" => Some(Change::Remove { package, installed }),
        "Inst" => {
            let new = words.next()?.strip_prefix('(')?;
            Some(Change::Replace {
                package,
                installed: installed?,
                new,
            })
        }
        _ => None,
    }
}

/// The changes setup refuses, described for the user: every removal, and
/// every replacement by an older version (`older(a, b)`: a is older than b).
pub fn refusals(
    changes: &[Change],
    older: impl Fn(&str, &str) -> Result<bool>,
) -> Result<Vec<String>> {
    let mut refused = Vec::new();
    for change in changes {
        match change {
            Change::Remove { package, installed } => refused.push(format!(
                "remove {package} {}",
                installed.unwrap_or("(version unknown)")
            )),
            Change::Replace {
                package,
                installed,
                new,
            } => {
                if older(new, installed)? {
                    refused.push(format!("downgrade {package} {installed} to {new}"));
                }
            }
        }
    }
    Ok(refused)
}

/// What setup refuses in apt's plan for installing `packages`.
pub fn refused_changes(packages: &[&str]) -> Result<Vec<String>> {
    refusals(&planned_changes(&simulate(packages)?), dpkg_older)
}

/// Each of `packages` whose own install apt would pair with a removal or
/// downgrade, with those changes: so that the user learns which package
/// conflicts with what. If none does alone, all of them together.
fn culprits<'a>(packages: &[&'a str]) -> Result<Vec<(Vec<&'a str>, Vec<String>)>> {
    let mut found = Vec::new();
    for &package in packages {
        let refused = refused_changes(&[package])?;
        if !refused.is_empty() {
            found.push((vec![package], refused));
        }
    }
    if found.is_empty() {
        found.push((packages.to_vec(), refused_changes(packages)?));
    }
    Ok(found)
}

fn refusal_message(culprits: &[(Vec<&str>, Vec<String>)]) -> String {
    let mut message =
        String::from("setup: stopped, since it never removes or downgrades what is installed:");
    for (packages, refused) in culprits {
        message += &format!(
            "\n  installing {} would make apt {}",
            packages.join(" "),
            refused.join(", ")
        );
    }
    message += "\nEither install those packages yourself in versions that fit what you have \
                (where yours came from backports: `apt-get install -t bookworm-backports PACKAGE`), \
                or, if you do not need them, remove or replace the packages named above yourself; \
                then run `cargo xtask setup` again.";
    message
}

/// Whether Debian version `a` is older than `b`, as dpkg orders them
/// (epochs, tildes and all).
fn dpkg_older(a: &str, b: &str) -> Result<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .context("running dpkg --compare-versions")?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("dpkg --compare-versions {a} lt {b} failed ({status})"),
    }
}

/// A deny-all policy-rc.d in place while it lives; whatever was there
/// before (or nothing) is put back when it is dropped. Ctrl-C and SIGTERM
/// are held off meanwhile, so that they end apt but not the restore: apt
/// gets the terminal's SIGINT itself.
pub struct NoServiceStarts {
    path: PathBuf,
    previous: Option<(Vec<u8>, fs::Permissions)>,
    signals: HeldSignals,
}

impl NoServiceStarts {
    pub fn at(path: &Path) -> Result<Self> {
        let previous = match fs::read(path) {
            Ok(content) => Some((content, fs::metadata(path)?.permissions())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let signals = HeldSignals::hold();
        write_executable(path, DENY_ALL.as_bytes(), fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            path: path.to_path_buf(),
            previous,
            signals,
        })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        let restored = match self.previous.take() {
            Some((content, permissions)) => write_executable(&self.path, &content, permissions),
            None => fs::remove_file(&self.path).map_err(Into::into),
        };
        if let Err(e) = restored {
            eprintln!(
                "setup: could not restore {} ({e:#}): it still forbids starting services",
                self.path.display()
            );
        }
        self.signals.release();
    }
}

/// Writes `content` to `path` through a file beside it and a rename, so
/// that invoke-rc.d never runs a half-written policy.
fn write_executable(path: &Path, content: &[u8], permissions: fs::Permissions) -> Result<()> {
    let temporary = path.with_extension("xtask-tmp");
    fs::write(&temporary, content)
        .and_then(|()| fs::set_permissions(&temporary, permissions))
        .and_then(|()| fs::rename(&temporary, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// SIGINT, SIGTERM and SIGHUP caught by a handler that does nothing, and
/// the previous dispositions to put back. A caught (not ignored) signal is
/// reset by exec, so apt itself still stops on them.
struct HeldSignals(Vec<(libc::c_int, libc::sighandler_t)>);

const HELD: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn ignore_while_apt_runs(_: libc::c_int) {}

impl HeldSignals {
    fn hold() -> Self {
        let handler = ignore_while_apt_runs as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installing a handler that does nothing, which is async-signal-safe.
        Self(
            HELD.iter()
                .map(|&signal| (signal, unsafe { libc::signal(signal, handler) }))
                .collect(),
        )
    }

    fn release(&mut self) {
        for (signal, previous) in self.0.drain(..) {
            // SAFETY: putting back the disposition `hold` replaced.
            unsafe { libc::signal(signal, previous) };
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `apt-get -s` printed it on Debian 12: a new package, an upgrade
    /// pulled in as a dependency, a downgrade, a removal and the Conf lines.
    const SIMULATION: &str = "\
NOTE: This is only a simulation!
The following packages will be REMOVED:
  busybox-static
The following NEW packages will be installed:
  busybox qemu-utils
Remv busybox-static [1:1.35.0-4+deb12u1+b1]
Inst busybox (1:1.35.0-4+deb12u1+b1 Debian:12.15/oldstable [amd64])
Inst libappstream4 [0.16.1-2] (0.16.1-2+b1 Debian:12.15/oldstable [amd64])
Inst iperf3 [3.12-1+deb12u2] (3.12-1+deb12u1 Debian-Security:12/oldstable-security [amd64])
Inst qemu-utils (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Conf busybox (1:1.35.0-4+deb12u1+b1 Debian:12.15/oldstable [amd64])
Conf iperf3 (3.12-1+deb12u1 Debian-Security:12/oldstable-security [amd64])
";

    #[test]
    fn the_simulation_names_removals_and_replacements_only() {
        assert_eq!(
            planned_changes(SIMULATION),
            [
                Change::Remove {
                    package: "busybox-static",
                    installed: Some("1:1.35.0-4+deb12u1+b1"),
                },
                Change::Replace {
                    package: "libappstream4",
                    installed: "0.16.1-2",
                    new: "0.16.1-2+b1",
                },
                Change::Replace {
                    package: "iperf3",
                    installed: "3.12-1+deb12u2",
                    new: "3.12-1+deb12u1",
                },
            ]
        );
    }

    #[test]
    fn removals_and_downgrades_are_refused_upgrades_are_not() {
        let refused = refusals(&planned_changes(SIMULATION), dpkg_older).unwrap();
        assert_eq!(
            refused,
            [
                "remove busybox-static 1:1.35.0-4+deb12u1+b1",
                "downgrade iperf3 3.12-1+deb12u2 to 3.12-1+deb12u1",
            ]
        );
    }

    #[test]
    fn a_backports_version_replaced_by_stable_is_a_downgrade() {
        // The newcomer's case: qemu from bookworm-backports, stable's 7.2 offered.
        let line = "Inst qemu-utils [1:8.2.1+ds-1~bpo12+1] (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])";
        assert_eq!(
            refusals(&planned_changes(line), dpkg_older).unwrap(),
            ["downgrade qemu-utils 1:8.2.1+ds-1~bpo12+1 to 1:7.2+dfsg-7+deb12u18+b3"]
        );
    }

    #[test]
    fn the_refusal_names_the_package_asked_for_and_what_it_would_remove() {
        let message = refusal_message(&[(
            vec!["qemu-system-x86"],
            vec!["remove qemu-utils 1:8.2.1+ds-1~bpo12+1".to_string()],
        )]);
        assert!(
            message.contains(
                "installing qemu-system-x86 would make apt remove qemu-utils 1:8.2.1+ds-1~bpo12+1"
            ),
            "{message}"
        );
        assert!(message.contains("cargo xtask setup` again"), "{message}");
    }

    #[test]
    fn dpkg_orders_epochs_and_tildes() {
        assert!(dpkg_older("8.2", "1:7.2").unwrap());
        assert!(dpkg_older("1:8.2~bpo12", "1:8.2").unwrap());
        assert!(!dpkg_older("0.16.1-2+b1", "0.16.1-2").unwrap());
    }

    #[test]
    fn the_policy_is_deny_all_while_held_and_restored_after() {
        let dir = std::env::temp_dir().join(format!("xtask-policy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        {
            let _guard = NoServiceStarts::at(&path).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), DENY_ALL);
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );

        fs::remove_file(&path).unwrap();
        drop(NoServiceStarts::at(&path).unwrap());
        assert!(!path.exists(), "a policy that was not there must not stay");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_deny_all_policy_exits_101() {
        let status = Command::new("sh").args(["-c", DENY_ALL]).status().unwrap();
        assert_eq!(status.code(), Some(101));
    }
}
