//! docs/troubleshooting.md explains every reason of [`Reason`], and nothing else, in its tables,
//! with the class the enum gives it: its "Transient" column says `yes` for a retried failure,
//! `no` for one that fails the recovery, `-` for progress. The code cannot set a reason the enum
//! does not have, so this keeps the docs and the code in step.

use std::collections::BTreeMap;
use std::path::Path;

use ir_api::Reason;
use ir_api::reason::Class;

/// `reason -> Transient column` of every table row of the doc.
fn rows() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/troubleshooting.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `Reason` | Phase | Transient | Meaning | What to do |
        if cells.len() < 6 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let before = rows.insert(name.clone(), cells[3].to_owned());
        assert!(before.is_none(), "{name} has two rows");
    }
    rows
}

#[test]
fn every_reason_is_explained_with_its_class() {
    let rows = rows();
    for reason in Reason::ALL {
        let column = rows
            .get(reason.as_str())
            .unwrap_or_else(|| panic!("docs/troubleshooting.md has no row for {reason}"));
        let fits = match reason.class() {
            Class::Progress => column == "-",
            Class::Transient => column == "yes" || column.starts_with("stays"),
            Class::Permanent => column == "no",
            Class::Relayed => column == "as the agent says",
        };
        assert!(
            fits,
            "{reason} is {:?} but its row says {column:?}",
            reason.class()
        );
    }
}

#[test]
fn every_reason_explained_exists() {
    for name in rows().keys() {
        assert!(
            name.parse::<Reason>().is_ok(),
            "docs/troubleshooting.md explains {name}, which no code can set"
        );
    }
}
