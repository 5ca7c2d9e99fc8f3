//! Pod start benchmark (run as root: `cargo bench --bench pods`).
//!
//! - knode: a pod manifest (one busybox container, image cached) is written
//!   into the agent's manifests directory; latency runs from the write to the agent's
//!   "Started container" event (recorded after the container has exec'd), 100 pods one after
//!   another; once without a pod network, once with knode's bridge (CNI in-process) in a
//!   node network namespace the benchmark makes.
//! - crun: the same rootfs and command launched by `crun --cgroup-manager=disabled run -d`,
//!   100 times, in the same run.
//! - agent memory: VmRSS idle and with the 100 pods running.
//! - restart after a crash: 50 pods of 3 containers each (150 containers that ignore SIGTERM,
//!   grace period 3 s) and one pod that stays; the agent is killed with SIGKILL, the 50 pods'
//!   manifests are removed, and a new agent starts. Measured from its start: until the API
//!   shows the staying pod Running (state published; goal < 1 s), and until the 150 orphaned
//!   containers and their pods are gone (goal: the grace period plus 2 s).

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{pct, rss_kb};

const PODS: usize = 100;

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pod start benchmark: run it with `cargo bench --bench pods` (as root)");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--crun-loop") {
        crun_loop(Path::new(&args[i + 1]), args[i + 2].parse().unwrap());
        return;
    }
    let knode = env!("CARGO_BIN_EXE_knode");
    let work = tempfile::Builder::new()
        .prefix("knode-bench-pods-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = work.path().join("root");
    // As in production, runtime state lives on a tmpfs (/run).
    let run_tmp = tempfile::Builder::new()
        .prefix("knode-bench-")
        .tempdir_in("/run")
        .unwrap();
    let run_dir = run_tmp.path().join("run");
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    // The busybox image, imported.
    let (_store, rootfs) = support::busybox_store(&root, work.path());

    // crun, same rootfs (read-only), same command.
    let bundle = work.path().join("bundle");
    let mut cfg = support::crun_config(&bundle, &rootfs);
    if let Some(arr) = cfg["mounts"].as_array_mut() {
        arr.retain(|m| m["type"] != "cgroup");
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    // crun refuses this hybrid cgroup host even with cgroups disabled (it sees a controller on
    // the cgroup2 mount): run it in a private mount namespace whose /sys/fs/cgroup is an empty
    // tmpfs. The host's hierarchy is not touched.
    let me = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /sys/fs/cgroup && exec {} --bench --crun-loop {} {PODS}",
            me.display(),
            bundle.display()
        ))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the crun loop failed");
    let crun: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(crun.len(), PODS);

    // knode, without and with the pod network (knode's bridge in a node namespace made here).
    let logs = work.path().join("logs");
    let (kn, idle, busy) = knode_run(knode, &root, &run_dir, &manifests, &logs, None);
    let ns = format!("knode-bench-node-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let conf = work.path().join("net.conflist");
    std::fs::write(
        &conf,
        format!(
            r#"{{"cniVersion":"1.1.0","name":"bench","plugins":[{{"type":"knode-bridge","bridge":"knode0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{{"type":"knode-cni","subnet":"10.244.0.0/24","dataDir":"{}"}}}}]}}"#,
            work.path().join("ipam").display()
        ),
    )
    .unwrap();
    let (kn_net, _, _) = knode_run(
        knode,
        &root,
        &run_dir,
        &manifests,
        &logs,
        Some((&ns, &conf)),
    );
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let (published, torn_down) = restart_run(knode, &root, &run_dir, &manifests, &logs);
    let (k50, k99) = (pct(&kn, 0.5), pct(&kn, 0.99));
    let (c50, c99) = (pct(&crun, 0.5), pct(&crun, 0.99));
    println!("pod start, image cached, one container, no network ({PODS} pods each)");
    println!("  knode agent: manifest written -> container running   p50 {k50:6.2} ms   p99 {k99:6.2} ms");
    println!("  crun run -d (cgroups disabled), same rootfs          p50 {c50:6.2} ms   p99 {c99:6.2} ms");
    println!(
        "  knode p50 / crun p50 = {:.2} (goal <= 1.5; and knode p50 < 20 ms)",
        k50 / c50
    );
    let (n50, n99) = (pct(&kn_net, 0.5), pct(&kn_net, 0.99));
    println!("pod start with the pod network (knode's bridge plugin, in-process)");
    println!("  knode agent: manifest written -> container running   p50 {n50:6.2} ms   p99 {n99:6.2} ms   (goal p50 < 30 ms)");
    println!(
        "agent RSS: idle {:.1} MB, with {PODS} pods running {:.1} MB (goal < 30 MB)",
        idle as f64 / 1024.0,
        busy as f64 / 1024.0
    );
    println!("restart after kill -9 with {ORPHAN_PODS} orphaned pods x 3 containers (grace {ORPHAN_GRACE} s, SIGTERM ignored)");
    println!("  state published (a running pod listed)   {published:8.1} ms   (goal < 1000 ms)");
    println!(
        "  every orphan torn down                   {torn_down:8.1} ms   (goal < {} ms: grace + 2 s)",
        (ORPHAN_GRACE + 2) * 1000
    );
}

const ORPHAN_PODS: usize = 50;
const ORPHAN_GRACE: u64 = 3;

/// An agent without cgroups (in the node network namespace `net.0` with the CNI
/// configuration `net.1`, if given).
fn start_agent(
    knode: &str,
    root: &Path,
    run_dir: &Path,
    manifests: &Path,
    logs: &Path,
    net: Option<(&str, &Path)>,
) -> Agent {
    let mut cmd = match net {
        Some((ns, _)) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(knode);
            c
        }
        None => Command::new(knode),
    };
    cmd.arg("--root")
        .arg(root)
        .arg("--run-dir")
        .arg(run_dir)
        .args(["agent", "--manifests"])
        .arg(manifests)
        .arg("--log-dir")
        .arg(logs)
        .arg("--cni-conf")
        .arg(net.map(|n| n.1).unwrap_or(Path::new("/nonexistent")))
        .arg("--cgroups=disabled");
    Agent(cmd.spawn().unwrap())
}

/// Waits until at most `n` pod directories are left (10 ms steps: the figure is a time).
fn until_pod_dirs(run_dir: &Path, n: usize, deadline: Instant, what: &str) {
    while std::fs::read_dir(run_dir.join("pods")).map_or(0, |d| d.count()) > n {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The restart case (see the module docs); returns (published, torn down) in ms.
fn restart_run(
    knode: &str,
    root: &Path,
    run_dir: &Path,
    manifests: &Path,
    logs: &Path,
) -> (f64, f64) {
    let agent = start_agent(knode, root, run_dir, manifests, logs, None);
    let sock = run_dir.join("knode.sock");
    let ctr = |c: &str| {
        format!("  - name: {c}\n    image: bench/busybox:1\n    command: [sh, -c, 'trap \"\" TERM; exec sleep 3600']\n")
    };
    for i in 0..ORPHAN_PODS {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: o{i}\nspec:\n  terminationGracePeriodSeconds: {ORPHAN_GRACE}\n  containers:\n{}{}{}",
            ctr("a"), ctr("b"), ctr("c")
        );
        std::fs::write(manifests.join(format!("o{i}.yaml")), yaml).unwrap();
    }
    std::fs::write(
        manifests.join("stay.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stay\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: bench/busybox:1\n    command: [sleep, '3600']\n",
    )
    .unwrap();
    let running = |v: &serde_json::Value| {
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while running(&support::api(&sock, "/pods")) < ORPHAN_PODS + 1 {
        assert!(Instant::now() < deadline, "the pods did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(agent); // SIGKILL
    for i in 0..ORPHAN_PODS {
        std::fs::remove_file(manifests.join(format!("o{i}.yaml"))).unwrap();
    }
    let t0 = Instant::now();
    let agent = start_agent(knode, root, run_dir, manifests, logs, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = support::api(&sock, "/pods/default/stay");
        if v["pod"]["status"]["phase"] == "Running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the staying pod was not published"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let published = t0.elapsed().as_secs_f64() * 1000.0;
    until_pod_dirs(run_dir, 1, deadline, "the orphans were not torn down");
    let torn_down = t0.elapsed().as_secs_f64() * 1000.0;
    std::fs::remove_file(manifests.join("stay.yaml")).unwrap();
    until_pod_dirs(run_dir, 0, deadline, "the last pod was not removed");
    drop(agent);
    (published, torn_down)
}

/// One knode run: an agent (in the node network namespace `netns` with `cni_conf`, if
/// given), PODS pods one after another; returns the latencies (ms) and the agent's RSS (kB)
/// idle and busy. Every pod is deleted again before it returns.
fn knode_run(
    knode: &str,
    root: &Path,
    run_dir: &Path,
    manifests: &Path,
    logs: &Path,
    net: Option<(&str, &Path)>,
) -> (Vec<f64>, u64, u64) {
    let agent = start_agent(knode, root, run_dir, manifests, logs, net);
    let sock = run_dir.join("knode.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while knode::node::kubelet::api::get(&sock, "/healthz").is_err() {
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kb(agent.0.id());
    let kn = support::start_pods(&sock, manifests, PODS, "");
    std::thread::sleep(Duration::from_millis(500));
    let busy = rss_kb(agent.0.id());
    // Tear down.
    for i in 0..PODS {
        let _ = std::fs::remove_file(manifests.join(format!("p{i}.yaml")));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    until_pod_dirs(run_dir, 0, deadline, "the pods were not removed");
    drop(agent);

    (kn, idle, busy)
}

/// Times `crun run -d` of the bundle `n` times (inside the private mount namespace).
fn crun_loop(bundle: &Path, n: usize) {
    for i in 0..n {
        let id = format!("knode-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = Command::new("crun")
            .args(["--cgroup-manager=disabled", "run", "-d", "-b"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(st.success(), "crun run failed");
        println!("{ms}");
        let _ = Command::new("crun")
            .args(["--cgroup-manager=disabled", "kill", &id, "KILL"])
            .status();
        let _ = Command::new("crun")
            .args(["--cgroup-manager=disabled", "delete", "-f", &id])
            .stdout(Stdio::null())
            .status();
    }
}
