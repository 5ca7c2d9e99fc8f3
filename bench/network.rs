//! Pod network benchmark (run as root: `cargo bench --bench network`). Everything happens in
//! network namespaces the benchmark creates (a "node" and its "pods"), never the host's.
//!
//! - ADD and DEL per pod, p50/p99 over 100 pods, in the same run:
//!   - knode's plugin in-process (what the agent does),
//!   - knode's plugin as a CNI binary (`knode-cni`, executed like any plugin),
//!   - the reference plugins (`bridge` + `host-local` from containernetworking-plugins),
//!     executed as the CNI spec says.
//!
//!   Same settings for all: a bridge with the gateway, hairpin mode, masquerading, one /24.
//! - Pod-to-pod TCP throughput (iperf3, 3 runs of 3 s each, median) over knode's bridge, and
//!   over a bare veth pair between two namespaces.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PODS: usize = 100;

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// The namespaces the benchmark made; removed at the end, also on a panic.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn env(command: &str, id: &str, netns: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs a plugin binary as the CNI spec says; panics on failure.
fn exec(bin: &str, env: &BTreeMap<String, String>, conf: &str) {
    let mut c = Command::new(bin)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{bin} {}: {}{}",
        env["CNI_COMMAND"],
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

enum Plugin {
    InProcess,
    Binary(&'static str),
}

/// ADD for every pod namespace, then DEL for every one; milliseconds per call.
fn add_del(plugin: &Plugin, conf: &str, pods: &[String]) -> (Vec<f64>, Vec<f64>) {
    let mut times = (Vec::new(), Vec::new());
    for command in ["ADD", "DEL"] {
        for (i, p) in pods.iter().enumerate() {
            let e = env(
                command,
                &format!("bench-{i}"),
                &format!("/var/run/netns/{p}"),
            );
            let t = Instant::now();
            match plugin {
                Plugin::InProcess => {
                    cni::protocol::run(&e, conf).unwrap_or_else(|e| panic!("{command}: {e:?}"));
                }
                Plugin::Binary(bin) => exec(bin, &e, conf),
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match command {
                "ADD" => times.0.push(ms),
                _ => times.1.push(ms),
            }
        }
    }
    times
}

/// An iperf3 server in a namespace, stopped when dropped.
struct IperfServer(std::process::Child);

impl IperfServer {
    fn start(ns: &str, ip: &str) -> IperfServer {
        IperfServer(
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{ns}"))
                .args(["iperf3", "-s", "-B", ip])
                .stdout(Stdio::null())
                .spawn()
                .expect("iperf3 (apt-get install iperf3)"),
        )
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 from namespace `client` to the server at `server_ip`: bits per second.
fn iperf(client: &str, server_ip: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let o = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{client}"))
            .args(["iperf3", "-J", "-t", "3", "-c", server_ip])
            .output()
            .unwrap();
        let refused = String::from_utf8_lossy(&o.stdout).contains("Connection refused");
        if o.status.success() || !refused || Instant::now() > deadline {
            break o;
        }
        // The server is not listening yet (a refused connection comes back at once).
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The `knode-cni` binary (another package of the workspace), built in release mode.
fn knode_cni_binary() -> String {
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "cni",
            "--bin",
            "knode-cni",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(st.success(), "building knode-cni");
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/network-<hash> -> target/release/knode-cni
    let bin = exe.parent().unwrap().parent().unwrap().join("knode-cni");
    assert!(bin.exists(), "{}", bin.display());
    bin.display().to_string()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("network benchmark: run it with `cargo bench --bench network` (as root)");
        return;
    }
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "the reference plugins are needed (apt-get install containernetworking-plugins)"
    );
    let tag = format!("{:x}", std::process::id());
    let node = format!("knb-node-{tag}");
    let pods: Vec<String> = (0..PODS).map(|i| format!("knb-{tag}-{i}")).collect();
    let mut all = vec![node.clone()];
    all.extend(pods.iter().cloned());
    let (va, vb) = (format!("knb-va-{tag}"), format!("knb-vb-{tag}"));
    all.extend([va.clone(), vb.clone()]);
    let _ns = Namespaces(all.clone());
    for n in &all {
        ip(&["netns", "add", n]);
    }
    // From here on this process (one thread so far) lives in the node namespace.
    let f = std::fs::File::open(format!("/var/run/netns/{node}")).unwrap();
    // SAFETY: setns on a valid network namespace descriptor; no other thread exists yet.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    let data = tempfile::tempdir().unwrap();
    let knode_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"knb","type":"knode-bridge","bridge":"knb0","isGateway":true,"hairpinMode":true,"ipMasq":true,"ipam":{{"type":"knode-cni","subnet":"10.244.0.0/24","dataDir":"{}"}}}}"#,
        data.path().display()
    );
    let bin_conf = knode_conf
        .replace("knb0", "knb1")
        .replace("10.244.0.", "10.244.1.");
    let ref_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"refb","type":"bridge","bridge":"refb0","isGateway":true,"hairpinMode":true,"ipMasq":true,"ipam":{{"type":"host-local","subnet":"10.244.2.0/24","dataDir":"{}"}}}}"#,
        data.path().display()
    );
    // One warm-up pod each (bridges created, binaries in the page cache), not measured.
    let warm = |p: &Plugin, conf: &str| {
        let _ = add_del(p, conf, &pods[..1]);
    };
    let knode_cni = knode_cni_binary();
    let knode_cni: &'static str = Box::leak(knode_cni.into_boxed_str());
    let runs: Vec<(&str, Plugin, &str)> = vec![
        (
            "knode, in-process (the agent)",
            Plugin::InProcess,
            &knode_conf,
        ),
        ("knode-cni binary", Plugin::Binary(knode_cni), &bin_conf),
        (
            "reference bridge + host-local",
            Plugin::Binary("/usr/lib/cni/bridge"),
            &ref_conf,
        ),
    ];
    let mut results = Vec::new();
    for (name, p, conf) in &runs {
        warm(p, conf);
        let (add, del) = add_del(p, conf, &pods);
        results.push((*name, add, del));
    }
    // The kernel's own price of removing a veth pair (unregistering a device waits for an
    // RCU grace period), which every DEL pays: 20 pairs made with ip(8), removed by netlink.
    let mut floor = Vec::new();
    for i in 0..20 {
        let name = format!("knbfl{i}");
        ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("knbfp{i}"),
        ]);
        let t = Instant::now();
        cni::bridge::del(&name).unwrap();
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("\nPod network setup and teardown, {PODS} pods, one after another (ms):");
    println!(
        "{:<32} {:>8} {:>8} {:>8} {:>8}",
        "", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    for (name, add, del) in &results {
        println!(
            "{name:<32} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            pct(add, 0.5),
            pct(add, 0.99),
            pct(del, 0.5),
            pct(del, 0.99)
        );
    }
    println!(
        "{:<32} {:>8} {:>8} {:>8.2} {:>8.2}",
        "kernel: removing a veth pair",
        "",
        "",
        pct(&floor, 0.5),
        pct(&floor, 0.99)
    );
    let r = &results[2];
    for (name, add, del) in &results[..2] {
        println!(
            "reference / {name}: ADD p50 {:.1}x, p99 {:.1}x; DEL p50 {:.1}x, p99 {:.1}x (goal >= 5x)",
            pct(&r.1, 0.5) / pct(add, 0.5),
            pct(&r.1, 0.99) / pct(add, 0.99),
            pct(&r.2, 0.5) / pct(del, 0.5),
            pct(&r.2, 0.99) / pct(del, 0.99),
        );
    }

    // Throughput: two pods on knode's bridge vs a bare veth pair.
    let e = |c: &str, i: usize| {
        env(
            c,
            &format!("tp-{i}"),
            &format!("/var/run/netns/{}", pods[i]),
        )
    };
    for i in 0..2 {
        cni::protocol::run(&e("ADD", i), &knode_conf).unwrap();
    }
    let pod_ip = |i: usize| format!("10.244.0.{}", 2 + i);
    // Whatever address the IPAM gave, ask the pod.
    let addr = |ns: &str| -> String {
        let o = Command::new("ip")
            .args(["-n", ns, "-4", "-o", "addr", "show", "eth0"])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(|a| a.split('/').next().unwrap().to_string())
            .unwrap_or_else(|| pod_ip(0))
    };
    let server_ip = addr(&pods[1]);
    ip(&[
        "link", "add", "knbva", "netns", &va, "type", "veth", "peer", "name", "knbvb", "netns", &vb,
    ]);
    ip(&["-n", &va, "addr", "add", "192.0.2.1/24", "dev", "knbva"]);
    ip(&["-n", &vb, "addr", "add", "192.0.2.2/24", "dev", "knbvb"]);
    for (n, l) in [(&va, "knbva"), (&vb, "knbvb"), (&va, "lo"), (&vb, "lo")] {
        ip(&["-n", n, "link", "set", l, "up"]);
    }
    // Bridged traffic passes netfilter (for Services on the same bridge); how much that
    // costs shows with the bridge's switch off (the node namespace's own switch stays off).
    let nf_call = |on: bool| {
        let v = if on { 1 } else { 0 };
        let st = Command::new("ip")
            .args(["netns", "exec", &node, "sh", "-c"])
            .arg(format!(
                "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables && \
                 echo {v} > /sys/class/net/knb0/bridge/nf_call_iptables"
            ))
            .status()
            .unwrap();
        assert!(st.success());
    };
    let _servers = (
        IperfServer::start(&pods[1], &server_ip),
        IperfServer::start(&vb, "192.0.2.2"),
    );
    let (mut bridge, mut bare_bridge, mut veth) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        nf_call(true);
        bridge.push(iperf(&pods[0], &server_ip));
        nf_call(false);
        bare_bridge.push(iperf(&pods[0], &server_ip));
        veth.push(iperf(&va, "192.0.2.2"));
    }
    nf_call(true);
    let (b, nb, v) = (median(bridge), median(bare_bridge), median(veth));
    println!("\nPod-to-pod TCP throughput (iperf3, median of 5 x 3 s, runs interleaved):");
    println!(
        "  knode bridge, pod -> pod:                  {:>7.2} Gbit/s",
        b / 1e9
    );
    println!(
        "  same, without netfilter on bridged frames: {:>7.2} Gbit/s",
        nb / 1e9
    );
    println!(
        "  bare veth pair:                            {:>7.2} Gbit/s",
        v / 1e9
    );
    println!(
        "  knode / bare veth = {:.0}% (goal >= 90%); without bridged netfilter {:.0}%",
        b / v * 100.0,
        nb / v * 100.0
    );
    for i in 0..2 {
        let _ = cni::protocol::run(&e("DEL", i), &knode_conf);
    }
}
