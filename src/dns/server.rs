//! The DNS server: UDP and TCP on one address, answers from the cluster zone, other names
//! forwarded to the node's upstream resolvers (from its `/etc/resolv.conf`) with a cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::{error_reply, respond, Reply, Transport, Zone};

/// How long an upstream resolver has to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded answers are cached for their smallest TTL, at most this long (CoreDNS's
/// `cache 30`), and at most this many.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_ENTRIES: usize = 10_000;
/// Queries waiting for an upstream resolver at once; more are REFUSED (CoreDNS's forward
/// plugin does the same past its `max_concurrent`), so a pod flooding the server with names
/// that never resolve cannot make it hold unbounded memory.
const MAX_FORWARDS: usize = 1000;
/// TCP connections open at once; more are closed as they come.
const MAX_TCP: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cluster DNS: starting its thread: {0}")]
    Thread(std::io::Error),
    #[error("cluster DNS: its API client: {0}")]
    Client(#[from] crate::client::ClientError),
    #[error("cluster DNS: its thread stopped before serving")]
    Stopped,
}

/// Serves cluster DNS on `ip`:53 in a thread of its own (with its own runtime, so a busy
/// node never delays an answer), the zone kept from the API server of `kubeconfig`, other
/// names forwarded to the nameservers of `resolv_conf` (but never to `ip` itself). Returns
/// once the sockets are bound.
pub fn start(
    kubeconfig: &std::path::Path,
    ip: std::net::IpAddr,
    resolv_conf: &std::path::Path,
) -> Result<(), DnsError> {
    let upstreams: Vec<SocketAddr> =
        upstreams(&std::fs::read_to_string(resolv_conf).unwrap_or_default())
            .into_iter()
            .filter(|u| u.ip() != ip)
            .collect();
    let kubeconfig = kubeconfig.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), DnsError>>();
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            // The UDP loop runs on this thread (block_on); the watches, the zone's upkeep
            // and forwarded queries on one worker, so decoding a burst of events never
            // holds up an answer.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("dns")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(DnsError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let addr = SocketAddr::new(ip, 53);
                let listener = match Listener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let client = match crate::client::from_kubeconfig(&kubeconfig).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let dns = Dns::new(Zone::new(super::DOMAIN), upstreams);
                tokio::spawn(super::keep::keep_zone(client, dns.clone()));
                let _ = tx.send(Ok(()));
                tracing::info!(%addr, "cluster DNS serving");
                listener.serve(dns).await;
            });
        })
        .map_err(DnsError::Thread)?;
    rx.recv().map_err(|_| DnsError::Stopped)?
}

/// The upstream resolvers in a resolv.conf (`nameserver` lines), on port 53.
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|ip| ip.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A server's shared state: the zone, where to forward, the forward cache.
pub struct Dns {
    pub zone: RwLock<Zone>,
    upstreams: Vec<SocketAddr>,
    cache: Mutex<Cache>,
    forwards: Arc<tokio::sync::Semaphore>,
}

/// What becomes of a query without waiting.
enum Now {
    Send(Vec<u8>),
    Forward,
    Nothing,
}

/// Question (a request without its id) -> the answer (id included) and until when it holds.
type Cache = HashMap<Vec<u8>, (Vec<u8>, Instant)>;

impl Dns {
    pub fn new(zone: Zone, upstreams: Vec<SocketAddr>) -> Arc<Dns> {
        Arc::new(Dns {
            zone: RwLock::new(zone),
            upstreams,
            cache: Mutex::new(HashMap::new()),
            forwards: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
        })
    }

    /// The answer to one query: from the zone, the cache, or the upstream resolvers (None
    /// when no answer should be sent).
    pub async fn answer(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match self.answer_now(request, transport) {
            Now::Send(b) => Some(b),
            Now::Nothing => None,
            Now::Forward => {
                let Ok(_permit) = self.forwards.clone().try_acquire_owned() else {
                    return error_reply(request, ResponseCode::Refused);
                };
                self.forward(request).await
            }
        }
    }

    /// The answer from the zone or the forward cache, if it is there.
    fn answer_now(&self, request: &[u8], transport: Transport) -> Now {
        let reply = respond(request, &self.zone.read().expect("zone"), transport);
        match reply {
            Reply::Answer(b) => Now::Send(b),
            Reply::Drop => Now::Nothing,
            Reply::Forward => match self.cached(request) {
                Some(b) => Now::Send(b),
                None => Now::Forward,
            },
        }
    }

    fn cached(&self, request: &[u8]) -> Option<Vec<u8>> {
        let key = request.get(2..)?;
        let cache = self.cache.lock().expect("cache");
        let (answer, until) = cache.get(key)?;
        if Instant::now() >= *until {
            return None;
        }
        let mut a = answer.clone();
        a[..2].copy_from_slice(&request[..2]);
        Some(a)
    }

    async fn forward(&self, request: &[u8]) -> Option<Vec<u8>> {
        let key = request.get(2..)?.to_vec();
        let id = [request[0], request[1]];
        for up in &self.upstreams {
            let Ok(sock) = UdpSocket::bind(if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await
            else {
                continue;
            };
            if sock.send_to(request, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 65535];
            let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    // Only the server asked, with the id asked.
                    if from == *up && n >= 2 && buf[..2] == id {
                        return Ok::<usize, std::io::Error>(n);
                    }
                }
            })
            .await;
            let Ok(Ok(n)) = got else {
                tracing::debug!(upstream = %up, "no answer from an upstream resolver");
                continue;
            };
            let answer = buf[..n].to_vec();
            if let Ok(m) = Message::from_vec(&answer) {
                let ttl = m
                    .answers
                    .iter()
                    .chain(&m.authorities)
                    .map(|r| r.ttl)
                    .min()
                    .map_or(CACHE_TTL, |t| Duration::from_secs(t.into()).min(CACHE_TTL));
                if !ttl.is_zero() && !m.metadata.truncation {
                    let mut c = self.cache.lock().expect("cache");
                    if c.len() >= CACHE_ENTRIES {
                        let now = Instant::now();
                        c.retain(|_, (_, until)| *until > now);
                        if c.len() >= CACHE_ENTRIES {
                            c.clear();
                        }
                    }
                    c.insert(key, (answer.clone(), Instant::now() + ttl));
                }
            }
            return Some(answer);
        }
        None
    }
}

/// DNS's sockets on one address: UDP, and TCP on the same port.
pub struct Listener {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0: a free port, the same for both).
    pub async fn bind(addr: SocketAddr) -> Result<Listener, DnsError> {
        let bind = |source| DnsError::Bind { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(bind)?;
        let at = udp.local_addr().map_err(bind)?;
        let tcp = TcpListener::bind(at).await.map_err(bind)?;
        Ok(Listener { udp, tcp })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves DNS until the task is dropped.
    pub async fn serve(self, dns: Arc<Dns>) {
        serve(dns, Arc::new(self.udp), self.tcp).await
    }
}

async fn serve(dns: Arc<Dns>, udp: Arc<UdpSocket>, tcp: TcpListener) {
    let d = dns.clone();
    let tcp_task = tokio::spawn(async move {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
        loop {
            let Ok((conn, _)) = tcp.accept().await else {
                continue;
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                continue; // dropped: closed
            };
            tokio::spawn(serve_tcp(d.clone(), conn, permit));
        }
    });
    let _abort = AbortOnDrop(tcp_task);
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else {
            continue;
        };
        let req = &buf[..n];
        // The cluster's names (and cached ones) are answered here and now: no task, no copy.
        match dns.answer_now(req, Transport::Udp) {
            Now::Send(a) => {
                let _ = udp.send_to(&a, from).await;
            }
            Now::Nothing => {}
            Now::Forward => {
                let Ok(permit) = dns.forwards.clone().try_acquire_owned() else {
                    if let Some(a) = error_reply(req, ResponseCode::Refused) {
                        let _ = udp.send_to(&a, from).await;
                    }
                    continue;
                };
                let (d, udp, req) = (dns.clone(), udp.clone(), req.to_vec());
                tokio::spawn(async move {
                    if let Some(a) = d.forward(&req).await {
                        let _ = udp.send_to(&a, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// One TCP client: messages with a two-byte length, until it closes or idles 10 s.
async fn serve_tcp(
    dns: Arc<Dns>,
    mut conn: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    loop {
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut len));
        if !matches!(read.await, Ok(Ok(_))) {
            return;
        }
        let mut req = vec![0u8; u16::from_be_bytes(len).into()];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut req));
        if !matches!(read.await, Ok(Ok(_))) {
            return;
        }
        let Some(a) = dns.answer(&req, Transport::Tcp).await else {
            return;
        };
        let Ok(n) = u16::try_from(a.len()) else {
            return;
        };
        if conn.write_all(&n.to_be_bytes()).await.is_err() || conn.write_all(&a).await.is_err() {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::ServiceDns;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RData, RecordType};

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    /// The cluster zone with one service, web.default (10.96.0.20).
    fn web_zone() -> Zone {
        let mut zone = Zone::new("cluster.local");
        zone.set_service(&ServiceDns {
            namespace: "default".into(),
            name: "web".into(),
            ports: vec![],
            kind: crate::dns::zone::Kind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
        });
        zone
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let conf = "# comment\nnameserver 10.0.0.2\nsearch lab\nnameserver ::1\nnameserver bad\n";
        assert_eq!(
            upstreams(conf),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    /// An upstream that never answers: the first MAX_FORWARDS names wait for it, the next is
    /// REFUSED at once, and the cluster's own names are still answered meanwhile.
    #[tokio::test]
    async fn forwards_waiting_at_once_are_bounded() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let zone = web_zone();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let dns = Dns::new(zone, vec![silent.local_addr().unwrap()]);
        let server = tokio::spawn(listener.serve(dns.clone()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // One after another (no socket buffer overflows): each reaches the upstream and
        // holds its place.
        let mut buf = vec![0u8; 512];
        for i in 0..MAX_FORWARDS {
            let q = query(&format!("n{i}.example.org."), RecordType::A);
            client.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), silent.recv_from(&mut buf))
                .await
                .expect("forwarded")
                .unwrap();
        }
        for (name, code) in [
            ("one-more.example.org.", ResponseCode::Refused),
            ("web.default.svc.cluster.local.", ResponseCode::NoError),
        ] {
            let q = query(name, RecordType::A);
            client.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            let r = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(
                (r.metadata.id, r.metadata.response_code),
                (q.metadata.id, code),
                "{name}"
            );
        }
        assert_eq!(dns.forwards.available_permits(), 0);
        server.abort();
    }

    /// Over real sockets on loopback: the cluster's names from the zone, over UDP and TCP;
    /// another name from an upstream (a fake one answering once), then from the cache.
    #[tokio::test]
    async fn serves_the_zone_and_forwards_with_a_cache() {
        // The upstream: answers the first query it gets, then nothing.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            loop {
                let (n, from) = up.recv_from(&mut buf).await.unwrap();
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.add_query(q.queries[0].clone());
                r.add_answer(hickory_proto::rr::Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(hickory_proto::rr::rdata::A("192.0.2.7".parse().unwrap())),
                ));
                up.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let zone = web_zone();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(listener.serve(Dns::new(zone, vec![up_addr])));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |m: Message| {
            let client = &client;
            async move {
                client.send_to(&m.to_vec().unwrap(), addr).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let (n, _) =
                    tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                        .await
                        .expect("an answer")
                        .unwrap();
                let r = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(r.metadata.id, m.metadata.id);
                r
            }
        };
        let r = ask(query("web.default.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(
            r.answers[0].data,
            RData::A(hickory_proto::rr::rdata::A("10.96.0.20".parse().unwrap()))
        );
        for _ in 0..2 {
            let r = ask(query("example.org.", RecordType::A)).await;
            assert_eq!(
                r.answers[0].data,
                RData::A(hickory_proto::rr::rdata::A("192.0.2.7".parse().unwrap()))
            );
        }
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the second came from the cache"
        );
        // TCP: a length, the message; the same answer.
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let m = query("web.default.svc.cluster.local.", RecordType::A)
            .to_vec()
            .unwrap();
        conn.write_all(&(m.len() as u16).to_be_bytes())
            .await
            .unwrap();
        conn.write_all(&m).await.unwrap();
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len).into()];
        conn.read_exact(&mut body).await.unwrap();
        assert_eq!(Message::from_vec(&body).unwrap().answers.len(), 1);
        server.abort();
    }
}
