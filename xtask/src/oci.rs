//! One-layer OCI image archives built offline from a directory: what
//! `ctr images import` and `podman load` read (an `oci-layout`, an
//! `index.json` naming the image, and content-addressed blobs). Used by
//! `cargo xtask image` (fan-xdp's DaemonSet image) and by the CRI tests
//! (their pause and busybox images), which include this file as it is: it
//! needs nothing but std, anyhow, `tar` and `sha256sum`.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// What the image runs, as its config says.
pub struct ImageConfig<'a> {
    /// `name:tag` as a runtime refers to it (`fan-xdp:0.1.0`, `pause:fan`);
    /// containerd's annotation holds it under `docker.io/library/`.
    pub reference: &'a str,
    pub entrypoint: &'a [&'a str],
    pub env: &'a [&'a str],
}

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Writes `archive`: an OCI image of one layer holding `rootfs` as it is
/// (owned by root, times zeroed, names sorted: the same tree gives the same
/// digest). `work` is a scratch directory, emptied first.
pub fn write_archive(
    rootfs: &Path,
    config: &ImageConfig,
    work: &Path,
    archive: &Path,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(work);
    let blobs = work.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let layer = work.join("layer.tar");
    tar(rootfs, &layer, &["."])?;
    let (layer_digest, layer_size) = store_blob(&blobs, &std::fs::read(&layer)?)?;
    std::fs::remove_file(&layer)?;
    let strings = |items: &[&str]| {
        let quoted: Vec<String> = items.iter().map(|s| json_string(s)).collect();
        format!("[{}]", quoted.join(","))
    };
    let image_config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":{},"Env":{}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_digest}"]}}}}"#,
        strings(config.entrypoint),
        strings(config.env)
    );
    let (config_digest, config_size) = store_blob(&blobs, image_config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"{CONFIG_TYPE}","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"{LAYER_TYPE}","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = store_blob(&blobs, manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MANIFEST_TYPE}","digest":"sha256:{manifest_digest}","size":{manifest_size},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":{},"org.opencontainers.image.ref.name":{}}}}}]}}"#,
        json_string(&format!("docker.io/library/{}", config.reference)),
        json_string(config.reference)
    );
    let layout = work.join("layout");
    std::fs::write(layout.join("index.json"), index)?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    tar(&layout, archive, &["oci-layout", "index.json", "blobs"])?;
    std::fs::remove_dir_all(work)?;
    Ok(())
}

/// Writes `members` of `dir` into the tar file `out`, the same bytes for
/// the same tree: names sorted, owned by root, times zeroed.
fn tar(dir: &Path, out: &Path, members: &[&str]) -> Result<()> {
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(members))
}

/// Stores `bytes` under their SHA-256 in `blobs`: (hex digest, size).
fn store_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let digest = sha256(bytes)?;
    std::fs::write(blobs.join(&digest), bytes)?;
    Ok((digest, bytes.len()))
}

/// The SHA-256 of `bytes` in hex (coreutils' sha256sum).
pub fn sha256(bytes: &[u8]) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum's stdin")?;
    let writer = std::thread::scope(|scope| {
        let writing = scope.spawn(move || stdin.write_all(bytes));
        let out = child.wait_with_output();
        (writing.join(), out)
    });
    let (written, out) = writer;
    written.map_err(|_| anyhow::anyhow!("writing to sha256sum panicked"))??;
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(hex) if out.status.success() && hex.len() == 64 => Ok(hex.to_string()),
        _ => bail!("sha256sum printed {text:?}"),
    }
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The search path of fan-xdp's image.
pub const IMAGE_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// The programs fan-xdp runs (nftables for `--nat`, dnsmasq for `--dhcp`),
/// which the image carries with their libraries.
pub const AGENT_PROGRAMS: [&str; 2] = ["/usr/sbin/nft", "/usr/sbin/dnsmasq"];

/// Debian's static busybox, for the DaemonSet's shell steps (the init
/// step's `cp` and `mv`, the agent's `sh -c`): no libraries.
pub const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_APPLETS: [&str; 3] = ["sh", "cp", "mv"];

/// Lays out fan-xdp's image in `root` (empty or missing): `fan_xdp` (the
/// binary, its eBPF object inside) as `/usr/bin/fan-xdp`, nft and dnsmasq,
/// every library the three link (as `ldd` finds them, at the same paths),
/// busybox with the applets the DaemonSet uses, and an `/etc/passwd` and
/// `/etc/group` with the `nobody` dnsmasq drops to.
pub fn fan_xdp_rootfs(fan_xdp: &Path, root: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(root);
    for dir in [
        "usr/bin", "usr/sbin", "bin", "etc", "tmp", "run", "var/lib", "proc", "sys", "dev",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    copy_into(root, fan_xdp, Path::new("/usr/bin/fan-xdp"))?;
    let mut libraries = linked_libraries(fan_xdp)?;
    for program in AGENT_PROGRAMS {
        let program = Path::new(program);
        copy_into(root, program, program)?;
        libraries.extend(linked_libraries(program)?);
    }
    libraries.sort();
    libraries.dedup();
    for library in &libraries {
        copy_into(root, library, library)?;
    }
    if !linked_libraries(Path::new(BUSYBOX))?.is_empty() {
        bail!("{BUSYBOX} is not Debian's static busybox (apt-get install busybox-static)");
    }
    copy_into(root, Path::new(BUSYBOX), Path::new(BUSYBOX))?;
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// Copies the file `from` (links followed) to `to` inside `root`.
fn copy_into(root: &Path, from: &Path, to: &Path) -> Result<()> {
    let target = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, &target)
        .with_context(|| format!("copying {} into the image", from.display()))?;
    Ok(())
}

/// The libraries `binary` links, with the dynamic loader, as `ldd` lists
/// them; none for a static binary.
fn linked_libraries(binary: &Path) -> Result<Vec<std::path::PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        // ldd's answer for a static binary.
        if why.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", binary.display(), why.trim());
    }
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, _)) if line.contains("not found") => {
                bail!(
                    "{} links {}, which is not found",
                    binary.display(),
                    name.trim()
                )
            }
            Some((_, found)) => found.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libraries.push(std::path::PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn an_archive_names_its_image_and_each_blob_is_its_digest_the_same_every_time() {
        let base = std::env::temp_dir().join(format!("fan-oci-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        let config = ImageConfig {
            reference: "hello:1",
            entrypoint: &["/bin/hello"],
            env: &["PATH=/bin"],
        };
        let (first, second) = (base.join("first.tar"), base.join("second.tar"));
        write_archive(&root, &config, &base.join("work"), &first).unwrap();
        write_archive(&root, &config, &base.join("work"), &second).unwrap();
        let (first_bytes, second_bytes) = (
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
        );
        assert!(
            first_bytes == second_bytes,
            "the same tree gave two archives"
        );

        let out = base.join("unpacked");
        std::fs::create_dir_all(&out).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&first)
            .arg("-C")
            .arg(&out))
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let blobs = out.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).unwrap().flatten() {
            let name = entry.file_name().into_string().unwrap();
            assert_eq!(sha256(&std::fs::read(entry.path()).unwrap()).unwrap(), name);
        }
        let index = json(&out.join("index.json"));
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "docker.io/library/hello:1"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "hello:1"
        );
        let blob = |digest: &serde_json::Value| {
            blobs.join(digest.as_str().unwrap().strip_prefix("sha256:").unwrap())
        };
        let manifest = json(&blob(&entry["digest"]));
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], LAYER_TYPE);
        let image = json(&blob(&manifest["config"]["digest"]));
        assert_eq!(
            image["rootfs"]["diff_ids"][0], layer["digest"],
            "an uncompressed layer is its own diff"
        );
        assert_eq!(
            image["config"]["Entrypoint"],
            serde_json::json!(["/bin/hello"])
        );
        assert_eq!(image["config"]["Env"], serde_json::json!(["PATH=/bin"]));
        let listed = Command::new("tar")
            .arg("-tvf")
            .arg(blob(&layer["digest"]))
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed
                .lines()
                .any(|l| l.contains("0/0") && l.ends_with("./bin/hello")),
            "{listed}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn ldd_finds_the_loader_and_libc_of_a_dynamic_program_and_nothing_for_a_static_one() {
        let libraries = linked_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libraries
                .iter()
                .any(|l| l.ends_with("ld-linux-x86-64.so.2")),
            "{libraries:?}"
        );
        assert!(
            libraries.iter().any(|l| l.ends_with("libc.so.6")),
            "{libraries:?}"
        );
        if Path::new(BUSYBOX).exists() {
            assert_eq!(
                linked_libraries(Path::new(BUSYBOX)).unwrap(),
                Vec::<std::path::PathBuf>::new()
            );
        }
    }
}
