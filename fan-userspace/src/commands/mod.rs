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
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            // This file holds the test, and so the very names it looks for.
            .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("mod.rs"))
            .collect();
        let commands: Vec<String> = files
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            commands.len() >= 5,
            "found only {commands:?} in {}",
            dir.display()
        );
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let name = file.file_name().unwrap().to_string_lossy();
            for crate_name in ["aya::", "aya_log::", "aya_obj::"] {
                assert!(
                    !text.contains(crate_name),
                    "{name} names {crate_name}: go through crate::dataplane"
                );
            }
            for other in &commands {
                for path in [format!("commands::{other}"), format!("super::{other}")] {
                    assert!(
                        !text.contains(&path),
                        "{name} uses {path}: commands do not call each other"
                    );
                }
            }
        }
    }
}
