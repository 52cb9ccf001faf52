//! Writes the CustomResourceDefinitions, one file per kind, to `crds/` and to the Helm chart's
//! `charts/instant-recovery/crds/` under the repository root (or the root given).
//! CI fails when the checked-in files differ from what this writes.

use std::path::{Path, PathBuf};

/// Directories, relative to the repository root, that hold the generated CRDs.
const CRD_DIRS: [&str; 2] = ["crds", "charts/instant-recovery/crds"];

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    let crds = ir_api::crd::all_yaml();
    for dir in CRD_DIRS {
        for (file, yaml) in &crds {
            write(&root.join(dir).join(file), yaml)?;
        }
    }
    Ok(())
}

fn write(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("a generated file lies in a directory"))?;
    std::fs::write(path, content)?;
    println!("wrote {}", path.display());
    Ok(())
}
