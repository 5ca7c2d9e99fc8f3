//! `pods/proxy` and `services/proxy`: an HTTP reverse proxy to the pod's IP (for a service,
//! a ready endpoint's), as kube-apiserver's proxy subresources are (the Kubernetes Basics
//! tutorial's `curl localhost:8001/api/v1/namespaces/default/pods/$POD_NAME:8080/proxy/`).
//!
//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: the API server finds the
//! pod's container and node, and hands the request to the node agent's kubelet API
//! (`/containerLogs/...`, `/exec/...`, `/attach/...`, `/portForward/...`, as kube-apiserver's
//! `LogLocation`, `ExecLocation` and `AttachLocation` build them), streaming the answer back;
//! an upgraded connection (WebSocket `v5.channel.k8s.io`, SPDY/3.1) is spliced through
//! unchanged, as the design in kube-api.md section 7.4 suggests.
//!
//! The API server authenticates with its kubelet client certificate. Like kube-apiserver
//! without `--kubelet-certificate-authority` it does not verify the agent's serving
//! certificate (agents make their own); the agent, in turn, accepts no client but this one.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::request::{Query, Target};
use super::status::{ApiError, ApiResult};

/// The TLS client configuration toward node agents.
pub fn client_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.ok_or("no key")?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs, key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Accepts any server certificate whose signatures are sound (see the module's note).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The container a request names, or the pod's only one; upstream's errors otherwise.
fn container(pod: &Value, q: &Query, name: &str) -> ApiResult<String> {
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (apps, inits) = (names("containers"), names("initContainers"));
    match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if apps.contains(&c.to_string()) || inits.contains(&c.to_string()) => {
            Ok(c.to_string())
        }
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if apps.len() == 1 => Ok(apps[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            );
            if !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The node agent's kubelet API address (`host:port`) from its Node.
fn kubelet_address(node: &Value) -> Option<String> {
    let addrs = node["status"]["addresses"].as_array()?;
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| addrs.iter().find(|a| a["type"] == *t))?["address"]
        .as_str()?
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_i64()
        .filter(|p| *p > 0)?;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The kubelet path and query for the subresource.
fn kubelet_path(sub: &str, ns: &str, pod: &str, c: &str, q: &Query, commands: &[String]) -> String {
    let mut params: Vec<String> = vec![];
    match sub {
        "portforward" => format!("/portForward/{ns}/{pod}"),
        "log" => {
            for k in [
                "follow",
                "previous",
                "sinceSeconds",
                "sinceTime",
                "timestamps",
                "tailLines",
                "limitBytes",
            ] {
                if let Some(v) = q.get(k) {
                    params.push(format!("{k}={}", enc(v)));
                }
            }
            format!("/containerLogs/{ns}/{pod}/{c}?{}", params.join("&"))
        }
        _ => {
            for v in commands {
                params.push(format!("command={}", enc(v)));
            }
            for (from, to) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if q.flag(from).unwrap_or(false) {
                    params.push(format!("{to}=1"));
                }
            }
            format!("/{sub}/{ns}/{pod}/{c}?{}", params.join("&"))
        }
    }
}

/// Serves `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` by way of the pod's
/// node agent.
pub async fn serve(
    api: &super::handlers::Api,
    kubelet_tls: Arc<rustls::ClientConfig>,
    t: &Target,
    q: &Query,
    req: axum::extract::Request,
) -> Response {
    let sub = t.sub.clone().unwrap_or_default();
    let run = async {
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let pod = api.reg.get(t.resource, Some(&ns), &name).await?;
        let c = if sub == "portforward" {
            String::new()
        } else {
            container(&pod, q, &name)?
        };
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node_name.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        let nodes = super::resources::find("", "v1", "nodes").expect("nodes are served");
        let node = api.reg.get(nodes, None, node_name).await?;
        let addr = kubelet_address(&node).ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node_name} has no kubelet endpoint (is its agent running?)"
            ))
        })?;
        // Every `command=` (a HashMap query keeps one).
        let commands: Vec<String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.strip_prefix("command="))
            .map(super::request::decode)
            .collect();
        let path = kubelet_path(&sub, &ns, &name, &c, q, &commands);
        forward(kubelet_tls, node_name, &addr, &path, req).await
    };
    match run.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Serves `nodes/NAME/proxy/PATH` (`kubectl get --raw /api/v1/nodes/NAME/proxy/stats/summary`,
/// `.../proxy/healthz`): a GET of PATH on the node's kubelet API.
pub async fn node_proxy(
    api: &super::handlers::Api,
    kubelet_tls: Arc<rustls::ClientConfig>,
    t: &Target,
    req: axum::extract::Request,
) -> Response {
    let run = async {
        if req.method() != axum::http::Method::GET {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource (only GET of nodes/proxy)"
                    .to_string(),
            ));
        }
        let node_name = t.name.clone().unwrap_or_default();
        let node = api.reg.get(t.resource, None, &node_name).await?;
        let addr = kubelet_address(&node).ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node_name} has no kubelet endpoint (is its agent running?)"
            ))
        })?;
        let prefix = format!("/api/v1/nodes/{node_name}/proxy");
        let rest = req.uri().path().strip_prefix(&prefix).unwrap_or("");
        let mut path = if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        };
        if let Some(q) = req.uri().query() {
            path.push('?');
            path.push_str(q);
        }
        forward(kubelet_tls, &node_name, &addr, &path, req).await
    };
    match run.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A GET of `path` on the kubelet of `node` (a Node object), its JSON answer (10 s at most).
pub async fn kubelet_json(
    kubelet_tls: Arc<rustls::ClientConfig>,
    node: &Value,
    path: &str,
) -> ApiResult<Value> {
    let name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
    let addr = kubelet_address(node).ok_or_else(|| {
        ApiError::unavailable(format!(
            "node {name} has no kubelet endpoint (is its agent running?)"
        ))
    })?;
    let req = axum::extract::Request::builder()
        .uri(path)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let call = async {
        let resp = forward(kubelet_tls, &name, &addr, path, req).await?;
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .map_err(|e| ApiError::unavailable(format!("kubelet of node {name}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::internal(format!("kubelet of node {name}: {e}")))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .map_err(|_| ApiError::unavailable(format!("kubelet of node {name}: no answer in 10 s")))?
}

/// Sends `req` (as a GET, or a POST for SPDY upgrades) for `path` to the kubelet of
/// `node_name` at `addr` over TLS with the API server's client certificate, and relays the
/// answer (or the upgraded stream).
async fn forward(
    kubelet_tls: Arc<rustls::ClientConfig>,
    node_name: &str,
    addr: &str,
    path: &str,
    mut req: axum::extract::Request,
) -> ApiResult<Response> {
    {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            ApiError::unavailable(format!(
                "dialing the kubelet of node {node_name} at {addr}: {e}"
            ))
        })?;
        let server_name = rustls::pki_types::ServerName::try_from(node_name.to_string())
            .unwrap_or_else(|_| {
                rustls::pki_types::ServerName::try_from("kubelet").expect("a name")
            });
        let tls = tokio_rustls::TlsConnector::from(kubelet_tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("TLS to the kubelet of node {node_name}: {e}"))
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| ApiError::unavailable(format!("kubelet of node {node_name}: {e}")))?;
        tokio::spawn(conn.with_upgrades());
        // SPDY upgrades are POSTs (kubectl 1.20, and port-forward's fallback).
        let method = if req.method() == axum::http::Method::POST {
            hyper::Method::POST
        } else {
            hyper::Method::GET
        };
        let mut out = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr);
        for h in [
            "connection",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
            "x-stream-protocol-version",
        ] {
            for v in req.headers().get_all(h) {
                out = out.header(h, v);
            }
        }
        let out = out
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut resp = sender
            .send_request(out)
            .await
            .map_err(|e| ApiError::unavailable(format!("kubelet of node {node_name}: {e}")))?;
        let status = resp.status();
        if status == hyper::StatusCode::SWITCHING_PROTOCOLS {
            let to_node = hyper::upgrade::on(&mut resp);
            let from_client = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let (a, b) = match (from_client.await, to_node.await) {
                    (Ok(a), Ok(b)) => (a, b),
                    (a, b) => {
                        tracing::warn!(client = ?a.err(), node = ?b.err(), "a stream's upgrade failed");
                        return;
                    }
                };
                let mut a = hyper_util::rt::TokioIo::new(a);
                let mut b = hyper_util::rt::TokioIo::new(b);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
            let mut r = axum::http::Response::builder().status(status);
            for (k, v) in resp.headers() {
                r = r.header(k, v);
            }
            return Ok(r.body(axum::body::Body::empty()).expect("a valid response"));
        }
        if !status.is_success() {
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let msg = String::from_utf8_lossy(&body).trim().to_string();
            return Err(match status.as_u16() {
                404 => ApiError::new(404, "NotFound", msg),
                400 => ApiError::bad_request(msg),
                _ => ApiError::internal(msg),
            });
        }
        let ct = resp
            .headers()
            .get("content-type")
            .cloned()
            .unwrap_or_else(|| axum::http::HeaderValue::from_static("text/plain"));
        Ok(axum::http::Response::builder()
            .status(200)
            .header("content-type", ct)
            .body(axum::body::Body::new(resp.into_body()))
            .expect("a valid response"))
    }
}

/// `[scheme:]name[:port]` of a proxy path.
fn proxy_target(id: &str) -> ApiResult<(String, String, String)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [n] => ("", *n, ""),
        [n, p] => ("", *n, *p),
        [s, n, p] => (*s, *n, *p),
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid proxy target {id:?}: expected [scheme:]name[:port]"
            )))
        }
    };
    if !matches!(scheme, "" | "http") {
        return Err(ApiError::bad_request(format!(
            "proxy scheme {scheme:?} is not supported (http only)"
        )));
    }
    Ok(("http".into(), name.to_string(), port.to_string()))
}

/// A pod's `IP:port` for a port given by number, by container port name, or not at all (80).
fn pod_address(pod: &Value, name: &str, port: &str) -> ApiResult<String> {
    let ip = pod["status"]["podIP"]
        .as_str()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::unavailable(format!("pod {name} has no IP address yet")))?;
    let number = if port.is_empty() {
        80
    } else if let Ok(n) = port.parse::<u16>() {
        n
    } else {
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == port)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("no container port named {port:?} in pod {name}"))
            })?
    };
    Ok(format!("{ip}:{number}"))
}

/// A ready endpoint of a service's port (by name or number; none: its only or first port).
fn service_address(svc: &Value, ep: &Value, name: &str, port: &str) -> ApiResult<String> {
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let sp = if port.is_empty() {
        ports.first()
    } else {
        ports.iter().find(|p| {
            p["name"] == port || p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(port)
        })
    }
    .ok_or_else(|| {
        ApiError::unavailable(format!(
            "no service port {port:?} found for service {name:?}"
        ))
    })?;
    let port_name = sp["name"].as_str().unwrap_or("");
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let Some(p) = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or("") == port_name)
        else {
            continue;
        };
        if let Some(a) = subset["addresses"].as_array().and_then(|a| a.first()) {
            return Ok(format!("{}:{}", a["ip"].as_str().unwrap_or(""), p["port"]));
        }
    }
    Err(ApiError::unavailable(format!(
        "no endpoints available for service {name:?}"
    )))
}

/// Serves `pods/proxy` and `services/proxy`.
pub async fn proxy(
    api: &super::handlers::Api,
    t: &Target,
    req: axum::extract::Request,
) -> Response {
    let run = async {
        let ns = t.namespace.clone().unwrap_or_default();
        let (_, name, port) = proxy_target(t.name.as_deref().unwrap_or(""))?;
        let addr = if t.resource.plural == "pods" {
            let pod = api.reg.get(t.resource, Some(&ns), &name).await?;
            pod_address(&pod, &name, &port)?
        } else {
            let svc = api.reg.get(t.resource, Some(&ns), &name).await?;
            let eps = super::resources::find("", "v1", "endpoints").expect("endpoints are served");
            let ep = api
                .reg
                .get(eps, Some(&ns), &name)
                .await
                .unwrap_or(Value::Null);
            service_address(&svc, &ep, &name, &port)?
        };
        // As upstream's `IsProxyableIP`: never to the server's own loopback or link-local
        // neighbours, whatever an Endpoints object or a pod's status says.
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or("");
        if crate::api::validation::endpoint_ip("", host).is_some() {
            return Err(ApiError::bad_request("address not allowed"));
        }
        let mut path = format!("/{}", t.rest);
        if req.uri().path().ends_with('/') && !path.ends_with('/') {
            path.push('/');
        }
        if let Some(q) = req.uri().query() {
            path = format!("{path}?{q}");
        }
        let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| {
            ApiError::unavailable(format!(
                "error trying to reach {} {name}: dial tcp {addr}: {e}",
                t.resource.kind.to_lowercase()
            ))
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| ApiError::unavailable(format!("proxying to {addr}: {e}")))?;
        tokio::spawn(conn);
        let (parts, body) = req.into_parts();
        let mut out = hyper::Request::builder()
            .method(parts.method)
            .uri(&path)
            .header("host", &addr);
        for (k, v) in &parts.headers {
            // Hop-by-hop headers and the caller's credentials stay here.
            if matches!(
                k.as_str(),
                "authorization"
                    | "connection"
                    | "keep-alive"
                    | "proxy-connection"
                    | "te"
                    | "trailer"
                    | "transfer-encoding"
                    | "upgrade"
                    | "host"
            ) {
                continue;
            }
            out = out.header(k, v);
        }
        let out = out
            .body(body)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = sender
            .send_request(out)
            .await
            .map_err(|e| ApiError::unavailable(format!("proxying to {addr}: {e}")))?;
        let (parts, body) = resp.into_parts();
        let mut r = axum::http::Response::builder().status(parts.status);
        for (k, v) in &parts.headers {
            if !matches!(
                k.as_str(),
                "connection" | "keep-alive" | "transfer-encoding"
            ) {
                r = r.header(k, v);
            }
        }
        Ok::<_, ApiError>(
            r.body(axum::body::Body::new(body))
                .expect("a valid response"),
        )
    };
    match run.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let q = |s: &str| Query::parse(Some(s));
        assert_eq!(container(&pod, &q("container=b"), "p").unwrap(), "b");
        assert_eq!(container(&pod, &q("container=i"), "p").unwrap(), "i");
        let e = container(&pod, &q(""), "p").unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        let e = container(&pod, &q("container=x"), "p").unwrap_err();
        assert_eq!(e.message, "container x is not valid for pod p");
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container(&one, &q(""), "p").unwrap(), "a");
    }

    #[test]
    fn the_kubelet_gets_upstreams_parameters() {
        let q = Query::parse(Some("stdin=true&stdout=true&tty=false"));
        let cmd = ["sh".to_string(), "-c".into(), "echo hi".into()];
        assert_eq!(
            kubelet_path("exec", "default", "p", "c", &q, &cmd),
            "/exec/default/p/c?command=sh&command=-c&command=echo%20hi&input=1&output=1"
        );
        let q = Query::parse(Some("follow=true&tailLines=5&container=c"));
        assert_eq!(
            kubelet_path("log", "default", "p", "c", &q, &[]),
            "/containerLogs/default/p/c?follow=true&tailLines=5"
        );
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.4"}],
                                     "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(kubelet_address(&node).as_deref(), Some("10.0.0.4:10250"));
    }

    #[test]
    fn proxy_targets_resolve_to_addresses() {
        assert_eq!(
            proxy_target("web:8080").unwrap(),
            ("http".into(), "web".into(), "8080".into())
        );
        assert!(proxy_target("https:web:443").is_err());
        let pod = json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
                         "status": {"podIP": "10.244.0.5"}});
        assert_eq!(pod_address(&pod, "p", "").unwrap(), "10.244.0.5:80");
        assert_eq!(pod_address(&pod, "p", "9000").unwrap(), "10.244.0.5:9000");
        assert_eq!(pod_address(&pod, "p", "http").unwrap(), "10.244.0.5:8080");
        assert!(pod_address(&pod, "p", "grpc").is_err());
        let svc = json!({"spec": {"ports": [{"name": "web", "port": 80}]}});
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"name": "web", "port": 8080}]}]});
        assert_eq!(
            service_address(&svc, &ep, "s", "").unwrap(),
            "10.244.0.5:8080"
        );
        assert_eq!(
            service_address(&svc, &ep, "s", "web").unwrap(),
            "10.244.0.5:8080"
        );
        assert_eq!(
            service_address(&svc, &ep, "s", "80").unwrap(),
            "10.244.0.5:8080"
        );
        assert!(service_address(&svc, &json!({}), "s", "").is_err());
    }
}
