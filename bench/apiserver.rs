//! The API server (issue 15's benchmark): `knode server` on its embedded store and on a real
//! etcd (Debian's etcd-server, started here, data on the same disk), against raw puts to that
//! etcd from this program (the store's floor), in one run:
//! - create latency p50/p99 (one client, one pod after another) and throughput (50 clients);
//! - watch delivery: write acknowledged -> event received, p50/p99, 100 watchers;
//! - LIST of 10,000 pods as JSON and as a Table;
//! - server RSS idle and holding 10,000 pods;
//! - process start to `/readyz` 200 (first start, with the PKI to make, and a restart).
//!
//! `cargo bench --bench apiserver` (as root; `scripts/deps.sh --test` installs etcd-server).
//! `KNODE_BENCH_CREATES` sets the sequential creates (default 500), `KNODE_BENCH_PODS` the
//! pods listed (default 10000).

use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use knode::store::Store;
use serde_json::{json, Value};

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    proc: Proc,
    root: PathBuf,
    port: u16,
    token: String,
}

fn client_for(root: &Path, timeout: Option<Duration>) -> reqwest::blocking::Client {
    let ca = std::fs::read(root.join("server/tls/ca.crt")).unwrap();
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(timeout)
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Starts `knode server`; returns it and the time from spawn to the first `/readyz` 200.
fn start(root: &Path, port: u16, extra: &[&str]) -> (Server, Duration) {
    let t = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_knode"))
        .arg("--root")
        .arg(root)
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let ca = root.join("server/tls/ca.crt");
    let mut client = None;
    loop {
        if client.is_none() && ca.exists() {
            client = std::fs::read(&ca)
                .ok()
                .filter(|b| !b.is_empty())
                .map(|_| client_for(root, Some(Duration::from_secs(2))));
        }
        if let Some(c) = &client {
            if let Ok(r) = c.get(format!("https://127.0.0.1:{port}/readyz")).send() {
                if r.status() == 200 {
                    break;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    let took = t.elapsed();
    let token = std::fs::read_to_string(root.join("server/tls/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (
        Server {
            proc,
            root: root.to_path_buf(),
            port,
            token,
        },
        took,
    )
}

impl Server {
    fn url(&self, p: &str) -> String {
        format!("https://127.0.0.1:{}{p}", self.port)
    }
    fn client(&self) -> reqwest::blocking::Client {
        client_for(&self.root, None)
    }
    fn rss_mb(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.proc.0.id())).unwrap();
        let kb: f64 = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        kb / 1024.0
    }
    fn create_namespace(&self, c: &reqwest::blocking::Client, ns: &str) {
        let r = c
            .post(self.url("/api/v1/namespaces"))
            .bearer_auth(&self.token)
            .json(&json!({"metadata": {"name": ns}}))
            .send()
            .unwrap();
        assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
    }
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
           "spec": {"containers": [{"name": "web", "image": "registry.local/bench/web:1.0",
                    "ports": [{"containerPort": 8080}], "env": [{"name": "MODE", "value": "bench"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

/// An async client (HTTP/1.1, a pooled connection per concurrent request), as the raw etcd
/// figures come from an async gRPC client. (Over one HTTP/2 connection, as client-go talks,
/// this 2-core machine measured less: one connection's TLS is one task.)
fn async_client(root: &Path) -> reqwest::Client {
    let ca = std::fs::read(root.join("server/tls/ca.crt")).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sequential pod creates: latencies in ms.
fn creates(s: &Server, ns: &str, n: usize) -> Vec<f64> {
    s.create_namespace(&s.client(), ns);
    let (c, url) = (
        async_client(&s.root),
        s.url(&format!("/api/v1/namespaces/{ns}/pods")),
    );
    runtime().block_on(async {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let body = serde_json::to_vec(&pod(&format!("seq-{i}"))).unwrap();
            let t = Instant::now();
            let r = c
                .post(&url)
                .bearer_auth(&s.token)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let _ = r.bytes().await;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        out
    })
}

/// Creates per second with `clients` creating `each` pods at once.
fn throughput(s: &Server, ns: &str, clients: usize, each: usize) -> f64 {
    s.create_namespace(&s.client(), ns);
    let (c, url) = (
        async_client(&s.root),
        s.url(&format!("/api/v1/namespaces/{ns}/pods")),
    );
    runtime().block_on(async {
        let t = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|k| {
                let (c, url, token) = (c.clone(), url.clone(), s.token.clone());
                tokio::spawn(async move {
                    for i in 0..each {
                        let body = serde_json::to_vec(&pod(&format!("c{k}-{i}"))).unwrap();
                        let r = c
                            .post(&url)
                            .bearer_auth(&token)
                            .header("Content-Type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 201);
                        let _ = r.bytes().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (clients * each) as f64 / t.elapsed().as_secs_f64()
    })
}

/// Write acknowledged -> event received, over `watchers` watches, for `writes` writes (ms;
/// 0 when the event arrived before the acknowledgment).
fn watch_delivery(s: &Server, watchers: usize, writes: usize) -> Vec<f64> {
    let c = s.client();
    s.create_namespace(&c, "watch");
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let list: Value = c
        .get(s.url("/api/v1/namespaces/watch/configmaps"))
        .bearer_auth(&s.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..watchers {
        let (tx, ready, client, url, token) = (
            tx.clone(),
            ready_tx.clone(),
            s.client(),
            s.url(&format!(
                "/api/v1/namespaces/watch/configmaps?watch=1&resourceVersion={rv}"
            )),
            s.token.clone(),
        );
        std::thread::spawn(move || {
            let r = client.get(&url).bearer_auth(&token).send().unwrap();
            let _ = ready.send(());
            for line in std::io::BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                let now = Instant::now();
                let v: Value = serde_json::from_str(&line).unwrap();
                let name = v["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if tx.send((name, now)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    for _ in 0..watchers {
        ready_rx.recv().unwrap();
    }
    let mut acked = std::collections::HashMap::new();
    let url = s.url("/api/v1/namespaces/watch/configmaps");
    for i in 0..writes {
        let name = format!("w{i}");
        let r = c
            .post(&url)
            .bearer_auth(&s.token)
            .json(&json!({"metadata": {"name": name}, "data": {"i": i.to_string()}}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        acked.insert(name, Instant::now());
        // Paced like a busy cluster, not a flood: every write is measured on its own.
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut lat = Vec::with_capacity(watchers * writes);
    while lat.len() < watchers * writes {
        let (name, at) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("an event was lost");
        if let Some(a) = acked.get(&name) {
            lat.push(at.saturating_duration_since(*a).as_secs_f64() * 1000.0);
        }
    }
    lat
}

/// Fills `ns` with `n` pods (50 clients).
fn fill(s: &Server, ns: &str, n: usize) {
    s.create_namespace(&s.client(), ns);
    let per = n.div_ceil(50);
    let threads: Vec<_> = (0..50)
        .map(|k| {
            let (c, url, token) = (
                s.client(),
                s.url(&format!("/api/v1/namespaces/{ns}/pods")),
                s.token.clone(),
            );
            std::thread::spawn(move || {
                for i in (k * per)..((k + 1) * per).min(n) {
                    let r = c
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&pod(&format!("p{i:05}")))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// The median time of a full LIST (ms), JSON or Table, and the items/rows it returned.
fn list(s: &Server, ns: &str, table: bool) -> (f64, usize) {
    let c = s.client();
    let accept = if table {
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    } else {
        "application/json"
    };
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let body = c
            .get(s.url(&format!("/api/v1/namespaces/{ns}/pods")))
            .bearer_auth(&s.token)
            .header("Accept", accept)
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let v: Value = serde_json::from_slice(&body).unwrap();
        n = v[if table { "rows" } else { "items" }]
            .as_array()
            .unwrap()
            .len();
    }
    (pct(&times, 0.5), n)
}

fn etcd(dir: &Path) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("/usr/bin/etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/bin/etcd (scripts/deps.sh --test installs etcd-server)");
    (Proc(child), endpoint)
}

/// Raw puts of a pod-sized value straight to etcd: sequential latencies (ms) and the
/// throughput of 50 clients.
fn raw_etcd(endpoint: &str, n: usize) -> (Vec<f64>, f64) {
    runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let s: Arc<dyn Store> = loop {
            if let Ok(s) = knode::store::etcd::Etcd::connect(&[endpoint.to_string()]).await {
                if s.revision().await.is_ok() {
                    break Arc::new(s);
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let value = serde_json::to_vec(&pod("raw")).unwrap();
        let mut seq = Vec::new();
        for i in 0..n {
            let t = Instant::now();
            s.put(format!("/raw/seq/{i}").as_bytes(), &value)
                .await
                .unwrap();
            seq.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let t = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|k| {
                let (s, value) = (s.clone(), value.clone());
                tokio::spawn(async move {
                    for i in 0..40 {
                        s.put(format!("/raw/c/{k}/{i}").as_bytes(), &value)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (seq, 2000.0 / t.elapsed().as_secs_f64())
    })
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, pods) = (
        env("KNODE_BENCH_CREATES", 500),
        env("KNODE_BENCH_PODS", 10_000),
    );
    // On disk (not tmpfs): durability costs what it costs on this machine's disk.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (_etcd, endpoint) = etcd(dir.path());

    // Start-up: first start (PKI made), restart (PKI read), on the embedded store.
    let root = dir.path().join("embedded");
    let port = free_port();
    let (first, first_start) = start(&root, port, &[]);
    let idle = first.rss_mb();
    drop(first);
    let (emb, restart) = start(&root, port, &[]);
    let (xs, _) = start(
        &dir.path().join("on-etcd"),
        free_port(),
        &["--datastore-endpoint", &endpoint],
    );

    println!("apiserver: {n} sequential pod creates, 50 clients x 40 creates, 100 watchers x 100 writes, LIST of {pods} pods (durable writes, /var/tmp)");
    let (raw_seq, raw_tp) = raw_etcd(&endpoint, n);
    let e_seq = creates(&emb, "seq", n);
    let x_seq = creates(&xs, "seq", n);
    let e_tp = throughput(&emb, "tp", 50, 40);
    let x_tp = throughput(&xs, "tp", 50, 40);
    println!("  create latency and throughput");
    for (name, seq, tp) in [
        ("knode server, embedded", &e_seq, e_tp),
        ("knode server, etcd    ", &x_seq, x_tp),
        ("raw etcd put          ", &raw_seq, raw_tp),
    ] {
        println!(
            "    {name}  p50 {:7.3} ms  p99 {:7.3} ms  50 clients {:8.0} /s",
            pct(seq, 0.5),
            pct(seq, 0.99),
            tp
        );
    }
    println!(
        "    embedded / raw etcd: p50 {:.2}x (goal <= 1.5x), throughput {:.2}x (goal >= 1x)",
        pct(&e_seq, 0.5) / pct(&raw_seq, 0.5),
        e_tp / raw_tp
    );

    println!("  watch delivery (acknowledged -> received), 100 watchers");
    for (name, s) in [("embedded", &emb), ("etcd    ", &xs)] {
        let lat = watch_delivery(s, 100, 100);
        println!(
            "    {name}  p50 {:6.3} ms  p99 {:6.3} ms  (goal p99 < 5 ms; kine polls every 1000 ms)",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }

    fill(&emb, "list", pods);
    let (json_ms, items) = list(&emb, "list", false);
    let (table_ms, rows) = list(&emb, "list", true);
    assert_eq!((items, rows), (pods, pods));
    let held = emb.rss_mb();
    println!("  LIST of {pods} pods (embedded): JSON {json_ms:.0} ms, Table {table_ms:.0} ms (goal < 300 ms)");
    fill(&xs, "list", pods);
    let (xj, _) = list(&xs, "list", false);
    let (xt, _) = list(&xs, "list", true);
    println!("  LIST of {pods} pods (etcd):     JSON {xj:.0} ms, Table {xt:.0} ms");
    println!("  server RSS: idle {idle:.1} MB (goal < 40 MB), holding {pods} pods {held:.1} MB (goal < 150 MB; k3s's server idles near 500 MB)");
    println!(
        "  start to /readyz 200: first start {:.1} ms, restart {:.1} ms (goal < 100 ms; k3d 12.6 s)",
        first_start.as_secs_f64() * 1000.0,
        restart.as_secs_f64() * 1000.0
    );
}
