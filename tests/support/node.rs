//! A node for network tests: a network namespace the test creates (never the host's), a
//! store, a manifests directory and an agent running in that namespace (under
//! `nsenter --net`, so a restarted agent shares the mount namespace of its predecessor).

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{knode_bin, Store};

/// A node: a network namespace, a store, a manifests directory and (while running) an agent.
pub struct Node {
    pub ns: String,
    pub s: Store,
    pub agent: Option<Child>,
    pub conf: PathBuf,
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
    pub fn new(tag: &str, plugins: &str) -> Node {
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

    pub fn agent_command(&self) -> Command {
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
            .arg(&self.conf)
            .arg("--cgroups=disabled");
        c
    }

    pub fn start_agent(&mut self) {
        self.agent = Some(self.agent_command().spawn().unwrap());
    }

    /// kill -9, as a crash would.
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn pod(&self, name: &str, cmd: &str) {
        std::fs::write(
            self.s.root().join(format!("manifests/{name}.yaml")),
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    command: [sh, -c, '{cmd}']\n"),
        )
        .unwrap();
    }

    /// Writes any manifest (`name`.yaml) into the manifests directory, atomically.
    pub fn manifest(&self, name: &str, yaml: &str) {
        let dir = self.s.root().join("manifests");
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).unwrap();
    }

    pub fn delete_pod(&self, name: &str) {
        std::fs::remove_file(self.s.root().join(format!("manifests/{name}.yaml"))).unwrap();
    }

    pub fn status(&self, name: &str) -> Option<Value> {
        let sock = self.s.root().join("run/knode.sock");
        let (_, b) =
            knode::node::kubelet::api::get(&sock, &format!("/pods/default/{name}")).ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        Some(v["pod"]["status"].clone())
    }

    /// The API's answer for a pod (the Pod and its events).
    pub fn status_full(&self, name: &str) -> Value {
        let sock = self.s.root().join("run/knode.sock");
        let (_, b) =
            knode::node::kubelet::api::get(&sock, &format!("/pods/default/{name}")).unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    /// Waits for the pod's container to be ready; returns the pod's IP.
    pub fn ready_ip(&self, name: &str) -> String {
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
    pub fn message(&self, name: &str, what: &str) -> String {
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

    pub fn in_ns(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .unwrap()
    }

    /// An HTTP GET from the node (busybox 1.35's `wget -T` crashes; timeout(1) bounds it).
    pub fn node_get(&self, url: &str) -> String {
        let o = self.in_ns(&["timeout", "5", "busybox", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn pod_get(&self, pod: &str, url: &str) -> String {
        let o = self
            .s
            .knode(&["exec", pod, "--", "timeout", "5", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn veths(&self) -> Vec<String> {
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
    pub fn held(&self) -> usize {
        std::fs::read_dir(self.s.root().join("ipam/podnet"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn wait_no_pods(&self) {
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
