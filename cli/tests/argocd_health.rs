//! The Argo CD health checks of gitops/argocd/instantrecovery.dev/<Kind>/health.lua run by a
//! real Lua 5.1 interpreter, the language version of Argo CD's gopher-lua, on the samples their
//! health_test.yaml lists: InstantRecovery in every phase, BackupRepository checked or not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ir_api::crd::{BackupRepository, InstantRecovery};
use kube::CustomResourceExt;
use serde_json::Value;

const LUA: &str = "lua5.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kinds with a health check, and the key argocd-cm installs it under.
const KINDS: [&str; 2] = ["InstantRecovery", "BackupRepository"];

fn check_dir(kind: &str) -> PathBuf {
    repo().join("gitops/argocd/instantrecovery.dev").join(kind)
}

fn read_yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A Lua 5.1 string literal holding `text` byte for byte.
fn lua_string(text: &str) -> String {
    let mut literal = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '"' => literal.push_str("\\\""),
            c if c.is_ascii_control() => literal.push_str(&format!("\\{:03}", c as u32)),
            c => literal.push(c),
        }
    }
    literal.push('"');
    literal
}

/// The Lua table Argo CD hands a health script as `obj`: objects keyed by name, arrays from 1.
fn lua_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Runs `program` with lua5.1; its stdout. Panics when lua5.1 is missing or the program fails.
fn run_lua(program: &str) -> String {
    let mut child = Command::new(LUA)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{LUA} cannot run ({e}): install the Debian package lua5.1 (scripts/setup-test-deps.sh)"
            )
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(program.as_bytes())
        .expect("write the program to lua5.1");
    let out = child.wait_with_output().expect("wait for lua5.1");
    assert!(
        out.status.success(),
        "lua5.1 failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from lua5.1")
}

/// (status, message) the health script of `kind` returns for `object`, run the way Argo CD runs
/// it: the object in the global `obj`, the script's chunk returning a table.
fn health(kind: &str, object: &Value) -> (String, String) {
    let script = check_dir(kind).join("health.lua");
    let program = format!(
        "obj = {}\nlocal hs = assert(loadfile({}))()\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(object),
        lua_string(script.to_str().expect("utf-8 path"))
    );
    let out = run_lua(&program);
    let (status, message) = out
        .split_once('\n')
        .unwrap_or_else(|| panic!("health.lua printed no status and message: {out:?}"));
    (status.to_owned(), message.to_owned())
}

struct Case {
    input: PathBuf,
    object: Value,
    status: String,
    message: String,
}

fn cases(kind: &str) -> Vec<Case> {
    let dir = check_dir(kind);
    let tests = read_yaml(&dir.join("health_test.yaml"));
    let tests = tests["tests"]
        .as_array()
        .expect("health_test.yaml lists tests");
    tests
        .iter()
        .map(|t| {
            let input = dir.join(t["inputPath"].as_str().expect("inputPath"));
            Case {
                object: read_yaml(&input),
                input,
                status: t["healthStatus"]["status"].as_str().expect("status").into(),
                message: t["healthStatus"]["message"]
                    .as_str()
                    .expect("message")
                    .into(),
            }
        })
        .collect()
}

#[test]
fn every_sample_gets_its_expected_health() {
    let mut wrong = Vec::new();
    for kind in KINDS {
        let cases = cases(kind);
        assert!(!cases.is_empty(), "no samples for {kind}");
        for case in &cases {
            // A sample the API types would not read could hide a gap in the script.
            let readable = match kind {
                "InstantRecovery" => {
                    serde_json::from_value::<InstantRecovery>(case.object.clone()).err()
                }
                _ => serde_json::from_value::<BackupRepository>(case.object.clone()).err(),
            };
            if let Some(e) = readable {
                panic!("{} is not a {kind}: {e}", case.input.display());
            }
            assert_eq!(case.object["kind"], kind, "{}", case.input.display());
            let got = health(kind, &case.object);
            if got != (case.status.clone(), case.message.clone()) {
                wrong.push(format!(
                    "{}: expected {} {:?}, got {} {:?}",
                    case.input.display(),
                    case.status,
                    case.message,
                    got.0,
                    got.1
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_samples_cover_every_phase_and_health() {
    let crd = serde_json::to_value(InstantRecovery::crd()).expect("CRD as JSON");
    let phases = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["phase"]["enum"];
    let phases = phases
        .as_array()
        .unwrap_or_else(|| panic!("status.phase is an enum in the CRD: {phases}"));
    let recoveries = cases("InstantRecovery");
    for phase in phases {
        assert!(
            recoveries
                .iter()
                .any(|c| c.object["status"]["phase"] == *phase),
            "no sample in testdata/ for phase {phase}"
        );
    }
    for health in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(
            recoveries.iter().any(|c| c.status == health),
            "no InstantRecovery sample expects {health}"
        );
    }
    let repositories = cases("BackupRepository");
    for health in ["Healthy", "Progressing", "Degraded"] {
        assert!(
            repositories.iter().any(|c| c.status == health),
            "no BackupRepository sample expects {health}"
        );
    }
}

#[test]
fn strings_reach_lua_byte_for_byte() {
    let text = "quote \" backslash \\ newline \n tab \t nul \0 café";
    let out = run_lua(&format!(
        "obj = {}\nio.write(obj.s)",
        lua_value(&serde_json::json!({"s": text}))
    ));
    assert_eq!(out, text);
}

#[test]
fn the_argocd_cm_example_carries_the_scripts_verbatim() {
    let cm = read_yaml(&repo().join("docs/gitops/argocd/argocd-cm.yaml"));
    for kind in KINDS {
        let key = format!("resource.customizations.health.instantrecovery.dev_{kind}");
        let installed = cm["data"][&key]
            .as_str()
            .unwrap_or_else(|| panic!("argocd-cm.yaml sets {key}"));
        let script = std::fs::read_to_string(check_dir(kind).join("health.lua")).unwrap();
        assert!(
            installed == script,
            "{key} in docs/gitops/argocd/argocd-cm.yaml differs from {kind}/health.lua: copy it"
        );
    }
}
