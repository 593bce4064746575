//! The qemu the VM runs: the machine's own `qemu-system-x86_64` where it is
//! 7.2 or newer, else Debian's, unpacked once under target/vm/qemu with the
//! libraries and firmware it needs and used from there only.
//!
//! Why not `apt-get install qemu-system-x86`: machines of this kind ship
//! qemu-utils from bookworm-backports without a backports source, and
//! bookworm's qemu-system-x86 (7.2) would make apt remove it. Unpacking
//! with `dpkg-deb -x` into a private prefix installs nothing, so it can
//! neither remove nor replace what the machine has.

use std::{
    collections::{BTreeSet, VecDeque},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{run, vm_dir};
use crate::setup::{on_path, package_installed, program_at_least};

/// The package whose binary boots the guest.
const QEMU_PACKAGE: &str = "qemu-system-x86";
/// The oldest qemu the VM runs were made with (Debian 12's).
const MINIMUM: (u32, u32) = (7, 2);

/// A qemu ready to run: its binary and, for a private one, where its
/// libraries and firmware are.
pub struct Qemu {
    binary: PathBuf,
    library_dirs: Vec<PathBuf>,
    firmware_dirs: Vec<PathBuf>,
}

impl Qemu {
    /// A command running this qemu, with its libraries and firmware found.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if !self.library_dirs.is_empty() {
            cmd.env("LD_LIBRARY_PATH", join_paths(&self.library_dirs));
        }
        for dir in &self.firmware_dirs {
            cmd.arg("-L").arg(dir);
        }
        cmd
    }

    /// Which qemu, for setup's report.
    pub fn describe(&self) -> String {
        if self.library_dirs.is_empty() {
            format!("{} (the machine's)", self.binary.display())
        } else {
            format!("{} (unpacked for the VM only)", self.binary.display())
        }
    }
}

fn join_paths(dirs: &[PathBuf]) -> std::ffi::OsString {
    std::env::join_paths(dirs).expect("target/ paths hold no ':'")
}

/// The qemu the VM uses, unpacking Debian's first if there is none to use.
pub fn qemu_program() -> Result<Qemu> {
    if let Some(system) = on_path("qemu-system-x86_64").filter(|p| program_at_least(p, MINIMUM)) {
        return Ok(Qemu {
            binary: system,
            library_dirs: Vec::new(),
            firmware_dirs: Vec::new(),
        });
    }
    let root = vm_dir().join("qemu");
    let qemu = private_qemu(&root);
    if !root.join(".complete").exists() {
        unpack(&root)?;
    }
    let version = qemu
        .command()
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", qemu.binary.display()))?;
    if !version.status.success() {
        bail!(
            "the unpacked qemu at {} does not run: {} (remove {} to unpack it again)",
            qemu.binary.display(),
            String::from_utf8_lossy(&version.stderr).trim(),
            root.display()
        );
    }
    Ok(qemu)
}

/// The layout of Debian's packages unpacked under `root`.
fn private_qemu(root: &Path) -> Qemu {
    Qemu {
        binary: root.join("usr/bin/qemu-system-x86_64"),
        library_dirs: ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
            .iter()
            .map(|dir| root.join(dir))
            .collect(),
        // Debian's qemu looks in these three (its --firmwarepath) under /.
        firmware_dirs: ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
            .iter()
            .map(|dir| root.join(dir))
            .collect(),
    }
}

/// Downloads qemu-system-x86 and what it needs that the machine lacks, and
/// unpacks them under `root`.
fn unpack(root: &Path) -> Result<()> {
    let packages = closure(QEMU_PACKAGE, &|name| {
        Ok(parse_depends(&run(Command::new("apt-cache")
            .args(["depends", name])
            .env("LC_ALL", "C"))?))
    })?;
    println!(
        "vm: unpacking Debian's qemu for the VM only, under {} ({} packages: {})",
        root.display(),
        packages.len(),
        packages.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    let download = vm_dir().join("qemu-download");
    let _ = fs::remove_dir_all(&download);
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(&download)?;
    run(Command::new("apt-get")
        .arg("download")
        .args(&packages)
        .current_dir(&download))
    .context("apt-get download (run apt-get update if it names no package)")?;
    for deb in fs::read_dir(&download)?.flatten().map(|e| e.path()) {
        if deb.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
        }
    }
    fs::remove_dir_all(&download)?;
    fs::write(
        root.join(".complete"),
        packages.iter().cloned().collect::<Vec<_>>().join("\n"),
    )?;
    Ok(())
}

/// One dependency of a package as `apt-cache depends` lists it: a group of
/// alternatives, each a real package or a virtual one with its providers.
#[derive(Debug, PartialEq)]
pub struct Dependency {
    alternatives: Vec<Alternative>,
}

#[derive(Debug, PartialEq)]
struct Alternative {
    name: String,
    /// For a virtual package (`<name>`), the packages that provide it.
    providers: Vec<String>,
}

/// The Depends of `apt-cache depends` output (Recommends, Suggests,
/// Breaks and the rest are not needed to run). `|Depends:` joins a line to
/// the alternatives of the next.
pub fn parse_depends(text: &str) -> Vec<Dependency> {
    let mut dependencies = Vec::new();
    let mut group: Vec<Alternative> = Vec::new();
    let mut in_depends = false;
    for line in text.lines().skip(1) {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent >= 4 {
            // A provider of the virtual package above.
            // The alternative above: still in its group, or its group's last.
            let above = match group.last_mut() {
                Some(alternative) => Some(alternative),
                None => dependencies
                    .last_mut()
                    .and_then(|d: &mut Dependency| d.alternatives.last_mut()),
            };
            if let Some(alternative) = above.filter(|_| in_depends) {
                alternative.providers.push(trimmed.to_string());
            }
            continue;
        }
        let (alternative, kind, name) = match trimmed.split_once(": ") {
            Some((kind, name)) => match kind.strip_prefix('|') {
                Some(kind) => (true, kind, name),
                None => (false, kind, name),
            },
            None => continue,
        };
        in_depends = kind == "Depends" || kind == "PreDepends";
        if !in_depends {
            continue;
        }
        group.push(Alternative {
            name: name.trim().to_string(),
            providers: Vec::new(),
        });
        if !alternative {
            dependencies.push(Dependency {
                alternatives: std::mem::take(&mut group),
            });
        }
    }
    dependencies
}

/// `package` and every package it needs, transitively, that is not
/// installed: of each group of alternatives nothing if one is installed
/// (or provided by an installed package), else the first that apt can
/// download. Maintainer scripts' tools (debconf and the like) are left
/// out: nothing here runs them. `depends` gives a package's dependencies.
fn closure(
    package: &str,
    depends: &dyn Fn(&str) -> Result<Vec<Dependency>>,
) -> Result<BTreeSet<String>> {
    closure_with(package, depends, &package_installed)
}

fn closure_with(
    package: &str,
    depends: &dyn Fn(&str) -> Result<Vec<Dependency>>,
    installed: &dyn Fn(&str) -> bool,
) -> Result<BTreeSet<String>> {
    let mut chosen = BTreeSet::new();
    let mut queue = VecDeque::from([package.to_string()]);
    while let Some(name) = queue.pop_front() {
        if !chosen.insert(name.clone()) {
            continue;
        }
        for dependency in depends(&name)? {
            let satisfied = dependency.alternatives.iter().any(|alternative| {
                installed(&alternative.name) || alternative.providers.iter().any(|p| installed(p))
            });
            if satisfied {
                continue;
            }
            let pick = dependency.alternatives.iter().find_map(|alternative| {
                if alternative.name.starts_with('<') {
                    alternative.providers.first().cloned()
                } else {
                    Some(alternative.name.clone())
                }
            });
            match pick {
                Some(pick) if !MAINTAINER_TOOLS.contains(&pick.as_str()) => queue.push_back(pick),
                _ => {}
            }
        }
    }
    Ok(chosen)
}

/// Packages only maintainer scripts use: unpacking runs no script.
const MAINTAINER_TOOLS: &[&str] = &["debconf", "cdebconf", "install-info", "dpkg"];

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache depends qemu-system-x86` on Debian 12, shortened.
    const QEMU_DEPENDS: &str = "\
qemu-system-x86
  Depends: libaio1
  Depends: libc6
  Depends: libfdt1
  Depends: libnl-3-200
 |Depends: libsystemd0
  Depends: libelogind0
  Depends: qemu-system-common
  Depends: qemu-system-data
  Depends: seabios
  Depends: <debconf-2.0>
    cdebconf
    debconf
  Recommends: qemu-utils
  Suggests: samba
  Breaks: qemu-utils
";

    #[test]
    fn depends_are_read_with_alternatives_and_providers() {
        let parsed = parse_depends(QEMU_DEPENDS);
        assert_eq!(parsed.len(), 9);
        let names = |d: &Dependency| {
            d.alternatives
                .iter()
                .map(|a| a.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&parsed[4]), ["libsystemd0", "libelogind0"]);
        assert_eq!(parsed[8].alternatives[0].name, "<debconf-2.0>");
        assert_eq!(parsed[8].alternatives[0].providers, ["cdebconf", "debconf"]);
        assert!(
            parsed.iter().all(|d| names(d) != ["qemu-utils"]),
            "Recommends and Breaks are not needs"
        );
    }

    /// The image's state: qemu-utils from backports, no qemu-system, the
    /// common libraries installed. What is unpacked is the qemu packages and
    /// the libraries the machine lacks; nothing installed, nothing an
    /// installed package already provides (libelogind0 would shadow the
    /// machine's libsystemd in LD_LIBRARY_PATH), no maintainer tools.
    #[test]
    fn the_closure_takes_only_what_the_machine_lacks() {
        let installed = |name: &str| {
            ["libc6", "libaio1", "libsystemd0", "debconf", "qemu-utils"].contains(&name)
        };
        let depends = |name: &str| {
            Ok(match name {
                "qemu-system-x86" => parse_depends(QEMU_DEPENDS),
                "qemu-system-common" => {
                    parse_depends("qemu-system-common\n  Depends: libc6\n  Depends: libcapstone4\n")
                }
                _ => Vec::new(),
            })
        };
        let chosen = closure_with("qemu-system-x86", &depends, &installed).unwrap();
        assert_eq!(
            chosen.into_iter().collect::<Vec<_>>(),
            [
                "libcapstone4",
                "libfdt1",
                "libnl-3-200",
                "qemu-system-common",
                "qemu-system-data",
                "qemu-system-x86",
                "seabios"
            ]
        );
    }
}
