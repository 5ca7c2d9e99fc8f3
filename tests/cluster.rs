//! A node agent on the API server: `knode agent --server URL --token T` (or `--kubeconfig`)
//! with the server's node join token registers its Node, shows Ready in `kubectl get nodes`, renews its Lease, and the
//! scheduler places pods on it; the agent runs the pods bound to it, reports their status
//! and events, and finishes their deletion.

mod support;

use support::node::Node;
use support::server::Server;

#[test]
fn an_agent_with_the_node_token_registers_and_renews_its_lease() {
    let s = Server::start_in_netns(&[]);
    // The node join token: a node's rights, not an admin's. The agent finds the CA in the
    // server's cluster-info, signed by the token (kubeadm's token discovery).
    let token = std::fs::read_to_string(s.root().join("server/node-token")).unwrap();
    let token = token.trim();
    let (id, secret) = token.split_once('.').unwrap();
    // A token the server does not know, and one whose secret is wrong: no CA is trusted.
    for (bad, why) in [
        (
            "zzzzzz.0123456789abcdef".to_string(),
            "has no cluster-info signature for this token",
        ),
        (
            format!("{id}.{}", secret.chars().rev().collect::<String>()),
            "is not signed by this token: refusing its CA",
        ),
    ] {
        let o = s
            .command(support::knode_bin())
            .args(["--root", s.dir.path().join("bad").to_str().unwrap()])
            .args(["agent", "--server", &s.url(""), "--token", &bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{err}");
    }
    let url = s.url("");
    let n = Node::builder()
        .join_netns(s.netns.as_deref().unwrap())
        .arg("--server")
        .arg(&url)
        .arg("--token")
        .arg(token)
        .arg("--node-name")
        .arg("worker-1")
        .arg("--kubelet-port")
        .arg("0")
        .start();
    let kc = n.s.root().join("kubelet.kubeconfig");
    let meta = std::fs::metadata(&kc).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let ca = std::fs::read_to_string(s.root().join("server/tls/ca.crt")).unwrap();
    let kc = std::fs::read_to_string(&kc).unwrap();
    use base64::Engine;
    assert!(
        kc.contains(&base64::engine::general_purpose::STANDARD.encode(&ca)),
        "{kc}"
    );
    s.ok(&["wait", "--for=create", "node/worker-1", "--timeout=60s"]);
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/worker-1",
        "--timeout=60s",
    ]);
    let rows = s.ok(&["get", "nodes"]);
    let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["worker-1", "Ready", "<none>"], "{rows}");
    let n = s.json(&["get", "node", "worker-1"]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(n["status"]["capacity"]["cpu"], cpus.to_string());
    assert_eq!(n["status"]["capacity"]["pods"], "110");
    assert_eq!(
        n["metadata"]["labels"]["kubernetes.io/hostname"],
        "worker-1"
    );
    assert_eq!(n["status"]["nodeInfo"]["operatingSystem"], "linux");

    let lease = s.json(&["get", "lease", "-n", "kube-node-lease", "worker-1"]);
    assert_eq!(lease["spec"]["holderIdentity"], "worker-1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        n["metadata"]["uid"]
    );
    // The lease is renewed: a watch sees it change (within the 10 s beat).
    let line = s.first_watched(&[
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        "worker-1",
        "--watch-only",
        "-o",
        "name",
    ]);
    assert_eq!(line, "lease.coordination.k8s.io/worker-1\n");
    let renewed = s.json(&["get", "lease", "-n", "kube-node-lease", "worker-1"]);
    assert!(
        renewed["spec"]["renewTime"].as_str() > lease["spec"]["renewTime"].as_str(),
        "{renewed}"
    );

    // Its kubelet API answers the API server's client certificate and no other: not the
    // admin's (signed by the same CA), not a client without one.
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_i64()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let tls = s.root().join("server/tls");
    let with = |cert: Option<&str>| {
        let pem = cert.map(|c| {
            let mut pem = std::fs::read(tls.join(format!("{c}.crt"))).unwrap();
            pem.extend(std::fs::read(tls.join(format!("{c}.key"))).unwrap());
            pem
        });
        let url = url.clone();
        // Made on the thread in the namespace (reqwest connects from a thread of its own).
        s.in_netns(move || {
            let mut b = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true);
            if let Some(pem) = pem {
                b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
            }
            b.build()
                .unwrap()
                .get(&url)
                .send()
                .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
                .map_err(|e| e.to_string())
        })
    };
    assert_eq!(with(Some("kubelet-client")), Ok((200, "ok".to_string())));
    assert!(with(Some("admin")).is_err());
    assert!(with(None).is_err());

    // The scheduler places pods on it.
    s.ok(&["run", "p", "--image=busybox"]);
    s.ok(&[
        "wait",
        "--for=condition=PodScheduled",
        "pod/p",
        "--timeout=60s",
    ]);
    assert_eq!(s.json(&["get", "pod", "p"])["spec"]["nodeName"], "worker-1");
    // With the node token, it reads the Secrets of its pods (one by one: it may not list
    // them), so a secret volume and a secretKeyRef work, as the Secrets tutorial uses them.
    s.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: uses-secret}\nspec:\n  containers:\n  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'echo env=$PASSWORD file=$(cat /etc/db/password); trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    env: [{name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}]\n    volumeMounts: [{name: db, mountPath: /etc/db}]\n  volumes: [{name: db, secret: {secretName: db}}]\n"),
    );
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/uses-secret",
        "--timeout=60s",
    ]);
    assert_eq!(s.ok(&["logs", "uses-secret"]), "env=s3cret file=s3cret\n");
}

/// The agents' pod network (in the server's network namespace).
const NET: &str = r#"{"type":"knode-bridge","bridge":"kncl0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"knode-cni","subnet":"10.86.0.0/24","dataDir":"@DATA@"}}"#;

/// A node agent `node-1` on the server `s` (admin credentials, in the server's network
/// namespace, a pod network, its kubelet API on a free port), Ready.
fn agent(s: &Server, extra: &[&str]) -> Node {
    let mut b = Node::builder()
        .join_netns(s.netns.as_deref().unwrap())
        .network("cl", NET)
        .arg("--kubeconfig")
        .arg(s.kubeconfig().to_str().unwrap())
        .arg("--node-name")
        .arg("node-1")
        .arg("--kubelet-port")
        .arg("0");
    for a in extra {
        b = b.arg(a);
    }
    let n = b.start();
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/node-1",
        "--timeout=60s",
    ]);
    n
}

/// A Deployment `web` of 2 replicas rolled out, whose container stops at once on SIGTERM
/// (busybox's sleep as PID 1 would not).
fn web_deployment(s: &Server) {
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=test/busybox:1",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
}

/// The pod directories the agent of `n` holds.
fn pod_dirs(n: &Node) -> Vec<String> {
    std::fs::read_dir(n.run_dir().join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn an_agent_runs_the_pods_bound_to_it_and_reports_them() {
    let s = Server::start_in_netns(&[]);
    let n = agent(&s, &[]);
    web_deployment(&s);
    let rows = s.ok(&["get", "pods", "-l", "app=web", "-o", "wide"]);
    let lines: Vec<Vec<&str>> = rows
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{rows}");
    for l in &lines {
        assert_eq!(l[1..4], ["1/1", "Running", "0"], "{rows}");
        assert_eq!(l[6], "node-1", "{rows}");
    }
    let pods = s.json(&["get", "pods", "-l", "app=web"]);
    let pod = &pods["items"][0];
    let st = &pod["status"];
    assert_eq!(st["phase"], "Running", "{st}");
    assert_eq!(st["qosClass"], "BestEffort");
    assert!(st["startTime"].is_string(), "{st}");
    let c = &st["containerStatuses"][0];
    assert_eq!(
        (c["name"].as_str(), c["ready"].as_bool()),
        (Some("busybox"), Some(true)),
        "{c}"
    );
    assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
    let conds: Vec<(String, String)> = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(conds.contains(&(t.into(), "True".into())), "{t}: {conds:?}");
    }
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(pod_dirs(&n).contains(&uid));
    // The agent serves cluster DNS on its node too (the server here runs no node): the pod
    // asks the kube-dns address, which this node answers from the API's Services.
    let out = s.ok(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "grep nameserver /etc/resolv.conf; nslookup kubernetes.default.svc.cluster.local",
    ]);
    assert!(out.starts_with("nameserver 10.96.0.10\n"), "{out}");
    assert!(
        out.contains("Name:\tkubernetes.default.svc.cluster.local\nAddress: 10.96.0.1\n"),
        "{out}"
    );
    // The kubelet's events, as describe shows them.
    let d = s.ok(&["describe", "pod", &name]);
    for reason in ["Scheduled", "Started"] {
        assert!(d.contains(reason), "{reason} missing:\n{d}");
    }
    assert!(d.contains("kubelet"), "{d}");
    // The ServiceAccount token is there when the volume is made: no failed mount first.
    assert!(!d.contains("FailedMount"), "{d}");

    // A deleted pod stops, its object goes (kubectl waits for that) and it is replaced.
    s.ok(&["delete", "pod", &name, "--timeout=60s"]);
    assert!(!pod_dirs(&n).contains(&uid), "{:?}", pod_dirs(&n));
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let live = s.json(&["get", "pods", "-l", "app=web"]);
    assert_eq!(live["items"].as_array().unwrap().len(), 2, "{live}");

    // The Deployment's deletion takes its pods, and the node lets them go.
    let names: Vec<String> = live["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("pod/{}", p["metadata"]["name"].as_str().unwrap()))
        .collect();
    s.ok(&["delete", "deployment", "web"]);
    let mut wait = vec!["wait", "--for=delete", "--timeout=60s"];
    wait.extend(names.iter().map(String::as_str));
    s.ok(&wait);
    assert_eq!(pod_dirs(&n), Vec::<String>::new());
}

const STAY_AND_GO: &str = "apiVersion: v1
kind: Pod
metadata: {name: stay}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: 'test/busybox:1', command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']}
---
apiVersion: v1
kind: Pod
metadata: {name: go}
spec:
  terminationGracePeriodSeconds: 1
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
  containers:
  - {name: c, image: 'test/busybox:1', command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']}
";

#[test]
fn a_node_whose_agent_dies_goes_unknown_evicts_and_comes_back_with_its_pods() {
    // A quick heartbeat and a short grace (upstream's are 10 s and 40 s), so the test is short.
    let s = Server::start_in_netns(&["--node-monitor-grace-period=3s"]);
    let mut n = agent(&s, &["--node-status-update-frequency=1s"]);
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some(STAY_AND_GO),
    );
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/stay",
        "pod/go",
        "--timeout=60s",
    ]);
    let before = s.json(&["get", "pod", "stay"]);
    let started = before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();

    // The agent dies: the node goes Unknown and is tainted; the pod that tolerates that for
    // 1 s is evicted, the other (300 s by default) stays.
    n.kill_agent();
    s.ok(&[
        "wait",
        "--for=condition=Ready=Unknown",
        "node/node-1",
        "--timeout=60s",
    ]);
    let node = s.json(&["get", "node", "node-1"]);
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{ready}");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let taints = node["spec"]["taints"].to_string();
    assert!(
        taints.contains("node.kubernetes.io/unreachable") && taints.contains("NoExecute"),
        "{taints}"
    );
    let rows = s.ok(&["get", "nodes"]);
    assert!(rows.contains("node-1   NotReady"), "{rows}");
    s.ok(&[
        "wait",
        "--for=jsonpath={.metadata.deletionTimestamp}",
        "pod/go",
        "--timeout=60s",
    ]);
    assert!(s.json(&["get", "pod", "stay"])["metadata"]
        .get("deletionTimestamp")
        .is_none());

    // The agent is back: Ready, untainted; it finishes the eviction, and the pod that stayed
    // kept running (the same start, no restart).
    n.start_agent();
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/node-1",
        "--timeout=60s",
    ]);
    s.watch_until(
        &[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.spec.taints}{\"\\n\"}",
        ],
        |l| !l.contains("unreachable"),
    );
    s.ok(&["wait", "--for=delete", "pod/go", "--timeout=60s"]);
    let after = s.json(&["get", "pod", "stay"]);
    let c = &after["status"]["containerStatuses"][0];
    assert_eq!(c["state"]["running"]["startedAt"], started, "{c}");
    assert_eq!(c["restartCount"], 0);
    assert_eq!(after["status"]["phase"], "Running");
    assert_eq!(after["status"]["startTime"], before["status"]["startTime"]);
    s.ok(&["delete", "pod", "stay", "--timeout=60s"]);
}

#[test]
fn a_server_killed_and_restarted_finds_its_pods_running_and_the_agent_resumes() {
    let mut s = Server::start_in_netns(&[]);
    let n = agent(&s, &[]);
    web_deployment(&s);
    let names = |s: &Server| -> Vec<String> {
        let mut v: Vec<String> = s.json(&["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let before = names(&s);

    // kill -9 of the server; a new one on the same store.
    s.stop();
    s.spawn();
    // The controllers start again from the store: no pod is made twice, none lost.
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(names(&s), before);
    let mut dirs = pod_dirs(&n);
    dirs.sort();
    assert_eq!(dirs, before);
    // The agent's watches resumed: a third replica runs here.
    s.ok(&["scale", "deployment/web", "--replicas=3"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(pod_dirs(&n).len(), 3);
    s.ok(&["delete", "deployment", "web"]);
}

#[test]
fn helm_waits_for_a_chart_and_every_client_reads_logs() {
    use support::server::{HELM, KUBECTL_120, KUBECTL_135, PYTHON};
    let s = Server::start_in_netns(&[]);
    let _n = agent(&s, &[]);
    // helm 4 install --wait: it returns once the Deployment's pods are ready.
    let chart = s.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/all.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: {{ .Release.Name }}}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: test/busybox:1\n        command: [sh, -c, 'echo hello from $(hostname); trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n---\napiVersion: v1\nkind: Service\nmetadata: {name: {{ .Release.Name }}}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let o = s.run(
        HELM,
        &[
            "install",
            "web",
            chart.to_str().unwrap(),
            "--wait",
            "--timeout=60s",
        ],
        None,
    );
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        s.ok(&["get", "deploy,rs,pods", "-o", "wide"]),
        s.log()
    );
    let d = s.json(&["get", "deployment", "web"]);
    assert_eq!(d["status"]["readyReplicas"], 2, "{}", d["status"]);
    let pod = s.json(&["get", "pods", "-l", "app=web"])["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let want = format!("hello from {pod}\n");
    // Logs with kubectl 1.37, 1.35 and 1.20, and the Python client.
    assert_eq!(s.ok(&["logs", &pod]), want);
    assert_eq!(s.ok_with(KUBECTL_135, &["logs", &pod], None), want);
    assert_eq!(s.ok_with(KUBECTL_120, &["logs", &pod], None), want);
    assert_eq!(s.ok(&["logs", "deployment/web"]).lines().count(), 1);
    let script = format!(
        "from kubernetes import client, config\nconfig.load_kube_config({:?})\nprint(client.CoreV1Api().read_namespaced_pod_log({pod:?}, 'default'), end='')\n",
        s.kubeconfig().display().to_string()
    );
    assert_eq!(s.ok_with(PYTHON, &["-c", &script], None), want);
    // exec with kubectl 1.35 (WebSocket too).
    assert_eq!(
        s.ok_with(KUBECTL_135, &["exec", &pod, "--", "echo", "hi"], None),
        "hi\n"
    );
    s.ok_with(HELM, &["uninstall", "web", "--wait", "--timeout=60s"], None);
}
