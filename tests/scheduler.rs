//! The scheduler in `knode server`, driven by the real kubectl 1.37: pods wait with upstream's
//! FailedScheduling texts while no node fits, and are bound (with a Scheduled event) as soon as
//! one does. Nodes here are API objects only (no agent): the scheduler sees what a node
//! reports, which is what it schedules by.

mod support;

use support::server::Server;

/// The messages of a pod's events with `reason`, oldest first, once there is one (a watch
/// until the first arrives: events are written after the change they report).
fn events(s: &Server, pod: &str, reason: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={pod},reason={reason}");
    let line = s.first_watched(&[
        "get",
        "events",
        "--field-selector",
        &selector,
        "--watch",
        "-o",
        "name",
    ]);
    assert!(!line.is_empty(), "no {reason} event for {pod}");
    events_now(s, pod, reason)
}

fn events_now(s: &Server, pod: &str, reason: &str) -> Vec<String> {
    let list = s.json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason={reason}"),
    ]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn wait(s: &Server, pod: &str, cond: &str) {
    s.ok(&[
        "wait",
        &format!("--for=condition={cond}"),
        &format!("pod/{pod}"),
        "--timeout=60s",
    ]);
}

#[test]
fn pods_wait_for_a_fitting_node_and_are_bound_to_it() {
    let s = Server::start(&[]);
    // No node at all.
    s.ok(&["run", "first", "--image=nginx"]);
    wait(&s, "first", "PodScheduled=False");
    let p = s.json(&["get", "pod", "first"]);
    let cond = &p["status"]["conditions"][0];
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(cond["message"], "no nodes available to schedule pods");
    assert_eq!(
        events(&s, "first", "FailedScheduling"),
        ["no nodes available to schedule pods"]
    );

    // A node appears: the waiting pod is bound to it.
    s.fake_node("n1", "1");
    wait(&s, "first", "PodScheduled");
    assert_eq!(s.json(&["get", "pod", "first"])["spec"]["nodeName"], "n1");
    assert_eq!(
        events(&s, "first", "Scheduled"),
        ["Successfully assigned default/first to n1"]
    );
    let wide = s.ok(&["get", "pod", "first", "-o", "wide"]);
    assert!(wide.lines().nth(1).unwrap().contains(" n1 "), "{wide}");

    // More cpu than the node has: upstream's message, in describe too.
    let big = "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec:\n  containers:\n  - {name: c, image: nginx, resources: {requests: {cpu: '2'}}}\n";
    s.ok_with(support::server::KUBECTL, &["create", "-f", "-"], Some(big));
    wait(&s, "big", "PodScheduled=False");
    let msg = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.";
    assert_eq!(events(&s, "big", "FailedScheduling"), [msg]);
    let described = s.ok(&["describe", "pod", "big"]);
    assert!(described.contains("FailedScheduling"), "{described}");
    assert!(described.contains("default-scheduler"), "{described}");

    // A taint keeps new pods off n1; a second node takes them (and the big pod, which fits
    // its 4 cpus).
    s.ok(&["taint", "nodes", "n1", "dedicated=gpu:NoSchedule"]);
    s.ok(&["run", "second", "--image=nginx"]);
    wait(&s, "second", "PodScheduled=False");
    assert_eq!(
        events(&s, "second", "FailedScheduling"),
        ["0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."]
    );
    s.fake_node("n2", "4");
    wait(&s, "second", "PodScheduled");
    wait(&s, "big", "PodScheduled");
    assert_eq!(s.json(&["get", "pod", "second"])["spec"]["nodeName"], "n2");
    assert_eq!(s.json(&["get", "pod", "big"])["spec"]["nodeName"], "n2");
    // Pods naming their node, or another scheduler, are left alone.
    let other = "apiVersion: v1\nkind: Pod\nmetadata: {name: other}\nspec:\n  schedulerName: my-scheduler\n  containers:\n  - {name: c, image: nginx}\n";
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some(other),
    );
    s.ok(&["run", "third", "--image=nginx"]);
    wait(&s, "third", "PodScheduled");
    let o = s.json(&["get", "pod", "other"]);
    assert!(o["spec"].get("nodeName").is_none(), "{o}");
    assert!(events_now(&s, "other", "FailedScheduling").is_empty());
}
