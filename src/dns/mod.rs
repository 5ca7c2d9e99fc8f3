//! Cluster DNS, in the knode binary (no extra daemon): the zone built from Services and
//! EndpointSlices ([`zone`]), and DNS messages answered from it ([`respond`]); names outside
//! the cluster zone are the upstream resolvers' (the caller forwards them).
//!
//! Messages are read and written with hickory-proto (the Hickory DNS project's wire format),
//! not by hand.

pub mod keep;
pub mod server;
pub mod zone;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{self, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub use zone::{Lookup, Qtype, Rr, ServiceDns, Zone};

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";

/// The TTL of the cluster's records (kubeadm's Corefile: `ttl 30`).
pub const TTL: u32 = 30;

/// How a query came: over UDP an answer is held to 512 bytes, or to what the client's EDNS
/// says (the rest is cut and the answer marked truncated, so the client asks again over TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Reply {
    /// The answer, to send back.
    Answer(Vec<u8>),
    /// Not the cluster's: ask the upstream resolvers.
    Forward,
    /// Not a DNS message worth answering (too short to carry an id).
    Drop,
}

fn qtype(t: RecordType) -> Qtype {
    match t {
        RecordType::A => Qtype::A,
        RecordType::AAAA => Qtype::Aaaa,
        RecordType::SRV => Qtype::Srv,
        RecordType::CNAME => Qtype::Cname,
        RecordType::PTR => Qtype::Ptr,
        RecordType::TXT => Qtype::Txt,
        RecordType::ANY => Qtype::Any,
        _ => Qtype::Other,
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

fn record(owner: &str, rr: &Rr) -> Option<Record> {
    let data = match rr {
        Rr::A(a) => RData::A(rdata::A(*a)),
        Rr::Aaaa(a) => RData::AAAA(rdata::AAAA(*a)),
        Rr::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(rdata::SRV::new(*priority, *weight, *port, name(target)?)),
        Rr::Cname(t) => RData::CNAME(rdata::CNAME(name(t)?)),
        Rr::Ptr(t) => RData::PTR(rdata::PTR(name(t)?)),
        Rr::Txt(t) => RData::TXT(rdata::TXT::new(vec![t.clone()])),
    };
    Some(Record::from_rdata(name(owner)?, TTL, data))
}

/// The zone's SOA, for the authority section of a negative answer (its minimum is the
/// negative-caching TTL).
fn soa(zone: &Zone) -> Option<Record> {
    let d = zone.domain();
    let data = SOA::new(
        name(&format!("ns.dns.{d}"))?,
        name(&format!("hostmaster.{d}"))?,
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Some(Record::from_rdata(name(d)?, TTL, RData::SOA(data)))
}

/// Answers `request` from `zone`, or says it is for the upstream resolvers. A message that
/// cannot be parsed gets FORMERR; an opcode other than QUERY gets NOTIMP; a query of a
/// class other than IN or of more than one question gets REFUSED or FORMERR, as CoreDNS does.
pub fn respond(request: &[u8], zone: &Zone, transport: Transport) -> Reply {
    let req = match Message::from_vec(request) {
        Ok(m) => m,
        Err(_) if request.len() < 12 => return Reply::Drop,
        Err(_) => {
            let id = u16::from_be_bytes([request[0], request[1]]);
            return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return encode(resp);
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return encode(resp);
    };
    resp.add_query(q.clone());
    let max = match (transport, &req.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
    };
    if req.edns.is_some() {
        // An EDNS query gets an EDNS answer (RFC 6891).
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(edns);
    }
    let lookup = zone.lookup(&q.name().to_ascii(), qtype(q.query_type()));
    match lookup {
        Lookup::NotOurs => return Reply::Forward,
        Lookup::Answer(rrs) => {
            resp.metadata.authoritative = true;
            for (owner, rr) in &rrs {
                if let Some(r) = record(owner, rr) {
                    resp.add_answer(r);
                }
            }
        }
        Lookup::NoData | Lookup::NxDomain => {
            resp.metadata.authoritative = true;
            if lookup == Lookup::NxDomain {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Some(s) = soa(zone) {
                resp.add_authority(s);
            }
        }
    }
    match resp.to_vec() {
        Ok(b) if b.len() > max => encode(resp.truncate()),
        Ok(b) => Reply::Answer(b),
        Err(_) => Reply::Drop,
    }
}

/// The largest UDP answer sent, whatever the client offers: 1232 bytes, the DNS flag day's.
const EDNS_PAYLOAD: u16 = 1232;

/// An empty answer to `request` with `code` (when the request has an id to answer).
pub fn error_reply(request: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*request.first()?, *request.get(1)?]);
    let mut m = Message::error_msg(id, OpCode::Query, code);
    if let Ok(req) = Message::from_vec(request) {
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.add_queries(req.queries);
    }
    m.to_vec().ok()
}

fn encode(m: Message) -> Reply {
    match m.to_vec() {
        Ok(b) => Reply::Answer(b),
        Err(_) => Reply::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        let mut z = Zone::new("cluster.local");
        z.set_service(&ServiceDns {
            namespace: "default".into(),
            name: "kubernetes".into(),
            ports: vec![zone::NamedPort {
                name: "https".into(),
                protocol: "tcp".into(),
                port: 443,
            }],
            kind: zone::Kind::ClusterIp(vec!["10.96.0.1".parse().unwrap()]),
        });
        z
    }

    fn ask(z: &Zone, q: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(q).unwrap(), t));
        match respond(&m.to_vec().unwrap(), z, Transport::Udp) {
            Reply::Answer(b) => {
                let r = Message::from_vec(&b).unwrap();
                assert_eq!(r.metadata.id, m.metadata.id);
                r
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_the_cluster_zone_and_forwards_the_rest() {
        let z = zone();
        let r = ask(&z, "kubernetes.default.svc.cluster.local.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative && r.metadata.recursion_available);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, TTL);
        assert_eq!(
            r.answers[0].data,
            RData::A(rdata::A("10.96.0.1".parse().unwrap()))
        );
        let r = ask(
            &z,
            "_https._tcp.kubernetes.default.svc.cluster.local.",
            RecordType::SRV,
        );
        let RData::SRV(srv) = &r.answers[0].data else {
            panic!("{r:?}")
        };
        assert_eq!(srv.port, 443);
        let r = ask(&z, "nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert!(matches!(r.authorities[0].data, RData::SOA(_)));
        let r = ask(&z, "kubernetes.default.svc.cluster.local.", RecordType::MX);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty() && !r.authorities.is_empty());
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            respond(&m.to_vec().unwrap(), &z, Transport::Udp),
            Reply::Forward
        ));
    }

    /// 100 endpoints of a headless service: 100 A records, about 1.7 KB. Over UDP without EDNS
    /// the answer is cut to its question and marked truncated; with EDNS it is held to 1232
    /// bytes (still truncated here); over TCP it is whole.
    #[test]
    fn big_answers_are_truncated_over_udp_only() {
        let mut z = zone();
        z.set_service(&ServiceDns {
            namespace: "default".into(),
            name: "many".into(),
            ports: vec![],
            kind: zone::Kind::Headless(
                (0..100u8)
                    .map(|i| zone::EndpointDns {
                        addresses: vec![std::net::Ipv4Addr::new(10, 244, 0, i + 2).into()],
                        hostname: None,
                        ready: true,
                        ports: vec![],
                    })
                    .collect(),
            ),
        });
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("many.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let answer = |m: &Message, t| match respond(&m.to_vec().unwrap(), &z, t) {
            Reply::Answer(b) => (b.len(), Message::from_vec(&b).unwrap()),
            other => panic!("{other:?}"),
        };
        let (len, r) = answer(&m, Transport::Udp);
        assert!(len <= 512 && r.metadata.truncation && r.answers.is_empty());
        assert_eq!(r.queries, m.queries);
        let (_, r) = answer(&m, Transport::Tcp);
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 100);
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        m.set_edns(edns);
        let (len, r) = answer(&m, Transport::Udp);
        assert!(len <= 1232 && r.metadata.truncation, "{len}");
        assert_eq!(r.edns.map(|e| e.max_payload()), Some(1232));
    }

    #[test]
    fn malformed_queries_get_errors_not_silence() {
        let z = zone();
        assert!(matches!(
            respond(&[1, 2, 3], &z, Transport::Udp),
            Reply::Drop
        ));
        let Reply::Answer(b) = respond(
            &[0x12, 0x34, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 7],
            &z,
            Transport::Udp,
        ) else {
            panic!()
        };
        let r = Message::from_vec(&b).unwrap();
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // Two questions in one message: FORMERR.
        let mut m = Message::query();
        for q in ["a.cluster.local.", "b.cluster.local."] {
            m.add_query(Query::query(Name::from_ascii(q).unwrap(), RecordType::A));
        }
        let Reply::Answer(b) = respond(&m.to_vec().unwrap(), &z, Transport::Udp) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&b).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
    }
}
