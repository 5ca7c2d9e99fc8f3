//! A node agent on the API server: `knode agent --kubeconfig` with the server's node join
//! token registers its Node, shows Ready in `kubectl get nodes`, renews its Lease, and the
//! scheduler places pods on it. (Running the pods bound to it is the next step.)

mod support;

use support::node::Node;
use support::server::Server;

#[test]
fn an_agent_with_the_node_token_registers_and_renews_its_lease() {
    let s = Server::start(&[]);
    // A kubeconfig with the node join token: a node's rights, not an admin's.
    let token = std::fs::read_to_string(s.root().join("server/node-token")).unwrap();
    let kubeconfig = s.dir.path().join("node.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: node\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: node}}\ncurrent-context: c\n",
            s.url(""),
            s.root().join("server/tls/ca.crt").display(),
            token.trim()
        ),
    )
    .unwrap();
    let _node = Node::builder()
        .arg("--kubeconfig")
        .arg(kubeconfig.to_str().unwrap())
        .arg("--node-name")
        .arg("worker-1")
        .start();
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

    // The scheduler places pods on it.
    s.ok(&["run", "p", "--image=busybox"]);
    s.ok(&[
        "wait",
        "--for=condition=PodScheduled",
        "pod/p",
        "--timeout=60s",
    ]);
    assert_eq!(s.json(&["get", "pod", "p"])["spec"]["nodeName"], "worker-1");
}
