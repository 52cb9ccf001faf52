//! The image's Dockerfile: hadolint finds nothing (with tools/hadolint/hadolint.yaml, which
//! also requires the OCI labels), it builds with scripts/build-release.sh (the same steps as a
//! release outside the image), from base images pinned by version, runs as a numeric non-root
//! user with FUSE 3 and CA certificates, and the build context keeps what the build needs.

use std::path::Path;

use ir_e2e::helm::{self, Run};

fn read(path: &str) -> String {
    std::fs::read_to_string(helm::repo_root().join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn hadolint(dockerfile: &Path) -> Run {
    let root = helm::repo_root();
    let output = std::process::Command::new(helm::hadolint_bin())
        .arg("--no-color")
        .arg("--config")
        .arg(root.join("tools/hadolint/hadolint.yaml"))
        .arg(dockerfile)
        .output()
        .expect("run hadolint");
    Run::from(output)
}

/// The Dockerfile's instructions, continuation lines joined and comments left out, as
/// (instruction, arguments) per stage.
fn stages(dockerfile: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = vec![Vec::new()];
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (instruction, arguments) = pending
                    .split_once(char::is_whitespace)
                    .unwrap_or((pending.as_str(), ""));
                let instruction = instruction.to_uppercase();
                if instruction == "FROM" {
                    stages.push(Vec::new());
                }
                let arguments = arguments.split_whitespace().collect::<Vec<_>>().join(" ");
                stages.last_mut().unwrap().push((instruction, arguments));
                pending.clear();
            }
        }
    }
    stages
}

#[test]
fn dockerfile_passes_hadolint_and_a_flawed_one_does_not() {
    let root = helm::repo_root();
    let run = hadolint(&root.join("Dockerfile"));
    assert!(run.success, "hadolint:\n{}{}", run.stdout, run.stderr);

    // The linter runs its rules and our configuration: each flaw below is reported.
    let dockerfile = read("Dockerfile");
    let dir = tempfile::tempdir().unwrap();
    for (flaw, flawed, rule) in [
        (
            "recommended packages",
            dockerfile.replace("install -y --no-install-recommends", "install -y"),
            "DL3015",
        ),
        (
            "a missing OCI label",
            dockerfile.replace("org.opencontainers.image.source=", "org.example.source="),
            "DL3049",
        ),
    ] {
        assert_ne!(flawed, dockerfile, "{flaw}: the Dockerfile changed");
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, &flawed).unwrap();
        let run = hadolint(&path);
        assert!(
            !run.success && run.stdout.contains(rule),
            "hadolint missed {flaw} ({rule}):\n{}{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn image_is_built_by_the_release_script_from_pinned_bases_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let stages = stages(&dockerfile);
    let [global, build, runtime] = &stages[..] else {
        panic!("global ARGs, a build stage and a runtime stage: {stages:#?}");
    };
    let arg = |name: &str| {
        global
            .iter()
            .find_map(|(i, a)| {
                (i == "ARG")
                    .then(|| a.strip_prefix(&format!("{name}=")))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no global ARG {name}"))
            .to_owned()
    };
    // Base images by full version, never a floating tag.
    let rust_image = arg("RUST_IMAGE");
    let rust_version = rust_image
        .split_once(":")
        .and_then(|(_, tag)| tag.split('-').next())
        .unwrap_or_default();
    assert_eq!(
        rust_version
            .split('.')
            .filter(|p| p.parse::<u32>().is_ok())
            .count(),
        3,
        "RUST_IMAGE pins a Rust x.y.z: {rust_image}"
    );
    let runtime_image = arg("RUNTIME_IMAGE");
    assert!(
        runtime_image.contains(":13.") && runtime_image.ends_with("-slim"),
        "RUNTIME_IMAGE pins a slim Debian point release: {runtime_image}"
    );
    assert_eq!(build[0], ("FROM".into(), "${RUST_IMAGE} AS build".into()));
    assert_eq!(runtime[0], ("FROM".into(), "${RUNTIME_IMAGE}".into()));

    // The build stage runs the release script, reproducibly, into /out, which the runtime
    // stage copies; the script builds every workspace binary, --locked.
    let build_runs: Vec<&String> = build
        .iter()
        .filter_map(|(i, a)| (i == "RUN").then_some(a))
        .collect();
    assert!(
        build_runs.iter().any(|run| {
            run.ends_with(
                "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} OUT_DIR=/out scripts/build-release.sh",
            )
        }),
        "the build stage runs scripts/build-release.sh: {build_runs:?}"
    );
    assert!(build.contains(&("ARG".into(), "SOURCE_DATE_EPOCH=0".into())));
    let script = read("scripts/build-release.sh");
    assert!(
        script.contains(
            r#"cargo build --profile "${IR_BUILD_PROFILE:-release}" --locked --workspace --bins"#
        ),
        "scripts/build-release.sh builds every workspace binary, locked"
    );
    assert!(
        read("scripts/test.sh").contains("scripts/build-release.sh"),
        "the test suite (and so CI) builds the binaries it runs with scripts/build-release.sh"
    );
    assert!(
        runtime.contains(&("COPY".into(), "--from=build /out/ /usr/local/bin/".into())),
        "the runtime stage takes the script's output: {runtime:#?}"
    );

    // FUSE 3 and CA certificates, a numeric non-root user, the operator by default.
    let installs = runtime
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains("apt-get install"))
        .map(|(_, a)| a.clone())
        .expect("the runtime stage installs packages");
    for package in ["fuse3", "ca-certificates"] {
        assert!(
            installs.split_whitespace().any(|w| w == package),
            "{package}: {installs}"
        );
    }
    let user = runtime
        .iter()
        .rev()
        .find_map(|(i, a)| (i == "USER").then_some(a.as_str()))
        .expect("the runtime stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER is numeric: {user}"));
    assert_ne!(uid, 0, "the image runs as non-root");
    assert_eq!(
        runtime.last().unwrap(),
        &(
            "ENTRYPOINT".into(),
            r#"["/usr/local/bin/ir-operator"]"#.into()
        )
    );
}

#[test]
fn build_context_keeps_the_workspace_and_leaves_out_build_output() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for left_out in ["target", ".git"] {
        assert!(
            ignored.iter().any(|i| i == left_out),
            "{left_out} is in .dockerignore"
        );
    }
    // Cargo needs every member's manifest to load the workspace, and the script to build.
    let manifest = read("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("Cargo.toml lists its members on one line");
    let mut needed: Vec<String> = members
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .collect();
    assert!(needed.len() >= 5, "workspace members: {needed:?}");
    needed.extend(["Cargo.toml", "Cargo.lock", "scripts/build-release.sh"].map(String::from));
    for path in &needed {
        let kept = ignored
            .iter()
            .all(|i| path != i && !path.starts_with(&format!("{i}/")));
        assert!(
            kept,
            "the build needs {path}, which .dockerignore leaves out"
        );
    }
}
