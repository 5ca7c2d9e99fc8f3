//! The cluster (issue 16's benchmark), `knode up` in a network namespace the benchmark makes:
//! - `knode up` to node Ready and the API answering (first start, with the PKI to make, and
//!   after `knode down`); published figures of k3d and kind beside it;
//! - a Deployment of N replicas (N = 1, 10, 100; image cached) from its create to N pods
//!   available, through the real path: controllers, scheduler, agent, status back to the API;
//! - a rolling update of 10 replicas, from the template patch to the rollout complete;
//! - memory: the `knode up` process idle and with 100 pods, and with its shims and pause
//!   processes (the containers' own processes are the pods', not knode's).
//!
//! The peers (k3d, kind, k3s) need Docker images this machine cannot fetch: their figures are
//! the published ones the issue cites, printed as such.
//!
//! `cargo bench --bench cluster` (as root).

#[path = "support.rs"]
#[allow(dead_code)] // shared with the pod benchmarks, which use the rest
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::rss_kb;

const NETNS: &str = "kn-bench-up";

fn knode(root: &Path, args: &[&str]) -> std::process::Output {
    let o = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{NETNS}"))
        .arg(env!("CARGO_BIN_EXE_knode"))
        .arg("--root")
        .arg(root)
        .arg("--run-dir")
        .arg(root.join("run"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "knode {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn up(root: &Path) -> Duration {
    let t = Instant::now();
    knode(
        root,
        &[
            "up",
            "--listen",
            "127.0.0.1:6443",
            "--write-kubeconfig",
            root.join("kubeconfig").to_str().unwrap(),
            "--log-dir",
            root.join("logs").to_str().unwrap(),
            "--node-name",
            "bench",
        ],
    );
    t.elapsed()
}

fn down(root: &Path) {
    knode(
        root,
        &["down", "--log-dir", root.join("logs").to_str().unwrap()],
    );
}

/// The RSS of the `knode up` process, and of it with every other knode process (shims,
/// pause) in the system, in MiB.
fn memory(root: &Path) -> (f64, f64) {
    let pid: u32 = std::fs::read_to_string(root.join("run/up.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_knode")).unwrap();
    let mut all = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|x| x == exe) {
            all += rss_kb(p);
        }
    }
    (rss_kb(pid) as f64 / 1024.0, all as f64 / 1024.0)
}

fn deployment(name: &str, replicas: i32, version: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "c",
                        "image": "bench/busybox:1",
                        "env": [{"name": "VERSION", "value": version}],
                        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                    }],
                },
            },
        },
    }))
    .unwrap()
}

/// Waits (a watch) until the Deployment's rollout is complete at `generation` or later.
async fn rolled_out(api: &Api<Deployment>, name: &str, generation: i64, replicas: i32) {
    let done = move |d: Option<&Deployment>| {
        let Some(d) = d else { return false };
        let s = d.status.clone().unwrap_or_default();
        s.observed_generation.unwrap_or(0) >= generation
            && s.updated_replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
            && s.replicas == Some(replicas)
    };
    tokio::time::timeout(
        Duration::from_secs(300),
        kube::runtime::wait::await_condition(api.clone(), name, done),
    )
    .await
    .expect("the rollout finished within 300 s")
    .unwrap();
}

/// The API measurements, on a thread in the node's network namespace.
fn in_cluster(root: PathBuf) -> (Vec<(usize, f64)>, f64, (f64, f64)) {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{NETNS}")).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = knode::client::from_kubeconfig(&root.join("kubeconfig"))
                .await
                .unwrap();
            let api: Api<Deployment> = Api::namespaced(client, "default");
            let mut ready = vec![];
            for n in [1usize, 10, 100] {
                let name = format!("d{n}");
                let t = Instant::now();
                api.create(&PostParams::default(), &deployment(&name, n as i32, "1"))
                    .await
                    .unwrap();
                rolled_out(&api, &name, 1, n as i32).await;
                ready.push((n, t.elapsed().as_secs_f64()));
                if n == 100 {
                    break;
                }
                api.delete(&name, &DeleteParams::default()).await.unwrap();
            }
            let mem100 = memory(&root);
            // Make room for the rolling update, then roll 10 replicas.
            api.delete("d100", &DeleteParams::default()).await.unwrap();
            api.create(&PostParams::default(), &deployment("roll", 10, "1"))
                .await
                .unwrap();
            rolled_out(&api, "roll", 1, 10).await;
            let t = Instant::now();
            let d = api
                .patch(
                    "roll",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                        {"name": "c", "env": [{"name": "VERSION", "value": "2"}]}
                    ]}}}})),
                )
                .await
                .unwrap();
            rolled_out(&api, "roll", d.metadata.generation.unwrap(), 10).await;
            let roll = t.elapsed().as_secs_f64();
            api.delete("roll", &DeleteParams::default()).await.unwrap();
            (ready, roll, mem100)
        })
    })
    .join()
    .unwrap()
}

fn main() {
    let scratch = tempfile::Builder::new()
        .prefix("knode-bench-cluster-")
        .tempdir()
        .unwrap();
    let root = scratch.path().join("root");
    support::busybox_store(&root, scratch.path());
    let _ = Command::new("ip")
        .args(["netns", "del", NETNS])
        .stderr(std::process::Stdio::null())
        .status();
    assert!(Command::new("ip")
        .args(["netns", "add", NETNS])
        .status()
        .unwrap()
        .success());
    let _ = Command::new("ip")
        .args(["-n", NETNS, "link", "set", "lo", "up"])
        .status();

    let first = up(&root);
    std::thread::sleep(Duration::from_secs(2));
    let idle = memory(&root);
    down(&root);
    let again = up(&root);
    let (ready, roll, mem100) = in_cluster(root.clone());
    down(&root);
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();

    println!("\n== knode up (2 cores; peers' figures are the published ones) ==");
    println!(
        "knode up -> node Ready: first start {:.0} ms, after knode down {:.0} ms   (k3d 12.6 s: {:.0}x; kind 14.2 s: {:.0}x)",
        first.as_secs_f64() * 1000.0,
        again.as_secs_f64() * 1000.0,
        12.6 / first.as_secs_f64(),
        14.2 / first.as_secs_f64()
    );
    for (n, s) in &ready {
        let goal = match n {
            1 => 0.15,
            10 => 0.5,
            _ => 3.0,
        };
        println!(
            "create deployment --replicas={n} -> {n} available: {:.0} ms (goal < {:.0} ms; Kubernetes SLO 5 s p99 per pod)",
            s * 1000.0,
            goal * 1000.0
        );
    }
    println!("rolling update of 10 replicas (maxSurge 25%, maxUnavailable 25%): {roll:.2} s");
    println!(
        "memory: knode up idle {:.0} MiB ({:.0} MiB with every knode process; goal < 60); with 100 pods {:.0} MiB ({:.0} MiB with 100 shims and pauses; goal < 120)   (k3s: about 500 MB server + 275 MB agent)",
        idle.0, idle.1, mem100.0, mem100.1
    );
}
