//! Cluster DNS benchmark (issue 18): `cargo bench --bench dns` (as root; `scripts/deps.sh
//! --test` installs dnsperf and dnsmasq). Everything runs in network namespaces the benchmark
//! makes: a "node" (the API server and the DNS servers) and a "pod" joined to it by a veth
//! pair, as a pod's traffic to the cluster DNS address goes.
//!
//! - knode's cluster DNS: the server `knode up` and `knode agent` run (`dns::server::start`),
//!   here alone in a process of its own so that its memory is its own, its zone kept from a
//!   real `knode server` holding `KNODE_BENCH_SERVICES` (default 10,000) Services, each with a
//!   named port and a selector (so as many EndpointSlices are watched too).
//! - dnsmasq (Debian's), in the same run, answering the same names and addresses from a hosts
//!   file with the rest of `cluster.local` answered locally (NXDOMAIN): the lightest peer.
//! - CoreDNS's published figures (coredns/deployment: kubernetes/Scaling_CoreDNS.md): 33,669
//!   internal QPS on 2 vCPU; 49.1 MB + 0.86 KB per service or pod. CoreDNS itself cannot be
//!   built here (no Go module proxy), so those ratios are against the paper, not this machine.
//!
//! dnsperf from the pod, for each server in turn (three rounds, medians):
//! - throughput: `A` queries for services picked at random (fully qualified), 5 s, dnsperf's
//!   default 100 queries outstanding; and a short name as a pod's resolver sends it through
//!   its search list (`svc-N.default`: first `svc-N.default.default.svc.cluster.local`,
//!   NXDOMAIN, then `svc-N.default.svc.cluster.local`);
//! - latency at a steady 5,000 QPS, per query (`dnsperf -v`), p50 and p99;
//! - resident memory after the zone is full.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support.rs"]
#[allow(dead_code)] // shared with the pod benchmarks, which use the rest
mod support;
use support::{pct, rss_kb};

const POD_NS: &str = "knode-bench-dnspod";
const NODE_NS: &str = "knode-bench-dnsnode";
const KNODE_DNS: &str = "10.96.0.10";
const DNSMASQ: &str = "10.96.0.11";
const ROUNDS: usize = 3;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The namespaces made here, removed at the end (also on a panic).
struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [POD_NS, NODE_NS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// This process (no thread yet) into a node namespace; a pod namespace with a veth to it.
fn network() -> Namespaces {
    for ns in [NODE_NS, POD_NS] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        ip(&["netns", "add", ns]);
    }
    let guard = Namespaces;
    let f = std::fs::File::open(format!("/var/run/netns/{NODE_NS}")).unwrap();
    // SAFETY: setns on a valid network namespace descriptor; no other thread exists yet.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    ip(&["link", "set", "lo", "up"]);
    for a in [KNODE_DNS, DNSMASQ] {
        ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    ip(&[
        "link", "add", "kbdns0", "type", "veth", "peer", "name", "eth0", "netns", POD_NS,
    ]);
    ip(&["addr", "add", "10.250.0.1/30", "dev", "kbdns0"]);
    ip(&["link", "set", "kbdns0", "up"]);
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", "10.250.0.2/30", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["route", "add", "default", "via", "10.250.0.1"],
    ] {
        let mut a = vec!["-n", POD_NS];
        a.extend_from_slice(args);
        ip(&a);
    }
    guard
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `knode server` on `root`, ready; its URL, admin token and a client trusting its CA.
fn api_server(root: &Path) -> (Proc, String, String, reqwest::blocking::Client) {
    let port = free_port();
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_knode"))
            .arg("--root")
            .arg(root)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let ca = std::fs::read(root.join("server/tls/ca.crt")).unwrap_or_default();
        if !ca.is_empty() {
            let c = reqwest::blocking::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .pool_max_idle_per_host(64)
                .build()
                .unwrap();
            if c.get(format!("{url}/readyz"))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                let token = std::fs::read_to_string(root.join("server/tls/admin.token")).unwrap();
                return (p, url, token.trim().to_string(), c);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "knode server did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Creates services `svc-0`.. in `default` (50 clients); returns their cluster IPs in order.
fn services(url: &str, token: &str, c: &reqwest::blocking::Client, n: usize) -> Vec<String> {
    let per = n.div_ceil(50);
    std::thread::scope(|s| {
        for k in 0..50 {
            s.spawn(move || {
                for i in (k * per)..((k + 1) * per).min(n) {
                    let body = serde_json::json!({
                        "metadata": {"name": format!("svc-{i}")},
                        "spec": {
                            "selector": {"app": format!("svc-{i}")},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                        },
                    });
                    let r = c
                        .post(format!("{url}/api/v1/namespaces/default/services"))
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
                }
            });
        }
    });
    let list: serde_json::Value = c
        .get(format!("{url}/api/v1/namespaces/default/services"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut ips = vec![String::new(); n];
    for s in list["items"].as_array().unwrap() {
        if let Some(i) = s["metadata"]["name"]
            .as_str()
            .and_then(|n| n.strip_prefix("svc-"))
            .and_then(|i| i.parse::<usize>().ok())
        {
            ips[i] = s["spec"]["clusterIP"].as_str().unwrap().to_string();
        }
    }
    assert!(ips.iter().all(|i| !i.is_empty()));
    ips
}

/// The first A record in the answer to one UDP query (None: none within 1 s).
fn ask(server: &str, name: &str) -> Option<String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    sock.send_to(&m.to_vec().unwrap(), (server, 53)).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    r.answers.iter().find_map(|a| match &a.data {
        RData::A(a) => Some(a.0.to_string()),
        _ => None,
    })
}

/// Waits until `server` answers every service with its address (the zone is full).
fn wait_full(server: &str, ips: &[String]) {
    let t = Instant::now();
    let mut i = ips.len();
    while i > 0 {
        let name = format!("svc-{}.default.svc.cluster.local.", i - 1);
        if ask(server, &name).as_deref() == Some(ips[i - 1].as_str()) {
            i -= 1;
            continue;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{server} never answered {name}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A dnsperf data file: `n` lines from `line(k)` for services picked at random.
fn queries(path: &Path, services: usize, n: usize, line: impl Fn(usize) -> String) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut s = String::new();
    for _ in 0..n {
        // xorshift: the same names every run.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&line((x % services as u64) as usize));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

struct Run {
    qps: f64,
    lost: u64,
    codes: String,
}

fn dnsperf(server: &str, data: &Path, args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", POD_NS, "dnsperf", "-s", server, "-d"])
        .arg(data)
        .args(args)
        .output()
        .expect("dnsperf (scripts/deps.sh --test installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
        .trim()
}

fn throughput(server: &str, data: &Path) -> Run {
    let out = dnsperf(server, data, &["-l", "5"]);
    Run {
        qps: field(&out, "Queries per second:").parse().unwrap(),
        lost: field(&out, "Queries lost:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        codes: field(&out, "Response codes:").to_string(),
    }
}

/// Per-query latencies (ms) at a steady 5,000 QPS for 4 s.
fn latencies(server: &str, data: &Path) -> Vec<f64> {
    let out = dnsperf(server, data, &["-l", "4", "-Q", "5000", "-v"]);
    let v: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    assert!(v.len() > 10_000, "{}", &out[..out.len().min(2000)]);
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // The DNS server's process: this binary again, in the node namespace it inherits.
    if let Ok(kc) = std::env::var("KNODE_BENCH_DNS_SERVE") {
        knode::dns::server::start(
            Path::new(&kc),
            KNODE_DNS.parse().unwrap(),
            Path::new("/etc/resolv.conf"),
        )
        .unwrap();
        loop {
            std::thread::park();
        }
    }
    let n: usize = std::env::var("KNODE_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let _ns = network();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = dir.path().join("root");
    let (_server, url, token, c) = api_server(&root);
    let t = Instant::now();
    let ips = services(&url, &token, &c, n);
    println!(
        "dns: {n} Services (and their EndpointSlices) created in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let knode = Proc(
        Command::new(std::env::current_exe().unwrap())
            .env(
                "KNODE_BENCH_DNS_SERVE",
                root.join("server/admin.kubeconfig"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_full(KNODE_DNS, &ips);
    println!(
        "  knode's zone full {:.2} s after its process started",
        t.elapsed().as_secs_f64()
    );

    let hosts = dir.path().join("hosts");
    let lines: String = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{ip} svc-{i}.default.svc.cluster.local\n"))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    let dnsmasq = Proc(
        Command::new("dnsmasq")
            .args(["-k", "-C", "/dev/null", "--no-resolv", "--no-hosts"])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args([
                &format!("--listen-address={DNSMASQ}"),
                "--bind-interfaces",
                "--cache-size=10000",
                "--local=/cluster.local/",
                "--pid-file=",
                "--user=root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (scripts/deps.sh --test installs it)"),
    );
    wait_full(DNSMASQ, &ips);

    let fqdn = dir.path().join("fqdn");
    queries(&fqdn, n, 100_000, |i| {
        format!("svc-{i}.default.svc.cluster.local A")
    });
    let search = dir.path().join("search");
    queries(&search, n, 100_000, |i| {
        // What a pod's resolver sends for `svc-i.default` (ndots:5): the first suffix, then
        // the second; counted as two queries.
        format!("svc-{i}.default.default.svc.cluster.local A\nsvc-{i}.default.svc.cluster.local A")
    });

    let servers = [("knode", KNODE_DNS), ("dnsmasq", DNSMASQ)];
    let mut qps = [[vec![], vec![]], [vec![], vec![]]];
    let mut lat = [vec![], vec![]];
    for round in 0..ROUNDS {
        for (k, (name, addr)) in servers.iter().enumerate() {
            for (w, data) in [&fqdn, &search].into_iter().enumerate() {
                let r = throughput(addr, data);
                println!(
                    "  round {round} {name:8} {:7}: {:>9.0} QPS, {} lost, {}",
                    ["fqdn", "search"][w],
                    r.qps,
                    r.lost,
                    r.codes
                );
                assert_eq!(r.lost, 0, "{name} lost queries");
                qps[k][w].push(r.qps);
            }
            lat[k].extend(latencies(addr, &fqdn));
        }
    }
    let rss = |p: &Proc| rss_kb(p.0.id()) as f64 / 1024.0;
    let (knode_mb, dnsmasq_mb) = (rss(&knode), rss(&dnsmasq));
    let coredns_mb = 49.1 + n as f64 * 0.000858;
    const COREDNS_QPS: f64 = 33_669.0;

    println!(
        "\ndns: {n} services, dnsperf from a pod namespace (median of {ROUNDS} rounds of 5 s)"
    );
    println!(
        "  {:<26} {:>12} {:>14} {:>10} {:>10} {:>10}",
        "", "QPS (FQDN)", "QPS (search)", "p50 ms", "p99 ms", "RSS MB"
    );
    let mut rows = vec![];
    for (k, (name, _)) in servers.iter().enumerate() {
        let row = (
            median(qps[k][0].clone()),
            median(qps[k][1].clone()),
            pct(&lat[k], 0.5),
            pct(&lat[k], 0.99),
            if k == 0 { knode_mb } else { dnsmasq_mb },
        );
        println!(
            "  {:<26} {:>12.0} {:>14.0} {:>10.3} {:>10.3} {:>10.1}",
            name, row.0, row.1, row.2, row.3, row.4
        );
        rows.push(row);
    }
    println!(
        "  {:<26} {:>12.0} {:>14} {:>10} {:>10} {:>10.1}",
        "CoreDNS (published, 2 vCPU)", COREDNS_QPS, "-", "-", "2.6 avg", coredns_mb
    );
    println!(
        "  knode / dnsmasq: QPS {:.2}x (FQDN), {:.2}x (search); memory {:.2}x",
        rows[0].0 / rows[1].0,
        rows[0].1 / rows[1].1,
        rows[0].4 / rows[1].4
    );
    println!(
        "  knode / CoreDNS (published): QPS {:.2}x; memory {:.2}x",
        rows[0].0 / COREDNS_QPS,
        rows[0].4 / coredns_mb
    );
    drop(dnsmasq);
    drop(knode);
}
