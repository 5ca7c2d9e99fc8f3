//! Container probes as the kubelet runs them: startup, liveness and readiness, each an exec
//! in the container, an HTTP GET, a TCP connect or a gRPC health check against the pod's
//! address, with the probe's timing (initial delay, period, timeout, success and failure
//! thresholds).
//!
//! What a probe is ([`Spec`]) and how its runs add up ([`Tracker`]) is pure; the runs
//! themselves ([`run`]) happen on the node's runtime, and the pod worker hears their
//! outcomes as it hears image pulls (a pipe wakes it).
//!
//! The gRPC check is the standard health protocol (`grpc.health.v1.Health/Check`) over
//! hyper's HTTP/2 client, its two one-field messages encoded here by hand: a gRPC stack
//! (tonic and prost) for two varints would be most of this module's dependencies.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As events name it (`Liveness probe failed: ...`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => c.startup_probe.as_ref(),
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// What one run of a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A command in the container; exit 0 is success.
    Exec(Vec<String>),
    /// GET `path` on the pod's address (or `host`); 200-399 is success.
    Http {
        https: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens.
    Tcp { host: Option<String>, port: u16 },
    /// `grpc.health.v1.Health/Check` answering SERVING.
    Grpc { port: u16, service: String },
    /// A lifecycle hook's pause (`sleep: {seconds: N}`), within the timeout.
    Sleep(u64),
    /// A probe that cannot run (a port name the container does not declare): each run
    /// fails with this.
    Invalid(String),
}

/// A lifecycle hook's action (exec, httpGet or sleep; a named port is the container's).
pub fn hook(c: &Container, h: &k8s_openapi::api::core::v1::LifecycleHandler) -> Action {
    let probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        ..Default::default()
    };
    match &h.sleep {
        Some(s) => Action::Sleep(s.seconds.max(0) as u64),
        // Kept in the API for old objects only; the kubelet fails such a hook when it runs.
        None if h.tcp_socket.is_some() => {
            Action::Invalid("TCPSocket is not supported as a lifecycle handler".into())
        }
        None => Spec::action(c, &probe).unwrap_or_else(Action::Invalid),
    }
}

/// A container's probe, its defaults applied (the API server's; the same here for pods
/// from manifest files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub kind: Kind,
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own termination grace period (liveness and startup), seconds.
    pub grace: Option<u64>,
}

fn secs(v: Option<i32>, default: u64) -> u64 {
    match v {
        Some(n) if n > 0 => n as u64,
        _ => default,
    }
}

/// A port by number, or by the name of one of the container's ports.
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("couldn't find port: {name} in container {}", c.name)),
    }
}

impl Spec {
    /// The container's probe of `kind`, if it has one.
    pub fn of(c: &Container, kind: Kind) -> Option<Spec> {
        let p = kind.of(c)?;
        let action = Spec::action(c, p).unwrap_or_else(Action::Invalid);
        Some(Spec {
            kind,
            action,
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            period: Duration::from_secs(secs(p.period_seconds, 10)),
            timeout: Duration::from_secs(secs(p.timeout_seconds, 1)),
            success_threshold: secs(p.success_threshold, 1) as u32,
            failure_threshold: secs(p.failure_threshold, 3) as u32,
            grace: p
                .termination_grace_period_seconds
                .filter(|g| *g > 0)
                .map(|g| g as u64),
        })
    }

    fn action(c: &Container, p: &Probe) -> Result<Action, String> {
        let action = if let Some(e) = &p.exec {
            Action::Exec(e.command.clone().unwrap_or_default())
        } else if let Some(h) = &p.http_get {
            Action::Http {
                https: h.scheme.as_deref() == Some("HTTPS"),
                host: h.host.clone().filter(|h| !h.is_empty()),
                port: port(c, &h.port)?,
                path: h
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(t) = &p.tcp_socket {
            Action::Tcp {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: port(c, &t.port)?,
            }
        } else if let Some(g) = &p.grpc {
            Action::Grpc {
                port: u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?,
                service: g.service.clone().unwrap_or_default(),
            }
        } else {
            return Err("the probe has no handler".into());
        };
        Ok(action)
    }
}

/// One probe of one running container: when it runs next, and what its runs add up to.
#[derive(Debug)]
pub struct Tracker {
    pub spec: Spec,
    next: Instant,
    successes: u32,
    failures: u32,
    /// Unknown until a threshold is reached (a readiness probe's container is not ready
    /// until then; a startup probe's not started).
    pub result: Option<bool>,
}

impl Tracker {
    /// For a container that started at `since`: the first run after the initial delay.
    pub fn new(spec: Spec, since: Instant) -> Tracker {
        Tracker {
            next: since + spec.initial_delay,
            spec,
            successes: 0,
            failures: 0,
            result: None,
        }
    }

    /// When the next run is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Takes one run's outcome, ended at `now`; the result when this run changed it.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        self.next = now + self.spec.period;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.spec.success_threshold && self.result != Some(true) {
                self.result = Some(true);
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.spec.failure_threshold && self.result != Some(false) {
                self.result = Some(false);
                return Some(false);
            }
        }
        None
    }

    /// No run now (one could not be started): the next a period later.
    pub fn postpone(&mut self, now: Instant) {
        self.next = now + self.spec.period;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Where a probe runs: the pod's address, and the container (for an exec).
#[derive(Clone, Debug)]
pub struct Target {
    pub pod_ip: Option<IpAddr>,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// How a probe execs into a container: `knode exec` against this node's agent, as
/// `kubectl exec` reaches it.
#[derive(Clone, Debug)]
pub struct ExecVia {
    pub exe: PathBuf,
    pub run_dir: PathBuf,
}

/// The most of a probe's output (an exec's, an HTTP body) looked at, as the kubelet's 10 KiB.
const MAX_OUTPUT: usize = 10 * 1024;

/// One run of `action` within `timeout`: Ok, or why it failed (the event's text).
pub async fn run(
    action: &Action,
    t: &Target,
    via: &ExecVia,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Exec(argv) => exec(argv, t, via, timeout).await,
        Action::Invalid(why) => Err(why.clone()),
        Action::Sleep(secs) => {
            tokio::time::sleep(Duration::from_secs(*secs).min(timeout)).await;
            Ok(())
        }
        Action::Tcp { host, port } => {
            let addr = address(host.as_deref(), t, *port).await?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", go_error(&e))),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let addr = address(host.as_deref(), t, *port).await?;
            let scheme = if *https { "https" } else { "http" };
            let url = format!("{scheme}://{addr}{path}");
            match tokio::time::timeout(timeout, http_get(addr, *https, path, headers)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
        Action::Grpc { port, service } => {
            let addr = address(None, t, *port).await?;
            match tokio::time::timeout(timeout, grpc_check(addr, service)).await {
                Ok(Ok(1)) => Ok(()),
                Ok(Ok(status)) => Err(format!(
                    "service unhealthy (responded with \"{}\")",
                    match status {
                        0 => "UNKNOWN",
                        2 => "NOT_SERVING",
                        3 => "SERVICE_UNKNOWN",
                        _ => "?",
                    }
                )),
                Ok(Err(GrpcFail::Connect(e))) => Err(format!(
                    "timeout: failed to connect service \"{addr}\" within {}s: {e}",
                    timeout.as_secs()
                )),
                Ok(Err(GrpcFail::Rpc(12, m))) => Err(format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {m}"
                )),
                Ok(Err(GrpcFail::Rpc(c, m))) => Err(format!(
                    "error: health rpc probe failed: rpc error: code = {} desc = {m}",
                    grpc_code(c)
                )),
                Err(_) => Err(format!(
                    "timeout: health rpc did not complete within {}s",
                    timeout.as_secs()
                )),
            }
        }
    }
}

/// Go's text for the common connection errors (the events read as upstream's).
fn go_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        _ => e.to_string(),
    }
}

async fn address(host: Option<&str>, t: &Target, port: u16) -> Result<SocketAddr, String> {
    match host {
        None => t
            .pod_ip
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| "the pod has no IP address".to_string()),
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, port)),
            Err(_) => tokio::net::lookup_host((h, port))
                .await
                .map_err(|e| format!("dial tcp: lookup {h}: {e}"))?
                .next()
                .ok_or_else(|| format!("dial tcp: lookup {h}: no such host")),
        },
    }
}

async fn exec(argv: &[String], t: &Target, via: &ExecVia, timeout: Duration) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&via.exe);
    cmd.arg("--run-dir")
        .arg(&via.run_dir)
        .args([
            "exec",
            "--local",
            "-n",
            &t.namespace,
            &t.pod,
            "-c",
            &t.container,
            "--",
        ])
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting the probe command: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("command {:?} timed out", argv.join(" "))),
        Ok(Err(e)) => Err(format!("running the probe command: {e}")),
        Ok(Ok(o)) => {
            let mut out = o.stdout;
            out.extend_from_slice(&o.stderr);
            out.truncate(MAX_OUTPUT);
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out).trim_end().to_string())
            }
        }
    }
}

/// A TLS configuration that takes any certificate: the kubelet does not verify the
/// certificates of HTTPS probes either (a pod's own, usually self-signed).
fn insecure_tls() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct Any(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring's protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Any(provider)))
        .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// GET over HTTP/1.1 (or HTTPS); the status code.
async fn http_get(
    addr: SocketAddr,
    https: bool,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", go_error(&e)))?;
    let mut req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .header("user-agent", "kube-probe/1.37")
        .header("accept", "*/*");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    async fn send<S>(
        io: S,
        req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
    ) -> Result<u16, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        // A bounded look at the body, as the kubelet reads it.
        let mut body = resp.into_body();
        let mut seen = 0;
        while let Some(Ok(f)) = body.frame().await {
            seen += f.data_ref().map_or(0, |d| d.len());
            if seen > MAX_OUTPUT {
                break;
            }
        }
        conn.abort();
        Ok(code)
    }
    if https {
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(insecure_tls())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(tls, req).await
    } else {
        send(tcp, req).await
    }
}

/// Why a gRPC health check failed: no connection, or an RPC status other than OK (its
/// code and message).
enum GrpcFail {
    Connect(String),
    Rpc(u32, String),
}

impl From<String> for GrpcFail {
    fn from(e: String) -> GrpcFail {
        GrpcFail::Rpc(13, e)
    }
}

/// `grpc.health.v1.Health/Check` for `service` over HTTP/2 without TLS; the status
/// (1: SERVING).
async fn grpc_check(addr: SocketAddr, service: &str) -> Result<u64, GrpcFail> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| GrpcFail::Connect(format!("dial tcp {addr}: connect: {}", go_error(&e))))?;
    let (mut s, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| GrpcFail::Connect(e.to_string()))?;
    let conn = tokio::spawn(conn);
    // HealthCheckRequest { string service = 1; }, framed: no compression, a 4-byte length.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.37")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(frame)))
        .map_err(|e| e.to_string())?;
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| GrpcFail::Connect(e.to_string()))?;
    let head = grpc_status(resp.headers());
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    conn.abort();
    // The status is in the trailers, or in the headers of a trailers-only answer.
    if let Some((code, msg)) = collected.trailers().and_then(grpc_status).or(head) {
        if code != 0 {
            return Err(GrpcFail::Rpc(code, msg));
        }
    }
    let body = collected.to_bytes();
    // HealthCheckResponse { ServingStatus status = 1; } (absent: 0, UNKNOWN).
    let msg = body.get(5..).unwrap_or_default();
    let mut i = 0;
    let mut status = 0;
    while i < msg.len() {
        let key = msg[i];
        i += 1;
        let v = read_varint(msg, &mut i).ok_or("a malformed health response".to_string())?;
        if key == 0x08 {
            status = v;
        } else if key & 7 != 0 {
            return Err("a malformed health response".to_string().into());
        }
    }
    Ok(status)
}

/// `grpc-status` and `grpc-message`.
fn grpc_status(h: &hyper::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((code, msg))
}

fn grpc_code(c: u32) -> &'static str {
    match c {
        1 => "Canceled",
        2 => "Unknown",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        7 => "PermissionDenied",
        12 => "Unimplemented",
        14 => "Unavailable",
        _ => "Internal",
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn specs_take_defaults_and_resolve_named_ports() {
        let c = container(
            "name: web\nimage: x\nports: [{name: http, containerPort: 8080}]\nreadinessProbe: {httpGet: {port: http, path: /healthz}, periodSeconds: 2}\nlivenessProbe: {tcpSocket: {port: metrics}}\n",
        );
        let r = Spec::of(&c, Kind::Readiness).unwrap();
        assert_eq!(
            r.action,
            Action::Http {
                https: false,
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            (
                r.period,
                r.timeout,
                r.success_threshold,
                r.failure_threshold
            ),
            (Duration::from_secs(2), Duration::from_secs(1), 1, 3)
        );
        assert_eq!(
            Spec::of(&c, Kind::Liveness).unwrap().action,
            Action::Invalid("couldn't find port: metrics in container web".into())
        );
        assert!(Spec::of(&c, Kind::Startup).is_none());
    }

    #[test]
    fn thresholds_decide_the_result() {
        let c = container(
            "name: c\nimage: x\nreadinessProbe: {exec: {command: [true]}, initialDelaySeconds: 5, successThreshold: 2, failureThreshold: 2}\n",
        );
        let t0 = Instant::now();
        let mut t = Tracker::new(Spec::of(&c, Kind::Readiness).unwrap(), t0);
        assert_eq!(t.next(), t0 + Duration::from_secs(5));
        assert_eq!(t.result, None);
        assert_eq!(t.record(true, t0), None, "one success of two");
        assert_eq!(t.next(), t0 + Duration::from_secs(10));
        assert_eq!(t.record(true, t0), Some(true));
        assert_eq!(t.record(true, t0), None, "no change, nothing said");
        assert_eq!(t.record(false, t0), None);
        assert_eq!(t.record(true, t0), None, "a success resets the failures");
        assert_eq!(t.record(false, t0), None);
        assert_eq!(t.record(false, t0), Some(false));
        assert_eq!(t.failures(), 2);
    }

    /// A gRPC health server over HTTP/2 (hyper's), as grpc-go answers: SERVING for "",
    /// NOT_SERVING for "db", and a trailers-only NOT_FOUND status for any other service.
    #[tokio::test]
    async fn grpc_probes_read_the_health_protocol() {
        use http_body_util::{BodyExt, StreamBody};
        use hyper::body::{Bytes, Frame, Incoming};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    assert_eq!(req.headers()["content-type"], "application/grpc");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let service =
                        String::from_utf8_lossy(body.get(7..).unwrap_or_default()).to_string();
                    let mut trailers = hyper::HeaderMap::new();
                    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                        match service.as_str() {
                            "" | "db" => {
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                let status = if service.is_empty() { 1 } else { 2 };
                                vec![
                                    Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                                    Ok(Frame::trailers(trailers)),
                                ]
                            }
                            _ => vec![],
                        };
                    let mut resp =
                        hyper::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    if !matches!(service.as_str(), "" | "db") {
                        resp.headers_mut()
                            .insert("grpc-status", "5".parse().unwrap());
                        resp.headers_mut()
                            .insert("grpc-message", "unknown service".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        let target = Target {
            pod_ip: Some("127.0.0.1".parse().unwrap()),
            namespace: "default".into(),
            pod: "p".into(),
            container: "c".into(),
        };
        let via = ExecVia {
            exe: "/bin/false".into(),
            run_dir: "/nonexistent".into(),
        };
        let t = Duration::from_secs(2);
        let grpc = |service: &str| Action::Grpc {
            port,
            service: service.into(),
        };
        run(&grpc(""), &target, &via, t).await.unwrap();
        assert_eq!(
            run(&grpc("db"), &target, &via, t).await.unwrap_err(),
            "service unhealthy (responded with \"NOT_SERVING\")"
        );
        assert_eq!(
            run(&grpc("nosuch"), &target, &via, t).await.unwrap_err(),
            "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
        );
    }

    /// Real sockets on loopback: a TCP port that listens and one that does not; an HTTP
    /// server answering 200 then 500.
    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let target = Target {
            pod_ip: Some("127.0.0.1".parse().unwrap()),
            namespace: "default".into(),
            pod: "p".into(),
            container: "c".into(),
        };
        let via = ExecVia {
            exe: "/bin/false".into(),
            run_dir: "/nonexistent".into(),
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Duration::from_secs(2);
        run(&Action::Tcp { host: None, port }, &target, &via, t)
            .await
            .unwrap();
        drop(l);
        let e = run(&Action::Tcp { host: None, port }, &target, &via, t)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for code in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("x-probe: yes"), "{req}");
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\ncontent-length: 2\r\n\r\nok").as_bytes())
                    .await;
            }
        });
        let http = Action::Http {
            https: false,
            host: None,
            port,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "yes".into())],
        };
        run(&http, &target, &via, t).await.unwrap();
        assert_eq!(
            run(&http, &target, &via, t).await.unwrap_err(),
            "HTTP probe failed with statuscode: 500"
        );
    }
}
