//! The tests' images, built offline: containerd's sandbox image (a static
//! `pause`), a busybox workload, and fan-xdp's DaemonSet image laid out as
//! `cargo xtask image` lays it out (the same code: xtask's `oci` module).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::netns::run;

#[path = "../../../xtask/src/oci.rs"]
pub mod oci;

/// The sandbox image (containerd's `sandbox_image`) and the workload's.
pub const PAUSE_IMAGE: &str = "pause:fan-test";
pub const BUSYBOX_IMAGE: &str = "busybox:fan-test";

/// The name containerd gives an image imported under `reference`.
pub fn full_name(reference: &str) -> String {
    format!("docker.io/library/{reference}")
}

/// The images of the tests, built once per test into a private directory.
pub struct Images {
    dir: PathBuf,
    pub pause: PathBuf,
    pub busybox: PathBuf,
}

impl Images {
    /// Builds the pause archive (a static C program that sleeps until
    /// signalled) and the busybox archive (Debian's static busybox and a
    /// link per applet).
    pub fn build() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fan-cri-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pause_root = dir.join("pause-root");
        std::fs::create_dir_all(&pause_root)?;
        let source = dir.join("pause.c");
        std::fs::write(
            &source,
            "#include <signal.h>\n#include <unistd.h>\n\
             static void stop(int sig) { (void)sig; _exit(0); }\n\
             int main(void) { signal(SIGINT, stop); signal(SIGTERM, stop); for (;;) pause(); }\n",
        )?;
        run(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(pause_root.join("pause"))
            .arg(&source))
        .context("building the static pause program (gcc, libc6-dev)")?;
        let pause = dir.join("pause.tar");
        oci::write_archive(
            &pause_root,
            &oci::ImageConfig {
                reference: PAUSE_IMAGE,
                entrypoint: &["/pause"],
                env: &[],
            },
            &dir.join("work"),
            &pause,
        )?;
        let busybox_root = dir.join("busybox-root");
        for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(busybox_root.join(sub))?;
        }
        crate::podman::busybox_rootfs(&busybox_root)?;
        let busybox = dir.join("busybox.tar");
        oci::write_archive(
            &busybox_root,
            &oci::ImageConfig {
                reference: BUSYBOX_IMAGE,
                entrypoint: &[],
                env: &["PATH=/bin"],
            },
            &dir.join("work"),
            &busybox,
        )?;
        Ok(Self {
            dir,
            pause,
            busybox,
        })
    }
}

/// fan-xdp's DaemonSet image, named as `cargo xtask image` names it.
pub fn fan_xdp_reference() -> String {
    format!("fan-xdp:{}", env!("CARGO_PKG_VERSION"))
}

impl Images {
    /// Where the images are built.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// fan-xdp's DaemonSet image as `cargo xtask image` lays it out, around
    /// the binary under test (its debug information stripped): the archive.
    pub fn fan_xdp(&self) -> Result<PathBuf> {
        let binary = self.dir.join("fan-xdp");
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&binary)
            .arg(crate::topology::fan_xdp_binary()))?;
        let root = self.dir.join("fan-xdp-root");
        oci::fan_xdp_rootfs(&binary, &root)?;
        let archive = self.dir.join("fan-xdp.tar");
        oci::write_archive(
            &root,
            &oci::ImageConfig {
                reference: &fan_xdp_reference(),
                entrypoint: &["/usr/bin/fan-xdp"],
                env: &[oci::IMAGE_PATH],
            },
            &self.dir.join("work"),
            &archive,
        )?;
        std::fs::remove_dir_all(&root)?;
        Ok(archive)
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
