//! Looking at the recovery's Pods: the image they run, their IPs, which one the Service selects,
//! and a container that cannot start.

use ir_api::Reason;
use ir_engine::machine::Failure;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};

use super::Driver;
use crate::k8s::context::Error;
use crate::k8s::resources::{self, PRIMARY_LABEL};

impl Driver<'_> {
    pub(super) fn image(&self) -> String {
        let major = self.status.backup.as_ref().map_or(0, |b| b.pg_major);
        resources::postgres_image(self.ir, major)
    }

    pub(super) async fn pod_ip(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .api::<Pod>()
            .get_opt(name)
            .await?
            .and_then(|p| p.status)
            .and_then(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty()))
    }

    /// Points the Service at `pod`.
    pub(super) async fn label_primary(&self, pod: &str) -> Result<(), Error> {
        let patch = serde_json::json!({"metadata": {"labels": {PRIMARY_LABEL: "true"}}});
        self.api::<Pod>()
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// A container that cannot start for a reason a wait will not fix soon (bad image, missing
/// Secret key), or a main container that keeps crashing. The init container's crashes are the
/// copy failing: `BASE_BACKUP_RESTARTS` judges those.
pub(super) fn waiting_failure(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    let all = init.map(|c| (c, false)).chain(main.map(|c| (c, true)));
    for (container, is_main) in all {
        let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(w) = waiting
            && let Some(reason) = w.reason.as_deref()
            && (matches!(
                reason,
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
            ) || (is_main && reason == "CrashLoopBackOff"))
        {
            return Some(Failure::new(
                Reason::PodCannotStart,
                format!(
                    "Pod {}: container {} {reason}: {}",
                    pod.name_any(),
                    container.name,
                    w.message.clone().unwrap_or_default()
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn target_pod() -> Pod {
        let ir = resources::tests::recovery();
        let user = resources::PostgresUser { uid: 999, gid: 998 };
        resources::target_pod(&ir, "postgres:15-typo", user, "10.0.0.7", "orders-repl")
    }

    fn container(name: &str, state: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus {
            name: name.to_owned(),
            state,
            ..Default::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> Option<ContainerState> {
        Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
            }),
            ..Default::default()
        })
    }

    fn with_status(
        mut pod: Pod,
        init: Vec<ContainerStatus>,
        containers: Vec<ContainerStatus>,
    ) -> Pod {
        pod.status = Some(PodStatus {
            phase: Some("Pending".to_owned()),
            init_container_statuses: Some(init),
            container_statuses: Some(containers),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn a_target_pod_that_cannot_start_is_a_failure() {
        // The copy's init container is the first to pull the image.
        let pod = with_status(
            target_pod(),
            vec![container(
                "base-backup",
                waiting(
                    "ImagePullBackOff",
                    "Back-off pulling image \"postgres:15-typo\"",
                ),
            )],
            vec![container("postgres", None)],
        );
        let f = waiting_failure(&pod).expect("a failure");
        assert_eq!((f.reason.as_str(), f.transient), ("PodCannotStart", true));
        assert!(f.message.contains("orders-target"), "{}", f.message);
        assert!(
            f.message.contains("base-backup ImagePullBackOff"),
            "{}",
            f.message
        );

        // A container without a state yet does not hide a later one that cannot start.
        let pod = with_status(
            target_pod(),
            vec![container("base-backup", None)],
            vec![container(
                "postgres",
                waiting(
                    "CreateContainerConfigError",
                    "secret \"orders-repl\" not found",
                ),
            )],
        );
        let f = waiting_failure(&pod).expect("a failure");
        assert!(f.message.contains("orders-repl"), "{}", f.message);
    }

    #[test]
    fn a_target_pod_on_its_way_is_no_failure() {
        let running = Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        });
        let pod = with_status(
            target_pod(),
            vec![container("base-backup", running)],
            vec![container("postgres", waiting("PodInitializing", ""))],
        );
        assert_eq!(waiting_failure(&pod), None);
        assert_eq!(waiting_failure(&target_pod()), None, "no status yet");
    }

    #[test]
    fn a_crashing_standby_is_a_failure_a_crashing_copy_is_counted_elsewhere() {
        let back_off = "back-off 40s restarting failed container";
        let pod = with_status(
            target_pod(),
            vec![container(
                "base-backup",
                waiting("CrashLoopBackOff", back_off),
            )],
            vec![container("postgres", waiting("PodInitializing", ""))],
        );
        assert_eq!(waiting_failure(&pod), None);

        let pod = with_status(
            target_pod(),
            vec![container("base-backup", None)],
            vec![container("postgres", waiting("CrashLoopBackOff", back_off))],
        );
        let f = waiting_failure(&pod).expect("a failure");
        assert_eq!(f.reason, "PodCannotStart");
        assert!(
            f.message.contains("postgres CrashLoopBackOff"),
            "{}",
            f.message
        );
    }
}
