//! Port forwarding into a pod (`/portForward/<ns>/<pod>` of the kubelet API, what `kubectl
//! port-forward` reaches through the API server's `pods/portforward`).
//!
//! kubectl opens a SPDY/3.1 session ([`super::spdy`]): tunnelled in a WebSocket with the
//! subprotocol `SPDY/3.1+portforward.k8s.io` (kubectl 1.31 and later), or on the connection
//! upgraded with `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version: portforward.k8s.io`
//! (kubectl 1.20, and the fallback). For every local connection it opens a pair of streams
//! with the same `requestid`: `streamtype: error` and `streamtype: data`, both with `port`.
//! As the kubelet (containerd's `PortForward`) does, the agent connects to `localhost:<port>`
//! inside the pod's network namespace, so ports a container binds to 127.0.0.1 are
//! reachable too, and pipes the data stream through; a failure is written on the error
//! stream, which kubectl prints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{self, Stream, Writer};
use super::NodeState;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The stream protocol of port forwarding over SPDY.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels it.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

fn text(status: StatusCode, t: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(t)).boxed())
        .expect("a valid response")
}

/// Where a pod's ports are: its network namespace (none: the node's, for hostNetwork pods).
struct Target {
    netns: Option<PathBuf>,
    name: String,
}

fn header_values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect()
}

/// Answers the upgrade and serves the session.
pub async fn handle(
    state: Arc<RwLock<NodeState>>,
    mut req: Request<Incoming>,
    ns: String,
    pod: String,
) -> Response<Body> {
    let target = {
        let st = state.read().expect("state");
        let Some(v) = super::api::find(&st, &ns, &pod) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod {pod:?} not found in namespace {ns:?}"),
            );
        };
        if !v.containers.iter().any(|c| c.running.is_some()) {
            return text(
                StatusCode::BAD_REQUEST,
                format!("pod {pod:?} has no running container to forward to"),
            );
        }
        let netns = st
            .run_dir
            .join("pods")
            .join(&v.manifest.uid)
            .join("sandbox/ns/net");
        let host = v
            .manifest
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        Target {
            netns: (!host && netns.exists()).then_some(netns),
            name: format!("{ns}/{pod}"),
        }
    };
    let upgrade = header_values(&req, "upgrade");
    let websocket = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
    let spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    if websocket {
        if !header_values(&req, "sec-websocket-protocol")
            .iter()
            .any(|p| p == TUNNEL)
        {
            return text(
                StatusCode::BAD_REQUEST,
                format!("port-forward over a WebSocket needs the subprotocol {TUNNEL}"),
            );
        }
        let Some(key) = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| k.as_bytes().to_vec())
        else {
            return text(StatusCode::BAD_REQUEST, "not a WebSocket upgrade".into());
        };
        tokio::spawn(async move {
            let Some(ws) = super::server::websocket(req, "port-forward").await else {
                return;
            };
            // The WebSocket carries the SPDY byte stream; message boundaries mean nothing.
            let (ours, theirs) = tokio::io::duplex(64 << 10);
            let (mut sink, mut source) = ws.split();
            let (mut pr, mut pw) = tokio::io::split(theirs);
            let inbound = tokio::spawn(async move {
                while let Some(Ok(m)) = source.next().await {
                    let more = match m {
                        Message::Binary(b) => pw.write_all(&b).await.is_ok(),
                        Message::Close(_) => false,
                        _ => true,
                    };
                    if !more {
                        break;
                    }
                }
                let _ = pw.shutdown().await;
            });
            let outbound = tokio::spawn(async move {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match pr.read(&mut buf).await {
                        Ok(n) if n > 0 => {
                            if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            let _ = sink.close().await;
                            return;
                        }
                    }
                }
            });
            forward(ours, target).await;
            let _ = inbound.await;
            let _ = outbound.await;
        });
        return super::server::websocket_accepted(&key, TUNNEL);
    }
    if spdy {
        if !header_values(&req, "x-stream-protocol-version")
            .iter()
            .any(|p| p == PROTOCOL)
        {
            return Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("x-accepted-stream-protocol-versions", PROTOCOL)
                .body(
                    Full::new(Bytes::from(format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {:?}, server accepts [\"{PROTOCOL}\"]",
                        header_values(&req, "x-stream-protocol-version")
                    )))
                    .boxed(),
                )
                .expect("a valid response");
        }
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(u) => forward(hyper_util::rt::TokioIo::new(u), target).await,
                Err(e) => tracing::warn!(error = %e, "port-forward: the upgrade failed"),
            }
        });
        return super::server::spdy_accepted(PROTOCOL);
    }
    text(
        StatusCode::BAD_REQUEST,
        format!("port-forward needs an upgrade to SPDY/3.1, or a WebSocket with the subprotocol {TUNNEL}"),
    )
}

/// Pairs the session's streams by request and forwards each pair.
async fn forward<S>(io: S, target: Target)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let target = Arc::new(target);
    let (mut streams, w) = spdy::serve(io);
    let mut pending: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(s) = streams.recv().await {
        let request = s
            .header("requestid")
            .unwrap_or_else(|| s.header("port").unwrap_or(""))
            .to_string();
        let slot = pending.entry(request.clone()).or_default();
        match s.header("streamtype") {
            Some("error") => slot.0 = Some(s),
            Some("data") => slot.1 = Some(s),
            other => {
                tracing::debug!(streamtype = ?other, "port-forward: an unknown stream");
                w.reset(s.id);
                continue;
            }
        }
        if let (Some(_), Some(_)) = slot {
            let (Some(e), Some(d)) = pending.remove(&request).expect("present") else {
                continue;
            };
            tokio::spawn(pair(e, d, w.clone(), target.clone()));
        }
    }
}

/// Connects to `127.0.0.1:port` in `netns` from a thread of its own (only it enters the
/// namespace; the socket stays in it).
fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<std::net::TcpStream> {
    let Some(path) = netns else {
        return std::net::TcpStream::connect(("127.0.0.1", port));
    };
    let ns = std::fs::File::open(&path)?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid network namespace descriptor; it moves only this thread,
        // which ends once the socket is made.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect(("127.0.0.1", port))
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

/// An OS error as Go prints it (`connection refused`, not `Connection refused (os error
/// 111)`), as kubectl users know it.
fn go_style(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One forwarded connection: the data stream piped to the pod's port, failures on the
/// error stream.
async fn pair(error: Stream, mut data: Stream, w: Writer, target: Arc<Target>) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let fail = |msg: String| {
        w.data(error.id, Bytes::from(msg));
        w.fin(error.id);
        w.fin(data.id);
    };
    let Some(port) = port else {
        fail(format!(
            "invalid port {:?}: a port-forward needs a port from 1 to 65535",
            data.header("port").unwrap_or("")
        ));
        return;
    };
    let netns = target.netns.clone();
    let tcp = match tokio::task::spawn_blocking(move || connect_in(netns, port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            fail(format!(
                "error forwarding port {port} to pod {}: dial tcp4 127.0.0.1:{port}: connect: {}",
                target.name,
                go_style(&e)
            ));
            return;
        }
        Err(e) => {
            fail(format!("error forwarding port {port}: {e}"));
            return;
        }
    };
    let tcp = match tcp
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpStream::from_std(tcp))
    {
        Ok(t) => t,
        Err(e) => {
            fail(format!("error forwarding port {port}: {e}"));
            return;
        }
    };
    let (mut tr, mut tw) = tcp.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(b) = data.data.recv().await {
            if tw.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = tw.shutdown().await;
    });
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match tr.read(&mut buf).await {
            Ok(n) if n > 0 => {
                if !w.data(data.id, Bytes::copy_from_slice(&buf[..n])) {
                    break;
                }
            }
            _ => break,
        }
    }
    w.fin(data.id);
    let _ = to_pod.await;
    w.fin(error.id);
}
