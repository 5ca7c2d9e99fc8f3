//! Exec and attach, as the kubelet's remotecommand server serves them.
//!
//! An exec runs `knode exec` (the same confinement as the CLI's); an attach connects to the
//! container's shim ([`crate::node::attach`]). Either way the session's streams are relayed to
//! the client: over a WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`: channel 0 stdin,
//! 1 stdout, 2 stderr, 3 the final Status, 4 terminal resizes; v5 adds `[255, 0]` for the end
//! of stdin), or, for kubectl 1.20 (and any client that falls back), over the streams of a
//! SPDY/3.1 session (`v4.channel.k8s.io`: streams `error`, `stdin`, `stdout`, `stderr`,
//! `resize`). Resizes are JSON `{"Width": W, "Height": H}` either way. The session ends when
//! the command (or the container) ends, or when the client goes away.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Message;

use super::server::{flag, query, text, websocket, websocket_accepted, Body};
use super::NodeState;
use crate::node::attach;

/// The WebSocket subprotocols an exec or attach may use, best first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The remotecommand protocol served over SPDY (kubectl 1.20 offers v4 first; newer
/// clients that fall back to SPDY offer it too).
const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Tasks that end with the session that started them.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A started exec or attach: its streams, where resizes go, and its final Status.
struct Session {
    stdin: Option<Writer>,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    resize: Option<mpsc::UnboundedSender<(u16, u16)>>,
    end: Pin<Box<dyn Future<Output = Value> + Send>>,
    _tasks: Tasks,
}

/// What a request starts.
enum Launch {
    /// `knode exec` and its options, the command, whether on a terminal.
    Exec {
        cmd: Box<tokio::process::Command>,
        argv: Vec<String>,
        tty: bool,
    },
    /// The container's shim state directory, and whether the client sends input.
    Attach { state: PathBuf, stdin: bool },
}

impl Launch {
    async fn start(self) -> Result<Session, String> {
        match self {
            Launch::Exec { cmd, argv, tty } => start_exec(*cmd, argv, tty),
            Launch::Attach { state, stdin } => start_attach(state, stdin).await,
        }
    }
}

/// Starts `knode exec`; with a terminal, resizes go to it as `W H` lines on its fd 3.
fn start_exec(
    mut cmd: tokio::process::Command,
    argv: Vec<String>,
    tty: bool,
) -> Result<Session, String> {
    use std::os::fd::AsRawFd;
    let mut tasks = Vec::new();
    let (resize, far) = if tty {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("a pipe for resizes: {e}"))?;
        let fd = r.as_raw_fd();
        cmd.arg("--resize-fd").arg("3");
        // SAFETY: only async-signal-safe calls between fork and exec: dup2 onto fd 3 (or, when
        // the pipe already is fd 3, clearing its close-on-exec flag).
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut w = tokio::net::unix::pipe::Sender::from_owned_fd(w)
            .map_err(|e| format!("a pipe for resizes: {e}"))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(u16, u16)>();
        tasks.push(tokio::spawn(async move {
            while let Some((width, height)) = rx.recv().await {
                if w.write_all(format!("{width} {height}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
        (Some(tx), Some(r))
    } else {
        (None, None)
    };
    let mut child = cmd
        .arg("--")
        .args(argv)
        .spawn()
        .map_err(|e| format!("starting the command: {e}"))?;
    drop(far);
    let stdin = child.stdin.take().map(|s| Box::new(s) as Writer);
    let stdout = child.stdout.take().map(|s| Box::new(s) as Reader);
    let stderr = child.stderr.take().map(|s| Box::new(s) as Reader);
    Ok(Session {
        stdin,
        stdout,
        stderr,
        resize,
        end: Box::pin(async move { exit_status(child.wait().await.ok().and_then(|s| s.code())) }),
        _tasks: Tasks(tasks),
    })
}

/// Connects to the container's shim.
async fn start_attach(state: PathBuf, stdin: bool) -> Result<Session, String> {
    let dir = attach::open_dir(&state).map_err(|e| format!("the container's state: {e}"))?;
    let conn = tokio::net::UnixStream::connect(attach::socket_path(&dir))
        .await
        .map_err(|e| format!("attaching to the container: {e}"))?;
    drop(dir);
    let (mut rd, mut wr) = conn.into_split();
    let mut tasks = Vec::new();
    // Everything to the shim goes through one writer.
    let (frames, mut queue) = mpsc::channel::<(u8, Vec<u8>)>(16);
    tasks.push(tokio::spawn(async move {
        while let Some((kind, data)) = queue.recv().await {
            let mut f = Vec::with_capacity(5 + data.len());
            if attach::write_frame(&mut f, kind, &data).is_err() || wr.write_all(&f).await.is_err()
            {
                return;
            }
        }
    }));
    let stdin = if stdin {
        // The session carries input: if it goes away before its input ends, the shim ends
        // the input for it (stdinOnce).
        let _ = frames.send((attach::STDIN, Vec::new())).await;
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let frames = frames.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match far.read(&mut buf).await {
                    Ok(n) if n > 0 => {
                        if frames
                            .send((attach::STDIN, buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    _ => break,
                }
            }
            // The client's input ended (or the session did): with stdinOnce, that closes the
            // container's stdin.
            let _ = frames.send((attach::CLOSE_STDIN, Vec::new())).await;
        }));
        Some(Box::new(near) as Writer)
    } else {
        None
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(u16, u16)>();
    tasks.push(tokio::spawn(async move {
        while let Some((w, h)) = rx.recv().await {
            let p = attach::resize_payload(w, h).to_vec();
            if frames.send((attach::RESIZE, p)).await.is_err() {
                return;
            }
        }
    }));
    // The container's output, until the shim closes the session (the container exited).
    let (out, mut out_w) = tokio::io::duplex(64 * 1024);
    let (err, mut err_w) = tokio::io::duplex(64 * 1024);
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    tasks.push(tokio::spawn(async move {
        loop {
            let mut head = [0u8; 5];
            if rd.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > attach::MAX_FRAME {
                break;
            }
            let mut data = vec![0u8; len];
            if rd.read_exact(&mut data).await.is_err() {
                break;
            }
            // A stream the client did not ask for is read and dropped.
            let _ = match head[0] {
                attach::STDOUT => out_w.write_all(&data).await,
                attach::STDERR => err_w.write_all(&data).await,
                _ => Ok(()),
            };
        }
        drop((out_w, err_w));
        let _ = done.send(());
    }));
    Ok(Session {
        stdin,
        stdout: Some(Box::new(out)),
        stderr: Some(Box::new(err)),
        resize: Some(tx),
        end: Box::pin(async move {
            let _ = ended.await;
            json!({"metadata": {}, "status": "Success"})
        }),
        _tasks: Tasks(tasks),
    })
}

/// A resize message (`{"Width": W, "Height": H}`).
fn parse_resize(v: &Value) -> Option<(u16, u16)> {
    let n = |k: &str| v.get(k)?.as_u64().and_then(|n| u16::try_from(n).ok());
    Some((n("Width")?, n("Height")?))
}

/// `/exec/...` or `/attach/...`.
pub(super) async fn handle(
    is_attach: bool,
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
    if argv.is_empty() && !is_attach {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command".into(),
        );
    }
    let shim_state = {
        let st = state.read().expect("state");
        match super::api::find_container(&st, &ns, &pod, &container) {
            Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
            Ok((_, c)) => match &c.running {
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("container {container:?} in pod {pod:?} is not running"),
                    )
                }
                Some((_, s)) => s.clone(),
            },
        }
    };
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (stdin, tty) = (flag(&q, "input"), flag(&q, "tty"));
    let launch = if is_attach {
        Launch::Attach {
            state: shim_state,
            stdin,
        }
    } else {
        let (exe, run_dir) = {
            let st = state.read().expect("state");
            (st.exe.clone(), st.run_dir.clone())
        };
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("--run-dir")
            .arg(run_dir)
            .args(["exec", "--local", "-n", &ns, &pod, "-c", &container]);
        if stdin {
            cmd.arg("-i");
        }
        if tty {
            cmd.arg("-t");
        }
        cmd.stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        Launch::Exec {
            cmd: Box::new(cmd),
            argv,
            tty,
        }
    };
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
        if !offered.iter().any(|p| p == SPDY_PROTOCOL) {
            return Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("x-accepted-stream-protocol-versions", SPDY_PROTOCOL)
                .body(
                    Full::new(Bytes::from(format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{SPDY_PROTOCOL}\"]"
                    )))
                    .boxed(),
                )
                .expect("a valid response");
        }
        let want = Wanted {
            stdin,
            stdout: flag(&q, "output"),
            stderr: flag(&q, "error") && !tty,
            resize: tty,
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(u) => relay_spdy(hyper_util::rt::TokioIo::new(u), launch, want).await,
                Err(e) => tracing::warn!(error = %e, "exec/attach: the upgrade failed"),
            }
        });
        return super::server::spdy_accepted(SPDY_PROTOCOL);
    }
    let offered = header("sec-websocket-protocol").unwrap_or_default();
    let Some(proto) = PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "exec and attach need a WebSocket with one of the subprotocols {}",
                PROTOCOLS.join(", ")
            ),
        );
    };
    let Some(key) = header("sec-websocket-key") else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket upgrade".into());
    };
    let v5 = *proto == "v5.channel.k8s.io";
    tokio::spawn(async move {
        if let Some(ws) = websocket(req, if is_attach { "attach" } else { "exec" }).await {
            relay(ws, launch, v5).await;
        }
    });
    websocket_accepted(key.as_bytes(), proto)
}

/// The streams a session over SPDY waits for besides `error`.
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
}

/// Copies `r` to the SPDY stream `id` (none: read and dropped) until it ends.
async fn pump_spdy(r: Option<Reader>, id: Option<u32>, w: super::spdy::Writer) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(n) if n > 0 => {
                if let Some(id) = id {
                    if !w.data(id, Bytes::copy_from_slice(&buf[..n])) {
                        return;
                    }
                }
            }
            _ => {
                if let Some(id) = id {
                    w.fin(id);
                }
                return;
            }
        }
    }
}

/// Relays a session over SPDY: the client opens its streams first (the kubelet waits for
/// them as well), then the session starts; stdout and stderr are written as they come, stdin
/// read until the client half-closes it, resizes applied, and the Status written on `error`.
async fn relay_spdy<S>(io: S, launch: Launch, want: Wanted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use super::spdy::Stream;
    let (mut streams, w) = super::spdy::serve(io);
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let complete = |e: &Option<Stream>,
                    i: &Option<Stream>,
                    o: &Option<Stream>,
                    r: &Option<Stream>,
                    z: &Option<Stream>| {
        e.is_some()
            && i.is_some() == want.stdin
            && o.is_some() == want.stdout
            && r.is_some() == want.stderr
            && z.is_some() == want.resize
    };
    let gathered = tokio::time::timeout(Duration::from_secs(30), async {
        while !complete(&error, &stdin, &stdout, &stderr, &resize) {
            let Some(s) = streams.recv().await else {
                return false;
            };
            match s.header("streamtype") {
                Some("error") => error = Some(s),
                Some("stdin") => stdin = Some(s),
                Some("stdout") => stdout = Some(s),
                Some("stderr") => stderr = Some(s),
                Some("resize") => resize = Some(s),
                _ => {}
            }
        }
        true
    })
    .await;
    let Some(error) = error.filter(|_| gathered == Ok(true)) else {
        tracing::debug!("exec/attach over SPDY: the client did not open its streams");
        return;
    };
    let ids: Vec<u32> = [&stdout, &stderr]
        .into_iter()
        .flatten()
        .map(|s| s.id)
        .collect();
    let status = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let mut session = match launch.start().await {
        Ok(s) => s,
        Err(e) => {
            w.data(
                error.id,
                status(&json!({"metadata": {}, "status": "Failure", "message": e})),
            );
            w.fin(error.id);
            for id in ids {
                w.fin(id);
            }
            return;
        }
    };
    let mut tasks = Vec::new();
    if let (Some(mut r), Some(tx)) = (resize, session.resize.take()) {
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(b) = r.data.recv().await {
                buf.extend_from_slice(&b);
                // A JSON object per resize, one after another.
                let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                let mut used = 0;
                while let Some(Ok(v)) = de.next() {
                    used = de.byte_offset();
                    if let Some(size) = parse_resize(&v) {
                        let _ = tx.send(size);
                    }
                }
                buf.drain(..used);
            }
        }));
    }
    if let (Some(mut s), Some(mut into)) = (stdin, session.stdin.take()) {
        tasks.push(tokio::spawn(async move {
            while let Some(b) = s.data.recv().await {
                if into.write_all(&b).await.is_err() {
                    break;
                }
            }
            // The client's EOF closes the session's stdin.
            let _ = into.shutdown().await;
        }));
    }
    let _tasks = Tasks(tasks);
    let o = pump_spdy(
        session.stdout.take(),
        stdout.as_ref().map(|s| s.id),
        w.clone(),
    );
    let e = pump_spdy(
        session.stderr.take(),
        stderr.as_ref().map(|s| s.id),
        w.clone(),
    );
    // Until the output ends, or the client goes away (which ends the session).
    let ended = tokio::select! {
        _ = futures_util::future::join(o, e) => true,
        _ = async { while streams.recv().await.is_some() {} } => false,
    };
    if !ended {
        return;
    }
    let end = session.end.await;
    w.data(error.id, status(&end));
    w.fin(error.id);
    // Hold the session until the client, having read the status, closes it.
    while streams.recv().await.is_some() {}
}

/// The final Status of an exec, as the kubelet writes it on channel 3.
pub fn exit_status(code: Option<i32>) -> Value {
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

/// Copies `r` to the WebSocket channel `ch` (through `tx`) until it ends.
async fn pump_ws(r: Option<Reader>, ch: u8, tx: mpsc::Sender<Vec<u8>>) {
    let Some(mut r) = r else { return };
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
}

/// Relays a session over the WebSocket until it ends or the client goes away.
async fn relay<S>(ws: tokio_tungstenite::WebSocketStream<S>, launch: Launch, v5: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let mut session = match launch.start().await {
        Ok(s) => s,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": e});
            let mut m = vec![3u8];
            m.extend(serde_json::to_vec(&status).unwrap_or_default());
            let _ = sink.send(Message::binary(m)).await;
            let _ = sink.send(normal_close()).await;
            let _ = sink.close().await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let o = tokio::spawn(pump_ws(session.stdout.take(), 1, tx.clone()));
    let e = tokio::spawn(pump_ws(session.stderr.take(), 2, tx));
    let _pumps = Tasks(vec![o, e]);
    // Client -> session: stdin (channel 0), its end (v5: [255, 0]), resizes (channel 4);
    // the input ends when the client closes.
    let (mut stdin, resize) = (session.stdin.take(), session.resize.take());
    let mut input = tokio::spawn(async move {
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
                    4 => {
                        let size = serde_json::from_slice::<Value>(&b[1..])
                            .ok()
                            .and_then(|v| parse_resize(&v));
                        if let (Some(size), Some(tx)) = (size, &resize) {
                            let _ = tx.send(size);
                        }
                    }
                    255 if v5 && b.get(1) == Some(&0) => {
                        if let Some(mut s) = stdin.take() {
                            let _ = s.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let forward = async {
        while let Some(m) = rx.recv().await {
            if sink.send(Message::binary(m)).await.is_err() {
                return false;
            }
        }
        true
    };
    let ended = tokio::select! {
        done = forward => done,
        _ = &mut input => false,
    };
    if !ended {
        input.abort();
        return;
    }
    let mut m = vec![3u8];
    m.extend(serde_json::to_vec(&session.end.await).unwrap_or_default());
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
    fn resizes_are_read_as_client_go_writes_them() {
        assert_eq!(
            parse_resize(&json!({"Width": 120, "Height": 40})),
            Some((120, 40))
        );
        assert_eq!(parse_resize(&json!({"Width": 70000, "Height": 40})), None);
        assert_eq!(parse_resize(&json!({"width": 1})), None);
    }
}
