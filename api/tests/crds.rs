//! The checked-in generated files (the CRDs in `crds/` and in the Helm chart, the CRD reference)
//! are the ones `crdgen` writes from the types.

use std::collections::BTreeMap;
use std::path::Path;

/// Directories that hold nothing but what `crdgen` writes.
const GENERATED_DIRS: [&str; 3] = ["crds", "charts/instant-recovery/crds", "docs/reference"];

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|entry| {
            let path = entry.expect("a readable directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let content = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            (name, content)
        })
        .collect()
}

#[test]
fn checked_in_generated_files_match_the_types() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fresh = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crdgen");
    let _ = std::fs::remove_dir_all(&fresh);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg(&fresh)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("crdgen runs");
    assert!(status.success(), "crdgen failed: {status}");

    for dir in GENERATED_DIRS {
        let generated = files(&fresh.join(dir));
        assert!(!generated.is_empty(), "crdgen wrote nothing to {dir}/");
        let on_disk = files(&repo.join(dir));
        for (file, content) in &generated {
            assert!(
                on_disk.get(file) == Some(content),
                "{dir}/{file} is out of date with api/src: run `cargo run -p ir-api --bin crdgen`"
            );
        }
        let extra: Vec<_> = on_disk
            .keys()
            .filter(|f| !generated.contains_key(*f))
            .collect();
        assert!(
            extra.is_empty(),
            "{dir}/ holds files crdgen does not write: {extra:?}"
        );
    }
}
