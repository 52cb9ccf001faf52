//! An operator serving one namespace with the chart's Roles alone.

use super::*;

/// Whether ServiceAccount `account` of the installation may `verb` `group`/`resource` in
/// `namespace` (cluster-wide when `None`), as the API server's authorizer answers.
async fn may(
    fx: &Installation,
    account: &str,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{SYSTEM_NAMESPACE}:{account}"
            )),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{SYSTEM_NAMESPACE}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(fx.plane.admin())
        .create(&PostParams::default(), &review)
        .await
        .expect("a SubjectAccessReview")
        .status
        .expect("its answer")
        .allowed
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_serving_one_namespace_recovers_there_with_its_roles_alone() {
    let fx = Installation::start_with(Options {
        watch_namespaces: vec![NAMESPACE.to_owned()],
    })
    .await;
    // A namespace the installation does not serve, with a recovery of its own.
    const ELSEWHERE: &str = "elsewhere";
    fx.plane.create_namespace(ELSEWHERE).await;
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
             name: backups\n  namespace: {ELSEWHERE}\nspec:\n  url: {}\n---\n{}",
            fx.repo_url,
            recovery_yaml(
                "ignored",
                &fx.backup_id,
                "  postgres:\n    credentialsSecret:\n      name: db-superuser\n"
            )
            .replace(
                &format!("namespace: {NAMESPACE}"),
                &format!("namespace: {ELSEWHERE}")
            )
        ))
        .await
        .unwrap();

    // With exactly the chart's Roles in its namespace, the operator and the agent recover.
    fx.apply_recovery("scoped", "    mode: Automatic").await;
    fx.wait_phase("scoped", Phase::Syncing, FLOW).await;
    check_mount_path_and_network_policy(&fx, "scoped").await;
    fx.wait_phase("scoped", Phase::Completed, FLOW).await;
    let ip = fx.pod_ip("scoped-target", FLOW).await;
    assert_eq!(
        query_one(&ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );

    // The other namespace was left alone: no status, nothing created there.
    let ignored = Api::<ir_api::crd::InstantRecovery>::namespaced(fx.plane.admin(), ELSEWHERE)
        .get("ignored")
        .await
        .unwrap();
    assert_eq!(ignored.status, None, "{ignored:?}");
    assert_eq!(ignored.metadata.finalizers, None, "{ignored:?}");
    let repository = Api::<BackupRepository>::namespaced(fx.plane.admin(), ELSEWHERE)
        .get("backups")
        .await
        .unwrap();
    assert_eq!(repository.status, None);
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), ELSEWHERE);
    assert!(
        mounts
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // What the chart's namespaced RBAC allows, and what it does not.
    let operator = "instant-recovery-operator";
    let agent = "instant-recovery-agent";
    let core = |resource| ("", resource);
    let ir = |resource| ("instantrecovery.dev", resource);
    let leases = ("coordination.k8s.io", "leases");
    let allowed = [
        (operator, "get", core("secrets"), Some(NAMESPACE)),
        (operator, "create", core("pods"), Some(NAMESPACE)),
        (operator, "watch", ir("instantrecoveries"), Some(NAMESPACE)),
        (operator, "list", core("nodes"), None),
        (operator, "update", leases, Some(SYSTEM_NAMESPACE)),
        (agent, "get", core("secrets"), Some(NAMESPACE)),
        (agent, "watch", ir("recoverymounts"), Some(NAMESPACE)),
        (agent, "patch", core("nodes"), None),
    ];
    let denied = [
        // Never the cluster's Secrets, nor a watch of the Secrets of its own namespace.
        (operator, "list", core("secrets"), None),
        (operator, "get", core("secrets"), None),
        (operator, "list", core("secrets"), Some(NAMESPACE)),
        (operator, "watch", core("secrets"), Some(NAMESPACE)),
        (operator, "get", core("secrets"), Some(ELSEWHERE)),
        (operator, "list", core("pods"), None),
        (operator, "create", core("pods"), Some(ELSEWHERE)),
        (operator, "list", ir("instantrecoveries"), None),
        (operator, "update", leases, Some(NAMESPACE)),
        (agent, "get", core("secrets"), None),
        (agent, "get", core("secrets"), Some(ELSEWHERE)),
        (agent, "list", core("secrets"), Some(NAMESPACE)),
        (agent, "list", ir("recoverymounts"), None),
    ];
    let mut wrong = Vec::new();
    for (expected, cases) in [(true, &allowed[..]), (false, &denied[..])] {
        for (account, verb, resource, namespace) in cases {
            if may(&fx, account, verb, *resource, *namespace).await != expected {
                wrong.push(format!(
                    "{account} {verb} {resource:?} in {namespace:?}: expected allowed={expected}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // And as the operator itself: listing the cluster's Secrets is forbidden.
    let listed = Api::<Secret>::all(fx.operator_client())
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&listed, Err(kube::Error::Api(e)) if e.code == 403),
        "{listed:?}"
    );
    let listed = Api::<Secret>::namespaced(fx.agent_client(), ELSEWHERE)
        .get_opt("db-superuser")
        .await;
    assert!(
        matches!(&listed, Err(kube::Error::Api(e)) if e.code == 403),
        "{listed:?}"
    );
}
