//! Pods on the pod network: the agent runs inside a node network namespace the test creates
//! (never the host's), with knode's CNI plugin, or the reference `bridge` + `host-local`
//! plugins, from a conflist (as root, with iproute2 and containernetworking-plugins).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A node: a network namespace, a store, a manifests directory and (while running) an agent.
struct Node {
    ns: String,
    s: Store,
    agent: Option<Child>,
    conf: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods a failed test left: an agent with no manifests tears them down.
        let pods = self.s.root().join("run/pods");
        if std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0) > 0 {
            for e in std::fs::read_dir(self.s.root().join("manifests"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_file(e.path());
            }
            if self.agent.is_none() {
                self.start_agent();
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0) > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.stop_agent();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

impl Node {
    /// A node namespace and a conflist: `plugins` is the JSON of the list's plugins, with
    /// `@DATA@` standing for the IPAM store directory.
    fn new(tag: &str, plugins: &str) -> Node {
        let s = Store::with_busybox();
        let ns = format!("kn-{tag}-{:x}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success());
        let conf = s.root().join("net.conflist");
        let data = s.root().join("ipam").display().to_string();
        std::fs::write(
            &conf,
            format!(
                r#"{{"cniVersion":"1.0.0","name":"podnet","plugins":[{}]}}"#,
                plugins.replace("@DATA@", &data)
            ),
        )
        .unwrap();
        std::fs::create_dir_all(s.root().join("manifests")).unwrap();
        Node {
            ns,
            s,
            agent: None,
            conf,
        }
    }

    fn agent_command(&self) -> Command {
        // nsenter enters only the node's network namespace: `ip netns exec` would also give
        // every agent a mount namespace of its own, and a restarted agent could not see the
        // namespaces its predecessor pinned.
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(knode_bin())
            .arg("--root")
            .arg(self.s.root())
            .arg("--run-dir")
            .arg(self.s.root().join("run"))
            .args(["agent", "--manifests"])
            .arg(self.s.root().join("manifests"))
            .arg("--log-dir")
            .arg(self.s.root().join("logs"))
            .arg("--cni-conf")
            .arg(&self.conf);
        c
    }

    fn start_agent(&mut self) {
        self.agent = Some(self.agent_command().spawn().unwrap());
    }

    /// kill -9, as a crash would.
    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    fn pod(&self, name: &str, cmd: &str) {
        std::fs::write(
            self.s.root().join(format!("manifests/{name}.yaml")),
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    command: [sh, -c, '{cmd}']\n"),
        )
        .unwrap();
    }

    fn delete_pod(&self, name: &str) {
        std::fs::remove_file(self.s.root().join(format!("manifests/{name}.yaml"))).unwrap();
    }

    fn status(&self, name: &str) -> Option<Value> {
        let sock = self.s.root().join("run/knode.sock");
        let (_, b) = knode::kubelet::api::get(&sock, &format!("/pods/default/{name}")).ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        Some(v["pod"]["status"].clone())
    }

    /// Waits for the pod's container to be ready; returns the pod's IP.
    fn ready_ip(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.status(name) {
                if st["containerStatuses"][0]["ready"] == true {
                    if let Some(ip) = st["podIP"].as_str() {
                        return ip.to_string();
                    }
                }
            }
            assert!(Instant::now() < deadline, "pod {name} not ready with an IP");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the pod's status message contains `what`; returns the message.
    fn message(&self, name: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self
                .status(name)
                .and_then(|st| st["message"].as_str().map(str::to_string))
                .unwrap_or_default();
            if m.contains(what) {
                return m;
            }
            assert!(Instant::now() < deadline, "pod {name} message {m:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn in_ns(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .unwrap()
    }

    /// An HTTP GET from the node (busybox 1.35's `wget -T` crashes; timeout(1) bounds it).
    fn node_get(&self, url: &str) -> String {
        let o = self.in_ns(&["timeout", "5", "busybox", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn pod_get(&self, pod: &str, url: &str) -> String {
        let o = self
            .s
            .knode(&["exec", pod, "--", "timeout", "5", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn veths(&self) -> Vec<String> {
        String::from_utf8(self.in_ns(&["ip", "-o", "link"]).stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter_map(|n| n.split('@').next())
            .filter(|n| n.starts_with("veth"))
            .map(str::to_string)
            .collect()
    }

    /// Addresses the IPAM store holds (host-local's layout: one file per address).
    fn held(&self) -> usize {
        std::fs::read_dir(self.s.root().join("ipam/podnet"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                    .count()
            })
            .unwrap_or(0)
    }

    fn wait_no_pods(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_dir(self.s.root().join("run/pods"))
            .map(|d| d.count())
            .unwrap_or(0)
            > 0
        {
            assert!(Instant::now() < deadline, "pods not removed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const WEB: &str = "exec httpd -f -p 8080 -h /www";
const SLEEP: &str = "exec sleep 600";

/// The pod network's promises, whatever the plugins: pod -> pod, pod -> itself, pod -> node,
/// node -> pod, /etc/hosts, `-o wide`; and nothing left once the pods are deleted.
fn pods_reach_each_other(n: &mut Node, subnet_prefix: &str, gateway: &str) {
    n.pod("web", WEB);
    n.pod("client", SLEEP);
    let (web, client) = (n.ready_ip("web"), n.ready_ip("client"));
    assert!(
        web.starts_with(subnet_prefix) && client.starts_with(subnet_prefix) && web != client,
        "{web} {client}"
    );
    let wide = String::from_utf8(n.s.knode(&["get", "pods", "-o", "wide"]).stdout).unwrap();
    assert!(wide.contains(&web), "{wide}");
    let page = format!("http://{web}:8080/");
    assert!(
        n.pod_get("client", &page)
            .contains("Hello from a knode pod"),
        "pod -> pod"
    );
    assert!(n.pod_get("web", &page).contains("Hello"), "pod -> itself");
    assert!(n.node_get(&page).contains("Hello"), "node -> pod");
    let o = n.s.knode(&[
        "exec", "client", "--", "ping", "-c", "1", "-W", "2", gateway,
    ]);
    assert!(o.status.success(), "pod -> node ({gateway})");
    let hosts = String::from_utf8(
        n.s.knode(&["exec", "web", "--", "cat", "/etc/hosts"])
            .stdout,
    )
    .unwrap();
    assert!(hosts.contains(&format!("{web}\tweb")), "{hosts}");
    assert_eq!(n.veths().len(), 2, "{:?}", n.veths());
    assert_eq!(n.held(), 2);
    // Deleting the pods leaves no veth and no address allocated.
    n.delete_pod("web");
    n.delete_pod("client");
    n.wait_no_pods();
    assert!(n.veths().is_empty(), "{:?}", n.veths());
    assert_eq!(n.held(), 0, "no address left allocated");
}

#[test]
fn pods_reach_each_other_with_knodes_plugin() {
    let mut n = Node::new(
        "own",
        r#"{"type":"knode-bridge","bridge":"kntest1","isGateway":true,"hairpinMode":true,"ipam":{"type":"knode-cni","subnet":"10.88.0.0/24","dataDir":"@DATA@"}}"#,
    );
    // An address leaked by an earlier agent (its pod is long gone): reclaimed at start.
    let leaked = n.s.root().join("ipam/podnet/10.88.0.200");
    std::fs::create_dir_all(leaked.parent().unwrap()).unwrap();
    std::fs::write(&leaked, "gone-pod-uid\r\neth0").unwrap();
    n.start_agent();
    n.pod("first", SLEEP);
    n.ready_ip("first");
    assert!(
        !leaked.exists(),
        "the leaked allocation was reclaimed at agent start"
    );
    n.delete_pod("first");
    n.wait_no_pods();
    pods_reach_each_other(&mut n, "10.88.0.", "10.88.0.1");
}

#[test]
fn pods_reach_each_other_with_the_reference_plugins() {
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "containernetworking-plugins is not installed (scripts/deps.sh --test installs it)"
    );
    let mut n = Node::new(
        "ref",
        r#"{"type":"bridge","bridge":"kntest2","isGateway":true,"hairpinMode":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.0.0/24"}]],"dataDir":"@DATA@"}}"#,
    );
    n.start_agent();
    pods_reach_each_other(&mut n, "10.89.0.", "10.89.0.1");
}

#[test]
fn an_agent_restart_reattaches_a_pod_whose_network_is_gone() {
    let mut n = Node::new(
        "reattach",
        r#"{"type":"knode-bridge","bridge":"kntest3","isGateway":true,"ipam":{"type":"knode-cni","subnet":"10.93.0.0/24","dataDir":"@DATA@"}}"#,
    );
    n.start_agent();
    n.pod("web", WEB);
    let ip = n.ready_ip("web");
    assert!(n.node_get(&format!("http://{ip}:8080/")).contains("Hello"));
    n.stop_agent();
    // While no agent runs, the pod loses its veth (and with it eth0 in the pod).
    let veths = n.veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    assert!(n.in_ns(&["ip", "link", "del", &veths[0]]).status.success());
    assert!(n.node_get(&format!("http://{ip}:8080/")).is_empty());
    n.start_agent();
    // The same container (never restarted) answers on the pod's (possibly new) address.
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_ip = loop {
        let st = n.status("web").unwrap_or_default();
        if let Some(ip) = st["podIP"].as_str() {
            if n.node_get(&format!("http://{ip}:8080/")).contains("Hello") {
                assert_eq!(st["containerStatuses"][0]["restartCount"], 0);
                break ip.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pod was not re-attached: {st}\n{:?}\n{}",
            n.veths(),
            String::from_utf8_lossy(&n.s.knode(&["describe", "pod", "web"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let hosts = String::from_utf8(
        n.s.knode(&["exec", "web", "--", "cat", "/etc/hosts"])
            .stdout,
    )
    .unwrap();
    assert!(hosts.contains(&format!("{new_ip}\tweb")), "{hosts}");
    let events = String::from_utf8(n.s.knode(&["describe", "pod", "web"]).stdout).unwrap();
    assert!(events.contains("NetworkRepaired"), "{events}");
    n.delete_pod("web");
    n.wait_no_pods();
    assert!(n.veths().is_empty());
    assert_eq!(n.held(), 0);
}

#[test]
fn bad_network_input_is_reported_and_leaves_nothing() {
    // Overlapping the Service CIDR: the agent refuses to start, naming the file and field.
    let n = Node::new(
        "overlap",
        r#"{"type":"knode-bridge","ipam":{"type":"knode-cni","subnet":"10.96.0.0/24","dataDir":"@DATA@"}}"#,
    );
    let o = n.agent_command().output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("net.conflist: plugins[0].ipam.subnet: 10.96.0.0/24 overlaps the Service CIDR 10.96.0.0/12"),
        "{err}"
    );
    drop(n);

    // A range of one address: the second pod shows why it has no network; once the first is
    // deleted it gets the address.
    let mut n = Node::new(
        "exhaust",
        r#"{"type":"knode-bridge","bridge":"kntest4","isGateway":true,"ipam":{"type":"knode-cni","subnet":"10.95.0.0/24","rangeStart":"10.95.0.10","rangeEnd":"10.95.0.10","dataDir":"@DATA@"}}"#,
    );
    n.start_agent();
    n.pod("one", SLEEP);
    assert_eq!(n.ready_ip("one"), "10.95.0.10");
    n.pod("two", SLEEP);
    let m = n.message("two", "no free address");
    assert!(m.contains("10.95.0.10-10.95.0.10"), "{m}");
    assert_eq!(n.veths().len(), 1, "the failed pod left no veth");
    let st = n.status("two").unwrap();
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    n.delete_pod("one");
    assert_eq!(n.ready_ip("two"), "10.95.0.10");
    n.delete_pod("two");
    n.wait_no_pods();
    assert!(n.veths().is_empty());
    assert_eq!(n.held(), 0);
    drop(n);

    // A plugin that is not installed: the pod says which; the plugin before it in the list
    // is undone (no veth, no address).
    let mut n = Node::new(
        "missing",
        r#"{"type":"knode-bridge","bridge":"kntest5","isGateway":true,"ipam":{"type":"knode-cni","subnet":"10.94.0.0/24","dataDir":"@DATA@"}},{"type":"no-such-plugin"}"#,
    );
    n.start_agent();
    n.pod("lonely", SLEEP);
    let m = n.message("lonely", "/usr/lib/cni/no-such-plugin");
    assert!(m.contains("is it installed?"), "{m}");
    assert!(n.veths().is_empty(), "{:?}", n.veths());
    assert_eq!(n.held(), 0);
    n.delete_pod("lonely");
    n.wait_no_pods();
}
