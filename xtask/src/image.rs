//! `cargo xtask image`: fan-xdp's DaemonSet image, built offline from
//! scratch as an OCI archive (`target/image/fan-xdp_<version>.oci.tar`,
//! named `fan-xdp:<version>`), for `ctr -n k8s.io images import` on a node,
//! `podman load`, or a push to your registry with any OCI tool. What it
//! holds is [`crate::oci::fan_xdp_rootfs`]'s; the CRI tests build the same
//! image around the binary they test and run the DaemonSet's steps from it.

use std::path::PathBuf;

use anyhow::Result;

use crate::{oci, workspace_root};

/// The image's name, as deploy/fan-xdp-daemonset.yaml refers to it.
pub fn reference() -> String {
    format!("fan-xdp:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the release binary and the image; returns the archive's path.
pub fn build() -> Result<PathBuf> {
    crate::build_release_fan_xdp()?;
    let out = workspace_root().join("target/image");
    std::fs::create_dir_all(&out)?;
    let root = out.join("rootfs");
    oci::fan_xdp_rootfs(&workspace_root().join("target/release/fan-xdp"), &root)?;
    let archive = out.join(format!("fan-xdp_{}.oci.tar", env!("CARGO_PKG_VERSION")));
    oci::write_archive(
        &root,
        &oci::ImageConfig {
            reference: &reference(),
            entrypoint: &["/usr/bin/fan-xdp"],
            env: &[oci::IMAGE_PATH],
        },
        &out.join("work"),
        &archive,
    )?;
    std::fs::remove_dir_all(&root)?;
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "{} ({:.1} MiB): {} ; `ctr -n k8s.io images import {0}` or `podman load -i {0}`",
        archive.display(),
        size as f64 / f64::from(1 << 20),
        reference()
    );
    Ok(archive)
}
