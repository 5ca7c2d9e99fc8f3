//! The cluster zone's records, as the Kubernetes DNS specification (kubernetes/dns
//! `docs/specification.md`, schema 1.0.1) lays them out, built from Services and their
//! EndpointSlices. No I/O: [`Zone::lookup`] answers a name and a type.
//!
//! - A ClusterIP Service: `A`/`AAAA` `<svc>.<ns>.svc.<zone>` (its cluster IPs), `SRV`
//!   `_<port>._<proto>.<svc>.<ns>.svc.<zone>` per named port (priority 0, weight 100, as
//!   CoreDNS answers), `PTR` for each cluster IP.
//! - A headless Service: an `A`/`AAAA` per ready endpoint address under the service's name,
//!   `<hostname>.<svc>.<ns>.svc.<zone>` per endpoint (its `hostname`, else its address with
//!   dashes, as CoreDNS names them), `SRV` per endpoint and named port, `PTR` per address.
//! - An ExternalName Service: `CNAME` to the external name.
//! - `TXT "1.0.1"` at `dns-version.<zone>`; pod names `a-b-c-d.<ns>.pod.<zone>` answer the
//!   address they spell (CoreDNS's `pods insecure`, kubeadm's default).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.0.1";

/// A record's data (its owner name is kept beside it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rr {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Cname(String),
    Ptr(String),
    Txt(String),
}

/// The record types a query can ask for, as far as the zone is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qtype {
    A,
    Aaaa,
    Srv,
    Cname,
    Ptr,
    Txt,
    Any,
    /// A type the zone never holds (MX, NS, ...): an existing name answers with no data.
    Other,
}

impl Rr {
    fn matches(&self, q: Qtype) -> bool {
        matches!(
            (self, q),
            (_, Qtype::Any)
                | (Rr::A(_), Qtype::A)
                | (Rr::Aaaa(_), Qtype::Aaaa)
                | (Rr::Srv { .. }, Qtype::Srv)
                | (Rr::Cname(_), Qtype::Cname)
                | (Rr::Ptr(_), Qtype::Ptr)
                | (Rr::Txt(_), Qtype::Txt)
        )
    }
}

/// What the zone says about a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Records (owner name, data); a CNAME stands for every type but its own.
    Answer(Vec<(String, Rr)>),
    /// The name exists (or has names below it) but has no record of the type.
    NoData,
    /// The name is in the zone and does not exist.
    NxDomain,
    /// Not the cluster's to answer: forward it.
    NotOurs,
}

/// One named port of a service or an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    /// `tcp`, `udp` or `sctp`, as the SRV name spells it.
    pub protocol: String,
    pub port: u16,
}

/// One endpoint of a headless service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDns {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub ready: bool,
    pub ports: Vec<NamedPort>,
}

/// What a service is, for DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless(Vec<EndpointDns>),
    ExternalName(String),
}

/// A service as the zone needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDns {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<NamedPort>,
    pub kind: Kind,
}

/// A named port (an unnamed one has no SRV record).
fn named(name: &Option<String>, protocol: &Option<String>, port: Option<i32>) -> Option<NamedPort> {
    Some(NamedPort {
        name: name.clone().filter(|n| !n.is_empty())?,
        protocol: protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(port?).ok()?,
    })
}

impl ServiceDns {
    /// From a Service and the EndpointSlices labelled with its name (used for headless
    /// services only: a ClusterIP's records do not depend on its endpoints).
    pub fn from_api(svc: &Service, slices: &[&EndpointSlice]) -> Option<ServiceDns> {
        let mut d = ServiceDns::from_service(svc)?;
        if let Kind::Headless(eps) = &mut d.kind {
            for s in slices {
                eps.extend(slice_endpoints(s));
            }
        }
        Some(d)
    }

    /// From a Service alone: a headless one with no endpoints yet (they come from its
    /// EndpointSlices, [`slice_endpoints`]).
    pub fn from_service(svc: &Service) -> Option<ServiceDns> {
        let namespace = svc.metadata.namespace.clone()?;
        let name = svc.metadata.name.clone()?;
        let spec = svc.spec.as_ref()?;
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named(&p.name, &p.protocol, Some(p.port)))
            .collect();
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            Kind::ExternalName(
                spec.external_name
                    .clone()?
                    .trim_end_matches('.')
                    .to_string(),
            )
        } else {
            let ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .fold(Vec::new(), |mut v, ip| {
                    if !v.contains(&ip) {
                        v.push(ip);
                    }
                    v
                });
            if ips.is_empty() {
                Kind::Headless(Vec::new())
            } else {
                Kind::ClusterIp(ips)
            }
        };
        Some(ServiceDns {
            namespace,
            name,
            ports,
            kind,
        })
    }
}

/// The endpoints of one EndpointSlice, for a headless service's records.
pub fn slice_endpoints(s: &EndpointSlice) -> Vec<EndpointDns> {
    let ports: Vec<NamedPort> = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| named(&p.name, &p.protocol, p.port))
        .collect();
    s.endpoints
        .iter()
        .flatten()
        .map(|e| EndpointDns {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: e.hostname.clone().filter(|h| !h.is_empty()),
            // As EndpointSlices say: ready unless said otherwise.
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            ports: ports.clone(),
        })
        .collect()
}

/// The reverse name of an address: `4.3.2.1.in-addr.arpa.`, or the nibbles under `ip6.arpa.`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa."
        }
    }
}

/// An address as a DNS label: `10-244-0-5` (IPv6: colons become dashes).
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn address(ip: IpAddr) -> Rr {
    match ip {
        IpAddr::V4(a) => Rr::A(a),
        IpAddr::V6(a) => Rr::Aaaa(a),
    }
}

/// The cluster zone: every service's records, by owner name.
#[derive(Debug)]
pub struct Zone {
    /// `cluster.local.`
    domain: String,
    by_name: HashMap<String, Vec<Rr>>,
    /// Each service's records, to take them out when it changes.
    by_service: HashMap<(String, String), Vec<(String, Rr)>>,
    /// Names that have names below them (with how many records below), which exist with no
    /// data of their own (`svc.cluster.local.`, `default.svc.cluster.local.`, ...).
    parents: HashMap<String, usize>,
}

impl Zone {
    /// The zone for `domain` (`cluster.local`).
    pub fn new(domain: &str) -> Zone {
        let domain = format!("{}.", domain.trim_end_matches('.').to_ascii_lowercase());
        let mut z = Zone {
            domain: domain.clone(),
            by_name: HashMap::new(),
            by_service: HashMap::new(),
            parents: HashMap::new(),
        };
        z.insert(
            &format!("dns-version.{domain}"),
            Rr::Txt(SCHEMA_VERSION.into()),
        );
        z
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// How many services the zone holds.
    pub fn services(&self) -> usize {
        self.by_service.len()
    }

    fn insert(&mut self, owner: &str, rr: Rr) {
        // Kept in order, so that answers come out the same each time with no sort.
        let v = self.by_name.entry(owner.to_string()).or_default();
        let at = v.binary_search(&rr).unwrap_or_else(|i| i);
        v.insert(at, rr);
        let mut rest = owner;
        while let Some((_, up)) = rest.split_once('.') {
            if up.is_empty() {
                break;
            }
            *self.parents.entry(up.to_string()).or_default() += 1;
            rest = up;
        }
    }

    fn take(&mut self, owner: &str, rr: &Rr) {
        if let Some(v) = self.by_name.get_mut(owner) {
            if let Some(i) = v.iter().position(|r| r == rr) {
                v.remove(i);
            }
            if v.is_empty() {
                self.by_name.remove(owner);
            }
        }
        let mut rest = owner;
        while let Some((_, up)) = rest.split_once('.') {
            if up.is_empty() {
                break;
            }
            if let Some(n) = self.parents.get_mut(up) {
                *n -= 1;
                if *n == 0 {
                    self.parents.remove(up);
                }
            }
            rest = up;
        }
    }

    /// Puts in `svc`'s records, in place of what it had.
    pub fn set_service(&mut self, svc: &ServiceDns) {
        self.remove_service(&svc.namespace, &svc.name);
        let records = self.records(svc);
        for (owner, rr) in &records {
            self.insert(owner, rr.clone());
        }
        self.by_service
            .insert((svc.namespace.clone(), svc.name.clone()), records);
    }

    /// Takes out the records of service `ns/name`.
    pub fn remove_service(&mut self, ns: &str, name: &str) {
        if let Some(old) = self.by_service.remove(&(ns.to_string(), name.to_string())) {
            for (owner, rr) in &old {
                self.take(owner, rr);
            }
        }
    }

    /// The records a service has.
    fn records(&self, svc: &ServiceDns) -> Vec<(String, Rr)> {
        let base = format!(
            "{}.{}.svc.{}",
            svc.name.to_ascii_lowercase(),
            svc.namespace.to_ascii_lowercase(),
            self.domain
        );
        let mut out = Vec::new();
        let srv = |out: &mut Vec<(String, Rr)>, p: &NamedPort, target: &str| {
            out.push((
                format!("_{}._{}.{base}", p.name.to_ascii_lowercase(), p.protocol),
                Rr::Srv {
                    priority: 0,
                    weight: 100,
                    port: p.port,
                    target: target.to_string(),
                },
            ));
        };
        match &svc.kind {
            Kind::ClusterIp(ips) => {
                for ip in ips {
                    out.push((base.clone(), address(*ip)));
                    out.push((reverse_name(*ip), Rr::Ptr(base.clone())));
                }
                for p in &svc.ports {
                    srv(&mut out, p, &base);
                }
            }
            Kind::Headless(eps) => {
                for ep in eps.iter().filter(|e| e.ready) {
                    for ip in &ep.addresses {
                        let host = ep
                            .hostname
                            .as_deref()
                            .map(str::to_ascii_lowercase)
                            .unwrap_or_else(|| dashed(*ip));
                        let fqdn = format!("{host}.{base}");
                        out.push((base.clone(), address(*ip)));
                        out.push((fqdn.clone(), address(*ip)));
                        out.push((reverse_name(*ip), Rr::Ptr(fqdn.clone())));
                        for p in &ep.ports {
                            srv(&mut out, p, &fqdn);
                        }
                    }
                }
            }
            Kind::ExternalName(target) => {
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                out.push((base, Rr::Cname(format!("{target}."))));
            }
        }
        out
    }

    /// What the zone answers for `qname` (any case, with or without the final dot).
    pub fn lookup(&self, qname: &str, qtype: Qtype) -> Lookup {
        let mut name = qname.to_ascii_lowercase();
        if !name.ends_with('.') {
            name.push('.');
        }
        let reverse = name.ends_with(".in-addr.arpa.") || name.ends_with(".ip6.arpa.");
        let ours = name
            .strip_suffix(self.domain.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
        if !ours && !reverse {
            return Lookup::NotOurs;
        }
        if let Some(rrs) = self.by_name.get(&name) {
            let mut hits: Vec<(String, Rr)> = rrs
                .iter()
                .filter(|r| r.matches(qtype))
                .map(|r| (name.clone(), r.clone()))
                .collect();
            if hits.is_empty() {
                // A CNAME stands for the name's every other type.
                hits = rrs
                    .iter()
                    .filter(|r| matches!(r, Rr::Cname(_)))
                    .map(|r| (name.clone(), r.clone()))
                    .collect();
            }
            return if hits.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Answer(hits)
            };
        }
        if reverse {
            // Not a cluster address: the upstream resolvers may know it (CoreDNS's
            // `fallthrough in-addr.arpa ip6.arpa`).
            return Lookup::NotOurs;
        }
        if let Some(ip) = self.pod_address(&name) {
            return match (ip, qtype) {
                (IpAddr::V4(a), Qtype::A | Qtype::Any) => Lookup::Answer(vec![(name, Rr::A(a))]),
                (IpAddr::V6(a), Qtype::Aaaa | Qtype::Any) => {
                    Lookup::Answer(vec![(name, Rr::Aaaa(a))])
                }
                _ => Lookup::NoData,
            };
        }
        if name == self.domain || self.parents.contains_key(&name) {
            return Lookup::NoData;
        }
        Lookup::NxDomain
    }

    /// `a-b-c-d.<ns>.pod.<zone>`: the address it spells.
    fn pod_address(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (label, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .ok()
            .or_else(|| {
                label
                    .replace('-', ":")
                    .parse::<Ipv6Addr>()
                    .ok()
                    .map(IpAddr::V6)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, protocol: &str, port: u16) -> NamedPort {
        NamedPort {
            name: name.into(),
            protocol: protocol.into(),
            port,
        }
    }

    fn web() -> ServiceDns {
        ServiceDns {
            namespace: "default".into(),
            name: "web".into(),
            ports: vec![port("http", "tcp", 80)],
            kind: Kind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
        }
    }

    fn answer(l: Lookup) -> Vec<(String, Rr)> {
        match l {
            Lookup::Answer(a) => a,
            other => panic!("no answer: {other:?}"),
        }
    }

    #[test]
    fn a_cluster_ip_service_has_a_srv_and_ptr_records() {
        let mut z = Zone::new("cluster.local");
        z.set_service(&web());
        assert_eq!(
            answer(z.lookup("WEB.default.svc.cluster.local", Qtype::A)),
            [(
                "web.default.svc.cluster.local.".into(),
                Rr::A("10.96.0.20".parse().unwrap())
            )]
        );
        assert_eq!(
            answer(z.lookup("_http._tcp.web.default.svc.cluster.local.", Qtype::Srv)),
            [(
                "_http._tcp.web.default.svc.cluster.local.".into(),
                Rr::Srv {
                    priority: 0,
                    weight: 100,
                    port: 80,
                    target: "web.default.svc.cluster.local.".into()
                }
            )]
        );
        assert_eq!(
            answer(z.lookup("20.0.96.10.in-addr.arpa.", Qtype::Ptr))[0].1,
            Rr::Ptr("web.default.svc.cluster.local.".into())
        );
        // The name exists with no AAAA; its namespace and `svc` exist with no data.
        assert_eq!(
            z.lookup("web.default.svc.cluster.local.", Qtype::Aaaa),
            Lookup::NoData
        );
        assert_eq!(
            z.lookup("default.svc.cluster.local.", Qtype::A),
            Lookup::NoData
        );
        assert_eq!(z.lookup("svc.cluster.local.", Qtype::A), Lookup::NoData);
        assert_eq!(z.lookup("cluster.local.", Qtype::A), Lookup::NoData);
        assert_eq!(
            z.lookup("nope.default.svc.cluster.local.", Qtype::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("web.other.svc.cluster.local.", Qtype::A),
            Lookup::NxDomain
        );
        assert_eq!(z.lookup("example.com.", Qtype::A), Lookup::NotOurs);
        assert_eq!(
            z.lookup("9.9.9.9.in-addr.arpa.", Qtype::Ptr),
            Lookup::NotOurs
        );
        assert_eq!(
            answer(z.lookup("dns-version.cluster.local.", Qtype::Txt))[0].1,
            Rr::Txt("1.0.1".into())
        );
        // Gone with its service, parents included.
        z.remove_service("default", "web");
        assert_eq!(
            z.lookup("web.default.svc.cluster.local.", Qtype::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("default.svc.cluster.local.", Qtype::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("20.0.96.10.in-addr.arpa.", Qtype::Ptr),
            Lookup::NotOurs
        );
        assert_eq!(z.services(), 0);
    }

    #[test]
    fn a_headless_service_answers_its_ready_endpoints_by_hostname() {
        let mut z = Zone::new("cluster.local.");
        let ep = |ip: &str, host: Option<&str>, ready| EndpointDns {
            addresses: vec![ip.parse().unwrap()],
            hostname: host.map(str::to_string),
            ready,
            ports: vec![port("db", "tcp", 5432)],
        };
        z.set_service(&ServiceDns {
            namespace: "data".into(),
            name: "pg".into(),
            ports: vec![port("db", "tcp", 5432)],
            kind: Kind::Headless(vec![
                ep("10.244.0.5", Some("pg-0"), true),
                ep("10.244.0.6", None, true),
                ep("10.244.0.7", Some("pg-2"), false),
            ]),
        });
        let a: Vec<Rr> = answer(z.lookup("pg.data.svc.cluster.local.", Qtype::A))
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(
            a,
            [
                Rr::A("10.244.0.5".parse().unwrap()),
                Rr::A("10.244.0.6".parse().unwrap())
            ]
        );
        assert_eq!(
            answer(z.lookup("pg-0.pg.data.svc.cluster.local.", Qtype::A))[0].1,
            Rr::A("10.244.0.5".parse().unwrap())
        );
        assert_eq!(
            answer(z.lookup("10-244-0-6.pg.data.svc.cluster.local.", Qtype::A))[0].1,
            Rr::A("10.244.0.6".parse().unwrap())
        );
        // Not ready: not published.
        assert_eq!(
            z.lookup("pg-2.pg.data.svc.cluster.local.", Qtype::A),
            Lookup::NxDomain
        );
        let srv = answer(z.lookup("_db._tcp.pg.data.svc.cluster.local.", Qtype::Srv));
        let targets: Vec<&Rr> = srv.iter().map(|(_, r)| r).collect();
        assert_eq!(targets.len(), 2, "{srv:?}");
        assert!(targets.contains(&&Rr::Srv {
            priority: 0,
            weight: 100,
            port: 5432,
            target: "pg-0.pg.data.svc.cluster.local.".into()
        }));
        assert_eq!(
            answer(z.lookup("5.0.244.10.in-addr.arpa.", Qtype::Ptr))[0].1,
            Rr::Ptr("pg-0.pg.data.svc.cluster.local.".into())
        );
    }

    #[test]
    fn external_names_pods_and_updates() {
        let mut z = Zone::new("cluster.local");
        z.set_service(&ServiceDns {
            namespace: "default".into(),
            name: "search".into(),
            ports: vec![],
            kind: Kind::ExternalName("Example.COM.".into()),
        });
        // A CNAME answers every type.
        assert_eq!(
            answer(z.lookup("search.default.svc.cluster.local.", Qtype::A)),
            [(
                "search.default.svc.cluster.local.".into(),
                Rr::Cname("example.com.".into())
            )]
        );
        assert_eq!(
            answer(z.lookup("10-244-1-9.default.pod.cluster.local.", Qtype::A))[0].1,
            Rr::A("10.244.1.9".parse().unwrap())
        );
        assert_eq!(
            z.lookup("10-244-1-9.default.pod.cluster.local.", Qtype::Aaaa),
            Lookup::NoData
        );
        assert_eq!(
            z.lookup("not-an-ip.default.pod.cluster.local.", Qtype::A),
            Lookup::NxDomain
        );
        // A service that changes keeps only its new records.
        z.set_service(&web());
        let mut moved = web();
        moved.kind = Kind::ClusterIp(vec!["10.96.0.21".parse().unwrap()]);
        z.set_service(&moved);
        assert_eq!(
            answer(z.lookup("web.default.svc.cluster.local.", Qtype::A)),
            [(
                "web.default.svc.cluster.local.".into(),
                Rr::A("10.96.0.21".parse().unwrap())
            )]
        );
        assert_eq!(
            z.lookup("20.0.96.10.in-addr.arpa.", Qtype::Ptr),
            Lookup::NotOurs
        );
        assert_eq!(z.services(), 2);
    }

    #[test]
    fn services_from_the_api() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pg", "namespace": "data"},
            "spec": {"clusterIP": "None", "ports": [{"name": "db", "port": 5432}, {"port": 9}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pg-abc", "namespace": "data"},
            "addressType": "IPv4",
            "ports": [{"name": "db", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.6"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        let d = ServiceDns::from_api(&svc, &[&slice]).unwrap();
        assert_eq!(d.ports, [port("db", "tcp", 5432)]);
        let Kind::Headless(eps) = &d.kind else {
            panic!("{d:?}")
        };
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].hostname.as_deref(), Some("pg-0"));
        assert!(eps[0].ready && !eps[1].ready);
        let ext: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "search", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }))
        .unwrap();
        assert_eq!(
            ServiceDns::from_api(&ext, &[]).unwrap().kind,
            Kind::ExternalName("example.com".into())
        );
    }
}
