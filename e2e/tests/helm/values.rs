//! values.schema.json refuses bad values naming the field.

use super::*;

#[test]
fn values_schema_refuses_bad_values_naming_the_field() {
    let helm = Helm::new();
    let chart = helm::chart_dir();
    let chart = chart.to_str().unwrap();
    for (set, field, problem) in [
        (
            "operator.replicas=two",
            "/operator/replicas",
            "want integer",
        ),
        ("operator.replica=2", "/operator", "'replica' not allowed"),
        (
            "image.pullPolicy=Sometimes",
            "/image/pullPolicy",
            "must be one of",
        ),
        (
            "agent.mountRoot=relative",
            "/agent/mountRoot",
            "does not match pattern",
        ),
        (
            "metrics.serviceMonitor.enabled=maybe",
            "/metrics/serviceMonitor/enabled",
            "want boolean",
        ),
        (
            "operator.resources.requests.cpu=lots",
            "/operator/resources/requests/cpu",
            "",
        ),
        (
            "watchNamespaces={db,Not_A_Namespace}",
            "/watchNamespaces/1",
            "does not match pattern",
        ),
        (
            "operator.watchNamespace=-db",
            "/operator/watchNamespace",
            "does not match pattern",
        ),
        (
            "repositories.fileRoots={relative/dir}",
            "/repositories/fileRoots/0",
            "does not match pattern",
        ),
        (
            "repositories.fileRoots={/}",
            "/repositories/fileRoots/0",
            "does not match pattern",
        ),
        (
            "repositories.fileRoots={/srv/../etc}",
            "/repositories/fileRoots/0",
            "",
        ),
        (
            "repositories.allowAmbientCredentials=yes",
            "/repositories/allowAmbientCredentials",
            "want boolean",
        ),
    ] {
        let run = helm.run(&["template", "ir", chart, "--set", set]);
        assert!(!run.success, "helm accepted --set {set}:\n{}", run.stdout);
        assert!(
            run.stderr.contains(&format!("at '{field}'")) && run.stderr.contains(problem),
            "--set {set}: helm's message does not name {field} ({problem}):\n{}",
            run.stderr
        );
    }
    // --set-string keeps a number a string, which the schema refuses as well.
    let run = helm.run(&["template", "ir", chart, "--set-string", "metrics.port=8080"]);
    assert!(
        !run.success && run.stderr.contains("at '/metrics/port'"),
        "{}",
        run.stderr
    );
}
