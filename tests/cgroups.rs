//! Resource limits end to end, on a kernel with cgroup v2 controllers: run inside a VM by
//! `scripts/vm-test.sh` (the development hosts bind cpu, memory and pids to cgroup v1). The
//! agent runs with its own cgroup root and a small pids.max; every test deletes its pods and
//! checks that no pod cgroup, process or mount is left.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::node::Node;
use support::*;

const MOUNT: &str = "/sys/fs/cgroup";
const PIDS: u64 = 64;

/// A node with cgroup limits under `/sys/fs/cgroup/knode-test-<tag>` (the harness removes
/// the root when the node goes).
fn vm_node(tag: &str) -> Node {
    assert!(
        knode::node::cgroup::probe().is_ok(),
        "these tests need cgroup v2 with cpu, memory and pids: run them with scripts/vm-test.sh ({})",
        knode::node::cgroup::probe().err().map(|e| e.to_string()).unwrap_or_default()
    );
    Node::builder()
        .cgroups(&format!("knode-test-{tag}"), PIDS)
        .start()
}

/// What the cgroup tests read of a node.
trait Cgroups {
    fn root(&self) -> PathBuf;
    fn api_pod(&self, name: &str) -> Value;
    fn containers_running(&self, name: &str) -> bool;
    fn pod_cgroup(&self, name: &str) -> PathBuf;
    fn container_cgroup(&self, pod: &str, container: &str) -> PathBuf;
    fn delete_all(&self);
}

impl Cgroups for Node {
    fn root(&self) -> PathBuf {
        Path::new(MOUNT).join(&self.cgroups.as_ref().expect("cgroups on").0)
    }

    fn api_pod(&self, name: &str) -> Value {
        self.api(&format!("/pods/default/{name}"))["pod"].clone()
    }

    fn containers_running(&self, name: &str) -> bool {
        self.api_pod(name)["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object())
            })
    }

    /// The pod's cgroup directory, found by its UID under any QoS class.
    fn pod_cgroup(&self, name: &str) -> PathBuf {
        let uid = self.api_pod(name)["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let base = self.root();
        [
            base.clone(),
            base.join("burstable"),
            base.join("besteffort"),
        ]
        .into_iter()
        .map(|d| d.join(format!("pod{uid}")))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no cgroup for pod {name} ({uid})"))
    }

    /// The cgroup of a running container, from its PID's /proc/PID/cgroup.
    fn container_cgroup(&self, pod: &str, container: &str) -> PathBuf {
        let o = self.knode(&["exec", pod, "-c", container, "--", "cat", "/proc/1/cgroup"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Inside its cgroup namespace the container sees its own cgroup as `/`.
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0::/");
        let pc = self.pod_cgroup(pod);
        let dirs: Vec<PathBuf> = std::fs::read_dir(&pc)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{container}-"))
            })
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }

    /// Deletes every pod and checks that no pod cgroup is left in any class.
    fn delete_all(&self) {
        for e in std::fs::read_dir(&self.manifests).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        self.until_no_pod_dirs();
        let base = self.root();
        for d in [
            base.clone(),
            base.join("burstable"),
            base.join("besteffort"),
        ] {
            let left: Vec<String> = std::fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pod"))
                .collect();
            assert!(
                left.is_empty(),
                "pod cgroups left in {}: {left:?}",
                d.display()
            );
        }
    }
}

fn read(p: &Path, file: &str) -> String {
    std::fs::read_to_string(p.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", p.join(file).display()))
        .trim()
        .to_string()
}

fn keyed(p: &Path, file: &str, key: &str) -> u64 {
    read(p, file)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key} "))
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {key} in {}", p.join(file).display()))
}

fn pod(name: &str, containers: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n{containers}")
}

fn ctr(name: &str, cmd: &str, resources: &str) -> String {
    format!(
        "  - name: {name}\n    image: test/busybox:1\n    command: [sh, -c, '{cmd}']\n{resources}"
    )
}

#[test]
fn qos_classes_weights_and_limits_land_in_the_kernel() {
    let n = vm_node("qos");
    n.manifest(
        "guaranteed",
        &pod(
            "guaranteed",
            &ctr(
                "c",
                "sleep 1000",
                "    resources:\n      limits: {cpu: 500m, memory: 64Mi}\n",
            ),
        ),
    );
    n.manifest(
        "besteffort",
        &pod("besteffort", &ctr("c", "sleep 1000", "")),
    );
    n.manifest(
        "burstable",
        &pod(
            "burstable",
            &(ctr(
                "a",
                "sleep 1000",
                "    resources:\n      requests: {cpu: 250m}\n",
            ) + &ctr(
                "b",
                "sleep 1000",
                "    resources:\n      requests: {memory: 16Mi}\n      limits: {memory: 32Mi}\n",
            )),
        ),
    );
    n.until("three pods running", |n| {
        n.containers_running("guaranteed")
            && n.containers_running("besteffort")
            && n.containers_running("burstable")
    });
    for (name, class) in [
        ("guaranteed", "Guaranteed"),
        ("besteffort", "BestEffort"),
        ("burstable", "Burstable"),
    ] {
        assert_eq!(n.api_pod(name)["status"]["qosClass"], class, "{name}");
    }
    let base = n.root();

    // Guaranteed: directly under the root, the sum of its containers' values.
    let g = n.pod_cgroup("guaranteed");
    assert_eq!(g.parent().unwrap(), base);
    assert_eq!(
        read(&g, "cpu.weight"),
        "20",
        "500m = 512 shares = weight 20"
    );
    assert_eq!(read(&g, "cpu.max"), "50000 100000");
    assert_eq!(read(&g, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read(&g, "pids.max"), PIDS.to_string());
    let gc = n.container_cgroup("guaranteed", "c");
    assert_eq!(read(&gc, "cpu.max"), "50000 100000");
    assert_eq!(read(&gc, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read(&gc, "memory.oom.group"), "1");
    if gc.join("memory.swap.max").exists() {
        assert_eq!(read(&gc, "memory.swap.max"), "0");
    }
    // The container's process was cloned into its cgroup: it is there, and only there.
    let procs = read(&gc, "cgroup.procs");
    assert_eq!(procs.lines().count(), 1, "{procs}");
    assert_eq!(
        read(&g, "cgroup.procs"),
        "",
        "no process in the pod level itself"
    );

    // BestEffort: the minimum weight, no limits.
    let be = n.pod_cgroup("besteffort");
    assert_eq!(be.parent().unwrap(), base.join("besteffort"));
    assert_eq!(read(&be, "cpu.weight"), "1");
    assert_eq!(read(&base.join("besteffort"), "cpu.weight"), "1");
    assert_eq!(read(&be, "cpu.max"), "max 100000");
    assert_eq!(read(&be, "memory.max"), "max");
    assert_eq!(read(&be, "pids.max"), PIDS.to_string());

    // Burstable: weight from the requests; a limit only where every container has one.
    let bu = n.pod_cgroup("burstable");
    assert_eq!(bu.parent().unwrap(), base.join("burstable"));
    let shares = knode::node::cgroup::resources::cpu_shares(Some(250));
    let w = knode::node::cgroup::resources::cpu_weight(shares).to_string();
    assert_eq!(read(&bu, "cpu.weight"), w);
    assert_eq!(
        read(&base.join("burstable"), "cpu.weight"),
        w,
        "the class weighs its pods' requests"
    );
    assert_eq!(
        read(&bu, "memory.max"),
        "max",
        "container a has no memory limit"
    );
    assert_eq!(
        read(&n.container_cgroup("burstable", "b"), "memory.max"),
        (32u64 << 20).to_string()
    );
    assert_eq!(read(&n.container_cgroup("burstable", "a"), "cpu.weight"), w);

    // An exec'd command joins the container's cgroup, under its limits.
    let o = n.knode(&[
        "exec",
        "guaranteed",
        "--",
        "sh",
        "-c",
        "cat /proc/self/cgroup",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0::/");

    n.delete_all();
    assert_eq!(
        read(&base.join("burstable"), "cpu.weight"),
        "1",
        "no burstable pod left"
    );
}

#[test]
fn the_memory_limit_oom_kills_and_the_container_restarts() {
    let n = vm_node("oom");
    // dd holds a 64 MiB buffer: over the 32 MiB limit.
    n.manifest(
        "hog",
        &pod("hog", &ctr("hog", "echo start; dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived; sleep 1000", "    resources:\n      limits: {memory: 32Mi}\n")),
    );
    n.until("an OOM kill and a restart", |n| {
        let c = &n.api_pod("hog")["status"]["containerStatuses"][0];
        c["restartCount"].as_u64() >= Some(1) && c["lastState"]["terminated"].is_object()
    });
    let c = n.api_pod("hog")["status"]["containerStatuses"][0].clone();
    let t = &c["lastState"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{c}");
    assert_eq!(t["exitCode"], 137, "{c}");
    let logs =
        String::from_utf8_lossy(&n.knode(&["logs", "hog", "--previous"]).stdout).into_owned();
    assert!(
        logs.contains("start") && !logs.contains("survived"),
        "the whole container was killed: {logs}"
    );
    let d = String::from_utf8_lossy(&n.knode(&["describe", "pod", "hog"]).stdout).into_owned();
    assert!(d.contains("OOMKilled"), "{d}");
    n.delete_all();
}

#[test]
fn cpu_max_throttles_a_busy_loop_and_stats_are_plausible() {
    let n = vm_node("cpu");
    n.manifest(
        "busy",
        &pod(
            "busy",
            &(ctr(
                "spin",
                "while :; do :; done",
                "    resources:\n      limits: {cpu: 200m, memory: 64Mi}\n",
            ) + &ctr(
                "mem",
                "head -c 20971520 /dev/zero > /dev/shm/blob; sleep 1000",
                "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n",
            )),
        ),
    );
    n.until("busy running", |n| n.containers_running("busy"));
    let spin = n.container_cgroup("busy", "spin");
    let mem = n.container_cgroup("busy", "mem");
    n.until("the 20 MiB blob is written", |_| {
        read(&mem, "memory.current").parse::<u64>().unwrap() >= 20 << 20
    });
    // A measurement window of a few seconds (the figure is a rate; nothing is awaited).
    let (u0, t0, at) = (
        keyed(&spin, "cpu.stat", "usage_usec"),
        keyed(&spin, "cpu.stat", "nr_throttled"),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(4));
    let (u1, t1) = (
        keyed(&spin, "cpu.stat", "usage_usec"),
        keyed(&spin, "cpu.stat", "nr_throttled"),
    );
    let cores = (u1 - u0) as f64 / at.elapsed().as_micros() as f64;
    assert!(t1 > t0, "nr_throttled grew: {t0} -> {t1}");
    assert!(
        (0.1..=0.3).contains(&cores),
        "a 200m limit gave {cores:.3} cores"
    );

    // The summary: the rate needs a second sample a second later.
    n.until("a CPU rate for the pod", |n| {
        n.api("/stats/summary")["pods"][0]["cpu"]["usageNanoCores"].is_u64()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = n.api("/stats/summary");
    let p = &s["pods"][0];
    assert_eq!(p["podRef"]["name"], "busy");
    let spin_c = p["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spin")
        .unwrap();
    let nano = spin_c["cpu"]["usageNanoCores"].as_u64().unwrap();
    assert!(
        (100_000_000..=300_000_000).contains(&nano),
        "spin: {nano} nanocores"
    );
    let mem_c = p["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mem")
        .unwrap();
    let ws = mem_c["memory"]["workingSetBytes"].as_u64().unwrap();
    assert!((20 << 20..=64 << 20).contains(&ws), "mem working set {ws}");
    assert!(
        p["memory"]["workingSetBytes"].as_u64().unwrap() >= ws,
        "the pod includes its containers"
    );
    assert!(
        p["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap()
            >= spin_c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap()
    );
    // The node: capacity from the host, usage from /proc.
    let node = n.api("/node");
    let cpus = online_cpus();
    assert_eq!(node["status"]["capacity"]["cpu"], cpus.as_str());
    let total = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(node["status"]["capacity"]["memory"], format!("{total}Ki"));
    assert!(node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "ResourceLimits" && c["status"] == "True"));
    assert!(s["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > ws);

    let o = n.knode(&["top", "pods", "--containers"]);
    let top = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        top.starts_with("POD") && top.contains("spin") && top.contains("mem"),
        "{top}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = n.knode(&["top", "node"]);
    let top = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        top.contains("CPU%") && top.contains("MEMORY%"),
        "{top}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    n.delete_all();
}

#[test]
fn pids_max_stops_a_fork_bomb_and_the_node_stays_healthy() {
    let n = vm_node("pids");
    n.manifest(
        "bomb",
        // Twenty sleepers in the background, then a classic fork bomb; PID 1 then becomes a
        // sleep, which needs no fork.
        &pod(
            "bomb",
            &ctr(
                "bomb",
                "for i in $(seq 20); do sleep 1000 & done; b() { b | b & }; b; exec sleep 100000",
                "    resources:\n      limits: {cpu: 300m}\n",
            ),
        ),
    );
    n.until("bomb running", |n| n.containers_running("bomb"));
    let pc = n.pod_cgroup("bomb");
    let cc = n.container_cgroup("bomb", "bomb");
    // Kernels before 6.12 count the refused fork in the forking task's cgroup, later ones
    // (also) where the limit is.
    n.until("the pod reaches pids.max", |_| {
        keyed(&pc, "pids.events", "max") + keyed(&cc, "pids.events", "max") > 0
    });
    assert!(read(&pc, "pids.current").parse::<u64>().unwrap() <= PIDS);
    // The node still starts and runs other pods, and answers.
    n.manifest("calm", &pod("calm", &ctr("c", "echo fine; sleep 1000", "")));
    n.until("calm running", |n| n.containers_running("calm"));
    assert!(n.knode(&["get", "pods"]).status.success());
    let bomb_procs: Vec<String> = read(&cc, "cgroup.procs")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(bomb_procs.len() > 20, "{} processes", bomb_procs.len());
    // Deleting the pod kills every one of them (cgroup.kill), not just PID 1.
    std::fs::remove_file(n.manifests.join("bomb.yaml")).unwrap();
    n.until("bomb deleted", |n| {
        n.api("/pods")["items"].as_array().unwrap().len() == 1
    });
    assert!(!pc.exists(), "the pod's cgroup is gone");
    for p in bomb_procs {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "process {p} outlived its pod"
        );
    }
    n.delete_all();
}

/// `kubectl top pods` through the API server's metrics API, against the container's own
/// cgroup: a node agent joined to a server (in the server's network namespace, with a pod
/// network), a pod spinning under a 200m limit beside one holding a 20 MiB blob.
#[test]
fn kubectl_top_pods_reports_the_cgroup_usage() {
    use support::server::{Server, KUBECTL};
    const NET: &str = r#"{"type":"knode-bridge","bridge":"kntop0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"knode-cni","subnet":"10.87.0.0/24","dataDir":"@DATA@"}}"#;
    assert!(
        knode::node::cgroup::probe().is_ok(),
        "run with scripts/vm-test.sh"
    );
    let s = Server::start_in_netns(&[]);
    let n = Node::builder()
        .join_netns(s.netns.as_deref().unwrap())
        .network("top", NET)
        .cgroups("knode-test-top", PIDS)
        .arg("--kubeconfig")
        .arg(s.kubeconfig().to_str().unwrap())
        .arg("--node-name")
        .arg("node-1")
        .arg("--kubelet-port")
        .arg("0")
        .start();
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/node-1",
        "--timeout=120s",
    ]);
    s.ok_with(
        KUBECTL,
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: busy}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n{}{}",
            ctr("spin", "while :; do :; done", "    resources:\n      limits: {cpu: 200m, memory: 64Mi}\n"),
            ctr("mem", "head -c 20971520 /dev/zero > /dev/shm/blob; sleep 1000", "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n"),
        )),
    );
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/busy",
        "--timeout=120s",
    ]);
    let mem = n.container_cgroup("busy", "mem");
    n.until("the 20 MiB blob is written", |_| {
        read(&mem, "memory.current").parse::<u64>().unwrap() >= 20 << 20
    });
    let top = s.ok(&["top", "pod", "busy", "--containers", "--no-headers"]);
    let row = |c: &str| -> (u64, u64) {
        let l = top
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(c))
            .unwrap_or_else(|| panic!("{top}"));
        let f: Vec<&str> = l.split_whitespace().collect();
        (
            f[2].trim_end_matches('m').parse().unwrap(),
            f[3].trim_end_matches("Mi").parse().unwrap(),
        )
    };
    let (spin_cpu, _) = row("spin");
    let (_, mem_mib) = row("mem");
    assert!(
        (100..=300).contains(&spin_cpu),
        "spin under a 200m limit: {top}"
    );
    // The working set, as the cgroup has it (usage less inactive file pages).
    let ws = read(&mem, "memory.current").parse::<u64>().unwrap()
        - keyed(&mem, "memory.stat", "inactive_file");
    let ws_mib = ws >> 20;
    assert!(
        mem_mib + 2 >= ws_mib && mem_mib <= ws_mib + 2,
        "top {mem_mib}Mi, cgroup {ws_mib}Mi: {top}"
    );
    let nodes = s.ok(&["top", "nodes", "--no-headers"]);
    assert!(nodes.starts_with("node-1 "), "{nodes}");
    s.ok(&["delete", "pod", "busy", "--timeout=60s"]);
    n.until_no_pod_dirs();
    for d in [
        n.root(),
        n.root().join("burstable"),
        n.root().join("besteffort"),
    ] {
        let left: Vec<String> = std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("pod"))
            .collect();
        assert!(
            left.is_empty(),
            "pod cgroups left in {}: {left:?}",
            d.display()
        );
    }
}
