//! The Kubernetes API server (`knode server`; issue 15, in progress).
//!
//! Built so far: the store ([`crate::store`], embedded or etcd), the cluster PKI and the admin
//! kubeconfig ([`pki`]), HTTPS with HTTP/2 (rustls, ALPN `h2`), authentication by client
//! certificate (CN = user, O = groups) or the static admin bearer token, `/version`,
//! `/healthz`, `/livez` and `/readyz` (open to anonymous requests, as in Kubernetes), and the
//! API server's `Status` for every other path (401 for anonymous requests, 404 until the
//! resources exist).

#![forbid(unsafe_code)]

pub mod alloc;
pub mod auth;
pub mod bootstrap;
pub mod discovery;
pub mod fieldmanager;
pub mod handlers;
pub mod metrics;
pub mod namespaces;
pub mod nodeproxy;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod printers;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod resourcemetrics;
pub mod resources;
pub mod schema;
pub mod status;
pub mod strategy;
pub mod tokens;
pub mod watch;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::store::Store;

/// The Kubernetes version served (k8s-openapi's newest; `kubectl version` shows it).
pub const KUBE_VERSION: (&str, &str) = ("1", "37");

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("creating the cluster's first objects: {0}")]
    Bootstrap(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Peer(Option<User>);

struct Shared {
    store: Arc<dyn Store>,
    token: String,
    api: Arc<handlers::Api>,
    /// host:port clients reach this server at (`/api`'s serverAddressByClientCIDRs).
    address: String,
    /// TLS toward node agents' kubelet API (logs, exec).
    kubelet_tls: Arc<rustls::ClientConfig>,
}

/// A `Status` as the API server writes it.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// The user a bearer token or a client certificate names (none: anonymous, or a token that
/// names no one).
async fn authenticate(shared: &Shared, peer: &Peer, headers: &HeaderMap) -> Option<User> {
    if let Some(t) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        // Compared in constant time.
        let (a, b) = (t.trim().as_bytes(), shared.token.as_bytes());
        let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0;
        if same {
            return Some(User {
                name: "kubernetes-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
            });
        }
        let t = t.trim();
        if tokens::jwt_shape(t) {
            return tokens::user(&shared.api.tokens, &shared.api.reg, t).await;
        }
        return auth::bootstrap_user(&shared.api.reg, t).await;
    }
    peer.0.clone()
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "major": KUBE_VERSION.0,
        "minor": KUBE_VERSION.1,
        "gitVersion": format!("v{}.{}.0+knode-{}", KUBE_VERSION.0, KUBE_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    }))
}

async fn ok() -> &'static str {
    "ok"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.store.revision().await {
        Ok(_) => "ok".into_response(),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("the store is not ready: {e}"),
        ),
    }
}

async fn fallback(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    req: axum::extract::Request,
) -> Response {
    let user = match authenticate(&shared, &peer, req.headers()).await {
        Some(u) => u,
        // kubeadm's one public object, which a joining node reads before it trusts the CA.
        None if req.method() == axum::http::Method::GET
            && req.uri().path() == "/api/v1/namespaces/kube-public/configmaps/cluster-info"
            && !req
                .headers()
                .contains_key(axum::http::header::AUTHORIZATION) =>
        {
            User {
                name: auth::ANONYMOUS.into(),
                groups: vec![auth::UNAUTHENTICATED.into()],
            }
        }
        None => return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"),
    };
    // Logs and exec go to the pod's node agent, with the request whole (an exec upgrades).
    let streamed = {
        let segs: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["api", "v1", "namespaces", _, "pods", _, "log" | "exec" | "attach" | "portforward"]
            | ["api", "v1", "namespaces", _, "pods" | "services", _, "proxy", ..]
            | ["api", "v1", "nodes", _, "proxy", ..] => Some(request::parse("", "v1", &segs[2..])),
            _ => None,
        }
    };
    if let Some(t) = streamed {
        let q = request::Query::parse(req.uri().query());
        let t = match t {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        if let Err(e) = handlers::authorize(&shared.api.reg, &user, &t, req.method(), &q).await {
            return e.into_response();
        }
        if t.sub.as_deref() == Some("proxy") {
            if t.resource.plural == "nodes" {
                return nodeproxy::node_proxy(&shared.api, shared.kubelet_tls.clone(), &t, req)
                    .await;
            }
            return nodeproxy::proxy(&shared.api, &t, req).await;
        }
        return nodeproxy::serve(&shared.api, shared.kubelet_tls.clone(), &t, &q, req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, handlers::MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return status::ApiError::too_large(handlers::MAX_BODY).into_response(),
    };
    let path = parts.uri.path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let accept = parts
        .headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let json = |v: serde_json::Value| {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&v).unwrap_or_default(),
        )
            .into_response()
    };
    let discovery_doc = |core: bool| match discovery::wants_aggregated(&accept) {
        Some(v) => (
            [(
                axum::http::header::CONTENT_TYPE,
                discovery::aggregated_content_type(v),
            )],
            serde_json::to_vec(&discovery::aggregated(core, v)).unwrap_or_default(),
        )
            .into_response(),
        None if core => json(discovery::api_versions(&shared.address)),
        None => json(discovery::api_group_list()),
    };
    let not_found = || {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let query = request::Query::parse(parts.uri.query());
    let resource = |group: &str, version: &str, rest: &[&str]| {
        request::parse(group, version, rest).map(|t| (t, query.clone()))
    };
    let target = match segs.as_slice() {
        ["api"] => return discovery_doc(true),
        ["apis"] => return discovery_doc(false),
        ["api", "v1"] => return discovery::resource_list("", "v1").map_or_else(not_found, json),
        ["apis", g] => return discovery::api_group(g).map_or_else(not_found, json),
        ["apis", g, v] => return discovery::resource_list(g, v).map_or_else(not_found, json),
        ["metrics"] if !user.groups.iter().any(|g| g == auth::MASTERS) => {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "forbidden: User \"{}\" cannot get path \"/metrics\"",
                    user.name
                ),
            );
        }
        ["metrics"] => {
            return (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                shared.api.metrics.render(),
            )
                .into_response()
        }
        ["openapi", "v3"] => {
            return (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                openapi::index(),
            )
                .into_response()
        }
        ["openapi", "v3", rest @ ..] => {
            return match openapi::group_version(&rest.join("/")) {
                Some(doc) => (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc,
                )
                    .into_response(),
                None => not_found(),
            }
        }
        ["openapi", "v2"] => {
            return (
                [(axum::http::header::CONTENT_TYPE, openapi::V2_PROTOBUF)],
                openapi::v2(),
            )
                .into_response()
        }
        ["api", "v1", rest @ ..] => resource("", "v1", rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => return not_found(),
    };
    match target {
        Ok((t, q)) => {
            if let Err(e) = handlers::authorize(&shared.api.reg, &user, &t, &parts.method, &q).await
            {
                return e.into_response();
            }
            if t.resource.group == "metrics.k8s.io" {
                return resourcemetrics::serve(
                    &shared.api,
                    shared.kubelet_tls.clone(),
                    &t,
                    &q,
                    &parts.method,
                )
                .await;
            }
            handlers::serve(
                shared.api.clone(),
                t,
                parts.method,
                q,
                parts.headers,
                body,
                user,
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

/// The user a verified client certificate names: CN, and O as groups.
fn cert_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

fn tls_config(p: &pki::Pki) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut p.ca_cert.as_bytes()) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let certs = rustls_pemfile::certs(&mut p.serving_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut p.serving_key.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| ServerError::Tls("no serving key".into()))?;
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// Compacts the store's history every `every`, to the revision seen one interval before
/// (as kube-apiserver does), so that watches can resume across a short disconnection while
/// the files stay bounded.
async fn compactor(store: Arc<dyn Store>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let (mut last, mut done): (Option<i64>, i64) = (None, 0);
    loop {
        tick.tick().await;
        if let Some(rev) = last.filter(|r| *r > done) {
            match store.compact(rev).await {
                Ok(()) => {
                    done = rev;
                    tracing::debug!(revision = rev, "compacted the store")
                }
                Err(e) => tracing::warn!(error = %e, "compacting the store"),
            }
        }
        last = store.revision().await.ok();
    }
}

/// Runs the API server until the process ends.
pub async fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    serve(cfg, None).await
}

/// Runs the API server; `ready` hears once it listens (its admin kubeconfig is written).
pub async fn serve(
    cfg: ServerConfig,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), ServerError> {
    let dir = cfg.root.join("server");
    // The state is root's only: it holds the CA key, the admin token and every Secret.
    for d in [&cfg.root, &dir] {
        std::fs::create_dir_all(d).map_err(|source| pki::PkiError::Io {
            what: "creating",
            path: d.to_path_buf(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
            pki::PkiError::Io {
                what: "securing",
                path: d.to_path_buf(),
                source,
            }
        })?;
    }
    let store: Arc<dyn Store> = if cfg.datastore.is_empty() {
        let s = crate::store::embedded::Embedded::open(&dir.join("store"))?;
        s.spawn_lease_reaper(std::time::Duration::from_millis(500));
        Arc::new(s)
    } else {
        Arc::new(crate::store::etcd::Etcd::connect(&cfg.datastore).await?)
    };
    // A store that does not answer is an error at start, not a server that is never ready.
    store.revision().await?;
    let pki = pki::ensure(&dir.join("tls"), &cfg.addresses, IpAddr::V4(cfg.service_ip))?;
    let host = match cfg.listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let kubeconfig = pki::admin_kubeconfig(&pki, &format!("https://{host}:{}", cfg.listen.port()));
    pki::write_kubeconfig(&dir.join("admin.kubeconfig"), &kubeconfig)?;
    if let Some(p) = &cfg.write_kubeconfig {
        pki::write_kubeconfig(p, &kubeconfig)?;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&pki)?));
    let metrics = Arc::new(metrics::Metrics::default());
    let metered: Arc<dyn Store> = Arc::new(metrics::Metered {
        inner: store.clone(),
        metrics: metrics.clone(),
    });
    let api = Arc::new(handlers::Api {
        reg: registry::Registry { store: metered },
        metrics,
        service_cidr: cfg.service_cidr,
        terminating: Default::default(),
        tokens: Arc::new(tokens::Signer::load_or_create(&dir.join("tls"))?),
    });
    bootstrap::ensure(&api, &cfg).await?;
    let _ = api.terminating.set(namespaces::start(api.clone()));
    if !cfg.compaction_interval.is_zero() {
        tokio::spawn(compactor(store.clone(), cfg.compaction_interval));
    }
    let shared = Arc::new(Shared {
        store,
        token: pki.token.clone(),
        api,
        address: format!("{host}:{}", cfg.listen.port()),
        kubelet_tls: Arc::new(
            nodeproxy::client_config(&pki.kubelet_client_cert, &pki.kubelet_client_key)
                .map_err(|e| ServerError::Tls(format!("the kubelet client: {e}")))?,
        ),
    });
    let app = Router::new()
        .route("/version", get(version))
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(readyz))
        .fallback(fallback)
        .with_state(shared);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(listen = %cfg.listen, "API server ready");
    if let Some(r) = ready {
        let _ = r.send(());
    }
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait a little, never stop serving.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(peer = %peer_addr, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| cert_user(c));
            let svc =
                hyper_util::service::TowerToHyperService::new(app.layer(Extension(Peer(user))));
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}
