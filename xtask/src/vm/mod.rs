//! A second kernel in qemu: Debian's 6.1 LTS cloud kernel, booted with an
//! initramfs that holds busybox, the tools the tests drive, the test binaries
//! and the kernel modules they load. The guest runs one command, prints its
//! exit status on the serial console and powers off; the host enforces a time
//! limit and keeps the console log under target/vm/.
//!
//! Here the kernel, fetched once; the initramfs is built in `initramfs`
//! (its archive format in `cpio`), the guest booted and watched in `qemu`,
//! and what it runs gathered in `payload`.

mod cpio;
mod emulator;
mod initramfs;
mod payload;
mod qemu;

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{stdout_of as run, workspace_root};

pub use emulator::qemu_program;
pub use payload::test_payload;
pub use qemu::{Console, run_in_vm};

/// Printed by the guest's init after the command: the host reads the status from it.
const EXIT_MARKER: &str = "FAN-VM-EXIT ";

pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    pub root: PathBuf,
}

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// Downloads (once) Debian's cloud kernel package and unpacks it under target/vm.
pub fn kernel() -> Result<Kernel> {
    let dir = vm_dir();
    fs::create_dir_all(&dir)?;
    // The metapackage names the current 6.1 ABI: linux-image-6.1.0-N-cloud-amd64.
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .context("apt-cache names no linux-image-*-cloud-amd64 (run apt-get update)")?
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = dir.join(format!("kernel-{version}"));
    let image = root.join(format!("boot/vmlinuz-{version}"));
    if !image.exists() {
        println!("vm: downloading {package}");
        let download = dir.join("download");
        fs::create_dir_all(&download)?;
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&download))?;
        let deb = fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy().contains(&version) && p.extension().is_some_and(|e| e == "deb")
            })
            .context("the downloaded kernel package")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    }
    Ok(Kernel {
        version,
        image,
        root,
    })
}
