//! What resource limits cost a pod start, against crun's cgroup setup (`cargo bench --bench
//! cgroups`, as root). It needs cgroup v2 with cpu, memory and pids: on a host without them it
//! runs itself in a virtme-ng VM through `scripts/vm-test.sh --exec` (software emulation here,
//! so absolute times are several times a bare machine's; the ratios are measured in one run).
//!
//! - knode: pods with limits (cpu 100m, memory 32Mi: pod and container cgroups, the runtime
//!   cloning straight into the container's) written one after another into an agent's
//!   manifests directory, manifest written -> "Started" event; the same with
//!   `--cgroups=disabled`; then the deletion of all of them (cgroup.kill, rmdir), timed.
//! - crun: `crun run -d` of the same rootfs and command with the same limits through its cgroupfs
//!   manager, and with `--cgroup-manager=disabled`: crun's own cost of cgroups.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{pct, start_pods};

fn pods() -> usize {
    std::env::var("KNODE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("cgroup benchmark: run it with `cargo bench --bench cgroups` (as root)");
        return;
    }
    if let Err(e) = knode::node::cgroup::probe() {
        if std::env::var_os("KNODE_BENCH_IN_VM").is_some() {
            panic!("no cgroup v2 in the VM either: {e}");
        }
        println!("{e}: running the benchmark in a VM (scripts/vm-test.sh --exec)");
        let me = std::env::current_exe().unwrap();
        let st = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/vm-test.sh"))
            .arg("--exec")
            .arg(format!(
                "KNODE_BENCH_IN_VM=1 KNODE_BENCH_PODS={} {} --bench",
                pods(),
                me.display()
            ))
            .status()
            .expect("scripts/vm-test.sh");
        std::process::exit(st.code().unwrap_or(1));
    }
    let knode = env!("CARGO_BIN_EXE_knode");
    let work = tempfile::Builder::new()
        .prefix("knode-bench-cgroups-")
        .tempdir()
        .unwrap();
    let (_store, rootfs) = support::busybox_store(&work.path().join("root"), work.path());
    let n = pods();

    let (on, on_del) = knode_run(knode, work.path(), true, n);
    let (off, off_del) = knode_run(knode, work.path(), false, n);
    let crun_on = crun_run(work.path(), &rootfs, true, n);
    let crun_off = crun_run(work.path(), &rootfs, false, n);

    let row = |name: &str, v: &[f64]| {
        let (imax, max) = v
            .iter()
            .enumerate()
            .fold((0, 0.0), |m, (i, x)| if *x > m.1 { (i, *x) } else { m });
        println!(
            "  {name:<50} p50 {:7.1} ms   p90 {:7.1} ms   max {:7.1} ms (start #{})",
            pct(v, 0.5),
            pct(v, 0.9),
            max,
            imax + 1
        )
    };
    println!(
        "pod start with limits (cpu 100m, memory 32Mi), {n} one after another, cgroup v2 in a VM"
    );
    row("knode: manifest -> running, limits enforced", &on);
    row("knode: the same, --cgroups=disabled", &off);
    row("crun run -d, limits through its cgroupfs manager", &crun_on);
    row("crun run -d, --cgroup-manager=disabled", &crun_off);
    let k = pct(&on, 0.5) - pct(&off, 0.5);
    let c = pct(&crun_on, 0.5) - pct(&crun_off, 0.5);
    println!(
        "  cost of cgroups at p50: knode {k:.2} ms, crun {c:.2} ms (knode / crun = {:.2})",
        k / c
    );
    println!(
        "  with limits, knode p50 / crun p50 = {:.2}",
        pct(&on, 0.5) / pct(&crun_on, 0.5)
    );
    println!(
        "pod deletion, all {n} at once, until every pod and cgroup is gone: {on_del:.0} ms with cgroups, {off_del:.0} ms without"
    );
}

/// An agent with or without cgroups, `n` pods one after another; returns the start
/// latencies (ms) and how long deleting them all took (ms).
fn knode_run(knode: &str, work: &Path, cgroups: bool, n: usize) -> (Vec<f64>, f64) {
    let tag = if cgroups { "on" } else { "off" };
    let run_dir = work.join(format!("run-{tag}"));
    let manifests = work.join(format!("manifests-{tag}"));
    std::fs::create_dir_all(&manifests).unwrap();
    let mut cmd = Command::new(knode);
    cmd.arg("--root")
        .arg(work.join("root"))
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["agent", "--manifests"])
        .arg(&manifests)
        .arg("--log-dir")
        .arg(work.join(format!("logs-{tag}")))
        .args(["--cni-conf", "/nonexistent", "--log", "error"]);
    if cgroups {
        cmd.args(["--cgroup-root", "knode-bench"]);
    } else {
        cmd.arg("--cgroups=disabled");
    }
    let mut agent = cmd.spawn().unwrap();
    let sock = run_dir.join("knode.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while knode::node::kubelet::api::get(&sock, "/healthz").is_err() {
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let lat = start_pods(
        &sock,
        &manifests,
        n,
        "    resources:\n      limits: {cpu: 100m, memory: 32Mi}\n",
    );
    let t = Instant::now();
    for i in 0..n {
        std::fs::remove_file(manifests.join(format!("p{i}.yaml"))).unwrap();
    }
    let cg = Path::new("/sys/fs/cgroup/knode-bench");
    let pod_cgroups = || {
        ["", "burstable", "besteffort"]
            .iter()
            .flat_map(|c| {
                std::fs::read_dir(cg.join(c))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|e| e.file_name().to_string_lossy().starts_with("pod"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_dir(run_dir.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
        || pod_cgroups() > 0
    {
        assert!(Instant::now() < deadline, "the pods were not deleted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let del = t.elapsed().as_secs_f64() * 1000.0;
    let _ = agent.kill();
    let _ = agent.wait();
    for d in ["burstable", "besteffort", ""] {
        let _ = std::fs::remove_dir(cg.join(d));
    }
    (lat, del)
}

/// `crun run -d` of a bundle with the same rootfs, command and limits, `n` times.
fn crun_run(work: &Path, rootfs: &Path, cgroups: bool, n: usize) -> Vec<f64> {
    let bundle = work.join(if cgroups { "bundle-on" } else { "bundle-off" });
    let mut cfg = support::crun_config(&bundle, rootfs);
    cfg["linux"]["resources"] = serde_json::json!({
        "memory": {"limit": 32u64 << 20, "swap": 32u64 << 20},
        "cpu": {"quota": 10000, "period": 100000, "shares": 102},
        "pids": {"limit": 4096},
    });
    let manager = if cgroups { "cgroupfs" } else { "disabled" };
    let mut out = vec![];
    for i in 0..n {
        let id = format!("knode-bench-{manager}-{i}");
        cfg["linux"]["cgroupsPath"] = format!("/knode-bench-crun/{id}").into();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        let st = Command::new("crun")
            .arg(format!("--cgroup-manager={manager}"))
            .args(["run", "-d", "-b"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(st.success(), "crun run failed");
        let crun = |args: &[&str]| {
            let _ = Command::new("crun")
                .arg(format!("--cgroup-manager={manager}"))
                .args(args)
                .stdout(Stdio::null())
                .status();
        };
        crun(&["kill", &id, "KILL"]);
        crun(&["delete", "-f", &id]);
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/knode-bench-crun");
    out
}
