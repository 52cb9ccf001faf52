//! docs/troubleshooting.md explains every status reason the code can set. Reasons are CamelCase
//! string literals in the operator (state machine, Kubernetes driver, BackupRepository
//! controller, local driver) and in the node agent; the test collects every such literal from
//! their sources and compares with the reasons the doc's tables list, both ways.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/troubleshooting.md";
/// Source trees whose CamelCase literals are reasons, unless listed below.
const SOURCES: [&str; 2] = ["operator/src", "fuse-agent/src"];

/// CamelCase literals of those sources that are not reasons of ours: Kubernetes values the code
/// writes or matches (Pod spec fields, Pod phases, condition statuses and types, kinds, the
/// Event action, a toleration's operator, a NetworkPolicy's type, a seccomp profile).
const NOT_REASONS: [&str; 20] = [
    "Always",
    "Directory",
    "Exists",
    "Ingress",
    "NetworkPolicy",
    "RuntimeDefault",
    "HostToContainer",
    "Never",
    "OnRootMismatch",
    "ReadWriteOnce",
    "Running",
    "Succeeded",
    "Failed",
    "True",
    "False",
    "Reachable",
    "Ready",
    "BackupRepository",
    "InstantRecovery",
    "Reconcile",
];

/// The kubelet's container reasons the operator turns into `PodCannotStart`: the doc names them
/// in that entry.
const KUBELET_REASONS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            files.push(path);
        }
    }
}

/// The contents of the string literals of Rust source `code`, outside comments and test modules.
fn string_literals(code: &str) -> Vec<String> {
    // Unit tests come last in a file; what they assert on is not what the code sets.
    let end = code
        .lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| line.len() + 1)
        .sum::<usize>()
        .min(code.len());
    let code = &code[..end];
    let chars: Vec<char> = code.chars().collect();
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if matches!(chars.get(i + 1), Some('"' | '#'))
                && (i == 0 || !chars[i - 1].is_alphanumeric() && chars[i - 1] != '_') =>
            {
                let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
                if chars.get(i + 1 + hashes) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = i + 2 + hashes;
                let mut end = start;
                while end < chars.len()
                    && !(chars[end] == '"'
                        && chars[end + 1..].iter().take_while(|c| **c == '#').count() >= hashes)
                {
                    end += 1;
                }
                literals.push(chars[start..end.min(chars.len())].iter().collect());
                i = end + 1 + hashes;
            }
            '"' => {
                let mut literal = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(c) = chars.get(i) {
                        literal.push(*c);
                    }
                    i += 1;
                }
                literals.push(literal);
                i += 1;
            }
            // A char literal such as '"' or '\'' (a lifetime has no closing quote).
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            _ => i += 1,
        }
    }
    literals
}

fn is_camel_case(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric())
        && word.chars().any(|c| c.is_ascii_lowercase())
}

/// CamelCase literals of the sources, with a file each was found in.
fn reasons_in_code() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    for dir in SOURCES {
        rust_files(&repo().join(dir), &mut files);
    }
    assert!(files.len() > 5, "found too few sources in {SOURCES:?}");
    let mut found = BTreeSet::new();
    for file in files {
        let code = std::fs::read_to_string(&file).unwrap();
        let shown = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        for literal in string_literals(&code) {
            if is_camel_case(&literal)
                && !NOT_REASONS.contains(&literal.as_str())
                && !KUBELET_REASONS.contains(&literal.as_str())
            {
                found.insert((literal, shown.clone()));
            }
        }
    }
    found
}

/// The reasons the doc's tables explain: the first code span of each table row.
fn reasons_in_doc(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|word| is_camel_case(word))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_reason_in_the_code_is_explained() {
    let doc = std::fs::read_to_string(repo().join(DOC)).unwrap();
    let documented = reasons_in_doc(&doc);
    let missing: Vec<_> = reasons_in_code()
        .into_iter()
        .filter(|(reason, _)| !documented.contains(reason))
        .map(|(reason, file)| format!("{reason} ({file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "{DOC} does not explain these reasons (add a table row `| `Reason` | ...`, or, if a \
         literal is no reason, list it in NOT_REASONS of this test): {missing:?}"
    );
    for reason in KUBELET_REASONS {
        assert!(
            doc.contains(&format!("`{reason}`")),
            "{DOC} does not name the kubelet reason {reason}"
        );
    }
}

#[test]
fn every_reason_explained_exists_in_the_code() {
    let doc = std::fs::read_to_string(repo().join(DOC)).unwrap();
    let in_code: BTreeSet<String> = reasons_in_code().into_iter().map(|(r, _)| r).collect();
    let stale: Vec<_> = reasons_in_doc(&doc)
        .into_iter()
        .filter(|reason| !in_code.contains(reason))
        .collect();
    assert!(
        stale.is_empty(),
        "{DOC} explains reasons the code no longer sets: {stale:?}"
    );
}

#[test]
fn literals_are_found_outside_comments_and_tests() {
    let code = r##"
        // "InComment"
        fn f<'a>(x: &'a str) -> Failure {
            let quote = '"';
            let escaped = '\'';
            let raw = r#"RawOne"#;
            Failure::permanent(
                "FirstReason",
                format!("a \"quoted\" {x} \
                         message"),
            )
        }
        #[cfg(test)]
        mod tests { const T: &str = "InTest"; }
    "##;
    let camel: Vec<_> = string_literals(code)
        .into_iter()
        .filter(|l| is_camel_case(l))
        .collect();
    assert_eq!(camel, ["RawOne", "FirstReason"]);
    assert_eq!(
        reasons_in_doc("| `CacheBusy` | x |\n| `agent.cacheRoot` | y |\n`NotRow`"),
        BTreeSet::from(["CacheBusy".to_owned()])
    );
}
