use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use super::*;

fn node(name: &str, extra: serde_json::Value) -> Arc<Node> {
    let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}});
    merge(&mut n, extra);
    Arc::new(serde_json::from_value(n).unwrap())
}

fn pod(name: &str, extra: serde_json::Value) -> Arc<Pod> {
    let mut p = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
        "spec": {"containers": [{"name": "c", "image": "x",
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}});
    merge(&mut p, extra);
    Arc::new(serde_json::from_value(p).unwrap())
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    json_patch::merge(a, &b);
}

fn place(p: &Pod, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> Result<String, String> {
    schedule(p, &node_states(nodes, pods))
}

#[test]
fn requests_sum_containers_and_take_the_largest_init_container() {
    let p = pod(
        "a",
        json!({"spec": {"initContainers": [{"name": "i", "image": "x",
        "resources": {"requests": {"cpu": "2", "memory": "10Mi"}}}],
        "overhead": {"cpu": "100m"}}}),
    );
    assert_eq!(
        requests(&p),
        Amounts {
            cpu: 2100,
            memory: 1 << 30,
            pods: 1
        }
    );
}

#[test]
fn the_least_allocated_node_wins_and_replicas_spread() {
    let nodes = [node("a", json!({})), node("b", json!({}))];
    let busy = pod("busy", json!({"spec": {"nodeName": "a"}}));
    assert_eq!(
        place(&pod("p", json!({})), &nodes, std::slice::from_ref(&busy)),
        Ok("b".into())
    );
    // Same free resources: the node with fewer replicas of the same owner.
    let owned = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "rs", "uid": "rs-1", "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let mut sibling = owned.clone();
    sibling["spec"]["nodeName"] = json!("a");
    let s = pod("s", sibling);
    assert_eq!(place(&pod("p", owned), &nodes, &[s]), Ok("b".into()));
    // A tie otherwise: the first name.
    assert_eq!(place(&pod("p", json!({})), &nodes, &[]), Ok("a".into()));
}

#[test]
fn filters_say_why_as_upstream_does() {
    let nodes = [
        node(
            "ready",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ),
        node(
            "down",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        node("cordoned", json!({"spec": {"unschedulable": true}})),
        node(
            "small",
            json!({"status": {"allocatable": {"cpu": "100m", "memory": "4Gi", "pods": "110"}}}),
        ),
    ];
    assert_eq!(
        place(&pod("p", json!({})), &nodes, &[]),
        Err("0/4 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable. preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, 3 Preemption is not helpful for scheduling.".into())
    );
    // Tolerating the taint: it fits there.
    let tol = json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}});
    assert_eq!(place(&pod("p", tol), &nodes, &[]), Ok("ready".into()));
    let any = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
    assert!(place(&pod("p", any), &nodes, &[]).is_ok());
    assert_eq!(
        place(&pod("p", json!({})), &[], &[]),
        Err("no nodes available to schedule pods".into())
    );
}

#[test]
fn selectors_affinity_and_capacity() {
    let nodes = [
        node(
            "a",
            json!({"metadata": {"labels": {"disk": "ssd", "gen": "5"}}}),
        ),
        node("b", json!({})),
    ];
    let sel = json!({"spec": {"nodeSelector": {"disk": "ssd"}}});
    assert_eq!(place(&pod("p", sel), &nodes, &[]), Ok("a".into()));
    let aff = |op: &str, values: serde_json::Value| {
        json!({"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": op, "values": values}]}]}}}}})
    };
    assert_eq!(
        place(&pod("p", aff("Gt", json!(["4"]))), &nodes, &[]),
        Ok("a".into())
    );
    assert_eq!(
        place(&pod("p", aff("DoesNotExist", json!([]))), &nodes, &[]),
        Ok("b".into())
    );
    let nowhere = json!({"spec": {"nodeSelector": {"disk": "hdd"}}});
    assert_eq!(
        place(&pod("p", nowhere), &nodes, &[]),
        Err("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.".into())
    );
    // Four 500m pods fill a 2-cpu node; the fifth does not fit; finished pods do not count.
    let one = [node("a", json!({}))];
    let mut on: Vec<Arc<Pod>> = (0..4)
        .map(|i| pod(&format!("p{i}"), json!({"spec": {"nodeName": "a"}})))
        .collect();
    assert!(place(&pod("x", json!({})), &one, &on)
        .unwrap_err()
        .contains("1 Insufficient cpu"));
    on[0] = pod(
        "p0",
        json!({"spec": {"nodeName": "a"}, "status": {"phase": "Succeeded"}}),
    );
    assert_eq!(place(&pod("x", json!({})), &one, &on), Ok("a".into()));
}

#[test]
fn only_our_unbound_live_pods_are_pending() {
    assert!(pending(&pod("p", json!({}))));
    assert!(!pending(&pod("p", json!({"spec": {"nodeName": "a"}}))));
    assert!(!pending(&pod(
        "p",
        json!({"spec": {"schedulerName": "other"}})
    )));
    assert!(!pending(&pod(
        "p",
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    )));
}

#[test]
fn a_pod_bound_in_a_pass_counts_for_the_next_one() {
    // A 1-cpu node takes two 500m pods; once both are counted, a third does not fit.
    let nodes = [node(
        "a",
        json!({"status": {"allocatable": {"cpu": "1", "memory": "4Gi", "pods": "110"}}}),
    )];
    let mut states = node_states(&nodes, &[]);
    for name in ["p1", "p2"] {
        let p = pod(name, json!({}));
        assert_eq!(schedule(&p, &states), Ok("a".into()));
        states[0].add(&p);
    }
    assert!(schedule(&pod("p3", json!({})), &states)
        .unwrap_err()
        .contains("1 Insufficient cpu"));
}
