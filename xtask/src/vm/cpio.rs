//! A newc cpio archive, written directly: the initramfs format the kernel reads.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// A newc cpio archive, written directly: the initramfs format the kernel reads.
pub(super) struct Cpio {
    out: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<PathBuf>,
}

impl Cpio {
    pub(super) fn new() -> Self {
        Self {
            out: Vec::new(),
            inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.inode += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(super) fn dir(&mut self, path: &Path) {
        for ancestor in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            let s = ancestor
                .to_string_lossy()
                .trim_start_matches('/')
                .to_string();
            if !s.is_empty() && self.dirs.insert(ancestor.to_path_buf()) {
                self.entry(&s, 0o040755, &[]);
            }
        }
    }

    pub(super) fn file(&mut self, path: &str, data: &[u8], executable: bool) {
        let p = Path::new(path);
        if let Some(parent) = p.parent() {
            self.dir(parent);
        }
        let mode = if executable { 0o100755 } else { 0o100644 };
        self.entry(path.trim_start_matches('/'), mode, data);
    }

    pub(super) fn copy(&mut self, from: &Path, to: &str) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let executable = fs::metadata(from)?.permissions().mode() & 0o111 != 0;
        self.file(to, &data, executable);
        Ok(())
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}
