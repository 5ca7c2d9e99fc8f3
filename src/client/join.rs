//! Joining a cluster with a bootstrap token (`knode agent --server URL --token T`), as
//! kubeadm's token discovery does: read the public ConfigMap `kube-public/cluster-info`
//! anonymously over TLS that is not verified yet, check its `jws-kubeconfig-<token id>`
//! signature with the token's secret (so a server that does not know the token cannot pass
//! its own CA), and from its CA and the token make the agent's kubeconfig.

use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the token {0:?} is not a bootstrap token (<6 of [a-z0-9]>.<16 of [a-z0-9]>, as `knode token` prints it)")]
    Token(String),
    #[error("the server URL {0:?} must be https://host:port")]
    Url(String),
    #[error("reading cluster-info from {url}: {why}")]
    Fetch { url: String, why: String },
    #[error("the server {url} has no cluster-info signature for this token (is it the right server, and the token not revoked?)")]
    Unsigned { url: String },
    #[error("the cluster-info of {url} is not signed by this token: refusing its CA")]
    BadSignature { url: String },
    #[error("the cluster-info of {url} has no usable CA: {why}")]
    Ca { url: String, why: String },
}

/// The agent's kubeconfig (YAML) for `server` with `token`, its CA from the signed
/// cluster-info.
pub async fn kubeconfig(server: &str, token: &str) -> Result<String, JoinError> {
    let (id, secret) =
        crate::api::jws::token_parts(token).ok_or_else(|| JoinError::Token(token.to_string()))?;
    let url: hyper::Uri = server
        .parse()
        .ok()
        .filter(|u: &hyper::Uri| u.scheme_str() == Some("https") && u.host().is_some())
        .ok_or_else(|| JoinError::Url(server.to_string()))?;
    let base = server.trim_end_matches('/').to_string();
    let fetch = |why: String| JoinError::Fetch {
        url: base.clone(),
        why,
    };
    // First contact: anonymous, and the server's certificate cannot be checked yet (the CA is
    // what is being fetched); the signature below is what makes it trustworthy.
    let mut cfg = kube::Config::new(url);
    cfg.accept_invalid_certs = true;
    cfg.connect_timeout = Some(std::time::Duration::from_secs(10));
    cfg.read_timeout = Some(std::time::Duration::from_secs(10));
    let client = kube::Client::try_from(cfg).map_err(|e| fetch(e.to_string()))?;
    let api = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, "kube-public");
    let cm = api
        .get("cluster-info")
        .await
        .map_err(|e| fetch(e.to_string()))?;
    let data = cm.data.unwrap_or_default();
    let content = data.get("kubeconfig").ok_or_else(|| JoinError::Ca {
        url: base.clone(),
        why: "no kubeconfig in it".into(),
    })?;
    let jws = data
        .get(&format!("jws-kubeconfig-{id}"))
        .ok_or_else(|| JoinError::Unsigned { url: base.clone() })?;
    if !crate::api::jws::verify(content, jws, id, secret) {
        return Err(JoinError::BadSignature { url: base.clone() });
    }
    let kc: kube::config::Kubeconfig =
        serde_yaml::from_str(content).map_err(|e| JoinError::Ca {
            url: base.clone(),
            why: e.to_string(),
        })?;
    let ca = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .ok_or_else(|| JoinError::Ca {
            url: base.clone(),
            why: "no certificate-authority-data".into(),
        })?;
    base64::engine::general_purpose::STANDARD
        .decode(&ca)
        .map_err(|e| JoinError::Ca {
            url: base.clone(),
            why: e.to_string(),
        })?;
    let quoted = serde_json::to_string(&base).unwrap_or_default();
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: knode\n  cluster:\n    server: {quoted}\n    certificate-authority-data: {ca}\nusers:\n- name: node\n  user:\n    token: {token}\ncontexts:\n- name: knode\n  context:\n    cluster: knode\n    user: node\ncurrent-context: knode\n"
    ))
}
