//! The controllers in `knode server`, driven by the real kubectl 1.37: ReplicationControllers
//! (the guestbook's) and ReplicaSets keep their pod counts, their status columns follow, and
//! their pods go with them. Nodes here are API objects only (no agent), so pods are bound but
//! never run: READY stays 0.

mod support;

use serde_json::Value;
use support::server::{Server, KUBECTL};

/// Waits (a watch, in kubectl) until `jsonpath` of `what` has `value`.
fn wait_for(s: &Server, what: &str, jsonpath: &str, value: &str) {
    s.ok(&[
        "wait",
        what,
        &format!("--for=jsonpath={{{jsonpath}}}={value}"),
        "--timeout=60s",
    ]);
}

/// The names of the live (not terminating) pods with `selector`.
fn live_pods(s: &Server, selector: &str) -> Vec<String> {
    s.json(&["get", "pods", "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

const REDIS_MASTER: &str = "apiVersion: v1
kind: ReplicationController
metadata:
  name: redis-master
  labels: {name: redis-master}
spec:
  replicas: 1
  selector: {name: redis-master}
  template:
    metadata:
      labels: {name: redis-master}
    spec:
      containers:
      - name: master
        image: redis
        ports: [{containerPort: 6379}]
";

#[test]
fn replication_controllers_keep_their_pods_as_the_guestbook_scales_them() {
    let s = Server::start(&[]);
    s.fake_node("n1", "4");
    s.ok_with(KUBECTL, &["create", "-f", "-"], Some(REDIS_MASTER));
    wait_for(&s, "rc/redis-master", ".status.replicas", "1");
    let pods = s.json(&["get", "pods", "-l", "name=redis-master"]);
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("redis-master-") && name.len() == "redis-master-".len() + 5,
        "{name}"
    );
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicationController");
    assert_eq!(owner["name"], "redis-master");
    assert_eq!(owner["controller"], true);
    assert_eq!(pod["spec"]["containers"][0]["image"], "redis");
    // The scheduler binds it to the node.
    s.ok(&[
        "wait",
        &format!("pod/{name}"),
        "--for=condition=PodScheduled",
        "--timeout=60s",
    ]);
    let rows = s.ok(&["get", "rc", "redis-master"]);
    let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["redis-master", "1", "1", "0"], "{rows}");

    // `kubectl scale rc`: two more.
    s.ok(&["scale", "rc", "redis-master", "--replicas=3"]);
    wait_for(&s, "rc/redis-master", ".status.replicas", "3");
    assert_eq!(live_pods(&s, "name=redis-master").len(), 3);

    // A pod removed is replaced.
    let before = live_pods(&s, "name=redis-master");
    s.ok(&["delete", "pod", &before[0], "--force", "--grace-period=0"]);
    wait_for(&s, "rc/redis-master", ".status.replicas", "3");
    let after = live_pods(&s, "name=redis-master");
    assert_eq!(after.len(), 3);
    assert!(!after.contains(&before[0]), "{after:?}");

    // Down to one: two go (they wait for their node to stop them: no agent here).
    s.ok(&["scale", "rc", "redis-master", "--replicas=1"]);
    wait_for(&s, "rc/redis-master", ".status.replicas", "1");
    assert_eq!(live_pods(&s, "name=redis-master").len(), 1);
    let rc = s.json(&["get", "rc", "redis-master"]);
    assert_eq!(
        rc["status"]["observedGeneration"],
        rc["metadata"]["generation"]
    );

    // --cascade=orphan: the RC goes, its pod stays, no longer owned.
    let kept = live_pods(&s, "name=redis-master");
    s.ok(&["delete", "rc", "redis-master", "--cascade=orphan"]);
    // Another RC's pod appearing shows the controllers have run since the delete.
    s.ok_with(
        KUBECTL,
        &["create", "-f", "-"],
        Some(&REDIS_MASTER.replace("redis-master", "redis-slave")),
    );
    wait_for(&s, "rc/redis-slave", ".status.replicas", "1");
    assert_eq!(live_pods(&s, "name=redis-master"), kept);
    let pod = s.json(&["get", "pod", &kept[0]]);
    assert!(pod["metadata"].get("ownerReferences").is_none(), "{pod}");

    // --cascade=foreground: the RC stays, being deleted, until its pod is gone, and makes
    // none anew meanwhile. The pod waits for its node to stop it (no agent runs here).
    let slave = live_pods(&s, "name=redis-slave");
    s.ok(&[
        "delete",
        "rc",
        "redis-slave",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let rc = s.json(&["get", "rc", "redis-slave"]);
    assert_eq!(
        rc["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"]),
        "{rc}"
    );
    assert!(rc["metadata"]["deletionTimestamp"].is_string(), "{rc}");
    wait_for(
        &s,
        &format!("pod/{}", slave[0]),
        ".metadata.deletionGracePeriodSeconds",
        "30",
    );
    assert_eq!(live_pods(&s, "name=redis-slave"), Vec::<String>::new());
    assert_eq!(
        s.json(&["get", "rc", "redis-slave"])["metadata"]["uid"],
        rc["metadata"]["uid"]
    );
    // The pod gone, the RC goes.
    s.ok(&["delete", "pod", &slave[0], "--force", "--grace-period=0"]);
    s.ok(&["wait", "--for=delete", "rc/redis-slave", "--timeout=60s"]);
}

#[test]
fn replica_sets_make_and_take_their_pods_and_the_collector_follows_the_owner() {
    let s = Server::start(&[]);
    // No node: the pods stay unscheduled, so deleting them is immediate.
    let rs = "apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: front}
spec:
  replicas: 2
  selector: {matchLabels: {tier: front}}
  template:
    metadata: {labels: {tier: front}}
    spec:
      containers: [{name: php, image: php}]
";
    // A bare pod made before, with the template's labels, is taken (upstream's adoption)
    // and counts: one more pod is made, not two.
    s.ok(&[
        "run",
        "stray",
        "--image=php",
        "--labels=tier=front,run=stray",
    ]);
    s.ok_with(KUBECTL, &["create", "-f", "-"], Some(rs));
    wait_for(&s, "rs/front", ".status.replicas", "2");
    let pods = live_pods(&s, "tier=front");
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.contains(&"stray".to_string()), "{pods:?}");
    let stray = s.json(&["get", "pod", "stray"]);
    assert_eq!(stray["metadata"]["ownerReferences"][0]["name"], "front");
    let rows = s.ok(&["get", "rs", "front"]);
    let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["front", "2", "2", "0"], "{rows}");
    s.ok(&["scale", "rs", "front", "--replicas=1"]);
    wait_for(&s, "rs/front", ".status.replicas", "1");
    let left = live_pods(&s, "tier=front");
    assert_eq!(left.len(), 1, "{left:?}");
    // A pod relabelled out of the selector is let go (taken out of service to debug it)
    // and replaced.
    s.ok(&["label", "pod", &left[0], "tier=debug", "--overwrite"]);
    s.watch_until(
        &[
            "get",
            "pod",
            &left[0],
            "-o",
            "jsonpath=owners:{.metadata.ownerReferences[*].name}{\"\\n\"}",
        ],
        |l| l == "owners:",
    );
    let pod = s.json(&["get", "pod", &left[0]]);
    assert!(pod["metadata"].get("ownerReferences").is_none(), "{pod}");
    s.ok(&[
        "wait",
        "rs/front",
        "--for=jsonpath={.status.replicas}=1",
        "--timeout=60s",
    ]);
    let replaced = live_pods(&s, "tier=front");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced, left);
    // Deleting the owner takes its pods (background propagation), not the one let go.
    s.ok(&["delete", "rs", "front"]);
    s.ok(&[
        "wait",
        "--for=delete",
        "pod",
        "-l",
        "tier=front",
        "--timeout=60s",
    ]);
    assert_eq!(live_pods(&s, "tier=debug"), left);
}

/// Stands in for the node agent (issue 16's next step): every pod bound to a node is marked
/// Running and Ready, and every pod being deleted is removed, as soon as a watch shows it.
fn fake_kubelet(s: &Server) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    let token = s.token();
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                &std::fs::read(s.root().join("server/tls/ca.crt")).unwrap(),
            )
            .unwrap(),
        )
        .timeout(None)
        .build()
        .unwrap();
    let base = s.url("");
    std::thread::spawn(move || {
        let Ok(resp) = client
            .get(format!(
                "{base}/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=300"
            ))
            .bearer_auth(&token)
            .send()
        else {
            return;
        };
        for line in std::io::BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let pod = &ev["object"];
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let path = format!("{base}/api/v1/namespaces/default/pods/{name}");
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                let _ = client
                    .delete(&path)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"gracePeriodSeconds": 0}))
                    .send();
                continue;
            }
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ev["type"] == "DELETED" || pod["spec"]["nodeName"].is_null() || ready {
                continue;
            }
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let patch = serde_json::json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
            let _ = client
                .patch(format!("{path}/status"))
                .bearer_auth(&token)
                .header("Content-Type", "application/strategic-merge-patch+json")
                .body(patch.to_string())
                .send();
        }
    })
}

fn images(s: &Server, selector: &str) -> Vec<String> {
    let mut v: Vec<String> = s.json(&["get", "pods", "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn deployments_scale_roll_out_and_roll_back_as_the_bootcamp_does() {
    let s = Server::start(&[]);
    s.fake_node("n1", "8");
    let _kubelet = fake_kubelet(&s);
    let app = "app=kubernetes-bootcamp";
    s.ok(&[
        "create",
        "deployment",
        "kubernetes-bootcamp",
        "--image=gcr.io/google-samples/kubernetes-bootcamp:v1",
    ]);
    let status = s.ok(&[
        "rollout",
        "status",
        "deployment/kubernetes-bootcamp",
        "--timeout=60s",
    ]);
    assert!(
        status.ends_with("deployment \"kubernetes-bootcamp\" successfully rolled out\n"),
        "{status}"
    );
    // The ReplicaSet: <deployment>-<hash>, the hash in its selector and its pods' names.
    let rs = s.json(&["get", "rs", "-l", app]);
    let rs1 = rs["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let hash = rs["items"][0]["spec"]["selector"]["matchLabels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rs1, format!("kubernetes-bootcamp-{hash}"));
    assert_eq!(
        rs["items"][0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert!(live_pods(&s, app)[0].starts_with(&format!("{rs1}-")));

    s.ok(&["scale", "deployments/kubernetes-bootcamp", "--replicas=4"]);
    s.ok(&[
        "rollout",
        "status",
        "deployment/kubernetes-bootcamp",
        "--timeout=60s",
    ]);
    let rows = s.ok(&["get", "deployments"]);
    let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["kubernetes-bootcamp", "4/4", "4", "4"], "{rows}");

    // set image: a second ReplicaSet takes over.
    let out = s.ok(&[
        "set",
        "image",
        "deployments/kubernetes-bootcamp",
        "kubernetes-bootcamp=jocatalin/kubernetes-bootcamp:v2",
    ]);
    assert_eq!(out, "deployment.apps/kubernetes-bootcamp image updated\n");
    s.ok(&[
        "rollout",
        "status",
        "deployment/kubernetes-bootcamp",
        "--timeout=60s",
    ]);
    assert_eq!(images(&s, app), vec!["jocatalin/kubernetes-bootcamp:v2"; 4]);
    let history = s.ok(&["rollout", "history", "deployment/kubernetes-bootcamp"]);
    assert!(
        history.contains("\n1         <none>\n2         <none>\n"),
        "{history}"
    );

    // rollout undo: the first ReplicaSet again, with revision 3.
    let out = s.ok(&["rollout", "undo", "deployments/kubernetes-bootcamp"]);
    assert_eq!(out, "deployment.apps/kubernetes-bootcamp rolled back\n");
    s.ok(&[
        "rollout",
        "status",
        "deployment/kubernetes-bootcamp",
        "--timeout=60s",
    ]);
    assert_eq!(
        images(&s, app),
        vec!["gcr.io/google-samples/kubernetes-bootcamp:v1"; 4]
    );
    let again = s.json(&["get", "rs", &rs1]);
    assert_eq!(
        again["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(again["spec"]["replicas"], 4);
    assert_eq!(
        s.json(&["get", "rs", "-l", app])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let d = s.json(&["get", "deploy", "kubernetes-bootcamp"]);
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    // --cascade=foreground: the Deployment goes last, after its ReplicaSets and their pods,
    // and kubectl returns when it is gone.
    s.ok(&[
        "delete",
        "deployment",
        "kubernetes-bootcamp",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert_eq!(
        s.json(&["get", "rs", "-l", app])["items"],
        serde_json::json!([])
    );
    assert_eq!(
        s.json(&["get", "pods", "-l", app])["items"],
        serde_json::json!([])
    );

    // --cascade=orphan: the Deployment goes; its ReplicaSet stays, unowned, with its pods.
    let make_keep = || {
        s.ok(&[
            "create",
            "deployment",
            "keep",
            "--image=nginx",
            "--replicas=2",
        ]);
        s.ok(&["rollout", "status", "deployment/keep", "--timeout=60s"]);
    };
    make_keep();
    let pods = live_pods(&s, "app=keep");
    s.ok(&[
        "delete",
        "deployment",
        "keep",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    let rs = s.json(&["get", "rs", "-l", "app=keep"]);
    assert_eq!(rs["items"].as_array().unwrap().len(), 1, "{rs}");
    assert!(
        rs["items"][0]["metadata"].get("ownerReferences").is_none(),
        "{rs}"
    );
    assert_eq!(live_pods(&s, "app=keep"), pods);
    // The Deployment made again takes its ReplicaSet back (adoption): the same pods serve.
    make_keep();
    let d = s.json(&["get", "deployment", "keep"]);
    let rs = s.json(&["get", "rs", "-l", "app=keep"]);
    assert_eq!(rs["items"].as_array().unwrap().len(), 1, "{rs}");
    assert_eq!(
        rs["items"][0]["metadata"]["ownerReferences"][0]["uid"],
        d["metadata"]["uid"]
    );
    assert_eq!(live_pods(&s, "app=keep"), pods);
    // Deleting it (background, kubectl's default) takes the ReplicaSet and its pods.
    s.ok(&["delete", "deployment", "keep"]);
    s.ok(&[
        "wait",
        "--for=delete",
        "pods",
        "-l",
        "app=keep",
        "--timeout=60s",
    ]);
    s.ok(&[
        "wait",
        "--for=delete",
        "rs",
        "-l",
        "app=keep",
        "--timeout=60s",
    ]);
}

/// Waits (a watch, in kubectl) for the ServiceAccount `default` of namespace `team`.
fn await_default_sa(s: &Server) {
    s.ok(&[
        "wait",
        "--for=create",
        "serviceaccount/default",
        "-n",
        "team",
        "--timeout=60s",
    ]);
}

#[test]
fn every_namespace_gets_a_default_service_account_and_keeps_it() {
    let s = Server::start(&[]);
    s.ok(&["create", "namespace", "team"]);
    await_default_sa(&s);
    let rows = s.ok(&["get", "serviceaccounts", "-n", "team"]);
    assert!(
        rows.lines().nth(1).unwrap().starts_with("default "),
        "{rows}"
    );
    let uid =
        |s: &Server| s.json(&["get", "sa", "default", "-n", "team"])["metadata"]["uid"].clone();
    let first = uid(&s);
    // Deleted, it is made again (a new object).
    s.ok(&["delete", "serviceaccount", "default", "-n", "team"]);
    await_default_sa(&s);
    assert_ne!(uid(&s), first);
}

#[test]
fn a_rollout_that_cannot_progress_fails_rollout_status_at_its_deadline() {
    // No node at all: the new pods stay Pending, so the rollout never moves.
    let s = Server::start(&["--disable-scheduler"]);
    s.ok_with(
        KUBECTL,
        &["create", "-f", "-"],
        Some("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stuck}\nspec:\n  progressDeadlineSeconds: 2\n  replicas: 1\n  selector: {matchLabels: {app: stuck}}\n  template:\n    metadata: {labels: {app: stuck}}\n    spec:\n      containers: [{name: c, image: nginx}]\n"),
    );
    // kubectl rollout status follows the Deployment (a watch) until the controller says the
    // deadline passed, and fails with upstream's words.
    let o = s.run(
        KUBECTL,
        &["rollout", "status", "deployment/stuck", "--timeout=60s"],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error: deployment \"stuck\" exceeded its progress deadline"),
        "{err}"
    );
    let d = s.json(&["get", "deployment", "stuck"]);
    let c = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "ProgressDeadlineExceeded", "{c}");
    let describe = s.ok(&["describe", "deployment", "stuck"]);
    assert!(
        describe
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Progressing", "False", "ProgressDeadlineExceeded"]),
        "{describe}"
    );
}

/// Where each live pod of `selector` is bound: (node, image), sorted.
fn placements(s: &Server, selector: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = s.json(&["get", "pods", "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn daemon_sets_put_a_pod_on_every_eligible_node_and_roll_them_one_by_one() {
    let s = Server::start(&[]);
    for n in ["n1", "n2", "n3"] {
        s.fake_node(n, "4");
    }
    s.ok(&["label", "node", "n1", "n2", "n3", "disk=ssd"]);
    s.ok(&["taint", "node", "n3", "dedicated=db:NoSchedule"]);
    let _kubelet = fake_kubelet(&s);
    s.ok_with(
        KUBECTL,
        &["apply", "-f", "-"],
        Some("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      nodeSelector: {disk: ssd}\n      containers: [{name: a, image: agent:v1}]\n"),
    );
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    // n3's taint is not tolerated: n1 and n2 only, each pinned by node affinity.
    assert_eq!(
        placements(&s, "app=agent"),
        [
            ("n1".into(), "agent:v1".into()),
            ("n2".into(), "agent:v1".into())
        ]
    );
    let row = s.ok(&["get", "ds", "agent", "--no-headers"]);
    assert_eq!(
        row.split_whitespace().take(7).collect::<Vec<_>>(),
        ["agent", "2", "2", "2", "2", "2", "disk=ssd"],
        "{row}"
    );
    // A node that becomes eligible gets its pod; one that stops being eligible loses it.
    let on_n1 = s.ok(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "--field-selector=spec.nodeName=n1",
        "-o",
        "name",
    ]);
    s.ok(&["taint", "node", "n3", "dedicated-"]);
    s.ok(&["label", "node", "n1", "disk-"]);
    s.watch_until(
        &[
            "get",
            "pods",
            "-l",
            "app=agent",
            "-w",
            "-o",
            "custom-columns=N:.spec.nodeName,P:.status.phase",
            "--no-headers",
        ],
        |l| l.starts_with("n3") && l.contains("Running"),
    );
    s.ok(&["wait", "--for=delete", on_n1.trim(), "--timeout=60s"]);
    assert_eq!(
        placements(&s, "app=agent"),
        [
            ("n2".into(), "agent:v1".into()),
            ("n3".into(), "agent:v1".into())
        ]
    );
    // A rolling update: every pod replaced, never both nodes without one at once.
    s.ok(&["set", "image", "daemonset/agent", "a=agent:v2"]);
    let status = s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(
        status.ends_with("daemon set \"agent\" successfully rolled out\n"),
        "{status}"
    );
    assert_eq!(
        placements(&s, "app=agent"),
        [
            ("n2".into(), "agent:v2".into()),
            ("n3".into(), "agent:v2".into())
        ]
    );
    let events = s.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=DaemonSet",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert!(events.matches("SuccessfulDelete").count() >= 3, "{events}");
    // Deleting the set deletes its pods.
    s.ok(&["delete", "daemonset", "agent"]);
    s.ok(&[
        "wait",
        "--for=delete",
        "pods",
        "-l",
        "app=agent",
        "--timeout=60s",
    ]);
    assert!(placements(&s, "app=agent").is_empty());
}
