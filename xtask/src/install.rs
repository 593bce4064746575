//! `cargo xtask install [--prefix DIR] [--destdir DIR]`: fan-xdp as a system service.
//!
//! Under the prefix (default /usr/local): the release binary in `bin/`, the
//! systemd unit in `lib/systemd/system/` (a directory systemd searches) with
//! `@bindir@` filled in, and the man pages and shell completions that
//! `fan-xdp __generate` makes from the clap definitions (never written by
//! hand); the CNI plugin `fan`, a link to the binary, in the CNI binary
//! directory. With `--destdir`, as packagers stage an install, every file
//! is written under DESTDIR while what the files say (the unit's
//! `ExecStart`, the link's target) names the final paths. Nothing is
//! started or enabled: that is the operator's
//! `systemctl daemon-reload && systemctl enable --now fan-xdp`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::workspace_root;

/// Where each part goes, as the installed system names it.
pub struct Layout {
    pub bin: PathBuf,
    pub unit: PathBuf,
    pub man8: PathBuf,
    pub bash: PathBuf,
    pub zsh: PathBuf,
    pub fish: PathBuf,
}

impl Layout {
    /// Under a prefix, as `cargo xtask install` puts it.
    pub fn under(prefix: &Path) -> Result<Self> {
        if !prefix.is_absolute() {
            bail!(
                "--prefix {} must be an absolute path (the unit names the binary by it)",
                prefix.display()
            );
        }
        let share = prefix.join("share");
        Ok(Self {
            bin: prefix.join("bin"),
            unit: prefix.join("lib/systemd/system"),
            man8: share.join("man/man8"),
            bash: share.join("bash-completion/completions"),
            zsh: share.join("zsh/site-functions"),
            fish: share.join("fish/vendor_completions.d"),
        })
    }

    /// Where a Debian package puts them: the unit in /lib/systemd/system
    /// (Debian 12's packages own it by that name, not through /usr), zsh's
    /// completions where Debian's zsh looks for packages' own.
    pub fn debian() -> Self {
        let share = Path::new("/usr/share");
        Self {
            bin: PathBuf::from("/usr/bin"),
            unit: PathBuf::from("/lib/systemd/system"),
            man8: share.join("man/man8"),
            bash: share.join("bash-completion/completions"),
            zsh: share.join("zsh/vendor-completions"),
            fish: share.join("fish/vendor_completions.d"),
        }
    }

    pub fn fan_xdp(&self) -> PathBuf {
        self.bin.join("fan-xdp")
    }
}

/// The absolute `path` as staged under `destdir` ("/" for none).
pub fn staged(destdir: &Path, path: &Path) -> PathBuf {
    destdir.join(path.strip_prefix("/").unwrap_or(path))
}

/// Builds the release binary, then installs it under `prefix` (staged
/// under `destdir` if given) with everything else and the CNI plugin.
pub fn run(prefix: &Path, destdir: Option<&Path>, cni_bin_dir: &Path) -> Result<()> {
    let layout = Layout::under(prefix)?;
    if !cni_bin_dir.is_absolute() {
        bail!(
            "--cni-bin-dir {} must be an absolute path (runtimes look there, not under this directory)",
            cni_bin_dir.display()
        );
    }
    crate::build_release_fan_xdp()?;
    let destdir = destdir.unwrap_or(Path::new("/"));
    let binary = workspace_root().join("target/release/fan-xdp");
    install_with_plugin(&layout, destdir, &binary, cni_bin_dir)?;
    if destdir == Path::new("/") {
        println!(
            "installed fan-xdp under {}; to run it at boot: systemctl daemon-reload && systemctl enable --now fan-xdp",
            prefix.display()
        );
    } else {
        println!(
            "staged fan-xdp for {} under {}",
            prefix.display(),
            destdir.display()
        );
    }
    println!(
        "unit: {}",
        staged(destdir, &layout.unit.join(UNIT)).display()
    );
    Ok(())
}

pub const UNIT: &str = "fan-xdp.service";

/// [`install`], and the CNI plugin `fan` in `cni_bin_dir` (absolute): a
/// link to the binary's final path, staged under `destdir` like the rest.
pub fn install_with_plugin(
    layout: &Layout,
    destdir: &Path,
    binary: &Path,
    cni_bin_dir: &Path,
) -> Result<()> {
    install(layout, destdir, binary)?;
    crate::cni::install_plugin(&layout.fan_xdp(), &staged(destdir, cni_bin_dir))
}

/// Installs `binary` and what is made from it into `layout`, each file
/// written under `destdir` ("/" for the system itself).
pub fn install(layout: &Layout, destdir: &Path, binary: &Path) -> Result<()> {
    let at = |path: &Path| staged(destdir, path);
    for dir in [
        &layout.bin,
        &layout.unit,
        &layout.man8,
        &layout.bash,
        &layout.zsh,
        &layout.fish,
    ] {
        let dir = at(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let installed = at(&layout.fan_xdp());
    copy(binary, &installed, 0o755)?;

    let template = workspace_root().join("packaging/systemd").join(UNIT);
    let unit =
        fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
    let bindir = layout.bin.to_str().context("the prefix is not UTF-8")?;
    write(
        &at(&layout.unit.join(UNIT)),
        unit.replace("@bindir@", bindir),
        0o644,
    )?;

    // Generated by the installed binary itself, from its clap definitions.
    let generated = tempdir("generate")?;
    let status = Command::new(&installed)
        .arg("__generate")
        .arg(&generated)
        .status()
        .context("running fan-xdp __generate")?;
    if !status.success() {
        bail!("fan-xdp __generate failed ({status})");
    }
    for entry in fs::read_dir(generated.join("man8"))? {
        let path = entry?.path();
        copy(
            &path,
            &at(&layout.man8.join(path.file_name().context("a man page")?)),
            0o644,
        )?;
    }
    copy(
        &generated.join("bash/fan-xdp"),
        &at(&layout.bash.join("fan-xdp")),
        0o644,
    )?;
    copy(
        &generated.join("zsh/_fan-xdp"),
        &at(&layout.zsh.join("_fan-xdp")),
        0o644,
    )?;
    copy(
        &generated.join("fish/fan-xdp.fish"),
        &at(&layout.fish.join("fan-xdp.fish")),
        0o644,
    )?;
    fs::remove_dir_all(&generated)?;
    Ok(())
}

pub fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes through a temporary name and renames: a running fan-xdp being
/// replaced keeps its old file (overwriting a running executable fails).
pub fn write(to: &Path, bytes: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = to.with_extension("xtask-new");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    println!("installed {}", to.display());
    Ok(())
}

/// Every path under `dir`, relative to it, sorted (links not followed).
pub fn tree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).with_context(|| format!("reading {}", next.display()))? {
            let path = entry?.path();
            if fs::symlink_metadata(&path)?.is_dir() {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(dir)?.to_path_buf());
        }
    }
    found.sort();
    Ok(found)
}

/// A new empty directory of its own: installs may run at once (the tests').
pub fn tempdir(purpose: &str) -> Result<PathBuf> {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fan-xdp-{purpose}-{}-{call}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The tests' build of fan-xdp (`cargo xtask test` builds it first).
#[cfg(test)]
pub fn test_binary() -> PathBuf {
    let binary = workspace_root().join("target/debug/fan-xdp");
    assert!(
        binary.exists(),
        "{} is missing: cargo build -p fan-userspace",
        binary.display()
    );
    binary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `systemd-analyze verify` on a unit, with the installed man pages
    /// findable (it checks `Documentation=man:`); its output and success.
    fn verify(unit: &Path, man: &Path) -> (bool, String) {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit)
            .env("MANPATH", man)
            .output()
            .expect("systemd-analyze (Debian's systemd package; cargo xtask setup installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success() && text.trim().is_empty(), text)
    }

    #[test]
    fn install_into_a_temporary_prefix_gives_a_unit_systemd_accepts() {
        let binary = test_binary();
        let prefix = tempdir("install").unwrap();
        let layout = Layout::under(&prefix).unwrap();
        install(&layout, Path::new("/"), &binary).unwrap();
        let unit = layout.unit.join(UNIT);
        let text = fs::read_to_string(&unit).unwrap();
        let bindir = layout.bin.display();
        assert!(
            text.contains(&format!("\nExecStart={bindir}/fan-xdp run\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("\nExecReload={bindir}/fan-xdp reload\n")),
            "{text}"
        );
        assert!(!text.contains("@bindir@"));
        let man = prefix.join("share/man");
        let (ok, said) = verify(&unit, &man);
        assert!(
            ok,
            "systemd-analyze verify refused the installed unit:\n{said}"
        );
        for page in [
            "fan-xdp.8",
            "fan-xdp-up.8",
            "fan-xdp-run.8",
            "fan-xdp-attach.8",
        ] {
            let roff = fs::read_to_string(layout.man8.join(page)).unwrap();
            assert!(
                roff.starts_with(".ie \\n(.g .ds Aq"),
                "{page} is not a clap_mangen page"
            );
        }
        let bash = fs::read_to_string(layout.bash.join("fan-xdp")).unwrap();
        assert!(bash.contains("fan__xdp,up)"), "no completion for up");
        assert!(layout.zsh.join("_fan-xdp").exists() && layout.fish.join("fan-xdp.fish").exists());

        // The check can fail: the template itself (no path filled in) is refused.
        let raw = prefix.join("raw.service");
        fs::copy(workspace_root().join("packaging/systemd").join(UNIT), &raw).unwrap();
        let (ok, said) = verify(&raw, &man);
        assert!(
            !ok,
            "systemd-analyze accepted a unit with @bindir@ in it:\n{said}"
        );
        fs::remove_dir_all(&prefix).unwrap();
    }

    #[test]
    fn a_staged_install_writes_nothing_outside_destdir_and_names_the_final_paths() {
        let binary = test_binary();
        let destdir = tempdir("destdir").unwrap();
        // A prefix that exists nowhere, and the CNI directory runtimes use.
        let prefix = PathBuf::from(format!("/fan-xdp-test-prefix-{}", std::process::id()));
        let cni_bin_dir = Path::new(crate::cni::DEFAULT_CNI_BIN_DIR);
        let host_plugin = cni_bin_dir.join("fan");
        let plugin_before = fs::symlink_metadata(&host_plugin).is_ok();
        let layout = Layout::under(&prefix).unwrap();
        install_with_plugin(&layout, &destdir, &binary, cni_bin_dir).unwrap();

        assert!(!prefix.exists(), "{} was written", prefix.display());
        assert_eq!(
            fs::symlink_metadata(&host_plugin).is_ok(),
            plugin_before,
            "{} was written",
            host_plugin.display()
        );
        let staged_prefix = prefix.strip_prefix("/").unwrap();
        for path in tree(&destdir).unwrap() {
            let cni = Path::new("opt/cni/bin");
            assert!(
                path.starts_with(staged_prefix) || path.starts_with(cni) || cni.starts_with(&path),
                "{} is neither under the prefix nor the CNI directory",
                path.display()
            );
        }
        // What the files say names the final paths, not DESTDIR.
        assert_eq!(
            fs::read_link(destdir.join("opt/cni/bin/fan")).unwrap(),
            prefix.join("bin/fan-xdp")
        );
        let unit = fs::read_to_string(staged(&destdir, &layout.unit.join(UNIT))).unwrap();
        assert!(
            unit.contains(&format!(
                "\nExecStart={}/bin/fan-xdp run\n",
                prefix.display()
            )),
            "{unit}"
        );
        assert!(staged(&destdir, &layout.fan_xdp()).is_file());
        fs::remove_dir_all(&destdir).unwrap();
    }
}
