//! `cargo xtask deb`: fan-xdp as a Debian package,
//! `target/debian/fan-xdp_<version>_<arch>.deb`.
//!
//! The tree is `cargo xtask install`'s, staged with Debian's layout
//! ([`Layout::debian`]) under a DESTDIR, plus what a package adds: the binary
//! stripped, the man pages compressed, `/etc/network/fan` (a conffile with
//! only comments: no fans), the copyright and changelog, the control
//! files; then `dpkg-deb --build`. No debhelper: the few steps it would take
//! are here, in the open. The eBPF programs are inside the binary
//! (fan-userspace embeds the object at build time), so the binary is all
//! fan-xdp needs at run time besides nft (and dnsmasq for `dhcp`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    install::{self, Layout},
    stdout_of, workspace_root,
};

pub const PACKAGE: &str = "fan-xdp";

/// The conffile, as dpkg names it.
pub const CONFFILE: &str = "/etc/network/fan";

/// Builds the release binary and packages it; prints where the package is.
pub fn run() -> Result<()> {
    crate::build_release_fan_xdp()?;
    let deb = build(
        &workspace_root().join("target/release/fan-xdp"),
        &workspace_root().join("target/debian"),
    )?;
    let relative = deb.strip_prefix(workspace_root()).unwrap_or(&deb);
    println!(
        "built {}; install it with: apt install ./{}",
        deb.display(),
        relative.display()
    );
    Ok(())
}

/// Packages `binary` into `out_dir`; returns the package's path.
pub fn build(binary: &Path, out_dir: &Path) -> Result<PathBuf> {
    let packaging = workspace_root().join("packaging/debian");
    let read = |name: &str| {
        let path = packaging.join(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let version = binary_version(binary)?;
    let changelog = read("changelog")?;
    let logged = changelog_version(&changelog)?;
    if logged != version {
        bail!(
            "packaging/debian/changelog's latest entry is {logged}, but fan-xdp is {version}: add an entry for {version}"
        );
    }
    let architecture = stdout_of(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();

    // Staged where dpkg-shlibdeps expects a package's tree: debian/PACKAGE
    // beside a debian/control.
    let work = out_dir.join("build");
    let _ = fs::remove_dir_all(&work);
    let root = work.join("debian").join(PACKAGE);
    let layout = Layout::debian();
    install::install_with_plugin(
        &layout,
        &root,
        binary,
        Path::new(crate::cni::DEFAULT_CNI_BIN_DIR),
    )?;
    let at = |path: &Path| install::staged(&root, path);
    let staged_binary = at(&layout.fan_xdp());
    // As dh_strip strips an executable.
    stdout_of(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(&staged_binary),
    )
    .context("stripping fan-xdp (strip is binutils')")?;
    for entry in fs::read_dir(at(&layout.man8))? {
        gzip(&entry?.path())?;
    }
    install::copy(&packaging.join("fan"), &at(Path::new(CONFFILE)), 0o644)?;
    let doc = at(&Path::new("/usr/share/doc").join(PACKAGE));
    install::copy(&packaging.join("copyright"), &doc.join("copyright"), 0o644)?;
    install::write(&doc.join("changelog"), &changelog, 0o644)?;
    gzip(&doc.join("changelog"))?;
    let overrides = at(&Path::new("/usr/share/lintian/overrides").join(PACKAGE));
    install::copy(&packaging.join("lintian-overrides"), &overrides, 0o644)?;
    let installed_size = installed_size(&root)?;
    let md5sums = md5sums(&root)?;

    fs::write(
        work.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let shlibs = shlibs_depends(&work, &staged_binary)?;

    let control = root.join("DEBIAN");
    let fields = read("control")?
        .replace("@VERSION@", &version)
        .replace("@ARCHITECTURE@", &architecture)
        .replace("@INSTALLED_SIZE@", &installed_size.to_string())
        .replace("@SHLIBS_DEPENDS@", &shlibs);
    install::write(&control.join("control"), fields, 0o644)?;
    install::write(&control.join("conffiles"), format!("{CONFFILE}\n"), 0o644)?;
    install::write(&control.join("md5sums"), md5sums, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install::copy(&packaging.join(script), &control.join(script), 0o755)?;
    }

    // Directories as Debian has them, whatever the umask made of them.
    for path in install::tree(&root)? {
        let path = root.join(path);
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
    }

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{architecture}.deb"));
    stdout_of(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&work)?;
    Ok(deb)
}

/// The version `fan-xdp --version` reports: the package is what it holds.
fn binary_version(binary: &Path) -> Result<String> {
    let said = stdout_of(Command::new(binary).arg("--version"))?;
    said.trim()
        .strip_prefix("fan-xdp ")
        .map(str::to_string)
        .with_context(|| format!("{} --version said {said:?}", binary.display()))
}

/// The version of a Debian changelog's latest entry: `PACKAGE (VERSION) ...`.
pub fn changelog_version(changelog: &str) -> Result<String> {
    let first = changelog.lines().next().unwrap_or_default();
    first
        .strip_prefix(PACKAGE)
        .and_then(|rest| rest.trim_start().strip_prefix('('))
        .and_then(|rest| rest.split_once(')'))
        .map(|(version, _)| version.to_string())
        .with_context(|| {
            format!("the changelog's first line {first:?} is not `{PACKAGE} (VERSION) ...`")
        })
}

/// `gzip -9n`, in place, as Debian compresses man pages and changelogs
/// (-n: no name or time in the header, so the same input gives the same bytes).
fn gzip(path: &Path) -> Result<()> {
    stdout_of(Command::new("gzip").arg("-9n").arg(path)).map(drop)
}

/// Installed-Size as dpkg-gencontrol reckons it: each regular file's size
/// rounded up to a KiB, and one KiB for every other entry (directories,
/// links). `root` holds no DEBIAN yet.
fn installed_size(root: &Path) -> Result<u64> {
    let mut kib = 0;
    for path in install::tree(root)? {
        let meta = fs::symlink_metadata(root.join(path))?;
        kib += if meta.is_file() {
            meta.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

/// DEBIAN/md5sums: every regular file but the conffile (dpkg keeps its
/// checksums of conffiles itself), by its path without the leading `/`.
fn md5sums(root: &Path) -> Result<String> {
    let conffile = Path::new(CONFFILE).strip_prefix("/")?;
    let files: Vec<PathBuf> = install::tree(root)?
        .into_iter()
        .filter(|path| path != conffile)
        .filter(|path| fs::symlink_metadata(root.join(path)).is_ok_and(|m| m.is_file()))
        .collect();
    stdout_of(
        Command::new("md5sum")
            .arg("--")
            .args(&files)
            .current_dir(root),
    )
}

/// The libraries the binary links, as dpkg-shlibdeps names their packages
/// and minimum versions (from the symbols it uses): `work` holds
/// debian/control, and the binary is staged under debian/PACKAGE.
fn shlibs_depends(work: &Path, binary: &Path) -> Result<String> {
    let said = stdout_of(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "-e"])
            .arg(binary)
            .current_dir(work),
    )
    .context("running dpkg-shlibdeps (package dpkg-dev)")?;
    said.lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps named no dependency: {said:?}"))
}

#[cfg(test)]
mod tests;
