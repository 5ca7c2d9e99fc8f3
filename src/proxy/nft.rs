//! kube-proxy's nftables mode (KEP-3866) for knode: services rendered as `nft -f` scripts for
//! one table of family `ip` (by default `ip knode-proxy`).
//!
//! # Layout of the table
//!
//! Fixed part (the same for any set of services):
//!
//! * base chains `nat-prerouting` and `nat-output` (nat, priority -100, i.e. dstnat) jump to
//!   `services`; `nat-postrouting` (nat, srcnat) jumps to `masquerading`;
//! * base chains `filter-input`, `filter-forward` and `filter-output` (filter, priority
//!   `filter - 1`, so after the DNAT of the nat chains) send new connections through
//!   `service-endpoints-check` (services without endpoints are rejected) and `cluster-ips-check`
//!   (a packet still addressed to a ClusterIP after DNAT is for a port the service does not
//!   have: rejected); `filter-input` also goes through `nodeport-endpoints-check`;
//! * `services`: `ip daddr . meta l4proto . th dport vmap @service-ips`, then, for local
//!   destinations other than 127.0.0.0/8, `meta l4proto . th dport vmap @service-nodeports`;
//! * `masquerading` masquerades (fully random) what carries the masquerade mark, clearing it;
//!   `mark-for-masquerade` sets the mark; `reject-chain` rejects;
//! * maps `service-ips` and `no-endpoint-services` (`ipv4_addr . inet_proto . inet_service :
//!   verdict`), `service-nodeports` and `no-endpoint-nodeports` (`inet_proto . inet_service :
//!   verdict`), and the set `cluster-ips` (`ipv4_addr`).
//!
//! Per service port (headless services render nothing):
//!
//! * with ready endpoints: a chain `service-<hash>-<ns>/<name>/<proto>/<port name>` (the element
//!   of `service-ips` for the ClusterIP goes to it) that marks traffic from outside the cluster
//!   CIDR for masquerade, honours session affinity, then picks an endpoint with
//!   `numgen random mod N vmap { ... }`; one chain `endpoint-<hash>-<...>__<ip>/<port>` per ready
//!   endpoint, which marks hairpin traffic for masquerade, records the client in the endpoint's
//!   affinity set, and DNATs; for a NodePort, a chain `external-<hash>-<...>` (the element of
//!   `service-nodeports`) that marks for masquerade and goes to the service chain; with session
//!   affinity, one set `affinity-<hash>-<...>__<ip>/<port>` per endpoint (`flags
//!   dynamic,timeout`);
//! * without ready endpoints: an element `goto reject-chain` in `no-endpoint-services` (and in
//!   `no-endpoint-nodeports` for its NodePort).
//!
//! # Scripts
//!
//! [`render_full`] writes `add table`, `delete table` and the whole table, so that one
//! `nft -f` replaces whatever was there in one transaction. [`render_diff`] writes only the
//! changes from one state to another, assuming the first is applied: new sets and chains, flushed
//! and refilled chains, deleted and added map elements, then removed chains and sets, in an order
//! in which nothing is deleted while still referenced.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::service::{Endpoint, ServicePort, ServiceState};

/// Default name of the table (family `ip`).
pub const DEFAULT_TABLE: &str = "knode-proxy";
/// Default masquerade mark bit (kube-proxy's).
pub const DEFAULT_MARK: u32 = 0x4000;
/// Longest chain or set name rendered (the kernel allows 255 bytes).
pub const MAX_NAME_LEN: usize = 200;

/// Settings of the rendered table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Name of the table, of family `ip` (default [`DEFAULT_TABLE`]).
    pub table: String,
    /// The packet mark bit that asks `nat-postrouting` to masquerade (default [`DEFAULT_MARK`]).
    pub mark: u32,
    /// The pod network: traffic to a ClusterIP from outside it is masqueraded. `None`: no
    /// such rule (only hairpin and NodePort traffic is masqueraded).
    pub cluster_cidr: Option<Ipv4Net>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            table: DEFAULT_TABLE.to_string(),
            mark: DEFAULT_MARK,
            cluster_cidr: None,
        }
    }
}

// Fixed chains.
const NAT_PREROUTING: &str = "nat-prerouting";
const NAT_OUTPUT: &str = "nat-output";
const NAT_POSTROUTING: &str = "nat-postrouting";
const FILTER_INPUT: &str = "filter-input";
const FILTER_FORWARD: &str = "filter-forward";
const FILTER_OUTPUT: &str = "filter-output";
const SERVICES: &str = "services";
const MASQUERADING: &str = "masquerading";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const REJECT_CHAIN: &str = "reject-chain";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";

// Fixed sets and maps.
const CLUSTER_IPS: &str = "cluster-ips";
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// Type of the maps keyed by destination address, protocol and port.
const IP_PROTO_PORT_VMAP: &str = "type ipv4_addr . inet_proto . inet_service : verdict;";
/// Type of the maps keyed by protocol and port (NodePorts).
const PROTO_PORT_VMAP: &str = "type inet_proto . inet_service : verdict;";

/// The fixed sets and maps, with their specification.
const FIXED_SETS: &[(&str, &str, &str)] = &[
    (
        "set",
        CLUSTER_IPS,
        "type ipv4_addr; comment \"Active ClusterIPs\";",
    ),
    ("map", SERVICE_IPS, IP_PROTO_PORT_VMAP),
    ("map", SERVICE_NODEPORTS, PROTO_PORT_VMAP),
    ("map", NO_ENDPOINT_SERVICES, IP_PROTO_PORT_VMAP),
    ("map", NO_ENDPOINT_NODEPORTS, PROTO_PORT_VMAP),
];

/// The fixed chains, with the hook specification of the base chains.
const FIXED_CHAINS: &[(&str, Option<&str>)] = &[
    (
        NAT_PREROUTING,
        Some("type nat hook prerouting priority -100; policy accept;"),
    ),
    (
        NAT_OUTPUT,
        Some("type nat hook output priority -100; policy accept;"),
    ),
    (
        NAT_POSTROUTING,
        Some("type nat hook postrouting priority 100; policy accept;"),
    ),
    (
        FILTER_INPUT,
        Some("type filter hook input priority filter - 1; policy accept;"),
    ),
    (
        FILTER_FORWARD,
        Some("type filter hook forward priority filter - 1; policy accept;"),
    ),
    (
        FILTER_OUTPUT,
        Some("type filter hook output priority filter - 1; policy accept;"),
    ),
    (SERVICES, None),
    (MASQUERADING, None),
    (MARK_FOR_MASQUERADE, None),
    (REJECT_CHAIN, None),
    (SERVICE_ENDPOINTS_CHECK, None),
    (NODEPORT_ENDPOINTS_CHECK, None),
    (CLUSTER_IPS_CHECK, None),
];

/// The rules of the fixed chains, in order.
fn fixed_rules(cfg: &Config) -> Vec<(&'static str, String)> {
    let mark = format!("{:#x}", cfg.mark);
    let new_jump = |chain: &str| format!("ct state new jump {chain}");
    vec![
        (NAT_PREROUTING, format!("jump {SERVICES}")),
        (NAT_OUTPUT, format!("jump {SERVICES}")),
        (NAT_POSTROUTING, format!("jump {MASQUERADING}")),
        (FILTER_INPUT, new_jump(NODEPORT_ENDPOINTS_CHECK)),
        (FILTER_INPUT, new_jump(SERVICE_ENDPOINTS_CHECK)),
        (FILTER_INPUT, new_jump(CLUSTER_IPS_CHECK)),
        (FILTER_FORWARD, new_jump(SERVICE_ENDPOINTS_CHECK)),
        (FILTER_FORWARD, new_jump(CLUSTER_IPS_CHECK)),
        (FILTER_OUTPUT, new_jump(SERVICE_ENDPOINTS_CHECK)),
        (FILTER_OUTPUT, new_jump(CLUSTER_IPS_CHECK)),
        (
            SERVICES,
            format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
        ),
        (
            SERVICES,
            format!(
                "fib daddr type local ip daddr != 127.0.0.0/8 \
                 meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"
            ),
        ),
        (MASQUERADING, format!("meta mark & {mark} == 0 return")),
        (MASQUERADING, format!("meta mark set meta mark ^ {mark}")),
        (MASQUERADING, "masquerade fully-random".to_string()),
        (
            MARK_FOR_MASQUERADE,
            format!("meta mark set meta mark | {mark}"),
        ),
        (REJECT_CHAIN, "reject".to_string()),
        (
            SERVICE_ENDPOINTS_CHECK,
            format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
        ),
        (
            NODEPORT_ENDPOINTS_CHECK,
            format!(
                "fib daddr type local ip daddr != 127.0.0.0/8 \
                 meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
            ),
        ),
        (CLUSTER_IPS_CHECK, format!("ip daddr @{CLUSTER_IPS} reject")),
    ]
}

/// `<ns>/<name>/<proto>/<port name>`: what identifies a service port in chain names.
fn port_base(ns: &str, name: &str, port: &ServicePort) -> String {
    format!("{ns}/{name}/{}/{}", port.protocol.nft(), port.name)
}

/// `<port base>__<ip>/<port>`: what identifies an endpoint of a service port.
fn endpoint_base(port_base: &str, ep: &Endpoint) -> String {
    format!("{port_base}__{}/{}", ep.ip, ep.port)
}

/// A stable 8-character hash (FNV-1a 64, top 40 bits in base32) of `s`.
fn hash8(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (0..8)
        .map(|i| char::from(ALPHABET[((h >> (59 - 5 * i)) & 31) as usize]))
        .collect()
}

/// `<prefix>-<hash of hashed>-<base>`, with the characters nft does not take in a name replaced
/// by `_` and cut to [`MAX_NAME_LEN`]; the hash keeps names apart that this makes equal.
fn object_name(prefix: &str, base: &str, hashed: &str) -> String {
    let mut name = format!("{prefix}-{}-", hash8(hashed));
    name.extend(base.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') {
            c
        } else {
            '_'
        }
    }));
    // Only ASCII is left, so any byte index is a character boundary.
    name.truncate(MAX_NAME_LEN);
    name
}

/// The chain of a service port, that the ClusterIP's element in `service-ips` goes to:
/// `service-<hash>-<ns>/<name>/<proto>/<port name>`.
pub fn chain_name_service(ns: &str, name: &str, port: &ServicePort) -> String {
    let base = port_base(ns, name, port);
    object_name("service", &base, &base)
}

/// The chain a service port's NodePort goes to: `external-<hash>-<ns>/<name>/<proto>/<port>`.
fn chain_name_external(port_base: &str) -> String {
    object_name("external", port_base, port_base)
}

/// The chain of one endpoint of a service port: `endpoint-<hash>-<port base>__<ip>/<port>`.
fn chain_name_endpoint(port_base: &str, ep: &Endpoint) -> String {
    let base = endpoint_base(port_base, ep);
    object_name("endpoint", &base, &base)
}

/// The session affinity set of one endpoint. The timeout is part of the hash: a set's timeout
/// cannot be changed in place, so a new timeout makes a new set.
fn set_name_affinity(port_base: &str, ep: &Endpoint, timeout: u32) -> String {
    let base = endpoint_base(port_base, ep);
    object_name("affinity", &base, &format!("{base}@{timeout}"))
}

/// The ready endpoints of a service port, sorted, each once.
fn ready_endpoints(eps: Option<&Vec<Endpoint>>) -> Vec<&Endpoint> {
    let mut ready: Vec<&Endpoint> = eps.into_iter().flatten().filter(|e| e.ready).collect();
    ready.sort();
    ready.dedup_by_key(|e| (e.ip, e.port));
    ready
}

/// The part of the table that depends on the services: what [`render_full`] writes after the
/// fixed part, and what [`render_diff`] compares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Objects {
    /// Affinity sets, with their timeout in seconds.
    sets: BTreeMap<String, u32>,
    /// Chains, with their rules in order.
    chains: BTreeMap<String, Vec<String>>,
    /// Elements of the fixed sets and maps: key, and value for a map.
    elements: BTreeMap<&'static str, BTreeMap<String, Option<String>>>,
}

impl Objects {
    /// The objects for `states`. When two services claim the same key (ClusterIP and port, or
    /// NodePort), the first one wins.
    fn build(states: &[ServiceState], cfg: &Config) -> Self {
        let mut o = Objects::default();
        for state in states {
            let svc = &state.service;
            let Some(cluster_ip) = svc.cluster_ip else {
                continue;
            };
            o.element(CLUSTER_IPS, cluster_ip.to_string(), None);
            for (i, port) in svc.ports.iter().enumerate() {
                let ready = ready_endpoints(state.endpoints.get(i));
                o.service_port(state, cluster_ip, port, &ready, cfg);
            }
        }
        o
    }

    /// Adds the chains, sets and elements of one port of a service with a ClusterIP.
    fn service_port(
        &mut self,
        state: &ServiceState,
        cluster_ip: Ipv4Addr,
        port: &ServicePort,
        ready: &[&Endpoint],
        cfg: &Config,
    ) {
        let svc = &state.service;
        let proto = port.protocol.nft();
        let ip_key = format!("{cluster_ip} . {proto} . {}", port.port);
        let node_key = port.node_port.map(|np| format!("{proto} . {np}"));
        if ready.is_empty() {
            let reject = Some(format!("goto {REJECT_CHAIN}"));
            self.element(NO_ENDPOINT_SERVICES, ip_key, reject.clone());
            if let Some(key) = node_key {
                self.element(NO_ENDPOINT_NODEPORTS, key, reject);
            }
            return;
        }

        let base = port_base(&svc.namespace, &svc.name, port);
        let service_chain = chain_name_service(&svc.namespace, &svc.name, port);
        let affinity = svc.affinity_timeout.map(|t| t.max(1));
        let mut rules = Vec::new();
        if let Some(cidr) = cfg.cluster_cidr {
            rules.push(format!(
                "ip daddr {cluster_ip} {proto} dport {} ip saddr != {} jump {MARK_FOR_MASQUERADE}",
                port.port,
                cidr.trunc()
            ));
        }
        let mut targets = Vec::with_capacity(ready.len());
        for ep in ready {
            let chain = chain_name_endpoint(&base, ep);
            let mut ep_rules = vec![format!("ip saddr {} jump {MARK_FOR_MASQUERADE}", ep.ip)];
            if let Some(timeout) = affinity {
                let set = set_name_affinity(&base, ep, timeout);
                rules.push(format!("ip saddr @{set} goto {chain}"));
                ep_rules.push(format!("update @{set} {{ ip saddr }}"));
                self.sets.entry(set).or_insert(timeout);
            }
            ep_rules.push(format!(
                "meta l4proto {proto} dnat to {}:{}",
                ep.ip, ep.port
            ));
            self.chains.entry(chain.clone()).or_insert(ep_rules);
            targets.push(chain);
        }
        let vmap = targets
            .iter()
            .enumerate()
            .map(|(i, chain)| format!("{i} : goto {chain}"))
            .collect::<Vec<_>>()
            .join(", ");
        rules.push(format!(
            "numgen random mod {} vmap {{ {vmap} }}",
            targets.len()
        ));
        self.chains.entry(service_chain.clone()).or_insert(rules);
        self.element(SERVICE_IPS, ip_key, Some(format!("goto {service_chain}")));

        if let Some(key) = node_key {
            let external = chain_name_external(&base);
            let rules = vec![
                format!("jump {MARK_FOR_MASQUERADE}"),
                format!("goto {service_chain}"),
            ];
            self.chains.entry(external.clone()).or_insert(rules);
            self.element(SERVICE_NODEPORTS, key, Some(format!("goto {external}")));
        }
    }

    /// Adds an element to a fixed set or map, unless its key is taken.
    fn element(&mut self, set: &'static str, key: String, value: Option<String>) {
        self.elements
            .entry(set)
            .or_default()
            .entry(key)
            .or_insert(value);
    }

    /// The element `key` of `set`, if any.
    fn get_element(&self, set: &str, key: &str) -> Option<&Option<String>> {
        self.elements
            .get(set)
            .and_then(|elements| elements.get(key))
    }
}

/// Writes `nft -f` commands for one table.
struct Script<'a> {
    table: &'a str,
    out: String,
}

impl<'a> Script<'a> {
    fn new(table: &'a str) -> Self {
        Script {
            table,
            out: String::new(),
        }
    }

    /// One command on an object of the table: `<verb> <what> ip <table> <rest>`.
    fn cmd(&mut self, verb: &str, what: &str, rest: std::fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "{verb} {what} ip {} {rest}", self.table);
    }

    fn add_chain(&mut self, name: &str, spec: Option<&str>) {
        match spec {
            Some(spec) => self.cmd("add", "chain", format_args!("{name} {{ {spec} }}")),
            None => self.cmd("add", "chain", format_args!("{name}")),
        }
    }

    fn add_affinity_set(&mut self, name: &str, timeout: u32) {
        self.cmd(
            "add",
            "set",
            format_args!("{name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"),
        );
    }

    fn add_rules(&mut self, chain: &str, rules: &[String]) {
        for rule in rules {
            self.cmd("add", "rule", format_args!("{chain} {rule}"));
        }
    }

    /// Adds an element to a set (`value` is `None`) or a map.
    fn add_element(&mut self, set: &str, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.cmd(
                "add",
                "element",
                format_args!("{set} {{ {key} : {value} }}"),
            ),
            None => self.cmd("add", "element", format_args!("{set} {{ {key} }}")),
        }
    }

    /// Deletes an element of a set or map: a map element is deleted by its key alone.
    fn delete_element(&mut self, set: &str, key: &str) {
        self.cmd("delete", "element", format_args!("{set} {{ {key} }}"));
    }
}

/// The whole table for `states` as one `nft -f` script: `add table` (so that the `delete` works
/// when there is none yet), `delete table`, then the table with everything in it, in one
/// transaction that leaves nothing stale behind.
pub fn render_full(states: &[ServiceState], cfg: &Config) -> String {
    let objects = Objects::build(states, cfg);
    let mut s = Script::new(&cfg.table);
    let _ = writeln!(s.out, "add table ip {}", cfg.table);
    let _ = writeln!(s.out, "delete table ip {}", cfg.table);
    let _ = writeln!(
        s.out,
        "add table ip {} {{ comment \"knode service proxy\"; }}",
        cfg.table
    );
    for (kind, name, spec) in FIXED_SETS {
        s.cmd("add", kind, format_args!("{name} {{ {spec} }}"));
    }
    for (name, timeout) in &objects.sets {
        s.add_affinity_set(name, *timeout);
    }
    for (name, spec) in FIXED_CHAINS {
        s.add_chain(name, *spec);
    }
    for name in objects.chains.keys() {
        s.add_chain(name, None);
    }
    for (chain, rule) in fixed_rules(cfg) {
        s.cmd("add", "rule", format_args!("{chain} {rule}"));
    }
    for (chain, rules) in &objects.chains {
        s.add_rules(chain, rules);
    }
    for (set, elements) in &objects.elements {
        for (key, value) in elements {
            s.add_element(set, key, value.as_deref());
        }
    }
    s.out
}

/// The commands that turn the table rendered for `old` into the one for `new`, as one `nft -f`
/// script; empty when nothing changed. It assumes that `render_full(old, cfg)` (or an
/// equivalent) is what is applied, with the same `cfg`.
///
/// Order: new sets, new chains (empty), new and changed chains filled (changed ones flushed
/// first), stale map elements deleted, new ones added, removed chains flushed then deleted,
/// removed sets deleted. Nothing is deleted while something that is kept still refers to it.
pub fn render_diff(old: &[ServiceState], new: &[ServiceState], cfg: &Config) -> String {
    let old = Objects::build(old, cfg);
    let new = Objects::build(new, cfg);
    let mut s = Script::new(&cfg.table);

    for (name, timeout) in &new.sets {
        if !old.sets.contains_key(name) {
            s.add_affinity_set(name, *timeout);
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            s.add_chain(name, None);
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(old_rules) if old_rules == rules => continue,
            Some(_) => s.cmd("flush", "chain", format_args!("{name}")),
            None => {}
        }
        s.add_rules(name, rules);
    }
    for (set, elements) in &old.elements {
        for (key, value) in elements {
            if new.get_element(set, key) != Some(value) {
                s.delete_element(set, key);
            }
        }
    }
    for (set, elements) in &new.elements {
        for (key, value) in elements {
            if old.get_element(set, key) != Some(value) {
                s.add_element(set, key, value.as_deref());
            }
        }
    }
    let removed: Vec<&String> = old
        .chains
        .keys()
        .filter(|name| !new.chains.contains_key(*name))
        .collect();
    for name in &removed {
        s.cmd("flush", "chain", format_args!("{name}"));
    }
    for name in &removed {
        s.cmd("delete", "chain", format_args!("{name}"));
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            s.cmd("delete", "set", format_args!("{name}"));
        }
    }
    s.out
}

/// The number of rules and set or map elements a script adds (its `add rule` and `add element`
/// commands): a rough measure of its size.
pub fn count_rules(script: &str) -> usize {
    script
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("add rule ") || l.starts_with("add element "))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Protocol, ServiceView};
    use std::path::Path;
    use std::process::Command;

    fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            name: name.to_string(),
            protocol,
            port,
            node_port,
        }
    }

    fn ep(ip: &str, port: u16) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            ready: true,
        }
    }

    /// A one-port TCP service `default/<name>` on port 80 with endpoints on port 8080.
    fn svc(name: &str, ip: &str, eps: &[&str]) -> ServiceState {
        ServiceState {
            service: ServiceView {
                namespace: "default".to_string(),
                name: name.to_string(),
                cluster_ip: Some(ip.parse().unwrap()),
                ports: vec![port("http", Protocol::Tcp, 80, None)],
                affinity_timeout: None,
            },
            endpoints: vec![eps.iter().map(|ip| ep(ip, 8080)).collect()],
        }
    }

    fn with_node_port(mut s: ServiceState, node_port: u16) -> ServiceState {
        s.service.ports[0].node_port = Some(node_port);
        s
    }

    fn with_affinity(mut s: ServiceState, timeout: u32) -> ServiceState {
        s.service.affinity_timeout = Some(timeout);
        s
    }

    /// DNS-like: two ports (UDP and TCP 53), one unnamed SCTP port without endpoints.
    fn dns(eps: &[&str]) -> ServiceState {
        ServiceState {
            service: ServiceView {
                namespace: "kube-system".to_string(),
                name: "kube-dns".to_string(),
                cluster_ip: Some("10.96.0.10".parse().unwrap()),
                ports: vec![
                    port("dns", Protocol::Udp, 53, None),
                    port("dns-tcp", Protocol::Tcp, 53, None),
                    port("", Protocol::Sctp, 9999, Some(30999)),
                ],
                affinity_timeout: None,
            },
            endpoints: vec![
                eps.iter().map(|ip| ep(ip, 53)).collect(),
                eps.iter().map(|ip| ep(ip, 53)).collect(),
                vec![],
            ],
        }
    }

    fn cfg() -> Config {
        Config {
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            ..Config::default()
        }
    }

    /// The lines of `script` that mention `needle`.
    fn lines_with<'s>(script: &'s str, needle: &str) -> Vec<&'s str> {
        script.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn headless_renders_nothing() {
        let mut headless = svc("headless", "10.96.0.1", &["10.244.0.2"]);
        headless.service.cluster_ip = None;
        let cfg = cfg();
        assert_eq!(
            render_full(&[headless.clone()], &cfg),
            render_full(&[], &cfg)
        );
        assert_eq!(render_diff(&[], &[headless], &cfg), "");
    }

    #[test]
    fn full_script_replaces_the_table() {
        let script = render_full(&[], &cfg());
        let mut lines = script.lines();
        assert_eq!(lines.next(), Some("add table ip knode-proxy"));
        assert_eq!(lines.next(), Some("delete table ip knode-proxy"));
        for needle in [
            "add chain ip knode-proxy nat-prerouting { type nat hook prerouting",
            "add chain ip knode-proxy filter-forward { type filter hook forward",
            "add rule ip knode-proxy masquerading meta mark & 0x4000 == 0 return",
            "add rule ip knode-proxy masquerading meta mark set meta mark ^ 0x4000",
            "add rule ip knode-proxy masquerading masquerade fully-random",
            "add rule ip knode-proxy mark-for-masquerade meta mark set meta mark | 0x4000",
            "add rule ip knode-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add rule ip knode-proxy cluster-ips-check ip daddr @cluster-ips reject",
            "add map ip knode-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; }",
        ] {
            assert!(script.contains(needle), "missing {needle:?} in\n{script}");
        }
        assert!(!script.contains("add element"));
    }

    #[test]
    fn service_with_endpoints() {
        let s = svc("web", "10.96.0.5", &["10.244.0.3", "10.244.0.2"]);
        let script = render_full(&[s], &cfg());
        let chain = "service-7UCITOBJ-default/web/tcp/http";
        let ep2 = "endpoint-HPBOSGFF-default/web/tcp/http__10.244.0.2/8080";
        let ep3 = "endpoint-NKZIZP2T-default/web/tcp/http__10.244.0.3/8080";
        assert!(script.contains(&format!(
            "add element ip knode-proxy service-ips {{ 10.96.0.5 . tcp . 80 : goto {chain} }}"
        )));
        assert!(script.contains("add element ip knode-proxy cluster-ips { 10.96.0.5 }"));
        assert_eq!(
            lines_with(&script, &format!("add rule ip knode-proxy {chain} ")),
            [
                format!("add rule ip knode-proxy {chain} ip daddr 10.96.0.5 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"),
                format!("add rule ip knode-proxy {chain} numgen random mod 2 vmap {{ 0 : goto {ep2}, 1 : goto {ep3} }}"),
            ]
        );
        assert_eq!(
            lines_with(&script, &format!("add rule ip knode-proxy {ep2} ")),
            [
                format!(
                    "add rule ip knode-proxy {ep2} ip saddr 10.244.0.2 jump mark-for-masquerade"
                ),
                format!("add rule ip knode-proxy {ep2} meta l4proto tcp dnat to 10.244.0.2:8080"),
            ]
        );
        assert!(lines_with(&script, "no-endpoint")
            .iter()
            .all(|l| !l.contains("add element")));
    }

    #[test]
    fn no_cluster_cidr_no_masquerade_rule() {
        let s = svc("web", "10.96.0.5", &["10.244.0.2"]);
        let script = render_full(&[s], &Config::default());
        assert!(lines_with(&script, "ip saddr !=").is_empty());
    }

    #[test]
    fn not_ready_endpoints_get_no_traffic() {
        let mut s = svc("web", "10.96.0.5", &["10.244.0.2", "10.244.0.3"]);
        s.endpoints[0][1].ready = false;
        let script = render_full(&[s], &cfg());
        assert!(script.contains("numgen random mod 1 vmap"));
        assert!(!script.contains("10.244.0.3"));
    }

    #[test]
    fn service_without_endpoints_is_rejected() {
        let s = with_node_port(svc("web", "10.96.0.5", &[]), 30080);
        let script = render_full(&[s], &cfg());
        assert!(script.contains(
            "add element ip knode-proxy no-endpoint-services { 10.96.0.5 . tcp . 80 : goto reject-chain }"
        ));
        assert!(script.contains(
            "add element ip knode-proxy no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"
        ));
        assert!(script.contains("add element ip knode-proxy cluster-ips { 10.96.0.5 }"));
        assert!(!script.contains("add element ip knode-proxy service-ips"));
        assert!(!script.contains("add element ip knode-proxy service-nodeports"));
        assert!(!script.contains("default/web"));
    }

    #[test]
    fn node_port_goes_through_external_chain() {
        let s = with_node_port(svc("web", "10.96.0.5", &["10.244.0.2"]), 30080);
        let script = render_full(&[s], &cfg());
        let external = "external-7UCITOBJ-default/web/tcp/http";
        assert!(script.contains(&format!(
            "add element ip knode-proxy service-nodeports {{ tcp . 30080 : goto {external} }}"
        )));
        assert_eq!(
            lines_with(&script, &format!("add rule ip knode-proxy {external} ")),
            [
                format!("add rule ip knode-proxy {external} jump mark-for-masquerade"),
                format!(
                    "add rule ip knode-proxy {external} goto service-7UCITOBJ-default/web/tcp/http"
                ),
            ]
        );
    }

    #[test]
    fn affinity_renders_one_set_per_endpoint() {
        let s = with_affinity(
            svc("web", "10.96.0.5", &["10.244.0.2", "10.244.0.3"]),
            10800,
        );
        let script = render_full(&[s], &cfg());
        let sets = lines_with(&script, "add set ip knode-proxy affinity-");
        assert_eq!(sets.len(), 2, "{script}");
        for set in &sets {
            assert!(set.ends_with("{ type ipv4_addr; flags dynamic,timeout; timeout 10800s; }"));
        }
        let set = sets
            .iter()
            .map(|l| l.split(' ').nth(4).unwrap())
            .find(|set| set.ends_with("__10.244.0.2/8080"))
            .unwrap();
        assert!(set.starts_with("affinity-"), "{set}");
        let ep = "endpoint-HPBOSGFF-default/web/tcp/http__10.244.0.2/8080";
        assert!(script.contains(&format!("ip saddr @{set} goto {ep}\n")));
        assert!(script.contains(&format!(
            "add rule ip knode-proxy {ep} update @{set} {{ ip saddr }}\n"
        )));
        // Affinity checks come before the random pick.
        let service_rules = lines_with(&script, "add rule ip knode-proxy service-");
        assert!(service_rules.last().unwrap().contains("numgen random"));
        assert_eq!(
            service_rules
                .iter()
                .filter(|r| r.contains(" ip saddr @affinity-"))
                .count(),
            2
        );
    }

    #[test]
    fn chain_names_are_stable_and_distinct() {
        let http = port("http", Protocol::Tcp, 80, None);
        assert_eq!(
            chain_name_service("default", "web", &http),
            "service-7UCITOBJ-default/web/tcp/http"
        );
        assert_eq!(
            chain_name_service("default", "web", &http),
            chain_name_service("default", "web", &http)
        );
        let udp = port("http", Protocol::Udp, 80, None);
        assert_ne!(
            chain_name_service("default", "web", &http),
            chain_name_service("default", "web", &udp)
        );
        let unnamed = port("", Protocol::Tcp, 80, None);
        assert_eq!(
            chain_name_service("default", "web", &unnamed),
            "service-I6BWTMCE-default/web/tcp/"
        );
        // Long names are cut, odd characters replaced, and the hash keeps them apart.
        let long = "n".repeat(300);
        let a = chain_name_service(&long, "a", &http);
        let b = chain_name_service(&long, "b", &http);
        assert_eq!(a.len(), MAX_NAME_LEN);
        assert_ne!(a, b);
        let odd = chain_name_service("ns", "we b\"x", &http);
        assert!(odd.ends_with("-ns/we_b_x/tcp/http"), "{odd}");
    }

    #[test]
    fn unchanged_state_has_empty_diff() {
        let states = [
            dns(&["10.244.0.2"]),
            svc("web", "10.96.0.5", &["10.244.0.3"]),
        ];
        assert_eq!(render_diff(&states, &states, &cfg()), "");
    }

    #[test]
    fn diff_deletes_references_before_chains() {
        let old = [with_affinity(
            with_node_port(svc("web", "10.96.0.5", &["10.244.0.2"]), 30080),
            60,
        )];
        let diff = render_diff(&old, &[], &cfg());
        let pos = |needle: &str| {
            diff.find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in\n{diff}"))
        };
        let last_element = pos("delete element ip knode-proxy service-nodeports");
        let first_flush = pos("flush chain");
        let first_delete = pos("delete chain");
        assert!(pos("delete element ip knode-proxy service-ips") < first_flush);
        assert!(last_element < first_flush);
        assert!(diff.rfind("flush chain").unwrap() < first_delete);
        assert!(diff.rfind("delete chain").unwrap() < pos("delete set"));
        assert_eq!(count_rules(&diff), 0);
    }

    #[test]
    fn count_rules_counts_rules_and_elements() {
        let s = svc("web", "10.96.0.5", &["10.244.0.2"]);
        let fixed = count_rules(&render_full(&[], &cfg()));
        assert_eq!(fixed, fixed_rules(&cfg()).len());
        // Service chain: masquerade + numgen; endpoint chain: hairpin + dnat; 2 elements.
        assert_eq!(
            count_rules(&render_full(std::slice::from_ref(&s), &cfg())),
            fixed + 6
        );
        assert_eq!(count_rules(&render_diff(&[], &[s], &cfg())), 6);
    }

    // --- Against the real nft, always in a private network namespace. ---

    /// Whether nft can be run in a network namespace of its own here.
    fn nft_usable() -> bool {
        Path::new("/usr/sbin/nft").exists()
            && Command::new("unshare")
                .args(["-n", "true"])
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Applies `scripts` in order (empty ones skipped) with `nft -f` in a fresh network
    /// namespace, then lists the table.
    fn apply_in_netns(scripts: &[&str]) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = String::new();
        for (i, script) in scripts.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            let path = dir.path().join(format!("{i}.nft"));
            std::fs::write(&path, script).unwrap();
            cmd.push_str(&format!("/usr/sbin/nft -f '{}' && ", path.display()));
        }
        cmd.push_str("/usr/sbin/nft list table ip knode-proxy");
        // `unshare -n` runs the shell in a new network namespace or not at all: the host's
        // ruleset is never touched.
        let out = Command::new("unshare")
            .args(["-n", "sh", "-c", &cmd])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A listing reduced to what must match: per chain, set or map (sorted by name), its lines
    /// in order without handles, set elements one per line and sorted.
    fn normalise(listing: &str) -> BTreeMap<String, Vec<String>> {
        let mut blocks: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut current = "table".to_string();
        let mut elements: Option<String> = None;
        for line in listing.lines() {
            let line = line.split(" # handle").next().unwrap().trim();
            if let Some(acc) = elements.as_mut() {
                acc.push(' ');
                acc.push_str(line);
            } else if line.starts_with("elements = {") {
                elements = Some(line.to_string());
            } else if ["chain ", "set ", "map "]
                .iter()
                .any(|k| line.starts_with(k))
            {
                current = line.to_string();
                // Empty chains count too.
                blocks.entry(current.clone()).or_default();
            } else if line == "}" {
                current = "table".to_string();
            } else if !line.is_empty() && !line.starts_with("table ") {
                blocks
                    .entry(current.clone())
                    .or_default()
                    .push(line.to_string());
            }
            if let Some(acc) = elements.as_ref().filter(|acc| acc.ends_with('}')) {
                let inner = acc.trim_start_matches("elements = {").trim_end_matches('}');
                let mut items: Vec<String> = inner
                    .split(',')
                    .map(|e| format!("element {}", e.trim()))
                    .collect();
                items.sort();
                blocks.entry(current.clone()).or_default().extend(items);
                elements = None;
            }
        }
        blocks
    }

    /// render_full(new) applies; render_full(old) then render_diff(old, new) applies and leaves
    /// the same table; and the same the other way round. Also, a full sync over another table
    /// leaves exactly the new one.
    fn check_transition(old: &[ServiceState], new: &[ServiceState]) {
        assert!(
            nft_usable(),
            "nft must run in a network namespace of its own (root, nftables installed)"
        );
        let cfg = cfg();
        for (from, to) in [(old, new), (new, old)] {
            let full_from = render_full(from, &cfg);
            let full_to = render_full(to, &cfg);
            let diff = render_diff(from, to, &cfg);
            let want = apply_in_netns(&[&full_to])
                .unwrap_or_else(|e| panic!("full script fails: {e}\n{full_to}"));
            let got = apply_in_netns(&[&full_from, &diff])
                .unwrap_or_else(|e| panic!("diff fails: {e}\nfull:\n{full_from}\ndiff:\n{diff}"));
            assert_eq!(
                normalise(&got),
                normalise(&want),
                "diff does not give the full table\ndiff:\n{diff}"
            );
            let resynced = apply_in_netns(&[&full_from, &full_to])
                .unwrap_or_else(|e| panic!("full over full fails: {e}"));
            assert_eq!(normalise(&resynced), normalise(&want));
        }
    }

    #[test]
    fn nft_accepts_full_script() {
        let states = [
            dns(&["10.244.0.2", "10.244.0.3"]),
            with_affinity(
                with_node_port(svc("web", "10.96.0.5", &["10.244.0.4"]), 30080),
                10800,
            ),
            svc("empty", "10.96.0.6", &[]),
        ];
        assert!(
            nft_usable(),
            "nft must run in a network namespace of its own (root, nftables installed)"
        );
        let listing = apply_in_netns(&[&render_full(&states, &cfg())]).unwrap();
        let blocks = normalise(&listing);
        assert!(blocks
            .keys()
            .any(|k| k.starts_with("chain service-") && k.contains("kube-dns/udp/dns")));
        assert!(blocks.keys().any(|k| k.starts_with("set affinity-")));
        assert!(blocks["map no-endpoint-services {"]
            .contains(&"element 10.96.0.6 . tcp . 80 : goto reject-chain".to_string()));
        // Both kube-dns ports with endpoints and web are in service-ips.
        assert_eq!(
            blocks["map service-ips {"]
                .iter()
                .filter(|l| l.starts_with("element "))
                .count(),
            3
        );
    }

    #[test]
    fn nft_add_service() {
        check_transition(&[], &[svc("web", "10.96.0.5", &["10.244.0.2"])]);
        check_transition(
            &[svc("web", "10.96.0.5", &["10.244.0.2"])],
            &[
                svc("web", "10.96.0.5", &["10.244.0.2"]),
                dns(&["10.244.0.3"]),
            ],
        );
    }

    #[test]
    fn nft_remove_service() {
        check_transition(
            &[
                svc("a", "10.96.0.5", &["10.244.0.2"]),
                svc("b", "10.96.0.6", &["10.244.0.3"]),
            ],
            &[svc("a", "10.96.0.5", &["10.244.0.2"])],
        );
    }

    #[test]
    fn nft_endpoints_three_to_two() {
        check_transition(
            &[svc(
                "web",
                "10.96.0.5",
                &["10.244.0.2", "10.244.0.3", "10.244.0.4"],
            )],
            &[svc("web", "10.96.0.5", &["10.244.0.2", "10.244.0.4"])],
        );
    }

    #[test]
    fn nft_endpoints_zero_to_one() {
        check_transition(
            &[
                with_node_port(svc("web", "10.96.0.5", &[]), 30080),
                dns(&[]),
            ],
            &[
                with_node_port(svc("web", "10.96.0.5", &["10.244.0.2"]), 30080),
                dns(&["10.244.0.3"]),
            ],
        );
    }

    #[test]
    fn nft_node_port() {
        check_transition(
            &[svc("web", "10.96.0.5", &["10.244.0.2"])],
            &[with_node_port(
                svc("web", "10.96.0.5", &["10.244.0.2"]),
                30080,
            )],
        );
        // The NodePort moves to another service in the same diff.
        check_transition(
            &[
                with_node_port(svc("a", "10.96.0.5", &["10.244.0.2"]), 30080),
                svc("b", "10.96.0.6", &["10.244.0.3"]),
            ],
            &[
                svc("a", "10.96.0.5", &["10.244.0.2"]),
                with_node_port(svc("b", "10.96.0.6", &["10.244.0.3"]), 30080),
            ],
        );
    }

    #[test]
    fn nft_affinity() {
        let web = |eps: &[&str]| svc("web", "10.96.0.5", eps);
        check_transition(
            &[web(&["10.244.0.2"])],
            &[with_affinity(web(&["10.244.0.2"]), 10800)],
        );
        check_transition(
            &[with_affinity(web(&["10.244.0.2", "10.244.0.3"]), 10800)],
            &[with_affinity(web(&["10.244.0.3", "10.244.0.4"]), 10800)],
        );
        // A new timeout makes new sets.
        check_transition(
            &[with_affinity(web(&["10.244.0.2"]), 10800)],
            &[with_affinity(web(&["10.244.0.2"]), 60)],
        );
    }

    #[test]
    fn nft_cluster_ip_reused_by_another_service() {
        check_transition(
            &[svc("a", "10.96.0.5", &["10.244.0.2"])],
            &[svc("b", "10.96.0.5", &["10.244.0.3"])],
        );
        check_transition(&[svc("a", "10.96.0.5", &[])], &[svc("b", "10.96.0.5", &[])]);
    }

    /// Many services changing at once, in every way the other tests cover one at a time.
    #[test]
    fn nft_many_changes() {
        let state = |generation: u8| -> Vec<ServiceState> {
            (0..24u8)
                .filter(|i| !(i + generation).is_multiple_of(7))
                .map(|i| {
                    let eps: Vec<String> = (0..(i + generation) % 4)
                        .map(|e| format!("10.244.{i}.{}", e + generation))
                        .collect();
                    let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
                    let mut s = svc(&format!("s{i}"), &format!("10.96.0.{i}"), &eps);
                    if (i + generation).is_multiple_of(3) {
                        s = with_node_port(s, 30000 + u16::from(i));
                    }
                    if (i + generation).is_multiple_of(5) {
                        s = with_affinity(s, 100 + u32::from(generation));
                    }
                    s
                })
                .collect()
        };
        check_transition(&state(0), &state(1));
        check_transition(&state(0), &state(2));
    }

    #[test]
    fn nft_headless_service() {
        let mut headless = svc("headless", "10.96.0.7", &["10.244.0.2"]);
        headless.service.cluster_ip = None;
        check_transition(
            &[svc("web", "10.96.0.5", &["10.244.0.2"])],
            &[svc("web", "10.96.0.5", &["10.244.0.2"]), headless],
        );
    }
}
