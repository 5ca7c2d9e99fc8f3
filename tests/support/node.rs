//! The one node harness: a store with the busybox image, a manifests directory and a node
//! agent, driven through the CLI and the local API. [`Node::builder`] adds what a test needs:
//! a network namespace of its own with a CNI configuration (the agent then runs inside it,
//! never in the host's), cgroup limits (on a cgroup v2 kernel: the VM tests), extra agent
//! flags, or a command to run the agent under (`prlimit ...`).
//!
//! Waits are bounded ([`Node::until`]); when one times out it prints `knode describe` of every
//! pod and the end of the agent's log (`<root>/agent.log`). Dropping a node deletes its pods
//! through the agent (starting one if none runs), waits for them to go, stops the agent and
//! removes the network namespace: nothing is left behind, even after a failed test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{knode_bin, Store};

/// How long a wait may take before the test fails with diagnostics.
pub const WAIT: Duration = Duration::from_secs(120);

/// What a node is made with.
#[derive(Default)]
pub struct Builder {
    network: Option<(String, String)>,
    /// A network namespace someone else owns (a server's), without a pod network.
    joined: Option<String>,
    cgroups: Option<(String, u64)>,
    args: Vec<String>,
    wrapper: Vec<String>,
}

impl Builder {
    /// A network namespace `kn-<tag>-<pid>` for the node and a conflist whose plugins are
    /// `plugins` (JSON, `@DATA@` standing for the IPAM store directory).
    pub fn network(mut self, tag: &str, plugins: &str) -> Builder {
        self.network = Some((tag.into(), plugins.into()));
        self
    }

    /// The agent in the network namespace `ns` (a test server's: `Server::start_in_netns`),
    /// with loopback-only pods unless a [`Builder::network`] is given too; the namespace
    /// stays when the node goes.
    pub fn join_netns(mut self, ns: &str) -> Builder {
        self.joined = Some(ns.into());
        self
    }

    /// Cgroup limits under `/sys/fs/cgroup/<root>`, with `pids` as every pod's pids.max
    /// (without this the agent runs with `--cgroups=disabled`: the development host has no
    /// cgroup v2 controllers).
    pub fn cgroups(mut self, root: &str, pids: u64) -> Builder {
        self.cgroups = Some((root.into(), pids));
        self
    }

    /// An extra agent flag (`--max-pods`, `3`, ...).
    pub fn arg(mut self, a: &str) -> Builder {
        self.args.push(a.into());
        self
    }

    /// A command the agent runs under (`prlimit --nofile=... --`).
    pub fn wrapper(mut self, w: &[&str]) -> Builder {
        self.wrapper = w.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The node, its agent not started.
    pub fn build(self) -> Node {
        let s = Store::with_busybox();
        let manifests = s.root().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let ns = match (&self.joined, &self.network) {
            (Some(joined), _) => Some(joined.clone()),
            (None, None) => None,
            (None, Some((tag, _))) => {
                let ns = format!("kn-{tag}-{:x}", std::process::id());
                assert!(Command::new("ip")
                    .args(["netns", "add", &ns])
                    .status()
                    .unwrap()
                    .success());
                Some(ns)
            }
        };
        let conf = self.network.as_ref().map(|(_, plugins)| {
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
            conf
        });
        Node {
            s,
            manifests,
            agent: None,
            args: self.args,
            wrapper: self.wrapper,
            own_ns: self.joined.is_none(),
            ns,
            conf,
            cgroups: self.cgroups,
        }
    }

    /// The node with its agent running and answering.
    pub fn start(self) -> Node {
        let mut n = self.build();
        n.start_agent();
        n
    }
}

pub struct Node {
    pub s: Store,
    pub manifests: PathBuf,
    pub agent: Option<Child>,
    /// Extra arguments for the agent.
    pub args: Vec<String>,
    /// A command the agent runs under.
    pub wrapper: Vec<String>,
    /// The node's network namespace and CNI configuration, if it has a pod network.
    pub ns: Option<String>,
    /// Whether the namespace is the node's own (removed with it).
    pub own_ns: bool,
    pub conf: Option<PathBuf>,
    /// The cgroup root and pods' pids.max, if limits are on.
    pub cgroups: Option<(String, u64)>,
}

impl Node {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A node with its agent running (no pod network, no cgroups).
    pub fn new() -> Node {
        Node::builder().start()
    }

    /// A node whose agent is not started yet.
    pub fn stopped() -> Node {
        Node::builder().build()
    }

    pub fn run_dir(&self) -> PathBuf {
        self.s.root().join("run")
    }

    pub fn log_path(&self) -> PathBuf {
        self.s.root().join("agent.log")
    }

    /// The agent's command line.
    pub fn agent_command(&self) -> Command {
        let mut argv: Vec<String> = self.wrapper.clone();
        if let Some(ns) = &self.ns {
            // nsenter enters only the node's network namespace: `ip netns exec` would also
            // give every agent a mount namespace of its own, and a restarted agent could not
            // see the namespaces its predecessor pinned.
            argv.extend(["nsenter".into(), format!("--net=/var/run/netns/{ns}")]);
        }
        argv.push(knode_bin().into());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .arg("--root")
            .arg(self.s.root())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(["agent", "--manifests"])
            .arg(&self.manifests)
            .arg("--log-dir")
            .arg(self.s.root().join("logs"));
        if let Some(conf) = &self.conf {
            c.arg("--cni-conf").arg(conf);
        }
        match &self.cgroups {
            Some((root, pids)) => {
                c.args(["--cgroup-root", root, "--pod-max-pids", &pids.to_string()]);
            }
            None => {
                c.arg("--cgroups=disabled");
            }
        }
        c.args(&self.args);
        c
    }

    /// Starts the agent and waits until its API answers.
    pub fn start_agent(&mut self) {
        self.spawn_agent();
        self.until("the API answers", |n| {
            n.knode(&["get", "pods"]).status.success()
        });
    }

    /// Starts the agent without waiting for it; its log goes to `<root>/agent.log`.
    pub fn spawn_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut c = self.agent_command();
        c.stderr(Stdio::from(log));
        self.agent = Some(c.spawn().unwrap());
    }

    /// kill -9, as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    /// Runs the knode CLI on this node.
    pub fn knode(&self, args: &[&str]) -> Output {
        Command::new(knode_bin())
            .arg("--root")
            .arg(self.s.root())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(args)
            .output()
            .unwrap()
    }

    /// The local API's JSON answer for `path` (null when it has none).
    pub fn api(&self, path: &str) -> Value {
        let sock = knode::node::kubelet::socket(&self.run_dir());
        match knode::node::kubelet::api::get(&sock, path) {
            Ok((_, b)) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => Value::Null,
        }
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.pod_in("default", name)
    }

    pub fn pod_in(&self, ns: &str, name: &str) -> Option<Value> {
        let o = self.knode(&["get", "pods", "-A", "-o", "json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == ns)
            .cloned()
    }

    /// A pod's status from the local API (none until the agent knows the pod).
    pub fn status(&self, name: &str) -> Option<Value> {
        let st = self.api(&format!("/pods/default/{name}"))["pod"]["status"].clone();
        (!st.is_null()).then_some(st)
    }

    /// The API's answer for a pod (the Pod and its events).
    pub fn status_full(&self, name: &str) -> Value {
        self.api(&format!("/pods/default/{name}"))
    }

    /// The agent's manifest errors.
    pub fn manifest_errors(&self) -> String {
        self.api("/pods")["manifestErrors"].to_string()
    }

    /// Waits (bounded by [`WAIT`]) for a condition on the node.
    pub fn until(&self, what: &str, f: impl Fn(&Node) -> bool) {
        self.until_within(what, WAIT, f)
    }

    pub fn until_within(&self, what: &str, limit: Duration, f: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `knode describe` of every pod, the manifest errors and the end of the agent's log.
    pub fn diagnostics(&self) -> String {
        let v = self.api("/pods");
        let mut diag = format!("manifest errors: {}\n", v["manifestErrors"]);
        for p in v["items"].as_array().into_iter().flatten() {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
            diag +=
                &String::from_utf8_lossy(&self.knode(&["describe", "pod", name, "-n", ns]).stdout);
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        diag += "agent log (last lines):\n";
        for l in tail.into_iter().rev() {
            diag += l;
            diag.push('\n');
        }
        diag
    }

    /// Writes a manifest atomically (as a complete file, the way the kubelet wants them).
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    /// Writes `<name>.yaml`.
    pub fn manifest(&self, name: &str, yaml: &str) {
        self.write(&format!("{name}.yaml"), yaml);
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).unwrap();
    }

    /// Removes `<name>.yaml`.
    pub fn delete_pod(&self, name: &str) {
        self.remove(&format!("{name}.yaml"));
    }

    /// A pod `name` of one busybox container running `sh -c cmd`.
    pub fn run_pod(&self, name: &str, cmd: &str) {
        self.manifest(name, &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    command: [sh, -c, '{cmd}']\n"));
    }

    fn pod_dirs(&self) -> usize {
        std::fs::read_dir(self.run_dir().join("pods"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until no pod directory is left.
    pub fn until_no_pod_dirs(&self) {
        self.until("every pod directory removed", |n| n.pod_dirs() == 0);
    }

    pub fn phase(&self, name: &str) -> String {
        self.pod(name)
            .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn running(&self, name: &str) -> bool {
        self.phase(name) == "Running"
    }

    /// Waits for the pod's container to be ready; returns the pod's IP.
    pub fn ready_ip(&self, name: &str) -> String {
        let ip = |n: &Node| {
            n.status(name)
                .filter(|st| st["containerStatuses"][0]["ready"] == true)
                .and_then(|st| st["podIP"].as_str().map(str::to_string))
        };
        self.until(&format!("pod {name} ready with an IP"), |n| ip(n).is_some());
        ip(self).expect("ready")
    }

    /// Waits until the pod's status message contains `what`; returns the message.
    pub fn message(&self, name: &str, what: &str) -> String {
        let m = |n: &Node| {
            n.status(name)
                .and_then(|st| st["message"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        self.until(&format!("pod {name}'s message to say {what:?}"), |n| {
            m(n).contains(what)
        });
        m(self)
    }

    /// Runs a command in the node's network namespace.
    pub fn in_ns(&self, args: &[&str]) -> Output {
        let ns = self.ns.as_deref().expect("a node with a network");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap()
    }

    /// An HTTP GET from the node (busybox 1.35's `wget -T` crashes; timeout(1) bounds it).
    pub fn node_get(&self, url: &str) -> String {
        let o = self.in_ns(&["timeout", "5", "busybox", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// An HTTP GET from inside a pod.
    pub fn pod_get(&self, pod: &str, url: &str) -> String {
        let o = self.knode(&["exec", pod, "--", "timeout", "5", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The host-side veths in the node's namespace.
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
}

impl Drop for Node {
    fn drop(&mut self) {
        // Every pod goes through the agent (one is started if none runs: pods a failed test
        // left must not outlive it), bounded.
        for e in std::fs::read_dir(&self.manifests)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        // An agent on an API server keeps the pods bound to it (the server may be gone by
        // now): the one that cleans up reads no API.
        for flag in ["--kubeconfig", "--server", "--token"] {
            if let Some(i) = self.args.iter().position(|a| a == flag) {
                self.kill_agent();
                self.args.drain(i..i + 2);
            }
        }
        if self.pod_dirs() > 0 {
            if self.agent.is_none() {
                self.spawn_agent();
            }
            let deadline = Instant::now() + WAIT;
            while self.pod_dirs() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_agent();
        if let Some(ns) = self.ns.as_ref().filter(|_| self.own_ns) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // The QoS classes and the root stay while an agent runs (as the kubelet's).
        if let Some((root, _)) = &self.cgroups {
            let base = Path::new("/sys/fs/cgroup").join(root);
            for d in [base.join("burstable"), base.join("besteffort"), base] {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

pub fn state_of<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

pub fn pod_yaml(name: &str, extra: &str, containers: &str) -> String {
    let grace = if extra.contains("terminationGracePeriodSeconds") {
        ""
    } else {
        "  terminationGracePeriodSeconds: 1\n"
    };
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{grace}{extra}  containers:\n{containers}")
}

/// The PID of the running container `container` of any pod.
pub fn container_pid(n: &Node, container: &str) -> i32 {
    let run = n.run_dir().join("pods");
    for uid in std::fs::read_dir(&run).unwrap().flatten() {
        let d = uid.path().join("containers").join(container);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for a in rd.flatten() {
                if let Some(p) = knode::node::shim::pid(&a.path().join("state")) {
                    if knode::node::shim::exit_status(&a.path().join("state")).is_none() {
                        return p;
                    }
                }
            }
        }
    }
    panic!("no running container {container}");
}

/// Whether a process still exists.
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs a command as `nobody`, with no supplementary groups.
pub fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .unwrap()
}

/// `knode logs ARGS`'s output.
pub fn logs(n: &Node, args: &[&str]) -> String {
    String::from_utf8_lossy(&n.knode(&[&["logs"], args].concat()).stdout).into_owned()
}

/// A pod's UID, as the API shows it.
pub fn uid_of(n: &Node, name: &str) -> String {
    n.pod(name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every path below `dir` whose file name is `name` (not following symlinks).
pub fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if e.file_name() == name {
                out.push(e.path());
            }
            if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}
