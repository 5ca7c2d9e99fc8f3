//! The kubelet API the API server calls (port 10250 by default, HTTPS): container logs
//! (`GET /containerLogs/<ns>/<pod>/<container>` with follow, previous, tailLines, sinceSeconds,
//! timestamps and limitBytes), exec and attach (`/exec/<ns>/<pod>/<container>?command=...&
//! input=1&output=1&error=1&tty=1`, `/attach/...`: in [`super::remote`]) and port forwarding
//! (`/portForward/<ns>/<pod>`: in [`super::portforward`]), as the kubelet serves them.
//!
//! Only the API server may call it: the TLS handshake requires a client certificate signed by
//! the cluster's CA (from the agent's kubeconfig), and its common name must be the API
//! server's kubelet client ([`crate::api::KUBELET_CLIENT`]). The serving certificate is made
//! at each start and signed by nobody: like kube-apiserver without
//! `--kubelet-certificate-authority`, the API server does not verify it.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::pod::CState;
use super::NodeState;
use crate::node::error::NodeError;

pub(super) type Body = BoxBody<Bytes, Infallible>;

/// The kubelet's default port.
pub const DEFAULT_PORT: u16 = 10250;

pub(super) fn full(status: StatusCode, ct: &str, text: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(text.into()).boxed())
        .expect("a valid response")
}

pub(super) fn text(status: StatusCode, t: String) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", t)
}

/// The TLS configuration: a fresh self-signed serving certificate for the node's names, and
/// client certificates required, signed by `ca_pem`.
fn tls(node: &str, ca_pem: &[u8]) -> Result<rustls::ServerConfig, NodeError> {
    let bad = |e: &dyn std::fmt::Display| NodeError::failed(format!("kubelet TLS: {e}"));
    let mut names = vec![node.to_string(), "localhost".to_string()];
    if let Some(ip) = super::node::internal_ip() {
        names.push(ip);
    }
    names.push("127.0.0.1".into());
    let key = rcgen::KeyPair::generate().map_err(|e| bad(&e))?;
    let cert = rcgen::CertificateParams::new(names)
        .map_err(|e| bad(&e))?
        .self_signed(&key)
        .map_err(|e| bad(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(&e))?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| bad(&e))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// The common name of a certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// Starts the kubelet API on `port` (0: any free port) on the process's runtime; returns the
/// port it listens on.
pub fn serve(
    port: u16,
    node: &str,
    ca_pem: &[u8],
    state: Arc<RwLock<NodeState>>,
) -> Result<u16, NodeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls(node, ca_pem)?));
    let rt = crate::node::rt::handle()?;
    let listener = {
        let _g = rt.enter();
        let std = std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
            NodeError::failed(format!("the kubelet API cannot listen on port {port}: {e}"))
        })?;
        std.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(std)?
    };
    let bound = listener.local_addr()?.port();
    rt.spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a kubelet API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| common_name(c));
                if cn.as_deref() != Some(crate::api::KUBELET_CLIENT) {
                    tracing::warn!(client = ?cn, "kubelet API: a client other than the API server");
                    return;
                }
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(bound)
}

pub(super) fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    url_pairs(req.uri().query().unwrap_or(""))
}

/// `a=1&b=%20x` as pairs, percent-decoded.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (super::api::percent_decode(k), super::api::percent_decode(v))
        })
        .collect()
}

pub(super) fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

pub(super) fn flag(q: &[(String, String)], k: &str) -> bool {
    matches!(param(q, k), Some("1") | Some("true"))
}

async fn handle(
    state: Arc<RwLock<NodeState>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(super::api::percent_decode)
        .collect();
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    Ok(match p.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok".into()),
        ["stats", "summary"] => {
            let st = state.read().expect("state");
            let views: Vec<super::pod::PodView> = st
                .pods
                .values()
                .map(|v| v.lock().expect("view").clone())
                .collect();
            let body = super::node::summary(&st.node, &views);
            full(StatusCode::OK, "application/json", body.to_string())
        }
        ["containerLogs", ns, pod, container] => logs(&state, ns, pod, container, &query(&req)),
        ["portForward", ns, pod] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            super::portforward::handle(state, req, ns, pod).await
        }
        [sub @ ("exec" | "attach"), ns, pod, container] => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            super::remote::handle(sub == &"attach", state, req, ns, pod, container).await
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route for {}", req.uri().path()),
        ),
    })
}

/// A container's log file and whether it is being written, or the kubelet's error for it.
fn log_file(
    state: &RwLock<NodeState>,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<(PathBuf, bool), (StatusCode, String)> {
    let st = state.read().expect("state");
    let (v, c) = super::api::find_container(&st, ns, pod, container)
        .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    let running = matches!(c.state, CState::Running { .. });
    let n = if previous {
        c.restart_count.checked_sub(1)
    } else {
        Some(c.restart_count)
    };
    let dir = super::api::container_log_dir(&st, &v, container);
    match n
        .map(|n| dir.join(format!("{n}.log")))
        .filter(|p| p.exists())
    {
        Some(f) => Ok((f, running && !previous)),
        None if previous => Err((
            StatusCode::BAD_REQUEST,
            format!("previous terminated container {container:?} in pod {pod:?} not found"),
        )),
        None => {
            let reason = match &c.state {
                CState::Waiting { reason, .. } => reason.to_string(),
                _ => "ContainerCreating".into(),
            };
            Err((
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod:?} is waiting to start: {reason}"),
            ))
        }
    }
}

/// What a logs request asks for.
struct LogOptions {
    timestamps: bool,
    since: Option<chrono::DateTime<chrono::Utc>>,
    tail: Option<usize>,
    limit: Option<usize>,
}

impl LogOptions {
    fn from(q: &[(String, String)]) -> LogOptions {
        let since = param(q, "sinceSeconds")
            .and_then(|s| s.parse::<i64>().ok())
            .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
            .or_else(|| {
                param(q, "sinceTime")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
            });
        LogOptions {
            timestamps: flag(q, "timestamps"),
            since,
            tail: param(q, "tailLines").and_then(|t| t.parse().ok()),
            limit: param(q, "limitBytes").and_then(|t| t.parse().ok()),
        }
    }

    /// A record as the client gets it, or nothing when it is older than asked.
    fn render(&self, r: &crate::node::logs::Record) -> Option<String> {
        if let Some(since) = self.since {
            let t = chrono::DateTime::parse_from_rfc3339(&r.time).ok()?;
            if t < since {
                return None;
            }
        }
        let mut s = String::new();
        if self.timestamps {
            s.push_str(&r.time);
            s.push(' ');
        }
        s.push_str(&r.msg);
        if !r.partial {
            s.push('\n');
        }
        Some(s)
    }
}

fn logs(
    state: &Arc<RwLock<NodeState>>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &[(String, String)],
) -> Response<Body> {
    let previous = flag(q, "previous");
    let (file, running) = match log_file(state, ns, pod, container, previous) {
        Ok(f) => f,
        Err((code, msg)) => return text(code, msg),
    };
    let o = LogOptions::from(q);
    let records = match crate::node::logs::records(&file) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut lines: Vec<String> = records.iter().filter_map(|r| o.render(r)).collect();
    if let Some(t) = o.tail {
        let skip = lines.len().saturating_sub(t);
        lines.drain(..skip);
    }
    let mut head: String = lines.concat();
    if let Some(l) = o.limit {
        if head.len() > l {
            let mut cut = l;
            while !head.is_char_boundary(cut) {
                cut -= 1;
            }
            head.truncate(cut);
            return text(StatusCode::OK, head);
        }
    }
    if !flag(q, "follow") || !running {
        return text(StatusCode::OK, head);
    }
    // Follow: what is there, then what the container writes, until it stops.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (state, ns, pod, container) = (
        state.clone(),
        ns.to_string(),
        pod.to_string(),
        container.to_string(),
    );
    let pos = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tokio::spawn(async move {
        if tx.send(Bytes::from(head)).await.is_err() {
            return;
        }
        follow(&state, &ns, &pod, &container, file, pos, o, tx).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

/// Sends what is appended to `file` from `pos` on, until the container is no longer running
/// this attempt or the client goes away.
#[allow(clippy::too_many_arguments)]
async fn follow(
    state: &RwLock<NodeState>,
    ns: &str,
    pod: &str,
    container: &str,
    file: PathBuf,
    mut pos: u64,
    o: LogOptions,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut partial = Vec::new();
    loop {
        let still =
            matches!(log_file(state, ns, pod, container, false), Ok((f, true)) if f == file);
        if let Ok(mut f) = tokio::fs::File::open(&file).await {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0; // rotated
            }
            if len > pos {
                let _ = tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(pos)).await;
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).await.is_ok() {
                    pos += buf.len() as u64;
                    partial.extend_from_slice(&buf);
                    let mut out = String::new();
                    while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=i).collect();
                        let line = String::from_utf8_lossy(&line);
                        if let Some(r) = crate::node::logs::parse_line(line.trim_end_matches('\n'))
                        {
                            if let Some(s) = o.render(&r) {
                                out.push_str(&s);
                            }
                        }
                    }
                    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !still || tx.is_closed() {
            return;
        }
        // The kubelet watches the file; a short poll is as prompt for a human reader.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The WebSocket a request is upgraded to, once the client has the 101 (none, logged, if
/// the upgrade fails).
pub(super) async fn websocket(
    mut req: Request<Incoming>,
    what: &str,
) -> Option<tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>> {
    match hyper::upgrade::on(&mut req).await {
        Ok(u) => Some(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(u),
                Role::Server,
                None,
            )
            .await,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "{what}: the upgrade failed");
            None
        }
    }
}

/// The 101 that accepts a SPDY/3.1 upgrade with `protocol`.
pub(super) fn spdy_accepted(protocol: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(Full::new(Bytes::new()).boxed())
        .expect("a valid response")
}

/// The 101 that accepts a WebSocket upgrade (`key`: its Sec-WebSocket-Key) with `protocol`.
pub(super) fn websocket_accepted(key: &[u8], protocol: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
        )
        .header("sec-websocket-protocol", protocol)
        .body(Full::new(Bytes::new()).boxed())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_stamp_and_cut_records() {
        let q = url_pairs("timestamps=true&sinceTime=2026-01-01T00%3A00%3A01Z&tailLines=2");
        let o = LogOptions::from(&q);
        assert_eq!(o.tail, Some(2));
        let rec = |t: &str, partial: bool| crate::node::logs::Record {
            time: t.into(),
            stream: "stdout".into(),
            partial,
            msg: "hi".into(),
        };
        assert_eq!(o.render(&rec("2026-01-01T00:00:00Z", false)), None);
        assert_eq!(
            o.render(&rec("2026-01-01T00:00:02Z", false)).as_deref(),
            Some("2026-01-01T00:00:02Z hi\n")
        );
        let plain = LogOptions::from(&[]);
        assert_eq!(plain.render(&rec("x", true)).as_deref(), Some("hi"));
    }

    #[test]
    fn query_values_are_decoded_and_flags_read_as_the_kubelet_reads_them() {
        let q = url_pairs("command=echo&command=a%20b&input=1&tty=true&output=0");
        let cmds: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cmds, ["echo", "a b"]);
        assert!(flag(&q, "input") && flag(&q, "tty"));
        assert!(!flag(&q, "output") && !flag(&q, "error"));
    }
}
