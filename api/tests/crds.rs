//! The checked-in CRDs are the ones the code generates.

#[test]
fn checked_in_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let generated = ir_api::crd::all_yaml();
    for (file, yaml) in &generated {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            on_disk == *yaml,
            "crds/{file} is out of date with api/src/crd.rs: run `cargo run -p ir-api --bin crdgen`"
        );
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        files,
        generated.len(),
        "crds/ holds files crdgen does not write"
    );
}
