//! Service proxy benchmark (run as root: `cargo bench --bench services`). Everything runs in a
//! network namespace the benchmark makes; the host's ruleset is never touched.
//!
//! - Sync time for 1k, 5k and 10k services x 10 endpoints: a full sync and a one-service
//!   change (an endpoint replaced), each rendered and applied as one transaction: as the agent
//!   does it (one nf_tables netlink batch on the socket it keeps; full syncs median of 3, the
//!   change median of 18, made and undone six times after each full sync) and through the
//!   `nft` binary (median of 3).
//! - Rule count against what iptables-style linear chains (kube-proxy's iptables mode) need,
//!   and the time `iptables-restore` takes to load those (if iptables is installed).
//! - First-packet latency: TCP connects through a ClusterIP with 10 and with 10k services
//!   (the endpoint is a listener in the same namespace), median of 2000, the two sizes in turn
//!   three times.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use knode::api::service::{Endpoint, Protocol, ServicePort, ServiceState, ServiceView};
use knode::node::proxy::netlink;
use knode::node::proxy::nft::{count, script, Config, Proxy};

fn states(n: usize, generation: u8) -> Vec<ServiceState> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32);
            ServiceState {
                service: ServiceView {
                    namespace: "default".into(),
                    name: format!("svc-{i}"),
                    cluster_ip: Some(ip),
                    ports: vec![ServicePort {
                        name: String::new(),
                        protocol: Protocol::Tcp,
                        port: 80,
                        node_port: None,
                    }],
                    affinity_timeout: None,
                },
                endpoints: vec![(0..10)
                    .map(|e| Endpoint {
                        // Service 0's endpoints are where the latency probe lands.
                        ip: if i == 0 {
                            Ipv4Addr::new(10, 244, 255, 1)
                        } else {
                            Ipv4Addr::from(
                                u32::from(Ipv4Addr::new(10, 244, 0, 0))
                                    + (i * 10 + e) as u32 % 65000
                                    + generation as u32,
                            )
                        },
                        port: 8080,
                        ready: true,
                    })
                    .collect()],
            }
        })
        .collect()
}

fn apply(script: &str) -> f64 {
    let t = Instant::now();
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "nft -f failed");
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// kube-proxy's iptables mode for the same services: a KUBE-SERVICES rule per port, a
/// KUBE-SVC chain with one probability rule per endpoint, a KUBE-SEP chain per endpoint with
/// a masquerade-mark rule and a DNAT rule.
fn iptables_restore(states: &[ServiceState]) -> (String, usize) {
    let mut chains = String::from("*nat\n:KNB-SERVICES - [0:0]\n:KNB-MARK - [0:0]\n");
    let mut rules = String::from("-A KNB-MARK -j MARK --set-xmark 0x4000/0x4000\n");
    let mut count = 1;
    for (i, s) in states.iter().enumerate() {
        let ip = s.service.cluster_ip.unwrap();
        let svc = format!("KNB-SVC-{i}");
        chains += &format!(":{svc} - [0:0]\n");
        rules += &format!("-A KNB-SERVICES -d {ip}/32 -p tcp --dport 80 -j {svc}\n");
        count += 1;
        let eps = &s.endpoints[0];
        for (j, e) in eps.iter().enumerate() {
            let sep = format!("KNB-SEP-{i}-{j}");
            chains += &format!(":{sep} - [0:0]\n");
            let left = eps.len() - j;
            if left > 1 {
                rules += &format!(
                    "-A {svc} -m statistic --mode random --probability {:.5} -j {sep}\n",
                    1.0 / left as f64
                );
            } else {
                rules += &format!("-A {svc} -j {sep}\n");
            }
            rules += &format!("-A {sep} -s {}/32 -j KNB-MARK\n", e.ip);
            rules += &format!(
                "-A {sep} -p tcp -j DNAT --to-destination {}:{}\n",
                e.ip, e.port
            );
            count += 3;
        }
    }
    (format!("{chains}{rules}COMMIT\n"), count)
}

/// Median TCP connect time (µs) to the first service's ClusterIP.
fn connect_latency() -> f64 {
    let target = "10.96.0.10:80";
    let mut v = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let c = TcpStream::connect(target).expect("connect through the ClusterIP");
        v.push(t.elapsed().as_secs_f64() * 1e6);
        drop(c);
    }
    median(v)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("service proxy benchmark: run it with `cargo bench --bench services` (as root)");
        return;
    }
    let ns = format!("knb-svc-{:x}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(ns.clone());
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid network namespace descriptor; no other thread exists yet.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    // A node has a default route (ClusterIPs are routed before the proxy rewrites them).
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", "10.244.255.1/32", "dev", "lo"],
        &[
            "link", "add", "knbup0", "type", "veth", "peer", "name", "knbup1",
        ],
        &["link", "set", "knbup0", "up"],
        &["link", "set", "knbup1", "up"],
        &["route", "add", "default", "dev", "knbup0"],
    ] {
        assert!(Command::new("ip").args(args).status().unwrap().success());
    }
    // The endpoint of the probed service: a listener that accepts and drops.
    let listener = TcpListener::bind("10.244.255.1:8080").unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c)
        }
    });
    let cfg = Config {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..Config::default()
    };
    let have_iptables = Command::new("iptables-restore")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    println!("\nService proxy sync, services x 10 endpoints (median, ms).");
    println!("knode = render + one netlink batch (what the agent does); nft -f = render + the");
    println!(
        "same ops as an nft script; iptables = kube-proxy iptables-mode rules, iptables-restore."
    );
    println!(
        "{:>8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>22}",
        "services",
        "knode full",
        "knode 1svc",
        "nft render",
        "nft -f",
        "1svc render",
        "1svc nft -f",
        "rules",
        "iptables full"
    );
    let sizes: Vec<usize> = std::env::var("KNODE_BENCH_SERVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 1000, 5000, 10000]);
    for n in sizes {
        let old = states(n, 0);
        let mut new = old.clone();
        // One service changes: an endpoint replaced.
        new[n / 2].endpoints[0][3].ip = Ipv4Addr::new(10, 245, 0, 1);
        let (mut fr, mut fa, mut dr, mut da) = (vec![], vec![], vec![], vec![]);
        let (mut nf, mut nd) = (vec![], vec![]);
        let mut rules = 0;
        for _ in 0..3 {
            eprintln!("  {n} services: full sync ...");
            // What the agent does: the proxy renders, one `nft -f` applies.
            let mut proxy = Proxy::new(cfg.clone());
            let t = Instant::now();
            let ops = proxy.full(&old);
            let full = script(&ops, &cfg.table);
            fr.push(t.elapsed().as_secs_f64() * 1000.0);
            rules = count(&ops);
            fa.push(apply(&full));
            let t = Instant::now();
            let diff = script(&proxy.diff(&new), &cfg.table);
            dr.push(t.elapsed().as_secs_f64() * 1000.0);
            da.push(apply(&diff));
            // Back to `old` for the next round.
            apply(&script(&proxy.diff(&old), &cfg.table));
            // What the agent does: render and send one netlink batch, on the socket it keeps.
            let mut socket = netlink::Socket::open().expect("nf_tables socket");
            let mut proxy = Proxy::new(cfg.clone());
            let t = Instant::now();
            socket
                .apply(&proxy.full(&old), &cfg)
                .expect("netlink full sync");
            nf.push(t.elapsed().as_secs_f64() * 1000.0);
            // The service changes, and back, a few times (the agent in its steady state).
            for i in 0..6 {
                let to = if i % 2 == 0 { &new } else { &old };
                let t = Instant::now();
                socket.apply(&proxy.diff(to), &cfg).expect("netlink diff");
                nd.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let ipt = if have_iptables && n >= 1000 {
            let (text, count) = iptables_restore(&old);
            let t = Instant::now();
            let mut c = Command::new("iptables-restore")
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let ok = c.wait().unwrap().success();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let _ = Command::new("iptables").args(["-t", "nat", "-F"]).status();
            let _ = Command::new("iptables").args(["-t", "nat", "-X"]).status();
            if ok {
                format!("{count} rules, {ms:.0} ms")
            } else {
                "failed".into()
            }
        } else {
            "-".into()
        };
        println!(
            "{n:>8} {:>11.1} {:>11.2} {:>11.1} {:>11.1} {:>11.2} {:>11.2} {:>9} {:>22}",
            median(nf),
            median(nd),
            median(fr),
            median(fa),
            median(dr),
            median(da),
            rules,
            ipt
        );
    }
    // 10 and 10k services in turn, three times, so that drift on the machine hits both.
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for n in [10, 10000] {
            eprintln!("  {n} services: connect latency ({}/3) ...", round + 1);
            netlink::apply(&Proxy::new(cfg.clone()).full(&states(n, 0)), &cfg)
                .expect("netlink full sync");
            let us = connect_latency();
            if n == 10 { &mut small } else { &mut large }.push(us);
        }
    }
    let (small, large) = (median(small), median(large));
    println!("\nFirst-packet latency: TCP connect through a ClusterIP (median of 2000, median of 3 rounds):");
    println!("      10 services: {small:.1} µs");
    println!("   10000 services: {large:.1} µs");
    println!("  10k / 10 = {:.2} (goal: within 10%)", large / small);
    println!("Goals: full 10k sync < 1 s (render + apply); one-service change < 10 ms.");
    println!("(knode columns are what the agent does; the nft -f columns use the nft binary.)");
}
