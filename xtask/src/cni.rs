//! The CNI plugin's place in `cargo xtask install`: `fan` in the CNI binary
//! directory, a link to the installed fan-xdp (which is the plugin when run
//! by that name), so upgrading fan-xdp upgrades the plugin with it.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

/// The CNI binary directory runtimes look in by default (containerd,
/// CRI-O, kubelet's docs; Podman looks there too).
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";

/// Links `<cni_bin_dir>/fan` to `fan_xdp`, replacing an older link (never a
/// file that is not a link: that is someone else's plugin named `fan`).
pub fn install_plugin(fan_xdp: &Path, cni_bin_dir: &Path) -> Result<()> {
    if !fan_xdp.is_absolute() {
        bail!(
            "the installed fan-xdp {} must be named by an absolute path",
            fan_xdp.display()
        );
    }
    fs::create_dir_all(cni_bin_dir).with_context(|| {
        format!(
            "creating the CNI binary directory {}",
            cni_bin_dir.display()
        )
    })?;
    let link = cni_bin_dir.join("fan");
    match fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => fs::remove_file(&link)?,
        Ok(_) => bail!(
            "{} exists and is not a link to fan-xdp: another CNI plugin named fan? Remove it first",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(fan_xdp, &link)
        .with_context(|| format!("linking {} to {}", link.display(), fan_xdp.display()))?;
    println!(
        "installed the CNI plugin: {} -> {}",
        link.display(),
        fan_xdp.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_a_link_replaced_on_reinstall_and_a_foreign_file_is_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-cni-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let bin = dir.join("opt/cni/bin");
        install_plugin(Path::new("/usr/local/bin/fan-xdp"), &bin).unwrap();
        install_plugin(Path::new("/usr/bin/fan-xdp"), &bin).unwrap();
        assert_eq!(
            fs::read_link(bin.join("fan")).unwrap(),
            Path::new("/usr/bin/fan-xdp")
        );
        fs::remove_file(bin.join("fan")).unwrap();
        fs::write(bin.join("fan"), b"someone else's").unwrap();
        let e = install_plugin(Path::new("/usr/bin/fan-xdp"), &bin).unwrap_err();
        assert!(e.to_string().contains("is not a link to fan-xdp"), "{e}");
        assert_eq!(fs::read(bin.join("fan")).unwrap(), b"someone else's");
        assert!(
            install_plugin(Path::new("fan-xdp"), &bin).is_err(),
            "a relative target"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
