//! A `knode server` for tests: started on a free port with its own root, ready when
//! `/readyz` answers over TLS; the real kubectl (1.37, 1.35, 1.20), helm and the Python
//! client pointed at it; raw requests with the admin token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::etcd::free_port;

pub const KUBECTL_135: &str = "/opt/knode-clients/bin/kubectl-1.35";
pub const KUBECTL_120: &str = "/opt/knode-clients/bin/kubectl-1.20";
pub const HELM: &str = "/opt/knode-clients/bin/helm";
pub const PYTHON: &str = "/opt/knode-clients/bin/python3";

/// `knode server` as the API alone: no scheduler or controllers writing beside a test that
/// checks exact stored objects, tables, events or counts.
pub const API_ONLY: &[&str] = &["--disable-scheduler", "--disable-controllers"];
pub const KUBECTL: &str = "/opt/knode-clients/bin/kubectl";

pub struct Server {
    pub etcd: Option<super::etcd::EtcdProcess>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub extra: Vec<String>,
    child: Option<Child>,
    /// The network namespace the server and its clients run in (for tests with node agents,
    /// whose proxies must not touch the host's nftables).
    pub netns: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with(extra, None)
    }

    /// A server in a network namespace of its own (loopback only), with its clients run
    /// there too: node agents join it ([`super::node::Builder::join_netns`]).
    pub fn start_in_netns(extra: &[&str]) -> Server {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ns = format!(
            "kn-srv-{:x}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", ns.as_str()],
            vec!["-n", ns.as_str(), "link", "set", "lo", "up"],
        ] {
            assert!(Command::new("ip").args(&args).status().unwrap().success());
        }
        Server::start_with(extra, Some(ns))
    }

    fn start_with(extra: &[&str], netns: Option<String>) -> Server {
        let mut s = Server {
            etcd: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            netns,
        };
        s.spawn();
        s
    }

    /// Reads `kubectl ARGS --watch` (kubectl 1.37) until a line satisfies `done`: that line.
    #[allow(dead_code)]
    pub fn watch_until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let mut c = self.command(KUBECTL);
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .arg("--watch")
            .arg("--request-timeout=60s");
        super::first_line_where(c, done)
            .unwrap_or_else(|seen| panic!("the watch ended before the awaited change: {seen:?}"))
    }

    /// `bin` as a command in the server's network namespace.
    pub fn command(&self, bin: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    /// Runs `f` on a thread in the server's network namespace.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.netns.clone();
        std::thread::spawn(move || {
            if let Some(ns) = ns {
                let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&fd),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = self
            .command(env!("CARGO_BIN_EXE_knode"))
            .arg("--root")
            .arg(self.root())
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready when /readyz answers 200 over TLS with the cluster's CA.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.root().join("server/tls/ca.crt").exists() {
                let ca = std::fs::read(self.root().join("server/tls/ca.crt")).unwrap();
                let url = self.url("/readyz");
                // The client is made on the thread in the namespace: reqwest's blocking
                // client connects from a thread of its own, started when it is built.
                let ready = self.in_netns(move || {
                    reqwest::blocking::Client::builder()
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                        .build()
                        .unwrap()
                        .get(url)
                        .send()
                        .is_ok_and(|r| r.status() == 200)
                });
                if ready {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become ready:\n{}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A Node object that reports Ready with `cpu` cores, 2 GiB and 110 pods (no agent
    /// behind it: what the scheduler and controllers go by). Its heartbeat is dated a day
    /// ahead, so that the node lifecycle controller does not find it quiet during a test.
    pub fn fake_node(&self, name: &str, cpu: &str) {
        let yaml = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\n");
        self.ok_with(KUBECTL, &["create", "-f", "-"], Some(&yaml));
        let status = format!(
            r#"{{"status": {{"allocatable": {{"cpu": "{cpu}", "memory": "2Gi", "pods": "110"}}, "capacity": {{"cpu": "{cpu}", "memory": "2Gi", "pods": "110"}}, "conditions": [{{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready", "lastHeartbeatTime": "{beat}"}}]}}}}"#,
            beat = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ")
        );
        self.ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// An HTTPS client trusting only the cluster's CA (so the serving certificate's SANs are
    /// checked), with a bearer token or none.
    pub fn client(&self, token: Option<&str>) -> reqwest::blocking::Client {
        let ca = std::fs::read(self.root().join("server/tls/ca.crt")).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .default_headers(headers)
            .build()
            .unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        assert!(
            Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: scripts/deps.sh --test installs kubectl 1.37 there"
        );
        self.command(KUBECTL)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Server {
    /// A server on a fresh etcd (started for it, stopped with it).
    pub fn on_etcd() -> Server {
        Server::on_etcd_with(&[])
    }

    pub fn on_etcd_with(extra: &[&str]) -> Server {
        let e = super::etcd::start_etcd();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(super::etcd::connect(&e));
        let endpoint = e.endpoint.clone();
        let mut args = vec!["--datastore-endpoint", endpoint.as_str()];
        args.extend_from_slice(extra);
        let mut s = Server::start(&args);
        s.etcd = Some(e);
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A client binary (kubectl of any version, helm) with this server's kubeconfig.
    pub fn run(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: scripts/deps.sh --test installs the real clients"
        );
        let mut c = self
            .command(bin)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        c.wait_with_output().unwrap()
    }

    /// kubectl 1.37; asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(KUBECTL, args, None)
    }

    pub fn ok_with(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run(bin, args, stdin);
        assert!(
            o.status.success(),
            "{bin} {args:?} failed:\n{}{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// kubectl 1.37 `args -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The first line kubectl 1.37 prints for a watch (`args` with `--watch` or
    /// `--watch-only`), within 60 s; the watch is then stopped.
    pub fn first_watched(&self, args: &[&str]) -> String {
        use std::io::BufRead;
        let mut child = self
            .command(KUBECTL)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .arg("--request-timeout=60s")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        line
    }

    /// kubectl 1.37 that must fail; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run(KUBECTL, args, stdin);
        assert!(
            !o.status.success(),
            "kubectl {args:?} succeeded:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.root().join("server/tls/admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A raw request as the admin: (status, body as JSON or Null).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .client(Some(&self.token()))
            .request(method.parse().unwrap(), self.url(path))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap();
        let code = r.status().as_u16();
        let v = r.json().unwrap_or(serde_json::Value::Null);
        (code, v)
    }
}
