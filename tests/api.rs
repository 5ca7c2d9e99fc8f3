//! The Kubernetes API of `knode server`, driven by the real clients as users drive any
//! cluster: kubectl 1.37 (and 1.35, 1.20), helm 4 and the official Python client, on the
//! embedded store and on etcd. Outputs are checked against what a real API server makes
//! kubectl print; bad input must get the real server's status and change nothing.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::server::{Server, API_ONLY, HELM, KUBECTL, KUBECTL_120, KUBECTL_135, PYTHON};

const TUTORIAL: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata:
  name: redis-master
  labels: {name: redis-master}
spec:
  replicas: 1
  selector: {name: redis-master}
  template:
    metadata:
      labels: {name: redis-master}
    spec:
      containers:
      - name: master
        image: redis
        ports: [{containerPort: 6379}]
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
  labels: {name: frontend}
spec:
  type: NodePort
  ports: [{port: 80, nodePort: 30001}]
  selector: {name: frontend}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: mysql-config}
data: {MYSQL_DATABASE: app}
"#;

/// The header and rows of a kubectl table, split on runs of spaces.
fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The bootcamp's and the guestbook's commands and objects, on any store.
fn tutorial_objects(s: &Server) {
    // Typed (protobuf) creates, as the bootcamp types them.
    assert_eq!(
        s.ok(&[
            "create",
            "deployment",
            "kubernetes-bootcamp",
            "--image=gcr.io/google-samples/kubernetes-bootcamp:v1"
        ]),
        "deployment.apps/kubernetes-bootcamp created\n"
    );
    s.ok(&[
        "expose",
        "deployment/kubernetes-bootcamp",
        "--type=NodePort",
        "--port",
        "8080",
    ]);
    let svc = s.json(&["get", "service", "kubernetes-bootcamp"]);
    let np = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&np), "{np}");
    let ip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.") && ip != "10.96.0.1", "{ip}");
    assert_eq!(svc["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app": "kubernetes-bootcamp"})
    );

    let rows = table(&s.ok(&["get", "services"]));
    assert_eq!(
        rows[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let boot = rows.iter().find(|r| r[0] == "kubernetes-bootcamp").unwrap();
    assert_eq!(
        boot[1..5],
        [
            "NodePort".to_string(),
            ip.to_string(),
            "<none>".into(),
            format!("8080:{np}/TCP")
        ]
    );
    let k8s = rows.iter().find(|r| r[0] == "kubernetes").unwrap();
    assert_eq!(k8s[1..5], ["ClusterIP", "10.96.0.1", "<none>", "443/TCP"]);

    // scale goes through /scale; set image is a strategic merge that keeps the rest.
    assert_eq!(
        s.ok(&["scale", "deployments/kubernetes-bootcamp", "--replicas=4"]),
        "deployment.apps/kubernetes-bootcamp scaled\n"
    );
    s.ok(&[
        "set",
        "image",
        "deployments/kubernetes-bootcamp",
        "kubernetes-bootcamp=jocatalin/kubernetes-bootcamp:v2",
    ]);
    let d = s.json(&["get", "deployment", "kubernetes-bootcamp"]);
    assert_eq!(d["spec"]["replicas"], 4);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "jocatalin/kubernetes-bootcamp:v2");
    assert_eq!(c["name"], "kubernetes-bootcamp");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    // Spec changes: create (1), scale (2), set image (3).
    assert_eq!(d["metadata"]["generation"], 3);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let rows = table(&s.ok(&["get", "deployments", "-o", "wide"]));
    assert_eq!(
        rows[0],
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert_eq!(rows[1][0..4], ["kubernetes-bootcamp", "0/4", "0", "0"]);
    assert_eq!(
        rows[1][5..],
        [
            "kubernetes-bootcamp",
            "jocatalin/kubernetes-bootcamp:v2",
            "app=kubernetes-bootcamp"
        ]
    );

    // The guestbook from YAML: an RC, a NodePort 30001 service.
    let out = s.ok_with(KUBECTL, &["create", "-f", "-"], Some(TUTORIAL));
    assert_eq!(
        out,
        "replicationcontroller/redis-master created\nservice/frontend created\nconfigmap/mysql-config created\n"
    );
    let rows = table(&s.ok(&["get", "rc"]));
    assert_eq!(rows[0], ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(rows[1][0..4], ["redis-master", "1", "0", "0"]);
    s.ok(&["scale", "rc", "redis-master", "--replicas=2"]);
    assert_eq!(
        s.json(&["get", "rc", "redis-master"])["spec"]["replicas"],
        2
    );
    assert!(s.ok(&["get", "svc", "frontend"]).contains("80:30001/TCP"));
    // 30001 is taken: a second service asking for it is refused, and nothing is stored.
    let e = s.fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {type: NodePort, ports: [{port: 81, nodePort: 30001}]}\n"),
    );
    assert!(e.contains("The Service \"other\" is invalid: spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"), "{e}");
    assert!(s
        .fails(&["get", "svc", "other"], None)
        .contains("services \"other\" not found"));
    // Deleting the service frees the port.
    s.ok(&["delete", "svc", "frontend"]);
    s.ok_with(KUBECTL, &["create", "-f", "-"], Some("apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {type: NodePort, ports: [{port: 81, nodePort: 30001}]}\n"));

    // get all, namespaces, configmaps, endpoints.
    let all = s.ok(&["get", "all"]);
    for want in [
        "deployment.apps/kubernetes-bootcamp",
        "replicationcontroller/redis-master",
        "service/kubernetes",
    ] {
        assert!(all.contains(want), "{want} not in {all}");
    }
    let rows = table(&s.ok(&["get", "namespace"]));
    assert_eq!(rows[0], ["NAME", "STATUS", "AGE"]);
    let names: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    assert!(rows[1..].iter().all(|r| r[1] == "Active"));
    // Listening on loopback only, the server has no address pods could reach: no endpoint
    // (upstream refuses loopback endpoint addresses).
    let o = s.run(KUBECTL, &["get", "endpoints", "kubernetes"], None);
    let row: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(row[..2], ["kubernetes", "<none>"], "{row:?}");
    // The deprecation warning a 1.33+ server gives on v1 Endpoints.
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Warning: v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice\n"
    );
    let rows = table(&s.ok(&["get", "configmaps"]));
    assert_eq!(rows[0], ["NAME", "DATA", "AGE"]);
    assert_eq!(rows[1][0..2], ["mysql-config", "1"]);

    // Secrets (protobuf) keep their bytes.
    s.ok(&[
        "create",
        "secret",
        "generic",
        "mysql-pass",
        "--from-literal=password=s3cr3t!",
    ]);
    let sec = s.json(&["get", "secret", "mysql-pass"]);
    assert_eq!(sec["data"]["password"], "czNjcjN0IQ==");
    assert_eq!(sec["type"], "Opaque");

    // Delete with --wait returns once it is gone.
    assert_eq!(
        s.ok(&["delete", "deployment", "kubernetes-bootcamp"]),
        "deployment.apps \"kubernetes-bootcamp\" deleted from default namespace\n"
    );
    let e = s.fails(&["get", "deployment", "kubernetes-bootcamp"], None);
    assert_eq!(
        e.trim(),
        "Error from server (NotFound): deployments.apps \"kubernetes-bootcamp\" not found"
    );
}

#[test]
fn the_tutorials_objects_work_on_the_embedded_store() {
    tutorial_objects(&Server::start(API_ONLY));
}

#[test]
fn the_tutorials_objects_work_on_etcd() {
    tutorial_objects(&Server::on_etcd_with(API_ONLY));
}

#[test]
fn discovery_openapi_and_explain_answer_as_kubectl_expects() {
    let s = Server::start(&[]);
    let res = s.ok(&["api-resources"]);
    for line in [
        "pods                       po           v1                         true         Pod",
        "deployments                deploy       apps/v1                    true         Deployment",
        "replicationcontrollers     rc           v1                         true         ReplicationController",
    ] {
        let want: Vec<&str> = line.split_whitespace().collect();
        assert!(
            res.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == want),
            "{line} not in\n{res}"
        );
    }
    let versions = s.ok(&["api-versions"]);
    for v in [
        "apps/v1",
        "batch/v1",
        "v1",
        "events.k8s.io/v1",
        "coordination.k8s.io/v1",
    ] {
        assert!(versions.lines().any(|l| l == v), "{v} not in {versions}");
    }
    let explain = s.ok(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("KIND:       Deployment"), "{explain}");
    assert!(
        explain.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{explain}"
    );
    assert_eq!(s.ok(&["auth", "can-i", "create", "pods"]), "yes\n");
    let who = s.ok(&["auth", "whoami", "-o", "json"]);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "kubernetes-admin");
    let info = s.ok(&["cluster-info"]);
    assert!(
        info.contains(&format!(
            "Kubernetes control plane is running at https://127.0.0.1:{}",
            s.port
        )),
        "{info}"
    );

    // Aggregated discovery only when asked for, recognised by its content type.
    let client = s.client(Some(&s.token()));
    let r = client
        .get(s.url("/apis"))
        .header(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    let r = client
        .get(s.url("/apis"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(v["kind"], "APIGroupList");
    let (code, v) = s.raw("GET", "/apis/apps/v1", "application/json", vec![]);
    assert_eq!(code, 200);
    let scale = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(
        (scale["group"].as_str(), scale["kind"].as_str()),
        (Some("autoscaling"), Some("Scale"))
    );
    // /openapi/v2 for kubectl 1.20: the dotted protobuf content type.
    let r = client.get(s.url("/openapi/v2")).send().unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    // kubectl proxy reaches the server.
    let port = support::etcd::free_port();
    let mut proxy = Command::new(KUBECTL)
        .env("KUBECONFIG", s.kubeconfig())
        .args(["proxy", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(proxy.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("Starting to serve on"), "{line}");
    let v: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/version"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        v["gitVersion"].as_str().unwrap().split('+').next(),
        Some("v1.37.0")
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn apply_patch_label_annotate_and_edit() {
    let s = Server::start(&[]);
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: web, image: nginx:1, ports: [{containerPort: 80}], env: [{name: A, value: '1'}]}\n";
    assert_eq!(
        s.ok_with(KUBECTL, &["apply", "-f", "-"], Some(dep)),
        "deployment.apps/web created\n"
    );
    assert_eq!(
        s.ok_with(KUBECTL, &["apply", "-f", "-"], Some(dep)),
        "deployment.apps/web unchanged\n"
    );
    // A field removed from the file is removed from the object (three-way strategic merge).
    let dep2 = dep
        .replace(", env: [{name: A, value: '1'}]", "")
        .replace("replicas: 2", "replicas: 3");
    assert_eq!(
        s.ok_with(KUBECTL, &["apply", "-f", "-"], Some(&dep2)),
        "deployment.apps/web configured\n"
    );
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(
        d["spec"]["template"]["spec"]["containers"][0]
            .get("env")
            .is_none(),
        "{d}"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );
    // Server-side apply: creates, then updates, and records the manager.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: '1'}\n";
    assert_eq!(
        s.ok_with(KUBECTL, &["apply", "--server-side", "-f", "-"], Some(cm)),
        "configmap/ssa serverside-applied\n"
    );
    s.ok_with(
        KUBECTL,
        &["apply", "--server-side", "-f", "-"],
        Some(&cm.replace("'1'", "'2'")),
    );
    let c = s.json(&["get", "cm", "ssa", "--show-managed-fields"]);
    assert_eq!(c["data"]["a"], "2");
    assert!(
        c["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply"),
        "{c}"
    );

    s.ok(&["label", "deploy", "web", "tier=front"]);
    s.ok(&["annotate", "deploy", "web", "note=hello"]);
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["metadata"]["labels"]["tier"], "front");
    assert_eq!(d["metadata"]["annotations"]["note"], "hello");
    assert_eq!(
        table(&s.ok(&["get", "deploy", "-l", "tier=front"])).len(),
        2
    );
    assert!(s.ok(&["get", "deploy", "-l", "tier!=front"]).is_empty());
    s.ok(&["label", "deploy", "web", "tier-"]);
    assert!(s.json(&["get", "deploy", "web"])["metadata"]["labels"]
        .get("tier")
        .is_none());

    s.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ]);
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/minReadySeconds","value":7}]"#,
    ]);
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"busybox"}]}}}}"#,
    ]);
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(
        (
            d["spec"]["replicas"].as_i64(),
            d["spec"]["minReadySeconds"].as_i64()
        ),
        (Some(5), Some(7))
    );
    let names: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "side"]);
    let e = s.fails(
        &[
            "patch",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
        ],
        None,
    );
    assert!(e.contains("The request is invalid"), "{e}");
    assert_eq!(s.json(&["get", "deploy", "web"])["spec"]["replicas"], 5);

    // edit through $EDITOR.
    let editor = s.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 5/replicas: 6/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = Command::new(KUBECTL)
        .env("KUBECONFIG", s.kubeconfig())
        .env("KUBE_EDITOR", &editor)
        .args(["edit", "deploy", "web"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "deployment.apps/web edited\n"
    );
    assert_eq!(s.json(&["get", "deploy", "web"])["spec"]["replicas"], 6);
    // generation counted every spec change: create, apply, merge, json, strategic, edit.
    assert_eq!(
        s.json(&["get", "deploy", "web"])["metadata"]["generation"],
        6
    );
}

#[test]
fn server_side_apply_owns_fields_conflicts_and_forces() {
    // Exact manager lists: no controller writing its own.
    let s = Server::start(API_ONLY);
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ssa, labels: {app: ssa, tier: front}}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: ssa}}\n  template:\n    metadata: {labels: {app: ssa}}\n    spec:\n      containers:\n      - {name: web, image: nginx:1, ports: [{containerPort: 80}]}\n";
    let alice = ["apply", "--server-side", "--field-manager=alice", "-f", "-"];
    assert_eq!(
        s.ok_with(KUBECTL, &alice, Some(dep)),
        "deployment.apps/ssa serverside-applied\n"
    );
    let managers = |s: &Server| -> Vec<(String, String, Value)> {
        let d = s.json(&["get", "deploy", "ssa", "--show-managed-fields"]);
        d["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["manager"].as_str().unwrap().to_string(),
                    m["operation"].as_str().unwrap().to_string(),
                    m["fieldsV1"].clone(),
                )
            })
            .collect()
    };
    let m = managers(&s);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].0.as_str(), m[0].1.as_str()), ("alice", "Apply"));
    // The same apply again changes nothing: no write, the same resourceVersion.
    let rv = |s: &Server| {
        s.ok(&[
            "get",
            "deploy",
            "ssa",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = rv(&s);
    s.ok_with(KUBECTL, &alice, Some(dep));
    s.ok(&["label", "deploy", "ssa", "tier=front", "--overwrite"]);
    assert_eq!(rv(&s), before);
    let containers = &m[0].2["f:spec"]["f:template"]["f:spec"]["f:containers"];
    assert!(
        containers["k:{\"name\":\"web\"}"]["f:ports"]
            .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
            .is_some(),
        "{containers}"
    );

    // kubectl scale changes a field alice applied: it becomes the scaler's, and alice's
    // next apply of her 2 replicas is a conflict that changes nothing.
    s.ok(&["scale", "deploy", "ssa", "--replicas=5"]);
    let before = s.json(&["get", "deploy", "ssa"]);
    let err = s.fails(&alice, Some(dep));
    assert!(
        err.starts_with("error: Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas\n"),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    let after = s.json(&["get", "deploy", "ssa"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(after["spec"]["replicas"], 5);

    // The same value is shared, not a conflict: bob applies replicas 5 and an annotation.
    let bob = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ssa, annotations: {owner: bob}}\nspec: {replicas: 5}\n";
    s.ok_with(
        KUBECTL,
        &["apply", "--server-side", "--field-manager=bob", "-f", "-"],
        Some(bob),
    );

    // Forced: alice takes replicas back from both, and the scaler's entry goes.
    s.ok_with(
        KUBECTL,
        &[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(dep),
    );
    let d = s.json(&["get", "deploy", "ssa"]);
    assert_eq!(d["spec"]["replicas"], 2);
    let m = managers(&s);
    assert!(!m.iter().any(|(n, _, _)| n == "kubectl"), "{m:?}");
    let bob_fields = &m.iter().find(|(n, _, _)| n == "bob").unwrap().2;
    assert!(bob_fields["f:spec"].get("f:replicas").is_none(), "{m:?}");
    assert_eq!(
        bob_fields["f:metadata"]["f:annotations"]["f:owner"],
        json!({})
    );

    // A label dropped from alice's file goes; bob's annotation and set image's change stay.
    s.ok(&["set", "image", "deploy/ssa", "web=nginx:2"]);
    // (alice's file follows the image to nginx:2: the same value, so shared, no conflict.)
    let dep2 = dep
        .replace(", tier: front", "")
        .replace("nginx:1", "nginx:2");
    s.ok_with(KUBECTL, &alice, Some(&dep2));
    let d = s.json(&["get", "deploy", "ssa"]);
    assert_eq!(d["metadata"]["labels"], json!({"app": "ssa"}), "{d}");
    assert_eq!(d["metadata"]["annotations"]["owner"], "bob");
    // A new image in alice's file conflicts with set image, which still co-owns the field.
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:2");
    assert!(s
        .fails(&alice, Some(&dep2.replace("nginx:2", "nginx:3")))
        .contains("conflict with \"kubectl-set\" using apps/v1: .spec.template.spec.containers[name=\"web\"].image"));

    // Bad options: force on a non-apply patch, apply without a manager.
    let (code, body) = s.raw(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/ssa?force=true",
        "application/merge-patch+json",
        b"{}".to_vec(),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("force: Forbidden: may not be specified for non-apply patch"));
    let (code, body) = s.raw(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/ssa",
        "application/apply-patch+yaml",
        b"{apiVersion: apps/v1, kind: Deployment}".to_vec(),
    );
    assert_eq!(code, 400, "{body}");
}

#[test]
fn bad_input_gets_the_real_servers_status_and_changes_nothing() {
    let s = Server::start(&[]);
    s.ok(&["create", "configmap", "keep", "--from-literal=a=b"]);
    let rv = |s: &Server| {
        s.json(&["get", "configmaps"])["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = rv(&s);
    let cm_path = "/api/v1/namespaces/default/configmaps";
    // (method, path, content type, body, status, text in the message)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            cm_path,
            "application/json",
            b"{\"kind\":".to_vec(),
            400,
            "json parse error",
        ),
        (
            "POST",
            cm_path,
            "application/yaml",
            b"a: [".to_vec(),
            400,
            "YAML",
        ),
        (
            "POST",
            cm_path,
            "application/vnd.kubernetes.protobuf",
            b"k8s\x00\x0a\xff\xff".to_vec(),
            400,
            "protobuf",
        ),
        (
            "POST",
            cm_path,
            "text/plain",
            b"x".to_vec(),
            415,
            "unknown format",
        ),
        (
            "POST",
            cm_path,
            "application/json",
            br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec(),
            422,
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\"",
        ),
        (
            "POST",
            cm_path,
            "application/json",
            br#"{"metadata":{"name":"x","namespace":"other"}}"#.to_vec(),
            400,
            "does not match the namespace",
        ),
        (
            "POST",
            cm_path,
            "application/json",
            br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x"}}"#.to_vec(),
            400,
            "Pod",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            "application/json",
            br#"{"metadata":{"name":"x"},"bogus":1}"#.to_vec(),
            400,
            "strict decoding error: unknown field \"bogus\"",
        ),
        (
            "POST",
            "/api/v1/namespaces/nosuch/configmaps",
            "application/json",
            br#"{"metadata":{"name":"x"}}"#.to_vec(),
            404,
            "namespaces \"nosuch\" not found",
        ),
        (
            "POST",
            cm_path,
            "application/json",
            vec![b' '; 3 * 1024 * 1024 + 10],
            413,
            "Request entity too large",
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/configmaps/keep",
            "application/json",
            br#"{"metadata":{"name":"keep","resourceVersion":"1"},"data":{"a":"c"}}"#.to_vec(),
            409,
            "the object has been modified",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(",
            "application/json",
            vec![],
            400,
            "unable to parse requirement",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3Dx",
            "application/json",
            vec![],
            400,
            "field label not supported: spec.bogus",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/nosuchkind",
            "application/json",
            vec![],
            404,
            "could not find the requested resource",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default",
            "application/json",
            vec![],
            403,
            "this namespace may not be deleted",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
            "application/json",
            vec![],
            422,
            "resourceVersionMatch",
        ),
    ];
    for (method, path, ct, body, code, text) in cases {
        let (got, status) = s.raw(method, path, ct, body);
        assert_eq!(got, code, "{method} {path}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}");
        assert_eq!(status["code"], code, "{method} {path}");
        let msg = status["message"].as_str().unwrap();
        assert!(
            msg.contains(text),
            "{method} {path}: {msg:?} lacks {text:?}"
        );
    }
    // kubectl prints the real texts.
    let e = s.fails(&["create", "configmap", "Bad_Name"], None);
    assert!(e.starts_with("error: failed to create configmap: ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{e}");
    let e = s.fails(&["create", "configmap", "keep"], None);
    assert!(e.contains("configmaps \"keep\" already exists"), "{e}");
    // A pod's dnsConfig, checked as the API server does.
    let e = s.fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: dns}\nspec:\n  dnsPolicy: None\n  containers: [{name: c, image: busybox}]\n"),
    );
    assert!(e.contains("The Pod \"dns\" is invalid: spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"), "{e}");
    // Probes, too: defaults applied first (a zero successThreshold is 1), then checked.
    let e = s.fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Deployment\napiVersion: apps/v1\nmetadata: {name: probed}\nspec:\n  selector: {matchLabels: {app: p}}\n  template:\n    metadata: {labels: {app: p}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        livenessProbe: {httpGet: {port: 0}, successThreshold: 3}\n        readinessProbe: {successThreshold: 0}\n"),
    );
    for want in [
        "The Deployment \"probed\" is invalid: ",
        "spec.template.spec.containers[0].livenessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.template.spec.containers[0].livenessProbe.successThreshold: Invalid value: 3: must be 1",
        "spec.template.spec.containers[0].readinessProbe: Required value: must specify a handler type",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let d = s.fails(&["get", "deployment", "probed"], None);
    assert!(d.contains("not found"), "{d}");
    let e = s.fails(&["get", "pods", "nosuch"], None);
    assert_eq!(
        e.trim(),
        "Error from server (NotFound): pods \"nosuch\" not found"
    );
    let e = s.fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndata: {a: b}\ndatta: {}\n"),
    );
    assert!(
        e.contains("strict decoding error: unknown field \"datta\""),
        "{e}"
    );
    // Nothing was written by any of it.
    assert_eq!(rv(&s), before);
    assert_eq!(s.json(&["get", "cm", "keep"])["data"]["a"], "b");
}

#[test]
fn lists_page_and_select_and_watches_follow() {
    // Exact counts of ConfigMaps: no root CA publisher writing its own.
    let s = Server::start(API_ONLY);
    for i in 0..7 {
        let tier = if i % 2 == 0 { "front" } else { "back" };
        s.ok(&[
            "create",
            "configmap",
            &format!("c{i}"),
            "--from-literal=k=v",
        ]);
        s.ok(&["label", "cm", &format!("c{i}"), &format!("tier={tier}")]);
    }
    // kubectl follows continue tokens.
    let names = s.ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    assert_eq!(names.lines().count(), 7, "{names}");
    let (_, page) = s.raw(
        "GET",
        "/api/v1/namespaces/default/configmaps?limit=3",
        "application/json",
        vec![],
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert_eq!(page["metadata"]["remainingItemCount"], 4);
    let tok = page["metadata"]["continue"].as_str().unwrap();
    let (_, next) = s.raw(
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={tok}"),
        "application/json",
        vec![],
    );
    assert_eq!(next["items"].as_array().unwrap().len(), 4);
    assert!(next["metadata"].get("continue").is_none());
    assert_eq!(
        s.ok(&["get", "cm", "-l", "tier in (front)", "-o", "name"])
            .lines()
            .count(),
        4
    );
    assert_eq!(
        s.ok(&["get", "cm", "-l", "tier notin (front),tier", "-o", "name"])
            .lines()
            .count(),
        3
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=c3",
            "-o",
            "name"
        ]),
        "configmap/c3\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.namespace=kube-system",
            "-o",
            "name"
        ]),
        ""
    );

    // kubectl get -w: the list, then each change as it happens.
    let mut w = Command::new(KUBECTL)
        .env("KUBECONFIG", s.kubeconfig())
        .args([
            "get",
            "configmaps",
            "-l",
            "tier=front",
            "-w",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(w.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(
        header.contains("EVENT") && header.contains("NAME") && header.contains("DATA"),
        "{header}"
    );
    for _ in 0..4 {
        assert!(lines.next().unwrap().unwrap().starts_with("ADDED"));
    }
    s.ok(&["label", "cm", "c1", "tier=front", "--overwrite"]);
    s.ok(&["annotate", "cm", "c0", "x=y"]);
    s.ok(&["delete", "cm", "c2"]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let l = lines.next().unwrap().unwrap();
        let cols: Vec<String> = l.split_whitespace().map(str::to_string).collect();
        seen.push((cols[0].clone(), cols[1].clone()));
    }
    assert_eq!(
        seen,
        [
            ("ADDED".into(), "c1".into()),
            ("MODIFIED".into(), "c0".into()),
            ("DELETED".into(), "c2".into())
        ]
    );
    let _ = w.kill();
    let _ = w.wait();

    // watch-list: the initial events, the bookmark that ends them, then changes.
    let client = s.client(Some(&s.token()));
    let r = client
        .get(s.url("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&labelSelector=tier%3Dback&timeoutSeconds=5"))
        .send()
        .unwrap();
    let mut events = std::io::BufReader::new(r).lines();
    let mut added = 0;
    loop {
        let e: Value = serde_json::from_str(&events.next().unwrap().unwrap()).unwrap();
        if e["type"] == "BOOKMARK" {
            assert_eq!(
                e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            break;
        }
        assert_eq!(e["type"], "ADDED");
        added += 1;
    }
    assert_eq!(added, 2, "c3, c5 (c1 moved to front)");
}

#[test]
fn the_python_client_lists_watches_creates_patches_and_deletes() {
    let s = Server::start(&[]);
    let script = r#"
import sys
from kubernetes import client, config, watch
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
rv = v1.list_namespaced_config_map("default").metadata.resource_version
v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"a": "b"}), data={"k": "v"}))
v1.patch_namespaced_config_map("py", "default", {"data": {"k2": "v2"}})
assert v1.read_namespaced_config_map("py", "default").data == {"k": "v", "k2": "v2"}
v1.delete_namespaced_config_map("py", "default")
w = watch.Watch()
seen = []
for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
    seen.append(ev["type"] + ":" + ev["object"].metadata.name)
    if ev["type"] == "DELETED":
        w.stop()
print(" ".join(seen))
print(len(v1.list_namespace().items), len(client.AppsV1Api().list_deployment_for_all_namespaces().items))
try:
    v1.read_namespaced_config_map("py", "default")
except client.exceptions.ApiException as e:
    print(e.status, e.reason)
"#;
    let out = s.ok_with(
        PYTHON,
        &["-c", script, s.kubeconfig().to_str().unwrap()],
        None,
    );
    assert_eq!(out, "ADDED:py MODIFIED:py DELETED:py\n4 0\n404 Not Found\n");
}

#[test]
fn older_kubectls_and_helm_work_too() {
    let s = Server::start(&[]);
    // kubectl 1.35: typed protobuf create, the same tables.
    s.ok_with(
        KUBECTL_135,
        &["create", "deployment", "web", "--image=nginx"],
        None,
    );
    s.ok_with(KUBECTL_135, &["scale", "deploy/web", "--replicas=2"], None);
    assert_eq!(
        table(&s.ok_with(KUBECTL_135, &["get", "deploy"], None))[1][0..2],
        ["web", "0/2"]
    );
    // kubectl 1.20: legacy discovery, JSON bodies, the v2 OpenAPI.
    let out = s.ok_with(KUBECTL_120, &["create", "-f", "-"], Some(TUTORIAL));
    assert!(
        out.contains("replicationcontroller/redis-master created"),
        "{out}"
    );
    s.ok_with(
        KUBECTL_120,
        &["scale", "rc", "redis-master", "--replicas=3"],
        None,
    );
    assert_eq!(
        table(&s.ok_with(KUBECTL_120, &["get", "rc"], None))[1][0..2],
        ["redis-master", "3"]
    );
    assert!(s
        .ok_with(KUBECTL_120, &["get", "svc", "frontend"], None)
        .contains("80:30001/TCP"));
    s.ok_with(KUBECTL_120, &["delete", "-f", "-"], Some(TUTORIAL));
    assert!(s
        .fails(&["get", "rc", "redis-master"], None)
        .contains("not found"));
    // The v2 OpenAPI in protobuf: explain, client-side validation, and apply's patch
    // strategies (a port changed in a keyed list, not appended).
    let ex = s.ok_with(KUBECTL_120, &["explain", "deployment.spec.strategy"], None);
    assert!(ex.contains("RESOURCE: strategy <Object>"), "{ex}");
    assert!(ex.contains("rollingUpdate\t<Object>"), "{ex}");
    let ex = s.ok_with(KUBECTL_120, &["explain", "svc.spec.ports.targetPort"], None);
    assert!(ex.contains("FIELD:    targetPort <string>"), "{ex}");
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: old}\nspec:\n  selector: {matchLabels: {app: old}}\n  template:\n    metadata: {labels: {app: old}}\n    spec:\n      containers:\n      - {name: web, image: nginx:1, ports: [{containerPort: 80}], resources: {limits: {cpu: 1}}}\n";
    let o = s.run(
        KUBECTL_120,
        &["apply", "-f", "-"],
        Some(&dep.replace("spec:\n  selector", "spec:\n  bogus: 1\n  selector")),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown field \"bogus\" in io.k8s.api.apps.v1.DeploymentSpec"),
        "{err}"
    );
    s.ok_with(KUBECTL_120, &["apply", "-f", "-"], Some(dep));
    s.ok_with(
        KUBECTL_120,
        &["apply", "-f", "-"],
        Some(&dep.replace("containerPort: 80", "containerPort: 81")),
    );
    let d = s.json(&["get", "deploy", "old"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 81, "protocol": "TCP"}])
    );

    // helm 4: install, upgrade, rollback, uninstall (server-side apply, protobuf Secrets).
    let chart = s.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\nkubeVersion: \">=1.20.0\"\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "greeting: hello\n").unwrap();
    std::fs::write(
        chart.join("templates/all.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cfg}\ndata: {greeting: {{ .Values.greeting | quote }}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: {{ .Release.Name }}-svc}\nspec: {selector: {app: demo}, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let c = chart.to_str().unwrap();
    let greeting = |s: &Server| {
        s.json(&["get", "cm", "demo-cfg"])["data"]["greeting"]
            .as_str()
            .unwrap()
            .to_string()
    };
    s.ok_with(HELM, &["install", "demo", c], None);
    assert_eq!(greeting(&s), "hello");
    s.ok_with(HELM, &["upgrade", "demo", c, "--set", "greeting=bye"], None);
    assert_eq!(greeting(&s), "bye");
    s.ok_with(HELM, &["rollback", "demo", "1"], None);
    assert_eq!(greeting(&s), "hello");
    let releases = s.ok(&["get", "secrets", "-l", "owner=helm", "-o", "name"]);
    assert_eq!(releases.lines().count(), 3, "{releases}");
    s.ok_with(HELM, &["uninstall", "demo"], None);
    assert!(s
        .ok(&["get", "cm,svc,secrets", "-l", "owner=helm", "-o", "name"])
        .is_empty());
    assert!(s
        .fails(&["get", "svc", "demo-svc"], None)
        .contains("not found"));
}

#[test]
fn pods_delete_gracefully_and_namespaces_empty_before_they_go() {
    let s = Server::start(&[]);
    s.ok(&["create", "namespace", "team"]);
    s.ok(&[
        "-n",
        "team",
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
    ]);
    s.ok(&["-n", "team", "run", "web", "--image=nginx"]);
    let rows = table(&s.ok(&["get", "pods", "-n", "team", "-o", "wide"]));
    assert_eq!(
        rows[0],
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );
    assert_eq!(rows[1][0..4], ["web", "0/1", "Pending", "0"]);
    let pod = s.json(&["get", "pod", "web", "-n", "team"]);
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    // Bound to a node, a pod waits for its agent: Terminating, with a deletion timestamp.
    let (code, st) = s.raw("POST", "/api/v1/namespaces/team/pods/web/binding", "application/json",
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"}, "target": {"kind": "Node", "name": "n1"}})).unwrap());
    assert_eq!(code, 201, "{st}");
    let (code, _) = s.raw(
        "POST",
        "/api/v1/namespaces/team/pods/web/binding",
        "application/json",
        serde_json::to_vec(&json!({"metadata": {"name": "web"}, "target": {"name": "n2"}}))
            .unwrap(),
    );
    assert_eq!(code, 409);
    assert_eq!(
        s.ok(&["delete", "pod", "web", "-n", "team", "--wait=false"]),
        "pod \"web\" deleted from team namespace\n"
    );
    let pod = s.json(&["get", "pod", "web", "-n", "team"]);
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        table(&s.ok(&["get", "pods", "-n", "team"]))[1][2],
        "Terminating"
    );
    // Delete the namespace: Terminating, no new objects, then gone once emptied (the
    // force-deleted pod lets it finish).
    s.ok(&["delete", "namespace", "team", "--wait=false"]);
    assert_eq!(
        s.json(&["get", "ns", "team"])["status"]["phase"],
        "Terminating"
    );
    let e = s.fails(&["-n", "team", "create", "configmap", "late"], None);
    assert!(e.contains("because it is being terminated"), "{e}");
    s.ok(&[
        "delete",
        "pod",
        "web",
        "-n",
        "team",
        "--grace-period=0",
        "--force",
    ]);
    s.ok(&["wait", "--for=delete", "namespace/team", "--timeout=60s"]);
    assert!(s
        .fails(&["get", "cm", "c", "-n", "team"], None)
        .contains("not found"));
}

#[test]
fn metrics_count_requests_and_store_calls() {
    // The API alone: exact counts and events, with no control loop writing its own.
    let s = Server::start(API_ONLY);
    s.ok(&["get", "pods"]);
    s.fails(&["get", "pods", "nosuch"], None);
    let m = s.ok(&["get", "--raw", "/metrics"]);
    assert!(m.contains("apiserver_request_total{verb=\"LIST\",group=\"\",resource=\"pods\",subresource=\"\",code=\"200\"} 1"), "{m}");
    assert!(m.contains("apiserver_request_total{verb=\"GET\",group=\"\",resource=\"pods\",subresource=\"\",code=\"404\"} 1"), "{m}");
    assert!(
        m.contains("etcd_request_duration_seconds_count{operation=\"range\"}"),
        "{m}"
    );
    let anon = s.client(None).get(s.url("/metrics")).send().unwrap();
    assert_eq!(anon.status(), 401);
}

/// Watches resume from any revision still in history; beyond it they get 410 Expired, as an
/// ERROR event inside the stream, and old continue tokens are refused the same way.
fn history_is_compacted_and_old_revisions_expire(s: &Server) {
    s.ok(&["create", "configmap", "first"]);
    s.ok(&["create", "configmap", "first2"]);
    let (_, page) = s.raw(
        "GET",
        "/api/v1/namespaces/default/configmaps?limit=1",
        "application/json",
        vec![],
    );
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let old = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Resuming from that revision replays what came after it.
    s.ok(&["create", "configmap", "second"]);
    let client = s.client(Some(&s.token()));
    let watch = |rv: &str| -> Value {
        let r = client
            .get(s.url(&format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=2")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let line = std::io::BufReader::new(r).lines().next().unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let e = watch(&old);
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("second"))
    );
    // The server compacts every second here; new writes move the compaction point on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut n = 0;
    let expired = loop {
        n += 1;
        s.ok(&["create", "configmap", &format!("tick{n}")]);
        let e = watch(&old);
        if e["type"] == "ERROR" {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "never compacted: {e}");
    };
    assert_eq!(expired["object"]["code"], 410);
    assert_eq!(expired["object"]["reason"], "Expired");
    assert!(
        expired["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version"),
        "{expired}"
    );
    let (code, st) = s.raw(
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?limit=1&continue={token}"),
        "application/json",
        vec![],
    );
    assert_eq!(code, 410, "{st}");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("continue parameter is too old"),
        "{st}"
    );
    // A fresh list and watch work.
    assert!(s
        .ok(&["get", "cm", "-o", "name"])
        .contains("configmap/second"));
}

#[test]
fn history_is_compacted_on_the_embedded_store() {
    history_is_compacted_and_old_revisions_expire(&Server::start(&[
        "--etcd-compaction-interval",
        "1",
    ]));
}

#[test]
fn history_is_compacted_on_etcd() {
    let mut s = Server::on_etcd();
    s.stop();
    s.extra
        .extend(["--etcd-compaction-interval".to_string(), "1".to_string()]);
    s.spawn();
    history_is_compacted_and_old_revisions_expire(&s);
}

/// kill -9 in the middle of concurrent writes: after a restart every acknowledged write is
/// there, whole, and the store opens cleanly.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut s = Server::start(&[]);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let payload = "x".repeat(4096);
    let mut writers = Vec::new();
    for t in 0..8 {
        let (tx, client, url, payload) = (
            tx.clone(),
            s.client(Some(&s.token())),
            s.url("/api/v1/namespaces/default/configmaps"),
            payload.clone(),
        );
        writers.push(std::thread::spawn(move || {
            for i in 0.. {
                let name = format!("w{t}-{i}");
                let body =
                    json!({"metadata": {"name": name}, "data": {"payload": payload, "name": name}});
                match client.post(&url).json(&body).send() {
                    Ok(r) if r.status() == 201 => {
                        if tx.send(name).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acked: Vec<String> = Vec::new();
    for name in rx.iter() {
        acked.push(name);
        if acked.len() == 300 {
            s.stop(); // SIGKILL, writes in flight
            break;
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    s.spawn();
    let list = s.json(&["get", "configmaps"]);
    let stored: std::collections::HashMap<String, Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap().to_string(),
                c["data"].clone(),
            )
        })
        .collect();
    for name in &acked {
        let data = stored
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged {name} is lost"));
        assert_eq!(data["name"], name.as_str());
        assert_eq!(
            data["payload"].as_str().map(str::len),
            Some(4096),
            "{name} is damaged"
        );
    }
    assert!(stored.len() >= acked.len());
}

/// etcd killed and restarted under an open watch: the watcher, resuming from the last
/// revision it saw as informers do, misses nothing and sees nothing twice.
#[test]
fn an_etcd_restart_under_a_watch_loses_no_event() {
    // No controller writing ConfigMaps (the root CA publisher) beside the watched ones.
    let mut s = Server::on_etcd_with(API_ONLY);
    let (_, list) = s.raw(
        "GET",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        vec![],
    );
    let mut rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let open = |s: &Server, rv: &str| {
        let client = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(
                    &std::fs::read(s.root().join("server/tls/ca.crt")).unwrap(),
                )
                .unwrap(),
            )
            .timeout(None)
            .build()
            .unwrap();
        let r = client
            .get(s.url(&format!(
                "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
            )))
            .bearer_auth(s.token())
            .send()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let mut events = open(&s, &rv);
    let mut seen: Vec<String> = Vec::new();
    s.ok(&["create", "configmap", "before"]);
    let e = events
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(e["object"]["metadata"]["name"], "before", "{e}");
    seen.push("before".into());
    rv = e["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.etcd.as_mut().unwrap().restart();
    // Writes fail while etcd is down; retry until one is acknowledged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (code, _) = s.raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"metadata":{"name":"after"}}"#.to_vec(),
        );
        if code == 201 {
            break;
        }
        assert!(code >= 500, "{code}");
        assert!(std::time::Instant::now() < deadline, "etcd never came back");
    }
    // Follow the stream; when it ends, resume from the last revision seen.
    while !seen.contains(&"after".to_string()) {
        match events.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(e) if e["type"] == "ERROR" => panic!("{e}"),
            Ok(e) => {
                rv = e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string();
                if e["type"] != "BOOKMARK" {
                    seen.push(
                        e["object"]["metadata"]["name"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => events = open(&s, &rv),
            Err(e) => panic!("the watch neither delivered nor ended: {e}"),
        }
    }
    assert_eq!(seen, ["before", "after"]);
}

/// Events are one store seen through two groups; describe shows them; other output formats.
#[test]
fn events_describe_and_output_formats() {
    // The API alone: exact counts and events, with no control loop writing its own.
    let s = Server::start(API_ONLY);
    s.ok(&["run", "web", "--image=nginx"]);
    let uid = s.json(&["get", "pod", "web"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let core = json!({"metadata": {"name": "web.1"}, "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web", "uid": uid},
        "reason": "Scheduled", "message": "Successfully assigned default/web to n1", "type": "Normal",
        "source": {"component": "default-scheduler"}, "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1});
    let (code, _) = s.raw(
        "POST",
        "/api/v1/namespaces/default/events",
        "application/json",
        serde_json::to_vec(&core).unwrap(),
    );
    assert_eq!(code, 201);
    let newer = json!({"metadata": {"name": "web.2"}, "regarding": {"kind": "Pod", "namespace": "default", "name": "web", "uid": uid},
        "reason": "Pulling", "note": "Pulling image \"nginx\"", "type": "Normal", "action": "Pull",
        "reportingController": "kubelet", "reportingInstance": "n1", "eventTime": "2026-01-01T00:00:01.000000Z"});
    let (code, st) = s.raw(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        "application/json",
        serde_json::to_vec(&newer).unwrap(),
    );
    assert_eq!(code, 201, "{st}");
    // Each group sees both, in its own shape.
    let (_, v1) = s.raw(
        "GET",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        "application/json",
        vec![],
    );
    let notes: Vec<&str> = v1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["note"].as_str().unwrap())
        .collect();
    assert_eq!(
        notes,
        [
            "Successfully assigned default/web to n1",
            "Pulling image \"nginx\""
        ]
    );
    assert_eq!(v1["items"][0]["regarding"]["name"], "web");
    let core_list = s.json(&["get", "events"]);
    assert_eq!(core_list["items"][1]["message"], "Pulling image \"nginx\"");
    assert_eq!(core_list["items"][1]["involvedObject"]["name"], "web");
    let rows = table(&s.ok(&["get", "events"]));
    assert_eq!(
        rows[0],
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert_eq!(
        rows[1][1..],
        [
            "Normal",
            "Scheduled",
            "pod/web",
            "Successfully assigned default/web to n1"
        ]
    );
    let d = s.ok(&["describe", "pod", "web"]);
    for want in [
        "Name:             web",
        "Namespace:        default",
        "Status:           Pending",
        "    Image:        nginx",
        // Aligned with the ServiceAccount volume's fields, as on any cluster.
        "QoS Class:                   BestEffort",
        "    Type:                    Projected (a volume that contains injected data from multiple sources)",
        "Scheduled",
        "Successfully assigned default/web to n1",
        "Pulling image \"nginx\"",
    ] {
        assert!(d.contains(want), "{want:?} not in\n{d}");
    }
    assert_eq!(
        s.ok(&[
            "get",
            "pods",
            "-o",
            "go-template",
            "--template",
            "{{range .items}}{{.metadata.name}}:{{.status.phase}} {{end}}"
        ]),
        "web:Pending "
    );
    let y = s.ok(&["get", "pod", "web", "-o", "yaml"]);
    assert!(y.starts_with("apiVersion: v1\nkind: Pod\n"), "{y}");
    s.ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    let rows = table(&s.ok(&["get", "svc", "np"]));
    assert!(
        rows[1][4].starts_with("80:3") && rows[1][4].ends_with("/TCP"),
        "{rows:?}"
    );
    let (_, leases) = s.raw("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", "application/json",
        serde_json::to_vec(&json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})).unwrap());
    assert_eq!(leases["spec"]["holderIdentity"], "n1");
    assert_eq!(
        table(&s.ok(&["get", "leases", "-n", "kube-node-lease"]))[1][0..2],
        ["n1", "n1"]
    );
}

const EVERY_KIND: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: sts}
spec:
  serviceName: sts
  replicas: 2
  selector: {matchLabels: {app: sts}}
  template:
    metadata: {labels: {app: sts}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  replicas: 2
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: job}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: cj}
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: OnFailure, containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ep}
subsets: [{addresses: [{ip: 10.244.0.5}], ports: [{port: 80}]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: eps, labels: {kubernetes.io/service-name: ep}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5]}]
ports: [{port: 80}]
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: hunter2}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {node-role.kubernetes.io/control-plane: ""}}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: lease}
spec: {holderIdentity: me}
"#;

/// Every kind from YAML: create, apply twice, its table header, delete -f.
#[test]
fn every_kind_round_trips_from_yaml_with_its_columns() {
    let s = Server::start(API_ONLY);
    let out = s.ok_with(KUBECTL, &["create", "-f", "-"], Some(EVERY_KIND));
    assert_eq!(out.lines().count(), 11, "{out}");
    let out = s.ok_with(KUBECTL, &["apply", "-f", "-"], Some(EVERY_KIND));
    assert!(out.lines().all(|l| l.ends_with(" configured")), "{out}");
    // (A Secret's stringData never shows in the live object, so kubectl patches it again at
    // every apply, as on any cluster.)
    let out = s.ok_with(KUBECTL, &["apply", "-f", "-"], Some(EVERY_KIND));
    assert!(
        out.lines()
            .all(|l| l.ends_with(" unchanged") || l == "secret/sec configured"),
        "{out}"
    );
    for (kind, header, first) in [
        (
            "daemonsets",
            &[
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE",
            ][..],
            &["ds", "0", "0", "0", "0", "0", "<none>"][..],
        ),
        ("statefulsets", &["NAME", "READY", "AGE"], &["sts", "0/2"]),
        (
            "replicasets",
            &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            &["rs", "2", "0", "0"],
        ),
        (
            "jobs",
            &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            &["job", "Running", "0/1"],
        ),
        (
            "cronjobs",
            &[
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
            ],
            &["cj", "*/5 * * * *", "<none>", "False", "0", "<none>"],
        ),
        (
            "endpoints",
            &["NAME", "ENDPOINTS", "AGE"],
            &["ep", "10.244.0.5:80"],
        ),
        (
            "endpointslices",
            &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            &["eps", "IPv4", "80", "10.244.0.5"],
        ),
        (
            "secrets",
            &["NAME", "TYPE", "DATA", "AGE"],
            &["sec", "Opaque", "1"],
        ),
        (
            "nodes",
            &["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            &["n1", "Unknown", "control-plane"],
        ),
        ("leases", &["NAME", "HOLDER", "AGE"], &["lease", "me"]),
    ] {
        let rows = table(&s.ok(&["get", kind]));
        assert_eq!(rows[0], header, "{kind}");
        assert_eq!(rows[1][..first.len()], *first, "{kind}: {rows:?}");
    }
    // A Secret's stringData is stored as data.
    assert_eq!(
        s.json(&["get", "secret", "sec"])["data"]["password"],
        "aHVudGVyMg=="
    );
    let out = s.ok_with(KUBECTL, &["delete", "-f", "-"], Some(EVERY_KIND));
    assert_eq!(out.lines().count(), 11, "{out}");
    assert!(s
        .ok(&["get", "ds,sts,rs,jobs,cj,secrets,leases", "-o", "name"])
        .is_empty());
}
