//! Writes the CustomResourceDefinitions to `crds/` (or the directory given), one file per kind.
//! CI fails when the checked-in files differ from what this writes.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds")));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in ir_api::crd::all_yaml() {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
