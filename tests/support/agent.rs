//! The node agent harness: a store with the busybox image, a manifests directory and an
//! agent (no pod network, `--cgroups=disabled`), driven through the CLI and the local API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::{knode_bin, Store};

pub struct Node {
    pub s: Store,
    pub manifests: PathBuf,
    pub agent: Option<Child>,
    /// Extra arguments for the agent (`--max-pods 3`, ...).
    pub args: Vec<String>,
    /// A command the agent runs under (`prlimit --nofile=...`).
    pub wrapper: Vec<String>,
}

impl Node {
    /// A node with its agent running.
    pub fn new() -> Node {
        let mut n = Node::stopped();
        n.start_agent();
        n
    }

    /// A node whose agent is not started yet.
    pub fn stopped() -> Node {
        let s = Store::with_busybox();
        let manifests = s.root().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        Node {
            s,
            manifests,
            agent: None,
            args: vec![],
            wrapper: vec![],
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.s.root().join("run")
    }

    /// Starts the agent and waits until its API answers.
    pub fn start_agent(&mut self) {
        self.spawn_agent();
        // Ready when the API answers.
        self.until("the API answers", |n| {
            n.knode(&["get", "pods"]).status.success()
        });
    }

    /// Starts the agent without waiting for it.
    pub fn spawn_agent(&mut self) {
        let mut cmd = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(knode_bin());
                c
            }
            None => Command::new(knode_bin()),
        };
        let child = cmd
            .arg("--root")
            .arg(self.s.root())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(["agent", "--manifests"])
            .arg(&self.manifests)
            .arg("--log-dir")
            .arg(self.s.root().join("logs"))
            // The host has no cgroup v2 controllers; the VM tests (tests/cgroups.rs) have.
            .arg("--cgroups=disabled")
            .args(&self.args)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// kill -9, as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill().unwrap();
            a.wait().unwrap();
        }
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    pub fn knode(&self, args: &[&str]) -> Output {
        Command::new(knode_bin())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn pod(&self, name: &str) -> Option<serde_json::Value> {
        self.pod_in("default", name)
    }

    pub fn pod_in(&self, ns: &str, name: &str) -> Option<serde_json::Value> {
        let o = self.knode(&["get", "pods", "-A", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == ns)
            .cloned()
    }

    /// The agent's manifest errors.
    pub fn manifest_errors(&self) -> String {
        let (_, body) =
            knode::node::kubelet::api::get(&knode::node::kubelet::socket(&self.run_dir()), "/pods")
                .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        v["manifestErrors"].to_string()
    }

    /// Waits (bounded) for a condition on the agent's reported state.
    pub fn until(&self, what: &str, f: impl Fn(&Node) -> bool) {
        self.until_within(what, Duration::from_secs(60), f)
    }

    pub fn until_within(&self, what: &str, limit: Duration, f: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            if Instant::now() > deadline {
                let (_, body) = knode::node::kubelet::api::get(
                    &knode::node::kubelet::socket(&self.run_dir()),
                    "/pods",
                )
                .unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut diag = format!("manifest errors: {}\n", v["manifestErrors"]);
                for p in v["items"].as_array().into_iter().flatten() {
                    let name = p["metadata"]["name"].as_str().unwrap_or_default();
                    let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
                    diag += &String::from_utf8_lossy(
                        &self.knode(&["describe", "pod", name, "-n", ns]).stdout,
                    );
                }
                panic!("timed out waiting for {what}; pods:\n{diag}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a manifest atomically (as a complete file, the way the kubelet wants them).
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).unwrap();
    }

    /// Waits until no pod directory is left.
    pub fn until_no_pod_dirs(&self) {
        self.until("every pod directory removed", |n| {
            std::fs::read_dir(n.run_dir().join("pods"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
        });
    }

    pub fn phase(&self, name: &str) -> String {
        self.pod(name)
            .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn running(&self, name: &str) -> bool {
        self.phase(name) == "Running"
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Remove every pod, let the agent tear them down, then stop it.
        if self.agent.is_some() {
            for e in std::fs::read_dir(&self.manifests).unwrap().flatten() {
                let _ = std::fs::remove_file(e.path());
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::fs::read_dir(self.run_dir().join("pods"))
                .map(|d| d.count())
                .unwrap_or(0)
                > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_agent();
    }
}

pub fn state_of<'a>(pod: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    pod["status"][list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
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
