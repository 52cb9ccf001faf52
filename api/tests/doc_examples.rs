//! The manifests of the documentation: every file under `docs/examples/` deserialises into the
//! API types and passes the checks the API server makes with the CRD schemas (known fields,
//! types, required fields, enums, bounds, patterns, CEL rules); the objects they name exist
//! among the examples; every manifest shown in the docs is one of these files, verbatim; and the
//! docs' relative links reach existing files and headings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ir_api::backup::{Backup, ScheduledBackup};
use ir_api::crd::{BackupRepository, InstantRecovery};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::Value;

/// Docs whose manifests must be example files and whose links must resolve.
const DOCS: [&str; 5] = [
    "docs/quickstart.md",
    "docs/reference/crds.md",
    "docs/switchover.md",
    "docs/troubleshooting.md",
    "docs/security.md",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One YAML document of an example file.
struct Manifest {
    file: String,
    value: Value,
}

impl Manifest {
    fn field(&self, name: &str) -> &str {
        self.value[name].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    fn is(&self, kind: &str) -> bool {
        self.field("kind") == kind
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone()).unwrap_or_else(|e| {
            panic!("{}: {} {}: {e}", self.file, self.field("kind"), self.name())
        })
    }
}

fn example_files() -> Vec<(String, String)> {
    let dir = repo().join("docs/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".yaml"),
                "docs/examples/{name}: only .yaml manifests belong here"
            );
            let text = std::fs::read_to_string(&path).unwrap();
            (format!("docs/examples/{name}"), text)
        })
        .collect()
}

fn examples() -> Vec<Manifest> {
    let mut manifests = Vec::new();
    for (file, text) in example_files() {
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
            if !value.is_null() {
                manifests.push(Manifest {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    assert!(!manifests.is_empty(), "docs/examples/ holds no manifest");
    manifests
}

/// The OpenAPI schema of each kind, by (apiVersion, kind).
fn schemas() -> BTreeMap<(String, String), Value> {
    ir_api::crd::all_yaml()
        .iter()
        .flat_map(|(_, yaml)| {
            let crd: CustomResourceDefinition = serde_norway::from_str(yaml).unwrap();
            let group = crd.spec.group.clone();
            let kind = crd.spec.names.kind.clone();
            crd.spec.versions.into_iter().map(move |version| {
                let schema = version.schema.unwrap().open_api_v3_schema.unwrap();
                (
                    (format!("{group}/{}", version.name), kind.clone()),
                    serde_json::to_value(schema).unwrap(),
                )
            })
        })
        .collect()
}

#[test]
fn examples_deserialise_into_the_api_types() {
    for m in examples() {
        assert!(!m.name().is_empty(), "{}: metadata.name is missing", m.file);
        match (m.field("apiVersion"), m.field("kind")) {
            ("instantrecovery.dev/v1alpha1", "InstantRecovery") => {
                m.parse::<InstantRecovery>();
            }
            ("instantrecovery.dev/v1alpha1", "BackupRepository") => {
                m.parse::<BackupRepository>();
            }
            ("instantrecovery.dev/v1alpha1", "Backup") => {
                m.parse::<Backup>();
            }
            ("instantrecovery.dev/v1alpha1", "ScheduledBackup") => {
                m.parse::<ScheduledBackup>();
            }
            ("v1", "Secret") => {
                m.parse::<Secret>();
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                m.parse::<NetworkPolicy>();
            }
            (api_version, kind) => panic!(
                "{}: {api_version} {kind} is not a kind the docs should need",
                m.file
            ),
        }
    }
}

#[test]
fn examples_pass_the_crd_schemas() {
    let schemas = schemas();
    let mut checked = 0;
    for m in examples() {
        let key = (m.field("apiVersion").to_owned(), m.field("kind").to_owned());
        let Some(schema) = schemas.get(&key) else {
            continue;
        };
        let mut errors = Vec::new();
        let object = m.value.as_object().unwrap();
        let body: serde_json::Map<_, _> = object
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check(schema, &Value::Object(body), "", &mut errors);
        assert!(
            errors.is_empty(),
            "{}: {} {} would be refused:\n  {}",
            m.file,
            m.field("kind"),
            m.name(),
            errors.join("\n  ")
        );
        checked += 1;
    }
    assert!(checked > 0, "no example of a custom resource");
}

#[test]
fn the_schema_check_refuses_what_the_api_server_refuses() {
    let schemas = schemas();
    let schema = &schemas[&(
        "instantrecovery.dev/v1alpha1".to_owned(),
        "InstantRecovery".to_owned(),
    )];
    let errors_of = |spec: Value| {
        let mut errors = Vec::new();
        check(
            schema,
            &serde_json::json!({ "spec": spec }),
            "",
            &mut errors,
        );
        errors
    };
    let minimal = serde_json::json!({
        "backup": {"repositoryRef": {"name": "backups"}},
        "postgres": {"credentialsSecret": {"name": "db-superuser"}}
    });
    assert_eq!(errors_of(minimal.clone()), Vec::<String>::new());
    for (change, expected) in [
        (
            serde_json::json!({"switchover": {"mode": "Sometimes"}}),
            "spec.switchover.mode",
        ),
        (
            serde_json::json!({"switchover": {"mode": "Scheduled"}}),
            "switchover.at is required",
        ),
        (
            serde_json::json!({"swichover": {}}),
            "spec.swichover: unknown",
        ),
        (
            serde_json::json!({"cache": {"sizeLimit": "0"}}),
            "sizeLimit",
        ),
        (
            serde_json::json!({"retry": {"interval": "5 minutes"}}),
            "spec.retry.interval",
        ),
        (
            serde_json::json!({"retry": {"limit": 5000}}),
            "spec.retry.limit",
        ),
        (
            serde_json::json!({"backup": {"repositoryRef": {}}}),
            "spec.backup.repositoryRef: required field name",
        ),
        (
            serde_json::json!({"postgres": {"credentialsSecret": {"name": ""}}}),
            "spec.postgres.credentialsSecret.name: length",
        ),
        (
            serde_json::json!({"pointInTime": {"name": "a", "lsn": "0/3000000"}}),
            "spec.pointInTime: give exactly one of",
        ),
        (
            serde_json::json!({"pointInTime": {"immediate": false}}),
            "spec.pointInTime: give exactly one of",
        ),
        (
            serde_json::json!({"pointInTime": {"lsn": "3000000"}}),
            "spec.pointInTime.lsn",
        ),
        (
            serde_json::json!({"pointInTime": {"immediate": true, "timeline": "01"}}),
            "spec.pointInTime.timeline",
        ),
    ] {
        let mut spec = minimal.clone();
        for (key, value) in change.as_object().unwrap() {
            let merged = match (spec.get(key), value) {
                (Some(Value::Object(a)), Value::Object(b)) => {
                    let mut a = a.clone();
                    a.extend(b.clone());
                    Value::Object(a)
                }
                _ => value.clone(),
            };
            spec[key] = merged;
        }
        let errors = errors_of(spec);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{change}: expected an error about {expected}, got {errors:?}"
        );
    }
}

#[test]
fn an_s3_repository_needs_a_secret_or_the_opt_in() {
    let schemas = schemas();
    let schema = &schemas[&(
        "instantrecovery.dev/v1alpha1".to_owned(),
        "BackupRepository".to_owned(),
    )];
    let errors_of = |spec: Value| {
        let mut errors = Vec::new();
        check(
            schema,
            &serde_json::json!({ "spec": spec }),
            "",
            &mut errors,
        );
        errors
    };
    let refused = errors_of(serde_json::json!({"url": "s3://bucket/prefix"}));
    assert!(
        refused
            .iter()
            .any(|e| e.contains("needs a credentials Secret")),
        "{refused:?}"
    );
    let refused = errors_of(serde_json::json!({
        "url": "s3://bucket/prefix", "s3": {"useAmbientCredentials": false}
    }));
    assert!(!refused.is_empty());
    for allowed in [
        serde_json::json!({"url": "s3://bucket/prefix", "credentialsSecret": {"name": "keys"}}),
        serde_json::json!({"url": "s3://bucket/prefix", "s3": {"useAmbientCredentials": true}}),
        serde_json::json!({"url": "file:///var/lib/instant-recovery/repositories/prod"}),
    ] {
        assert_eq!(
            errors_of(allowed.clone()),
            Vec::<String>::new(),
            "{allowed}"
        );
    }
}

#[test]
fn objects_the_examples_name_are_examples_too() {
    let manifests = examples();
    let find = |kind: &str, namespace: &str, name: &str| {
        manifests
            .iter()
            .find(|m| m.is(kind) && m.namespace() == namespace && m.name() == name)
            .unwrap_or_else(|| panic!("no example {kind} {namespace}/{name}"))
    };
    let secret_keys = |secret: &Manifest| -> Vec<String> {
        let secret: Secret = secret.parse();
        let data = secret.data.into_iter().flatten().map(|(k, _)| k);
        let string_data = secret.string_data.into_iter().flatten().map(|(k, _)| k);
        data.chain(string_data).collect()
    };
    let needs_keys = |secret: &Manifest, keys: &[&str]| {
        let present = secret_keys(secret);
        for key in keys {
            assert!(
                present.iter().any(|k| k == key),
                "{}: Secret {} has no key {key}",
                secret.file,
                secret.name()
            );
        }
    };
    for m in &manifests {
        let ns = m.namespace();
        if m.is("InstantRecovery") {
            let ir: InstantRecovery = m.parse();
            find("BackupRepository", ns, &ir.spec.backup.repository_ref.name);
            let credentials = find("Secret", ns, &ir.spec.postgres.credentials_secret.name);
            needs_keys(credentials, &["username", "password"]);
            if let Some(replication) = &ir.spec.postgres.replication_secret {
                needs_keys(
                    find("Secret", ns, &replication.name),
                    &["username", "password"],
                );
            }
        }
        let backup_spec = if m.is("Backup") {
            Some(m.parse::<Backup>().spec)
        } else if m.is("ScheduledBackup") {
            Some(m.parse::<ScheduledBackup>().spec.backup)
        } else {
            None
        };
        if let Some(spec) = backup_spec {
            find("BackupRepository", ns, &spec.repository_ref.name);
            needs_keys(
                find("Secret", ns, &spec.cluster.credentials_secret.name),
                &["username", "password"],
            );
        }
        if m.is("BackupRepository") {
            let repo: BackupRepository = m.parse();
            if let Some(secret) = &repo.spec.credentials_secret {
                needs_keys(
                    find("Secret", ns, &secret.name),
                    &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                );
            }
        }
    }
}

#[test]
fn manifests_in_the_docs_are_the_examples() {
    let files = example_files();
    let mut shown = 0;
    for doc in DOCS {
        let path = repo().join(doc);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
        for block in yaml_blocks(&text) {
            if !block.lines().any(|l| l.starts_with("apiVersion:")) {
                continue;
            }
            let found = files.iter().any(|(_, content)| content.trim_end() == block);
            assert!(
                found,
                "{doc}: this manifest is not a file of docs/examples/ (copy the file verbatim, \
                 so that it is tested):\n{block}"
            );
            shown += 1;
        }
    }
    assert!(shown > 0, "the docs show no manifest");
}

/// The contents of the ```yaml fenced blocks of a Markdown text, trailing blanks trimmed.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(Vec::new()),
            Some(lines) if line.trim_start() == "```" => {
                blocks.push(lines.join("\n").trim_end().to_owned());
                current = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    blocks
}

/// Checks `value` against a structural OpenAPI schema as the API server does, adding one
/// message per violation.
fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{at}: must not be null"));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        _ if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!(
            "{at}: {value} is not of type {}",
            schema["type"].as_str().unwrap_or("int-or-string")
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    bounds(schema, value, at, errors);
    if let (Some(pattern), Some(text)) = (
        schema.get("pattern").and_then(Value::as_str),
        value.as_str(),
    ) && !matches_pattern(pattern, text)
    {
        errors.push(format!("{at}: {text:?} does not match {pattern}"));
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time")
        && let Some(text) = value.as_str()
        && text.parse::<jiff::Timestamp>().is_err()
    {
        errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
    }
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let expression = rule["rule"].as_str().unwrap_or_default();
        if !cel(expression, value) {
            let message = rule["message"].as_str().unwrap_or(expression);
            errors.push(format!("{at}: {message}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        let values = schema.get("additionalProperties").filter(|v| v.is_object());
        let open = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                errors.push(format!("{at}: required field {required} is missing"));
            }
        }
        for (key, child) in object {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match (properties.and_then(|p| p.get(key)), values) {
                (Some(child_schema), _) | (None, Some(child_schema)) => {
                    check(child_schema, child, &child_path, errors)
                }
                (None, None) if open => {}
                (None, None) => errors.push(format!("{child_path}: unknown field")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(items, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn bounds(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let limit = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(n) = value.as_f64()
        && (limit("minimum").is_some_and(|min| n < min)
            || limit("maximum").is_some_and(|max| n > max))
    {
        errors.push(format!("{at}: {n} is out of range"));
    }
    let length = match value {
        Value::String(s) => Some(s.chars().count() as f64),
        Value::Array(a) => Some(a.len() as f64),
        _ => None,
    };
    if let Some(len) = length {
        let (min, max) = match value {
            Value::String(_) => ("minLength", "maxLength"),
            _ => ("minItems", "maxItems"),
        };
        if limit(min).is_some_and(|m| len < m) || limit(max).is_some_and(|m| len > m) {
            errors.push(format!("{at}: length {len} is out of bounds"));
        }
    }
}

/// The schemas' patterns, checked without a regex engine. A pattern this does not know fails
/// the test, so that a new one gets a check here.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    let id = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    match pattern {
        "^(latest|[A-Za-z0-9-]+)$" | "^[A-Za-z0-9-]+$" => id(text),
        "^([0-9]+(ms|s|m|h))+$" => text.parse::<ir_api::GoDuration>().is_ok(),
        "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$" => text.split_once('/').is_some_and(|(hi, lo)| {
            [hi, lo]
                .iter()
                .all(|h| (1..=8).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit()))
        }),
        "^(latest|current|[1-9][0-9]*)$" => {
            matches!(text, "latest" | "current")
                || (!text.starts_with('0')
                    && !text.is_empty()
                    && text.chars().all(|c| c.is_ascii_digit()))
        }
        other => panic!("no check for pattern {other}: add one to matches_pattern"),
    }
}

/// The schemas' CEL rules, on a new object (no oldSelf). A rule this does not know fails the
/// test, so that a new one gets a check here.
fn cel(rule: &str, value: &Value) -> bool {
    let text = || match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match rule {
        "self == oldSelf" | "has(self.pointInTime) == has(oldSelf.pointInTime)" => true,
        "[has(self.time), has(self.lsn), has(self.xid), has(self.name), has(self.immediate) && self.immediate].filter(t, t).size() == 1" =>
        {
            let given = ["time", "lsn", "xid", "name"]
                .iter()
                .filter(|k| value.get(**k).is_some())
                .count();
            given + usize::from(value["immediate"] == Value::Bool(true)) == 1
        }
        "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))" => {
            ir_api::quantity_bytes(&text()).is_some_and(|bytes| bytes > 0)
        }
        // The body checked here has no metadata; the API server checks the names' rules
        // (e2e/tests/crds.rs has the names too long).
        "self.metadata.name.size() <= 63" | "self.metadata.name.size() <= 48" => true,
        "has(self.host) != has(self.service)" => {
            value.get("host").is_some() != value.get("service").is_some()
        }
        "has(self.keepLast) || has(self.keepDaily) || has(self.keepWeekly) || has(self.keepWithin)" => {
            ["keepLast", "keepDaily", "keepWeekly", "keepWithin"]
                .iter()
                .any(|k| value.get(*k).is_some())
        }
        "self.mode != 'Scheduled' || has(self.at)" => {
            value["mode"] != "Scheduled" || value.get("at").is_some()
        }
        "self.matches('^s3://[^/]+') || self.matches('^file:///.')" => {
            let url = text();
            url.strip_prefix("s3://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
                || url.len() > "file:///".len() && url.starts_with("file:///")
        }
        "!self.url.startsWith('s3://') || has(self.credentialsSecret) || (has(self.s3) && has(self.s3.useAmbientCredentials) && self.s3.useAmbientCredentials)" => {
            !value["url"]
                .as_str()
                .unwrap_or_default()
                .starts_with("s3://")
                || value.get("credentialsSecret").is_some()
                || value["s3"]["useAmbientCredentials"] == Value::Bool(true)
        }
        "self.startsWith('https://') || self.startsWith('http://')" => {
            let url = text();
            url.starts_with("https://") || url.starts_with("http://")
        }
        other => panic!("no check for CEL rule {other}: add one to cel"),
    }
}

#[test]
fn links_between_the_docs_resolve() {
    for doc in DOCS {
        let path = repo().join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        for link in relative_links(&text) {
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            assert!(target.exists(), "{doc}: link {link}: no such file");
            if !anchor.is_empty() {
                let target_text = std::fs::read_to_string(&target).unwrap();
                let anchors = heading_anchors(&target_text);
                assert!(
                    anchors.iter().any(|a| a == anchor),
                    "{doc}: link {link}: no such heading (there are {anchors:?})"
                );
            }
        }
    }
}

/// Targets of the Markdown links of `text` that are not web addresses.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| !target.starts_with("http://") && !target.starts_with("https://"))
        .map(str::to_owned)
        .collect()
}

/// The anchors of the headings of a Markdown text (code blocks skipped).
fn heading_anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.push(slug(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// The anchor GitHub gives a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}
