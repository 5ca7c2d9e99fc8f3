//! A fault-injecting HTTP proxy in front of a real registry. It speaks just enough HTTP/1.1
//! (one request per connection, `Connection: close`) to control exactly when a transfer
//! breaks. Faults: Bearer token auth (with its own token endpoint), cross-host redirects of
//! blob downloads, broken and stalled blob transfers, corrupted blob bytes, forged manifests.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Signals when the stall begins; waits on the receiver before closing.
pub type Stall = (Sender<()>, Arc<Mutex<Receiver<()>>>);

#[derive(Default)]
pub struct Faults {
    /// Require `Bearer` tokens; the token endpoint wants these Basic credentials (if set).
    pub bearer: Option<Option<(String, String)>>,
    /// Answer blob GETs with a 307 to `localhost:<port>` (another host for the client).
    pub redirect_blobs: bool,
    /// Close the connection halfway through the first GET of each blob.
    pub break_blobs: bool,
    /// Flip a byte in the middle of every blob body.
    pub corrupt_blobs: bool,
    /// Send half of the first blob, then signal and hold the connection until released.
    pub stall: Option<Stall>,
    /// Replace manifest responses with this (Content-Type, body).
    pub manifest: Option<(String, Vec<u8>)>,
}

#[derive(Default)]
pub struct Seen {
    pub token_requests: Vec<String>,
    pub range_requests: usize,
    pub redirected_with_auth: usize,
    pub redirected_without_auth: usize,
    pub broken: usize,
}

/// A proxy whose first blob transfer stalls halfway: `stalled` receives when it does, and a
/// send on `release` ends it.
pub fn stalling(upstream: SocketAddr) -> (Proxy, Receiver<()>, Sender<()>) {
    let (tx, stalled) = std::sync::mpsc::channel();
    let (release, rx) = std::sync::mpsc::channel();
    let proxy = Proxy::start(
        upstream,
        Faults {
            stall: Some((tx, Arc::new(Mutex::new(rx)))),
            ..Default::default()
        },
    );
    (proxy, stalled, release)
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_req(s: &TcpStream) -> Option<Req> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = vec![];
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Some(Req {
        method,
        path,
        headers,
    })
}

fn respond(s: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8], send: usize) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    let _ = s.write_all(&body[..send.min(body.len())]);
    let _ = s.flush();
}

impl Proxy {
    pub fn start(upstream: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(faults);
        let broken_once = Arc::new(Mutex::new(HashSet::new()));
        let stalled = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = conn else { continue };
                let (seen, faults, broken_once, stalled) = (
                    seen2.clone(),
                    faults.clone(),
                    broken_once.clone(),
                    stalled.clone(),
                );
                std::thread::spawn(move || {
                    handle(s, upstream, addr, &faults, &seen, &broken_once, &stalled)
                });
            }
        });
        Proxy {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    mut s: TcpStream,
    upstream: SocketAddr,
    me: SocketAddr,
    f: &Faults,
    seen: &Mutex<Seen>,
    broken_once: &Mutex<HashSet<String>>,
    stalled: &AtomicBool,
) {
    let Some(req) = read_req(&s) else { return };
    let token = "knode-test-token";
    if req.path.starts_with("/token") {
        seen.lock().unwrap().token_requests.push(req.path.clone());
        if let Some(Some((u, p))) = &f.bearer {
            use base64::Engine as _;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            );
            if req.header("Authorization") != Some(want.as_str()) {
                respond(
                    &mut s,
                    401,
                    &[],
                    b"{\"errors\":[{\"code\":\"DENIED\"}]}",
                    usize::MAX,
                );
                return;
            }
        }
        let body = format!("{{\"access_token\":\"{token}\",\"expires_in\":300}}");
        respond(
            &mut s,
            200,
            &[("Content-Type".into(), "application/json".into())],
            body.as_bytes(),
            usize::MAX,
        );
        return;
    }
    let (path, redirected) = match req.path.strip_prefix("/redirected") {
        Some(p) => (p.to_string(), true),
        None => (req.path.clone(), false),
    };
    if redirected {
        let mut g = seen.lock().unwrap();
        if req.header("Authorization").is_some() {
            g.redirected_with_auth += 1;
        } else {
            g.redirected_without_auth += 1;
        }
    } else if f.bearer.is_some() && req.header("Authorization") != Some(&format!("Bearer {token}"))
    {
        let repo = path
            .trim_start_matches("/v2/")
            .split("/manifests/")
            .next()
            .unwrap_or("")
            .split("/blobs/")
            .next()
            .unwrap_or("");
        let challenge = format!("Bearer realm=\"http://{me}/token\",service=\"knode-test\",scope=\"repository:{repo}:pull\"");
        respond(
            &mut s,
            401,
            &[("WWW-Authenticate".into(), challenge)],
            b"{}",
            usize::MAX,
        );
        return;
    }
    let is_blob = path.contains("/blobs/sha256:") && req.method == "GET";
    if is_blob && f.redirect_blobs && !redirected {
        let loc = format!("http://localhost:{}/redirected{}", me.port(), path);
        respond(&mut s, 307, &[("Location".into(), loc)], b"", 0);
        return;
    }
    if path.contains("/manifests/") {
        if let Some((ct, body)) = &f.manifest {
            respond(
                &mut s,
                200,
                &[("Content-Type".into(), ct.clone())],
                body,
                usize::MAX,
            );
            return;
        }
    }
    // Forward to the registry.
    let mut up = TcpStream::connect(upstream).unwrap();
    let mut fwd = format!(
        "{} {} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n",
        req.method, path
    );
    for (k, v) in &req.headers {
        if ["accept", "range"].contains(&k.to_ascii_lowercase().as_str()) {
            fwd.push_str(&format!("{k}: {v}\r\n"));
            if k.eq_ignore_ascii_case("range") {
                seen.lock().unwrap().range_requests += 1;
            }
        }
    }
    fwd.push_str("\r\n");
    up.write_all(fwd.as_bytes()).unwrap();
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| {
            !["content-length", "connection", "transfer-encoding"]
                .contains(&k.to_ascii_lowercase().as_str())
        })
        .collect();
    let mut send = usize::MAX;
    if is_blob && status == 200 && body.len() > 16 {
        if f.corrupt_blobs {
            let mid = body.len() / 2;
            body[mid] ^= 0x5a;
        }
        if f.break_blobs && broken_once.lock().unwrap().insert(path.clone()) {
            seen.lock().unwrap().broken += 1;
            send = body.len() / 2;
        }
        if let Some((tx, rx)) = &f.stall {
            if !stalled.swap(true, Ordering::SeqCst) {
                respond(&mut s, status, &headers, &body, body.len() / 2);
                let _ = tx.send(());
                let _ = rx.lock().unwrap().recv();
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    respond(&mut s, status, &headers, &body, send);
    let _ = s.shutdown(Shutdown::Both);
}
