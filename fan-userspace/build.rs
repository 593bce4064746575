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
    aya_build::build_ebpf([package], Toolchain::default())
        .context("building the eBPF object failed; run `cargo xtask setup` to install bpf-linker and nightly rust-src")
}
