//! The kubelet API the API server calls (port 10250 by default, HTTPS): container logs
//! (`GET /containerLogs/<ns>/<pod>/<container>` with follow, previous, tailLines, sinceSeconds,
//! timestamps and limitBytes) and exec (`/exec/<ns>/<pod>/<container>?command=...&input=1&
//! output=1&error=1&tty=1`, WebSocket `v5.channel.k8s.io` / `v4.channel.k8s.io`), as the
//! kubelet serves them.
//!
//! Only the API server may call it: the TLS handshake requires a client certificate signed by
//! the cluster's CA (from the agent's kubeconfig), and its common name must be the API
//! server's kubelet client ([`crate::api::KUBELET_CLIENT`]). The serving certificate is made
//! at each start and signed by nobody: like kube-apiserver without
//! `--kubelet-certificate-authority`, the API server does not verify it.
//!
//! An exec runs `knode exec` (the same confinement as the CLI's) with its standard streams
//! piped to the WebSocket's channels: 0 stdin, 1 stdout, 2 stderr, 3 the final Status; or,
//! for kubectl 1.20 (and any client that falls back), to the streams of a SPDY/3.1 session
//! (`v4.channel.k8s.io`: streams `error`, `stdin`, `stdout`, `stderr`, `resize`), as the
//! kubelet's remotecommand server does. Port forwarding is in [`super::portforward`].

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

use super::pod::CState;
use super::NodeState;
use crate::node::error::NodeError;

type Body = BoxBody<Bytes, Infallible>;

/// The kubelet's default port.
pub const DEFAULT_PORT: u16 = 10250;

fn full(status: StatusCode, ct: &str, text: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(text.into()).boxed())
        .expect("a valid response")
}

fn text(status: StatusCode, t: String) -> Response<Body> {
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

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
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

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn flag(q: &[(String, String)], k: &str) -> bool {
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
        ["containerLogs", ns, pod, container] => logs(&state, ns, pod, container, &query(&req)),
        ["portForward", ns, pod] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            super::portforward::handle(state, req, ns, pod).await
        }
        ["exec", ns, pod, container] => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec(state, req, ns, pod, container).await
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

/// The WebSocket subprotocols an exec may use, best first.
const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

async fn exec(
    state: Arc<RwLock<NodeState>>,
    mut req: Request<Incoming>,
    ns: String,
    pod: String,
    container: String,
) -> Response<Body> {
    let q = query(&req);
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command".into(),
        );
    }
    {
        let st = state.read().expect("state");
        match super::api::find_container(&st, &ns, &pod, &container) {
            Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
            Ok((_, c)) if c.running.is_none() => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("container {container:?} in pod {pod:?} is not running"),
                )
            }
            Ok(_) => {}
        }
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (exe, run_dir) = {
        let st = state.read().expect("state");
        (st.exe.clone(), st.run_dir.clone())
    };
    let (stdin, tty) = (flag(&q, "input"), flag(&q, "tty"));
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--run-dir")
        .arg(run_dir)
        .args(["exec", "-n", &ns, &pod, "-c", &container]);
    if stdin {
        cmd.arg("-i");
    }
    if tty {
        cmd.arg("-t");
    }
    cmd.arg("--")
        .args(&argv)
        .stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let spdy = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    if spdy {
        let offered: Vec<String> = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect();
        if !offered.iter().any(|p| p == SPDY_EXEC_PROTOCOL) {
            return Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("x-accepted-stream-protocol-versions", SPDY_EXEC_PROTOCOL)
                .body(
                    Full::new(Bytes::from(format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{SPDY_EXEC_PROTOCOL}\"]"
                    )))
                    .boxed(),
                )
                .expect("a valid response");
        }
        let want = Wanted {
            stdin,
            stdout: flag(&q, "output"),
            stderr: flag(&q, "error") && !tty,
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(u) => relay_spdy(hyper_util::rt::TokioIo::new(u), cmd, want).await,
                Err(e) => tracing::warn!(error = %e, "exec: the upgrade failed"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "SPDY/3.1")
            .header("x-stream-protocol-version", SPDY_EXEC_PROTOCOL)
            .body(Full::new(Bytes::new()).boxed())
            .expect("a valid response");
    }
    let offered = header("sec-websocket-protocol").unwrap_or_default();
    let Some(proto) = EXEC_PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "exec needs a WebSocket with one of the subprotocols {}",
                EXEC_PROTOCOLS.join(", ")
            ),
        );
    };
    let Some(key) = header("sec-websocket-key") else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket upgrade".into());
    };
    let v5 = *proto == "v5.channel.k8s.io";
    tokio::spawn(async move {
        if let Some(ws) = websocket(req, "exec").await {
            relay(ws, cmd, v5).await;
        }
    });
    websocket_accepted(key.as_bytes(), proto)
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

/// The remotecommand protocol served over SPDY (kubectl 1.20 offers v4 first; newer
/// clients that fall back to SPDY offer it too).
const SPDY_EXEC_PROTOCOL: &str = "v4.channel.k8s.io";

/// The streams an exec over SPDY waits for besides `error` (and `resize` with a tty).
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

/// Runs the command with its streams on the SPDY session's: the client opens them first
/// (the kubelet waits for them as well), then stdout and stderr are written as they come,
/// stdin read until the client half-closes it, and the Status written on `error`.
async fn relay_spdy<S>(io: S, mut cmd: tokio::process::Command, want: Wanted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut streams, w) = super::spdy::serve(io);
    let (mut error, mut stdin, mut stdout, mut stderr) = (None, None, None, None);
    let complete = |e: &Option<super::spdy::Stream>,
                    i: &Option<super::spdy::Stream>,
                    o: &Option<super::spdy::Stream>,
                    r: &Option<super::spdy::Stream>| {
        e.is_some()
            && i.is_some() == want.stdin
            && o.is_some() == want.stdout
            && r.is_some() == want.stderr
    };
    let gathered = tokio::time::timeout(Duration::from_secs(30), async {
        while !complete(&error, &stdin, &stdout, &stderr) {
            let Some(s) = streams.recv().await else {
                return false;
            };
            match s.header("streamtype") {
                Some("error") => error = Some(s),
                Some("stdin") => stdin = Some(s),
                Some("stdout") => stdout = Some(s),
                Some("stderr") => stderr = Some(s),
                // Resizes are not applied: the command's terminal belongs to `knode exec`.
                _ => {}
            }
        }
        true
    })
    .await;
    let Some(error) = error.filter(|_| gathered == Ok(true)) else {
        tracing::debug!("exec over SPDY: the client did not open its streams");
        return;
    };
    let ids: Vec<u32> = [&stdout, &stderr]
        .into_iter()
        .flatten()
        .map(|s| s.id)
        .collect();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": format!("starting the command: {e}")});
            w.data(
                error.id,
                Bytes::from(serde_json::to_vec(&status).unwrap_or_default()),
            );
            w.fin(error.id);
            for id in ids {
                w.fin(id);
            }
            return;
        }
    };
    let mut child_in = child.stdin.take();
    let input = stdin.map(|mut s| {
        tokio::spawn(async move {
            while let Some(b) = s.data.recv().await {
                let Some(i) = child_in.as_mut() else { break };
                if i.write_all(&b).await.is_err() {
                    break;
                }
            }
            // The client's EOF closes the command's stdin.
            drop(child_in);
        })
    });
    let pump = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
                s: Option<u32>,
                w: super::spdy::Writer| async move {
        let Some(mut r) = r else { return };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if let Some(id) = s {
                        if !w.data(id, Bytes::copy_from_slice(&buf[..n])) {
                            return;
                        }
                    }
                }
                _ => {
                    if let Some(id) = s {
                        w.fin(id);
                    }
                    return;
                }
            }
        }
    };
    let out = child
        .stdout
        .take()
        .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let err = child
        .stderr
        .take()
        .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let o = tokio::spawn(pump(out, stdout.as_ref().map(|s| s.id), w.clone()));
    let e = tokio::spawn(pump(err, stderr.as_ref().map(|s| s.id), w.clone()));
    let _ = o.await;
    let _ = e.await;
    let code = child.wait().await.ok().and_then(|s| s.code());
    w.data(
        error.id,
        Bytes::from(serde_json::to_vec(&exit_status(code)).unwrap_or_default()),
    );
    w.fin(error.id);
    if let Some(i) = input {
        i.abort();
    }
    // Hold the session until the client, having read the status, closes it.
    while streams.recv().await.is_some() {}
}

/// The final Status of an exec, as the kubelet writes it on channel 3.
pub fn exit_status(code: Option<i32>) -> serde_json::Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(n) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{n}], exit code {n}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]},
        }),
        None => json!({
            "metadata": {},
            "status": "Failure",
            "message": "command terminated by a signal",
            "reason": "InternalError",
        }),
    }
}

fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Runs the command and relays its streams over the WebSocket until it exits.
async fn relay<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut cmd: tokio::process::Command,
    v5: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": format!("starting the command: {e}")});
            let mut m = vec![3u8];
            m.extend(serde_json::to_vec(&status).unwrap_or_default());
            let _ = sink.send(Message::binary(m)).await;
            let _ = sink.send(normal_close()).await;
            let _ = sink.close().await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let (out, err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                ch: u8,
                tx: tokio::sync::mpsc::Sender<Vec<u8>>| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    let mut m = Vec::with_capacity(n + 1);
                    m.push(ch);
                    m.extend_from_slice(&buf[..n]);
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    let o = tokio::spawn(pump(Box::new(out), 1, tx.clone()));
    let e = tokio::spawn(pump(Box::new(err), 2, tx));
    // Client -> command: stdin (channel 0), its end (v5: [255, 0]); resizes are not applied
    // (the command's terminal belongs to `knode exec`).
    let input = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            match m {
                Message::Binary(b) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&b[1..]).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    255 if v5 && b.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    while let Some(m) = rx.recv().await {
        if sink.send(Message::binary(m)).await.is_err() {
            break;
        }
    }
    let _ = o.await;
    let _ = e.await;
    let code = child.wait().await.ok().and_then(|s| s.code());
    let mut m = vec![3u8];
    m.extend(serde_json::to_vec(&exit_status(code)).unwrap_or_default());
    let _ = sink.send(Message::binary(m)).await;
    // A normal closure (1000): client-go ends the streams with EOF on it, and fails them on
    // a close without a status.
    let _ = sink.send(normal_close()).await;
    let _ = sink.close().await;
    input.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_code_becomes_the_status_kubectl_reads() {
        assert_eq!(exit_status(Some(0))["status"], "Success");
        let s = exit_status(Some(3));
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(None)["status"], "Failure");
    }

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
