//! Writes the generated artifacts (the CRD under `crds/`, the chart's generated files).
//! With `--check`, writes nothing and fails when a committed file is out of date.
use std::path::Path;

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let mut stale = Vec::new();
    for (path, contents) in eao::operator::crdgen::artifacts() {
        let path = Path::new(path);
        if check {
            if std::fs::read_to_string(path).ok().as_deref() != Some(contents.as_str()) {
                stale.push(path.display().to_string());
            }
            continue;
        }
        if let Some(dir) = path.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("cannot create {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
        if let Err(e) = std::fs::write(path, contents) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("wrote {}", path.display());
    }
    if !stale.is_empty() {
        eprintln!("out of date (run `cargo run --bin crdgen`): {}", stale.join(", "));
        std::process::exit(1);
    }
}
