//! The node lifecycle controller's plan, as kube-controller-manager's: a node whose agent has
//! not renewed its Lease (nor posted its status) for the grace period (40 s by default,
//! `--node-monitor-grace-period`) has its conditions set to Unknown ("Kubelet stopped posting
//! node status.") and is tainted `node.kubernetes.io/unreachable` (NoSchedule and NoExecute);
//! the taints go when the agent posts Ready again. Pods on a NoExecute-tainted node are
//! evicted (deleted) at once unless they tolerate the taint, and after their
//! `tolerationSeconds` if they do (the API server gives every pod 300 s).

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use serde_json::{json, Value};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// What to do about a node.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Its agent went quiet: a status patch (conditions Unknown) and the taints to set.
    Unreachable { status: Value, taints: Vec<Taint> },
    /// It is back: the taints without the unreachable ones.
    Reachable { taints: Vec<Taint> },
}

/// The last sign of life of the node's agent: its Lease's renewal or Ready heartbeat, or its
/// registration.
fn last_seen(node: &Node, lease: Option<&Lease>) -> Option<DateTime<Utc>> {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .and_then(|t| {
            DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        });
    let beat =
        ready(node).and_then(|c| c.last_heartbeat_time.as_ref().map(crate::api::time::chrono));
    // A node that never showed a sign of life gets the grace period from its registration.
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map(crate::api::time::chrono);
    renew.into_iter().chain(beat).chain(created).max()
}

fn ready(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

/// The node's plan at `now`.
pub fn plan(
    node: &Node,
    lease: Option<&Lease>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Option<Action> {
    let ready_status = ready(node).map(|c| c.status.as_str());
    let current = taints(node);
    let tainted = current.iter().any(|t| t.key == UNREACHABLE);
    match ready_status {
        Some("True") => {
            let quiet = last_seen(node, lease).is_none_or(|t| now - t > grace);
            if quiet {
                let t = crate::api::time::time(now);
                let conditions: Vec<Value> = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let mut v = serde_json::to_value(c).unwrap_or_default();
                        v["status"] = json!("Unknown");
                        v["reason"] = json!("NodeStatusUnknown");
                        v["message"] = json!("Kubelet stopped posting node status.");
                        v["lastTransitionTime"] = json!(t);
                        v
                    })
                    .collect();
                let mut taints: Vec<Taint> = current
                    .into_iter()
                    .filter(|t| t.key != UNREACHABLE)
                    .collect();
                for effect in ["NoSchedule", "NoExecute"] {
                    taints.push(Taint {
                        key: UNREACHABLE.into(),
                        effect: effect.into(),
                        time_added: (effect == "NoExecute").then(|| t.clone()),
                        value: None,
                    });
                }
                Some(Action::Unreachable {
                    status: json!({"status": {"conditions": conditions}}),
                    taints,
                })
            } else if tainted {
                Some(Action::Reachable {
                    taints: current
                        .into_iter()
                        .filter(|t| t.key != UNREACHABLE)
                        .collect(),
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// When a pod on a node with a NoExecute `taint` is to be evicted: now (it does not tolerate
/// it), at the taint's time plus its toleration's seconds, or never.
pub fn eviction_time(pod: &Pod, taint: &Taint) -> Option<DateTime<Utc>> {
    let added = taint
        .time_added
        .as_ref()
        .map(crate::api::time::chrono)
        .unwrap_or_else(Utc::now);
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let matching = tolerations.iter().find(|t| {
        let key_ok = match t.operator.as_deref() {
            Some("Exists") => t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == taint.key),
            _ => {
                t.key.as_deref() == Some(taint.key.as_str())
                    && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        };
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        key_ok && effect_ok
    });
    match matching {
        None => Some(added),
        Some(t) => t
            .toleration_seconds
            .map(|s| added + chrono::Duration::seconds(s.max(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, beat: &str, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": beat,
                                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap()
    }

    fn lease(renew: &str) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"renewTime": renew}}))
            .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_quiet_node_becomes_unknown_and_tainted_and_a_renewed_one_is_left_alone() {
        let g = chrono::Duration::seconds(40);
        let n = node(
            "True",
            "2026-01-01T00:00:00Z",
            json!([{"key": "team", "effect": "NoSchedule"}]),
        );
        let renewed = lease("2026-01-01T00:00:50.000000Z");
        assert_eq!(
            plan(&n, Some(&renewed), at("2026-01-01T00:01:00Z"), g),
            None
        );
        let Some(Action::Unreachable { status, taints }) =
            plan(&n, Some(&renewed), at("2026-01-01T00:01:31Z"), g)
        else {
            panic!("not unreachable")
        };
        assert_eq!(status["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(
            status["status"]["conditions"][0]["message"],
            "Kubelet stopped posting node status."
        );
        let keys: Vec<(&str, &str)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("team", "NoSchedule"),
                (UNREACHABLE, "NoSchedule"),
                (UNREACHABLE, "NoExecute")
            ]
        );
        assert!(taints[2].time_added.is_some());
        // A node that never posted a heartbeat has the grace period from its registration.
        let mut fresh = node("True", "2026-01-01T00:00:00Z", json!([]));
        fresh.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time = None;
        fresh.metadata.creation_timestamp =
            Some(crate::api::time::time(at("2026-01-01T00:00:30Z")));
        assert_eq!(plan(&fresh, None, at("2026-01-01T00:01:00Z"), g), None);
        assert!(plan(&fresh, None, at("2026-01-01T00:01:11Z"), g).is_some());
        // Unknown already: nothing more to do until the agent is back.
        let unknown = node("Unknown", "2026-01-01T00:00:00Z", json!([]));
        assert_eq!(plan(&unknown, None, at("2026-01-02T00:00:00Z"), g), None);
    }

    #[test]
    fn a_node_back_loses_the_unreachable_taints() {
        let g = chrono::Duration::seconds(40);
        let n = node(
            "True",
            "2026-01-01T00:00:00Z",
            json!([{"key": UNREACHABLE, "effect": "NoExecute"}, {"key": "team", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            plan(&n, None, at("2026-01-01T00:00:10Z"), g),
            Some(Action::Reachable {
                taints: vec![Taint {
                    key: "team".into(),
                    effect: "NoSchedule".into(),
                    time_added: None,
                    value: None
                }]
            })
        );
    }

    #[test]
    fn pods_are_evicted_after_their_toleration() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(crate::api::time::time(at("2026-01-01T00:00:00Z"))),
            value: None,
        };
        let pod = |tol: Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tol}}),
            )
            .unwrap()
        };
        assert_eq!(
            eviction_time(&pod(json!([])), &taint),
            Some(at("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            eviction_time(
                &pod(
                    json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}])
                ),
                &taint
            ),
            Some(at("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            eviction_time(&pod(json!([{"operator": "Exists"}])), &taint),
            None
        );
    }
}
