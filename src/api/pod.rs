//! A pod's life in Kubernetes' own words, as types: its phase, its restart policy, and the
//! reasons a container waits or terminated. Each serializes as the API spells it, so the
//! node's records and the API's JSON read the same as before they were types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use serde::{Deserialize, Serialize};

/// `status.phase`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for PodPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.restartPolicy` (validation has refused any other value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The pod's policy (`Always` when unset, as the API server defaults it).
    pub fn of(pod: &Pod) -> RestartPolicy {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again. An init container that
    /// succeeded is done; one that failed is retried unless the policy is `Never` (the
    /// kubelet treats `Always` as `OnFailure` for init containers).
    pub fn restarts(self, init: bool, exit_code: i32) -> bool {
        match (init, self) {
            (true, _) if exit_code == 0 => false,
            (true, RestartPolicy::Never) => false,
            (true, _) => true,
            (false, RestartPolicy::Always) => true,
            (false, RestartPolicy::OnFailure) => exit_code != 0,
            (false, RestartPolicy::Never) => false,
        }
    }
}

/// `state.waiting.reason` of a container status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitingReason {
    /// Its sandbox, network, volumes or image are being made ready.
    ContainerCreating,
    /// Init containers have not all completed.
    PodInitializing,
    /// It exited and waits out its restart back-off.
    CrashLoopBackOff,
    /// Its image's pull failed just now.
    ErrImagePull,
    /// Its image's pull failed again; the next try waits out a back-off.
    ImagePullBackOff,
    /// Its configuration cannot be built (a missing ConfigMap key, runAsNonRoot...).
    CreateContainerConfigError,
    /// The runtime could not start it.
    CreateContainerError,
    Unknown,
}

impl WaitingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitingReason::ContainerCreating => "ContainerCreating",
            WaitingReason::PodInitializing => "PodInitializing",
            WaitingReason::CrashLoopBackOff => "CrashLoopBackOff",
            WaitingReason::ErrImagePull => "ErrImagePull",
            WaitingReason::ImagePullBackOff => "ImagePullBackOff",
            WaitingReason::CreateContainerConfigError => "CreateContainerConfigError",
            WaitingReason::CreateContainerError => "CreateContainerError",
            WaitingReason::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for WaitingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `state.terminated.reason` of a container status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TerminatedReason {
    /// Exit code 0.
    Completed,
    /// Any other exit code.
    Error,
    /// Killed by the kernel for exceeding its memory limit.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// It vanished with its supervisor, without a record of how it ended.
    ContainerStatusUnknown,
}

impl TerminatedReason {
    /// The reason for an exit, from its code and what the shim recorded.
    pub fn of(exit_code: i32, recorded: &str) -> TerminatedReason {
        match (exit_code, recorded) {
            (_, "ContainerStatusUnknown") => TerminatedReason::ContainerStatusUnknown,
            (_, "OOMKilled") => TerminatedReason::OomKilled,
            (0, _) => TerminatedReason::Completed,
            _ => TerminatedReason::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TerminatedReason::Completed => "Completed",
            TerminatedReason::Error => "Error",
            TerminatedReason::OomKilled => "OOMKilled",
            TerminatedReason::ContainerStatusUnknown => "ContainerStatusUnknown",
        }
    }
}

impl std::fmt::Display for TerminatedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether one of `tols` tolerates the taint `t`.
pub fn tolerates(tols: &[Toleration], t: &Taint) -> bool {
    tols.iter().any(|tol| {
        let effect_ok = tol
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == t.effect);
        let key_ok = match tol.key.as_deref() {
            None | Some("") => tol.operator.as_deref() == Some("Exists"),
            Some(k) => k == t.key,
        };
        let value_ok = match tol.operator.as_deref() {
            Some("Exists") => true,
            _ => tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// Whether `node` matches the pod's nodeSelector and required node affinity (terms ORed,
/// each term's `matchExpressions` on labels and `matchFields` on `metadata.name` ANDed), as
/// the scheduler's NodeAffinity filter decides it.
pub fn node_matches(pod: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let Some(spec) = &pod.spec else { return true };
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let Some(req) = required else { return true };
    // Terms are ORed, expressions within a term ANDed.
    req.node_selector_terms.iter().any(|term| {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fields_ok = term.match_fields.iter().flatten().all(|f| {
            let values = f.values.as_deref().unwrap_or(&[]);
            match (f.key.as_str(), f.operator.as_str()) {
                ("metadata.name", "In") => values.iter().any(|v| v == name),
                ("metadata.name", "NotIn") => !values.iter().any(|v| v == name),
                _ => false,
            }
        });
        fields_ok
            && term.match_expressions.iter().flatten().all(|e| {
                let have = labels.get(&e.key);
                let values = e.values.as_deref().unwrap_or(&[]);
                match e.operator.as_str() {
                    "In" => have.is_some_and(|v| values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    "Gt" | "Lt" => {
                        let (Some(h), Some(w)) = (
                            have.and_then(|v| v.parse::<i64>().ok()),
                            values.first().and_then(|v| v.parse::<i64>().ok()),
                        ) else {
                            return false;
                        };
                        if e.operator == "Gt" {
                            h > w
                        } else {
                            h < w
                        }
                    }
                    _ => false,
                }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_decide_as_the_kubelet_does() {
        use RestartPolicy::*;
        for p in [Always, OnFailure, Never] {
            assert!(
                !p.restarts(true, 0),
                "{p:?}: a completed init container is done"
            );
        }
        assert!(Always.restarts(true, 1) && OnFailure.restarts(true, 1));
        assert!(!Never.restarts(true, 1));
        assert!(Always.restarts(false, 0) && Always.restarts(false, 3));
        assert!(!OnFailure.restarts(false, 0) && OnFailure.restarts(false, 3));
        assert!(!Never.restarts(false, 0) && !Never.restarts(false, 3));
    }

    #[test]
    fn names_serialize_as_the_api_spells_them() {
        fn j<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }
        assert_eq!(j(&TerminatedReason::OomKilled), "\"OOMKilled\"");
        assert_eq!(TerminatedReason::OomKilled.as_str(), "OOMKilled");
        assert_eq!(j(&WaitingReason::CrashLoopBackOff), "\"CrashLoopBackOff\"");
        assert_eq!(j(&PodPhase::Succeeded), "\"Succeeded\"");
        let r: RestartPolicy = serde_json::from_str("\"OnFailure\"").unwrap();
        assert_eq!(r, RestartPolicy::OnFailure);
        assert_eq!(TerminatedReason::of(0, ""), TerminatedReason::Completed);
        assert_eq!(
            TerminatedReason::of(137, "OOMKilled"),
            TerminatedReason::OomKilled
        );
        assert_eq!(TerminatedReason::of(2, ""), TerminatedReason::Error);
    }
}

/// The Secrets a pod uses (by name, in its namespace), as upstream's node authorizer finds
/// them: secret and projected volumes, `env[].valueFrom.secretKeyRef` and `envFrom[].secretRef`
/// of every container, and `imagePullSecrets`.
pub fn secret_names(pod: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut add = |v: &serde_json::Value| {
        if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
            out.insert(n.to_string());
        }
    };
    let spec = &pod["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(&v["secret"]["secretName"]);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&s["secret"]["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(&e["valueFrom"]["secretKeyRef"]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(&e["secretRef"]["name"]);
            }
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(&s["name"]);
    }
    out
}

#[cfg(test)]
mod secret_tests {
    #[test]
    fn every_place_a_pod_names_a_secret_is_found() {
        let pod = serde_json::json!({"spec": {
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "cm"}}]}},
                {"name": "c", "emptyDir": {}},
            ],
            "initContainers": [{"name": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}]}],
            "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "from"}}, {"configMapRef": {"name": "cm2"}}]}],
            "imagePullSecrets": [{"name": "pull"}],
        }});
        let names: Vec<String> = super::secret_names(&pod).into_iter().collect();
        assert_eq!(names, ["env", "from", "proj", "pull", "vol"]);
        assert!(super::secret_names(&serde_json::json!({})).is_empty());
    }
}
