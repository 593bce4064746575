//! The documentation's examples of `fan-xdp map` (an offline calculator, so
//! no namespace is needed) are run and compared with what they show: a
//! ```console block whose first line is `$ fan-xdp map ...` must print
//! exactly the lines that follow it.

use std::path::{Path, PathBuf};

use fan_tests::topology::fan_xdp_binary;

/// A shown command and the output printed under it.
struct Example {
    file: PathBuf,
    line: usize,
    args: Vec<String>,
    shown: String,
}

fn examples_in(file: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if *line != "```console" {
            continue;
        }
        let Some(command) = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix("$ fan-xdp map "))
        else {
            continue;
        };
        let shown: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .copied()
            .collect();
        out.push(Example {
            file: file.to_path_buf(),
            line: i + 2,
            args: std::iter::once("map".to_string())
                .chain(command.split_whitespace().map(str::to_string))
                .collect(),
            shown: shown.iter().map(|l| format!("{l}\n")).collect(),
        });
    }
    out
}

#[test]
fn every_map_example_in_the_docs_prints_what_it_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let examples: Vec<Example> = files.iter().flat_map(|f| examples_in(f)).collect();
    assert!(
        examples.iter().any(|e| e.file.ends_with("README.md")),
        "the README shows no `fan-xdp map` example any more: this test checks nothing there"
    );
    for example in &examples {
        let out = std::process::Command::new(fan_xdp_binary())
            .args(&example.args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}:{}: {}",
            example.file.display(),
            example.line,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            example.shown,
            "{}:{}: `fan-xdp {}` prints something else than the docs show",
            example.file.display(),
            example.line,
            example.args.join(" ")
        );
    }
}
