//! One module per command of `fan-xdp`. Commands never import each other:
//! what two of them share lives in the module that owns it.

pub mod attach;
pub mod bind;
pub mod detach;
pub mod doctor;
pub mod generate;
pub mod map;
pub mod monitor;
pub mod show;
pub mod stats;

#[cfg(test)]
mod tests {
    /// The layering: a command uses the data-plane module, never aya
    /// directly, and never another command.
    #[test]
    fn commands_name_neither_aya_nor_each_other() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
        // Each command is a file or a folder of files.
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            // This file holds the test, and so the very names it looks for.
            .filter(|p| !p.ends_with("mod.rs"))
            .collect();
        let commands: Vec<String> = entries
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        let files: Vec<_> = entries
            .iter()
            .flat_map(|p| match std::fs::read_dir(p) {
                Ok(folder) => folder.map(|e| e.unwrap().path()).collect(),
                Err(_) => vec![p.clone()],
            })
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        assert!(
            commands.len() >= 5 && files.len() > commands.len(),
            "found only {commands:?} in {}",
            dir.display()
        );
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let name = file.strip_prefix(&dir).unwrap().display().to_string();
            for crate_name in ["aya::", "aya_log::", "aya_obj::"] {
                assert!(
                    !text.contains(crate_name),
                    "{name} names {crate_name}: go through crate::dataplane"
                );
            }
            // A command's own folder reaches its parts through `super::`.
            let own = file.parent() != Some(dir.as_path());
            for other in &commands {
                let paths = [format!("commands::{other}"), format!("super::{other}")];
                for path in paths.iter().take(if own { 1 } else { 2 }) {
                    assert!(
                        !text.contains(path.as_str()),
                        "{name} uses {path}: commands do not call each other"
                    );
                }
            }
        }
    }
}
