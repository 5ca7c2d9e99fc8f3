//! A real etcd for tests: Debian 12's etcd-server 3.4 on free loopback ports with a data
//! directory of its own, killed and removed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knode::store::etcd::Etcd;
use knode::store::Store;

const ETCD: &str = "/usr/bin/etcd";

pub struct EtcdProcess {
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
    peer_url: String,
    pub endpoint: String,
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_etcd() -> EtcdProcess {
    assert!(
        std::path::Path::new(ETCD).exists(),
        "{ETCD} is missing: install Debian's etcd-server (scripts/deps.sh --test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.path().join("etcd.log");
    let child = spawn(&dir.path().join("data"), &endpoint, &peer_url, &log);
    EtcdProcess {
        child,
        _dir: dir,
        log,
        peer_url,
        endpoint,
    }
}

fn spawn(data: &std::path::Path, endpoint: &str, peer_url: &str, log: &std::path::Path) -> Child {
    Command::new(ETCD)
        .args(["--name", "knode-test", "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", endpoint])
        .args(["--advertise-client-urls", endpoint])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", &format!("knode-test={peer_url}")])
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

impl EtcdProcess {
    /// Kills etcd (SIGKILL) and starts it again on the same data and ports.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(
            &self._dir.path().join("data"),
            &self.endpoint,
            &self.peer_url,
            &self.log,
        );
    }
}

/// A client once etcd answers (bounded; the log is shown if it never does).
pub async fn connect(e: &EtcdProcess) -> Etcd {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = Etcd::connect(std::slice::from_ref(&e.endpoint)).await {
            if s.revision().await.is_ok() {
                return s;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "etcd did not answer on {}:\n{}",
                e.endpoint,
                std::fs::read_to_string(&e.log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
