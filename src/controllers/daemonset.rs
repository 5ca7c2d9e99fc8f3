//! The DaemonSet controller's plan: a pod on every eligible node, as kube-controller-manager's
//! daemon controller decides it. A node is eligible when the pod's nodeSelector and required
//! node affinity match it and its NoSchedule/NoExecute taints are tolerated (with the
//! tolerations every daemon pod gets: not-ready, unreachable, the pressure conditions and
//! unschedulable). Each pod is pinned to its node by node affinity on `metadata.name`, and
//! bound by the scheduler, as upstream does since 1.12. A RollingUpdate replaces pods of an
//! old template (`controller-revision-hash`) while at most `maxUnavailable` nodes lack an
//! available pod; OnDelete waits for the user to delete them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::api::pod::{node_matches, tolerates};

/// The label holding the template's hash on each pod.
pub const HASH: &str = "controller-revision-hash";

#[derive(Debug, PartialEq)]
pub enum Write {
    CreatePod { node: String, body: Value },
    DeletePod(String),
    Status(Value),
}

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`).
fn default_tolerations(host_network: bool) -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        t.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The template's hash (the deployment controller's function over the template).
pub fn hash(ds: &Value) -> String {
    super::deployment::template_hash(&ds["spec"]["template"], 0)
}

/// The pod spec for `node`: the template's, with the tolerations and the node pinned.
fn pod_spec(ds: &Value, node: &str) -> Value {
    let mut spec = ds["spec"]["template"]["spec"].clone();
    let host_network = spec["hostNetwork"] == true;
    let mut tols: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for t in default_tolerations(host_network) {
        if !tols
            .iter()
            .any(|x| x["key"] == t["key"] && x["effect"] == t["effect"])
        {
            tols.push(t);
        }
    }
    spec["tolerations"] = json!(tols);
    let pin = json!([{"key": "metadata.name", "operator": "In", "values": [node]}]);
    let req =
        &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    match req["nodeSelectorTerms"].as_array_mut() {
        Some(terms) if !terms.is_empty() => {
            for t in terms {
                t["matchFields"] = pin.clone();
            }
        }
        _ => *req = json!({"nodeSelectorTerms": [{"matchFields": pin}]}),
    }
    spec
}

/// Whether `ds` should run on `node` (its selector and affinity match and its NoSchedule
/// and NoExecute taints are tolerated), and whether a pod already there may stay (only
/// NoExecute counts: a new NoSchedule taint keeps new pods off, not running ones; upstream's
/// `shouldContinueRunning`).
pub fn fit(ds: &Value, node: &Node) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let Ok(pod) =
        serde_json::from_value::<Pod>(json!({"metadata": {}, "spec": pod_spec(ds, name)}))
    else {
        return (false, false);
    };
    if !node_matches(&pod, node) {
        return (false, false);
    }
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .any(|t| t.effect == effect && !tolerates(&tols, t))
    };
    let stay = !untolerated("NoExecute");
    (stay && !untolerated("NoSchedule"), stay)
}

/// The new pod for `node`.
pub fn new_pod(ds: &Value, node: &str) -> Value {
    let name = ds["metadata"]["name"].as_str().unwrap_or("");
    let t = &ds["spec"]["template"];
    let mut labels = t["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(HASH.into(), json!(hash(ds)));
    labels.insert(
        "pod-template-generation".into(),
        json!(ds["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1)
            .to_string()),
    );
    let mut meta = json!({
        "generateName": format!("{name}-"),
        "namespace": ds["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name,
            "uid": ds["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
    });
    if let Some(a) = t["metadata"]["annotations"].as_object() {
        meta["annotations"] = json!(a);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(ds, node)})
}

/// The node a daemon pod is for: where it is bound, else the node its affinity pins.
pub fn node_of(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name")?
        .values
        .as_ref()?
        .first()
        .cloned()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn available(p: &Pod, min_ready: i64, now: DateTime<Utc>) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .is_some_and(|c| {
            let since = c
                .last_transition_time
                .as_ref()
                .map(crate::api::time::chrono)
                .unwrap_or(now);
            min_ready <= 0 || now - since >= chrono::Duration::seconds(min_ready)
        })
}

fn is_ready(p: &Pod) -> bool {
    available(p, 0, Utc::now())
}

/// maxUnavailable as a count of `desired` (a percentage rounds up, at least one).
fn max_unavailable(ds: &Value, desired: i64) -> i64 {
    let v = &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
    let n = match v {
        Value::Number(n) => n.as_i64().unwrap_or(1),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => (p * desired + 99) / 100,
            None => s.parse().unwrap_or(1),
        },
        _ => 1,
    };
    n.max(1)
}

/// The writes for `ds`, given the cluster's nodes and the pods it owns.
pub fn plan(ds: &Value, nodes: &[&Node], pods: &[&Pod], now: DateTime<Utc>) -> Vec<Write> {
    let mut out = Vec::new();
    if !ds["metadata"]["deletionTimestamp"].is_null() {
        return out;
    }
    let current = hash(ds);
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(n) = node_of(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let name_of = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let hash_of = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH).cloned())
            .unwrap_or_default()
    };
    let (mut desired, mut scheduled, mut misscheduled) = (0i64, 0i64, 0i64);
    let (mut ready, mut avail, mut updated) = (0i64, 0i64, 0i64);
    // Nodes whose pod is of an old template, and whether it is available.
    let mut old: Vec<(&Pod, bool)> = Vec::new();
    let mut unavailable = 0i64;
    let mut seen: Vec<String> = Vec::new();
    for node in nodes {
        let Some(nn) = node.metadata.name.clone() else {
            continue;
        };
        seen.push(nn.clone());
        let mut here: Vec<&Pod> = by_node.get(&nn).cloned().unwrap_or_default();
        let (run, stay) = fit(ds, node);
        if !run {
            for p in here {
                misscheduled += 1;
                if !stay {
                    out.push(Write::DeletePod(name_of(p)));
                }
            }
            continue;
        }
        desired += 1;
        // A failed pod is replaced; of several, the oldest stays.
        for p in here.iter().filter(|p| phase(p) == "Failed") {
            out.push(Write::DeletePod(name_of(p)));
        }
        here.retain(|p| phase(p) != "Failed");
        here.sort_by_key(|p| {
            p.metadata
                .creation_timestamp
                .as_ref()
                .map(crate::api::time::chrono)
        });
        for p in here.iter().skip(1) {
            out.push(Write::DeletePod(name_of(p)));
        }
        match here.first() {
            None => {
                unavailable += 1;
                out.push(Write::CreatePod {
                    node: nn.clone(),
                    body: new_pod(ds, &nn),
                });
            }
            Some(p) => {
                scheduled += 1;
                let ok = available(p, min_ready, now);
                if is_ready(p) {
                    ready += 1;
                }
                if ok {
                    avail += 1;
                } else {
                    unavailable += 1;
                }
                if hash_of(p) == current {
                    updated += 1;
                } else {
                    old.push((p, ok));
                }
            }
        }
    }
    // Pods for nodes that are gone.
    for (n, ps) in &by_node {
        if !seen.contains(n) {
            for p in ps {
                out.push(Write::DeletePod(name_of(p)));
            }
        }
    }
    if ds["spec"]["updateStrategy"]["type"] != "OnDelete" {
        // Old pods that are unavailable anyway go first; then as the budget allows.
        let mut budget = max_unavailable(ds, desired) - unavailable;
        old.sort_by_key(|(_, ok)| *ok);
        for (p, ok) in old {
            if !ok {
                out.push(Write::DeletePod(name_of(p)));
            } else if budget > 0 {
                budget -= 1;
                out.push(Write::DeletePod(name_of(p)));
            }
        }
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": avail,
        "numberUnavailable": desired - avail,
        "updatedNumberScheduled": updated,
        "observedGeneration": ds["metadata"]["generation"],
    });
    if super::status_differs(&ds["status"], &status) {
        out.push(Write::Status(status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Value {
        json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "d1", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}}},
            "status": {}})
    }

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
        )
        .unwrap()
    }

    fn pod_of(d: &Value, node: &str, name: &str, ready: bool) -> Pod {
        let mut p = new_pod(d, node);
        p["metadata"]["name"] = json!(name);
        p["spec"]["nodeName"] = json!(node);
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
            "lastTransitionTime": "2026-12-01T09:00:00Z"}]});
        serde_json::from_value(p).unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn one_pod_per_eligible_node_pinned_by_affinity() {
        let mut d = ds();
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        let a = node("a", json!({"disk": "ssd"}), json!([]));
        let b = node("b", json!({}), json!([]));
        let c = node(
            "c",
            json!({"disk": "ssd"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        let cordoned = node(
            "e",
            json!({"disk": "ssd"}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        let w = plan(&d, &[&a, &b, &c, &cordoned], &[], now());
        let made: Vec<&str> = w
            .iter()
            .filter_map(|w| match w {
                Write::CreatePod { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            made,
            ["a", "e"],
            "untolerated taints and selectors keep it off"
        );
        let Write::CreatePod { body, .. } = &w[0] else {
            panic!()
        };
        let pin = &body["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchFields"][0];
        assert_eq!(pin["values"][0], "a");
        assert_eq!(body["metadata"]["labels"][HASH], hash(&d));
        let Some(Write::Status(st)) = w.last() else {
            panic!()
        };
        assert_eq!(st["desiredNumberScheduled"], 2);
    }

    #[test]
    fn a_rolling_update_replaces_one_available_pod_at_a_time() {
        let old = ds();
        let mut new = ds();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
        let nodes = [
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node("c", json!({}), json!([])),
        ];
        let nrefs: Vec<&Node> = nodes.iter().collect();
        let pods = [
            pod_of(&old, "a", "pa", true),
            pod_of(&old, "b", "pb", true),
            pod_of(&old, "c", "pc", true),
        ];
        let prefs: Vec<&Pod> = pods.iter().collect();
        let w = plan(&new, &nrefs, &prefs, now());
        let deleted: Vec<&Write> = w
            .iter()
            .filter(|w| matches!(w, Write::DeletePod(_)))
            .collect();
        assert_eq!(deleted.len(), 1);
        // One node is already without an available pod: nothing more goes.
        let pods = [
            pod_of(&new, "a", "na", false),
            pod_of(&old, "b", "pb", true),
            pod_of(&old, "c", "pc", true),
        ];
        let prefs: Vec<&Pod> = pods.iter().collect();
        let w = plan(&new, &nrefs, &prefs, now());
        assert!(!w.iter().any(|w| matches!(w, Write::DeletePod(_))), "{w:?}");
        // A pod whose node is gone goes.
        let stray = [pod_of(&new, "gone", "g", true)];
        let srefs: Vec<&Pod> = stray.iter().collect();
        let w = plan(&new, &nrefs, &srefs, now());
        assert!(w.contains(&Write::DeletePod("g".into())));
    }

    #[test]
    fn a_new_no_schedule_taint_keeps_running_pods_and_no_execute_does_not() {
        let d = ds();
        let p = pod_of(&d, "a", "pa", true);
        let soft = node(
            "a",
            json!({}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        let w = plan(&d, &[&soft], &[&p], now());
        assert!(!w.iter().any(|w| matches!(w, Write::DeletePod(_))), "{w:?}");
        let hard = node("a", json!({}), json!([{"key": "k", "effect": "NoExecute"}]));
        let w = plan(&d, &[&hard], &[&p], now());
        assert!(w.contains(&Write::DeletePod("pa".into())), "{w:?}");
    }
}
