//! The store's floor (issue 15's benchmark, first part): writes through the `Store` trait on
//! the embedded store and on a real etcd (Debian's etcd-server, started here on free loopback
//! ports with its data on the same disk, in a temporary directory), each durable before it is
//! acknowledged. Figures: put latency p50/p99 for one client writing one after another, and
//! the throughput of 50 clients writing at once; ratios embedded/etcd in the same run.
//!
//! `cargo bench --bench store` (as root; `scripts/deps.sh --test` installs etcd-server).
//! `KNODE_BENCH_PUTS` sets the number of sequential puts (default 1000).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knode::store::{Store, StoreError};

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

/// A pod-sized value (a Pod's JSON is 2-4 KiB).
fn value(i: usize) -> Vec<u8> {
    let mut v =
        format!("{{\"kind\":\"Pod\",\"metadata\":{{\"name\":\"p{i}\"}},\"pad\":\"").into_bytes();
    v.extend(std::iter::repeat_n(b'x', 2048));
    v.extend_from_slice(b"\"}");
    v
}

async fn sequential(s: &dyn Store, n: usize) -> Vec<f64> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        s.put(
            format!("/registry/pods/default/seq-{i}").as_bytes(),
            &value(i),
        )
        .await
        .unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms
}

/// Writes per second with `clients` writing `each` keys at once.
async fn concurrent(s: Arc<dyn Store>, clients: usize, each: usize) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                s.put(format!("/registry/pods/c{c}/p{i}").as_bytes(), &value(i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (clients * each) as f64 / t.elapsed().as_secs_f64()
}

/// etcd, killed when dropped.
struct EtcdChild(std::process::Child);

impl Drop for EtcdChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn etcd_store(dir: &std::path::Path) -> Result<(EtcdChild, Arc<dyn Store>), StoreError> {
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = EtcdChild(
        Command::new("/usr/bin/etcd")
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
            .expect("/usr/bin/etcd (scripts/deps.sh --test installs etcd-server)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = knode::store::etcd::Etcd::connect(std::slice::from_ref(&endpoint)).await {
            if s.revision().await.is_ok() {
                return Ok((child, Arc::new(s)));
            }
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let n: usize = std::env::var("KNODE_BENCH_PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // On disk (not tmpfs): durability costs what it costs on this machine's disk.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    rt.block_on(async {
        let embedded: Arc<dyn Store> =
            Arc::new(knode::store::embedded::Embedded::open(&dir.path().join("embedded")).unwrap());
        let (etcd_child, etcd) = etcd_store(dir.path()).await.unwrap();
        println!("store: {n} sequential puts of 2 KiB values, then 50 clients x 40 puts (durable writes, /var/tmp)");
        let e_seq = sequential(&*embedded, n).await;
        let x_seq = sequential(&*etcd, n).await;
        let e_tp = concurrent(embedded.clone(), 50, 40).await;
        let x_tp = concurrent(etcd.clone(), 50, 40).await;
        let (e50, e99, x50, x99) = (
            pct(&e_seq, 0.5),
            pct(&e_seq, 0.99),
            pct(&x_seq, 0.5),
            pct(&x_seq, 0.99),
        );
        println!("  embedded (redb)   put p50 {e50:7.3} ms   p99 {e99:7.3} ms   50 clients {e_tp:8.0} puts/s");
        println!("  etcd 3.4          put p50 {x50:7.3} ms   p99 {x99:7.3} ms   50 clients {x_tp:8.0} puts/s");
        println!(
            "  embedded / etcd: p50 {:.2}x (goal <= 1.5x), throughput {:.2}x (goal >= 1x)",
            e50 / x50,
            e_tp / x_tp
        );
        drop(etcd_child);
    });
}
