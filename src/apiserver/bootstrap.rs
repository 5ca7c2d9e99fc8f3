//! What a new cluster has before anyone writes to it: the namespaces `default`,
//! `kube-system`, `kube-public` and `kube-node-lease`, their `default` ServiceAccounts, the
//! ClusterRoles `cluster-admin`, `admin`, `edit` and `view` (and `system:masters` bound to the
//! first), the `kubernetes` Service (the first address of the service CIDR, port 443) with the
//! endpoints of this server, `kube-system/kube-dns` (the tenth address; the nodes serve it),
//! and the node join token (`<root>/server/node-token`) with its bootstrap token Secret.
//! Created at every start when missing; never overwritten.

use serde_json::{json, Value};

use super::handlers::Api;
use super::request::{Query, Target};
use super::resources;
use super::ServerError;
use super::User;
use crate::config::ServerConfig;

pub const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn ensure_one(
    api: &Api,
    plural: &str,
    group: &str,
    ns: Option<&str>,
    obj: Value,
) -> Result<(), ServerError> {
    let r = resources::find(group, "v1", plural).expect("a served resource");
    let t = Target {
        resource: r,
        namespace: ns.map(str::to_string),
        name: None,
        sub: None,
        rest: String::new(),
        watch_prefix: false,
    };
    let user = system();
    let mut q = Query::default();
    q.0.insert("fieldManager".into(), "knode-server".into());
    match api.create(&t, &q, obj, &user, &mut Vec::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(ServerError::Bootstrap(format!("{plural}: {e}"))),
    }
}

/// Creates what is missing.
pub async fn ensure(api: &Api, cfg: &ServerConfig) -> Result<(), ServerError> {
    for ns in NAMESPACES {
        ensure_one(
            api,
            "namespaces",
            "",
            None,
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    for ns in NAMESPACES {
        ensure_one(
            api,
            "serviceaccounts",
            "",
            Some(ns),
            json!({"metadata": {"name": "default"}}),
        )
        .await?;
    }
    for (plural, obj) in super::rbac::bootstrap() {
        ensure_one(api, plural, super::rbac::GROUP, None, obj).await?;
    }
    let port = cfg.listen.port();
    ensure_one(
        api,
        "services",
        "",
        Some("default"),
        json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"type": "ClusterIP", "clusterIP": cfg.service_ip.to_string(), "sessionAffinity": "None",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}}),
    )
    .await?;
    let ip = cfg
        .addresses
        .iter()
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .map(|a| a.to_string())
        .unwrap_or_else(|| match cfg.listen.ip() {
            a if a.is_unspecified() => "127.0.0.1".into(),
            a => a.to_string(),
        });
    // A server listening only on loopback has no address a pod could reach: its endpoints
    // stay empty (an endpoint may not be a loopback address, as upstream validates).
    let reachable = crate::api::validation::endpoint_ip("", &ip).is_none();
    let subsets = if reachable {
        json!([{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
    } else {
        json!([])
    };
    let endpoints = if reachable {
        json!([{"addresses": [ip], "conditions": {"ready": true}}])
    } else {
        json!([])
    };
    ensure_one(
        api,
        "endpoints",
        "",
        Some("default"),
        json!({"metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
               "subsets": subsets}),
    )
    .await?;
    ensure_one(
        api,
        "endpointslices",
        "discovery.k8s.io",
        Some("default"),
        json!({"metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
               "addressType": "IPv4",
               "endpoints": endpoints,
               "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
    )
    .await?;
    // The cluster DNS Service (each node that serves cluster DNS holds its address itself,
    // so it has no selector and no endpoints). An address already taken by a Service made
    // before is left to it.
    let dns_ip = std::net::Ipv4Addr::from(u32::from(cfg.service_cidr.network()) + 10);
    let dns = json!({"metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
           "spec": {"type": "ClusterIP", "clusterIP": dns_ip.to_string(), "sessionAffinity": "None",
                    "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                              {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                              {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}});
    if let Err(e) = ensure_one(api, "services", "", Some("kube-system"), dns).await {
        tracing::warn!(error = %e, "no kube-dns Service");
    }
    // The default StorageClass: directories on the node a pod lands on, as k3s's local-path
    // provisioner makes them (a class deleted or changed by the user is left so).
    let sc = json!({"metadata": {"name": crate::api::LOCAL_PATH_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": crate::api::LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"});
    if let Err(e) = ensure_one(api, "storageclasses", "storage.k8s.io", None, sc).await {
        tracing::warn!(error = %e, "no default StorageClass");
    }
    // The node join token, made once (deleting its Secret revokes it for good).
    let dir = cfg.root.join("server");
    if super::auth::node_token(&dir).is_none() {
        let io = |e: std::io::Error| ServerError::Bootstrap(format!("node token: {e}"));
        let token = super::auth::new_token().map_err(io)?;
        let secret = super::auth::token_secret(&token).expect("a token of the right shape");
        ensure_one(api, "secrets", "", Some("kube-system"), secret).await?;
        super::auth::save_node_token(&dir, &token).map_err(io)?;
    }
    if let Some(token) = super::auth::node_token(&dir) {
        cluster_info(
            api,
            cfg,
            &format!("https://{}:{port}", url_host(&ip)),
            &token,
        )
        .await?;
    }
    Ok(())
}

fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// `kube-public/cluster-info`, as kubeadm publishes it: a kubeconfig with the server's
/// address and CA, signed (`jws-kubeconfig-<id>`) by the node join token, so that an agent
/// joining with the token (`knode agent --server --token`) can trust the CA. Anyone may read
/// it (the API server lets anonymous requests get this one object). Rewritten at every start
/// when the address or CA changed.
async fn cluster_info(
    api: &Api,
    cfg: &ServerConfig,
    server: &str,
    token: &str,
) -> Result<(), ServerError> {
    use base64::Engine;
    let ca = std::fs::read(cfg.root.join("server/tls/ca.crt"))
        .map_err(|e| ServerError::Bootstrap(format!("cluster-info: reading the CA: {e}")))?;
    let (id, secret) = super::auth::bootstrap_shape(token).expect("a node token");
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        base64::engine::general_purpose::STANDARD.encode(&ca)
    );
    let mut data = serde_json::Map::new();
    data.insert(
        format!("jws-kubeconfig-{id}"),
        json!(crate::api::jws::sign(&kubeconfig, id, secret)),
    );
    data.insert("kubeconfig".into(), json!(kubeconfig));
    let obj =
        json!({"metadata": {"name": "cluster-info", "namespace": "kube-public"}, "data": data});
    let r = resources::find("", "v1", "configmaps").expect("a served resource");
    match api.reg.get_kv(r, Some("kube-public"), "cluster-info").await {
        Ok(Some((old, _))) if old["data"] == obj["data"] => Ok(()),
        Ok(Some(_)) => {
            let t = Target {
                resource: r,
                namespace: Some("kube-public".into()),
                name: Some("cluster-info".into()),
                sub: None,
                rest: String::new(),
                watch_prefix: false,
            };
            let mut q = Query::default();
            q.0.insert("fieldManager".into(), "knode-server".into());
            api.update(&t, &q, obj, &system(), &mut Vec::new())
                .await
                .map(|_| ())
                .map_err(|e| ServerError::Bootstrap(format!("cluster-info: {e}")))
        }
        _ => ensure_one(api, "configmaps", "", Some("kube-public"), obj).await,
    }
}

fn system() -> User {
    User {
        name: "system:apiserver".into(),
        groups: vec!["system:masters".into()],
    }
}
