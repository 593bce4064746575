//! Compiles the eBPF programs (package fan-ebpf) for the BPF target, so every
//! build of fan-xdp embeds an object made from the current sources.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&metadata_dir)
        .parent()
        .ok_or_else(|| anyhow!("fan-userspace has no parent directory"))?
        .join("fan-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path to fan-ebpf")?;
    let package = Package {
        name: "fan-ebpf",
        root_dir,
        ..Default::default()
    };
    share_ebpf_target_dir()?;
    aya_build::build_ebpf([package], Toolchain::default())
        .context("building the eBPF object failed; run `cargo xtask setup` to install bpf-linker and nightly rust-src")
}

/// aya-build keeps the eBPF crate's cargo target directory in this build
/// script's OUT_DIR, and every configuration of fan-userspace (features,
/// profile) has its own: each built core and the programs from cold, about
/// 35 s, four times in `cargo xtask test`. The object does not depend on
/// the configuration, so all of them share one directory in the workspace's
/// target directory (the inner cargo's own lock orders concurrent builds).
fn share_ebpf_target_dir() -> anyhow::Result<()> {
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let Some(target) = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(|build| build.parent()?.parent())
    else {
        return Ok(());
    };
    let link = out_dir.join("aya-build").join("target").join("fan-ebpf");
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    let shared = target.join("ebpf");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    std::fs::create_dir_all(link.parent().context("no parent")?)?;
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}
