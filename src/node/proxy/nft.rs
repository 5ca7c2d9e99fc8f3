//! kube-proxy's nftables mode (KEP-3866) for knode, kept in sync incrementally: [`Proxy`] turns
//! the node's services into [`Op`]s on one table of family `ip` (by default `ip knode-proxy`),
//! the whole table at once or only what changed since the last sync. [`script`] writes the ops
//! as one `nft -f` script (one transaction).
//!
//! # Layout of the table
//!
//! Fixed part (the same for any set of services):
//!
//! * base chains `nat-prerouting` and `nat-output` (nat, priority -100, i.e. dstnat) jump to
//!   `services`; `nat-postrouting` (nat, srcnat) marks hairpin traffic (a pod reaching itself
//!   through a service: source and destination equal after DNAT, found in the set
//!   `hairpin-endpoints`) and jumps to `masquerading`;
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
//!   verdict`), the set `cluster-ips` (`ipv4_addr`) and the set `hairpin-endpoints`
//!   (`ipv4_addr . ipv4_addr`, one `ip . ip` element per endpoint address).
//!
//! Per service port (headless services render nothing):
//!
//! * with ready endpoints: a chain `service-<hash>-<ns>/<name>/<proto>/<port name>` (the element
//!   of `service-ips` for the ClusterIP goes to it) that marks traffic from outside the cluster
//!   CIDR for masquerade, then picks one of the N ready endpoints at random and DNATs to it:
//!   - N > 1, no affinity: `counter dnat ip to numgen random mod N offset <slot << 16> map
//!     @endpoint-picks-<proto>-<m>`. The port holds a slot ([`Slots`]); its keys map to the
//!     endpoints' `ip . port`, so an endpoint change only changes map elements. The maps hold
//!     [`SLOTS_PER_MAP`] slots each and exist while a port uses them.
//!   - N = 1: `counter dnat to <endpoint>`.
//!   - The `counter` of the DNAT rules counts new connections (`knode explain svc/NAME`).
//!   - With session affinity: rules that send known clients back to their endpoint, then rule
//!     i (from 0) `numgen random mod (N - i) 0 ... dnat to <endpoint i>`, the last one
//!     unconditional (each endpoint gets 1/N), each recording the client in its endpoint's set
//!     `affinity-<hash>-<...>__<ip>/<port>` (`flags dynamic,timeout`).
//!
//!   For a NodePort, a chain `external-<hash>-<...>` (the element of `service-nodeports`)
//!   marks for masquerade and goes to the service chain.
//! * without ready endpoints: an element `goto reject-chain` in `no-endpoint-services` (and in
//!   `no-endpoint-nodeports` for its NodePort).
//!
//! ## Where this differs from kube-proxy, and why
//!
//! kube-proxy has one chain per endpoint (hairpin mark, then DNAT) and picks with an anonymous
//! `numgen random mod N vmap { 0 : goto endpoint-A, ... }`. Measured on Linux 6.18 with 10,000
//! services x 10 endpoints, that layout is slow in the kernel itself: binding an anonymous set
//! walks the whole pending transaction (`__nft_set_trans_bind`), so a full sync is quadratic
//! (130 s); and a commit that adds a rule or a verdict-map element re-checks every chain the
//! base chains reach (13 ms with 110,000 chains; still 38 ms with one chain per service port
//! and a rule per endpoint). Elements of a data map are not re-checked, hence the picks map;
//! but every element added to a map is checked against every rule that looks it up
//! (`nft_add_set_elem`), so one map for all ports is quadratic again (17 s), hence maps of
//! [`SLOTS_PER_MAP`] ports. Hairpin is matched after DNAT by the `hairpin-endpoints` set. The
//! behaviour (uniform pick, hairpin and masquerade marks, affinity) is kube-proxy's, and the
//! per-packet cost stays flat as services grow.
//!
//! # Syncs
//!
//! [`Proxy::full`] returns `add table`, `delete table` and the whole table, so that one
//! transaction replaces whatever was there. [`Proxy::diff`] returns only the changes for the
//! services whose state changed since the last sync (compared service by service, rendered only
//! for those): new sets and chains, flushed and refilled chains, deleted and added elements, then
//! removed chains and sets, in an order in which nothing is deleted while still referenced.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::api::service::{Endpoint, Protocol, ServicePort, ServiceState};

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
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";
pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const SERVICES: &str = "services";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";

/// The sets and maps of the fixed part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FixedSet {
    /// `cluster-ips`: every ClusterIP (`ipv4_addr`).
    ClusterIps,
    /// `service-ips`: ClusterIP, protocol and port to the service chain.
    ServiceIps,
    /// `service-nodeports`: protocol and NodePort to the external chain.
    ServiceNodePorts,
    /// `no-endpoint-services`: ClusterIP, protocol and port of services without endpoints.
    NoEndpointServices,
    /// `no-endpoint-nodeports`: protocol and NodePort of services without endpoints.
    NoEndpointNodePorts,
    /// `hairpin-endpoints`: `ip . ip` for every endpoint address.
    Hairpin,
    /// `endpoint-picks-<proto>-<n>`: a data map from a pick number (`numgen random mod N
    /// offset <slot << 16>`, one slot per service port) to an endpoint's `ip . port`, for the
    /// [`SLOTS_PER_MAP`] slots from `n * SLOTS_PER_MAP + 1`. One per protocol (nft types the
    /// port by its protocol), made while a port uses it.
    EndpointPicks(Protocol, u16),
}

impl FixedSet {
    /// The sets every table has.
    pub const ALL: [FixedSet; 6] = [
        FixedSet::ClusterIps,
        FixedSet::ServiceIps,
        FixedSet::ServiceNodePorts,
        FixedSet::NoEndpointServices,
        FixedSet::NoEndpointNodePorts,
        FixedSet::Hairpin,
    ];

    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            FixedSet::ClusterIps => "cluster-ips",
            FixedSet::ServiceIps => "service-ips",
            FixedSet::ServiceNodePorts => "service-nodeports",
            FixedSet::NoEndpointServices => "no-endpoint-services",
            FixedSet::NoEndpointNodePorts => "no-endpoint-nodeports",
            FixedSet::Hairpin => "hairpin-endpoints",
            FixedSet::EndpointPicks(proto, n) => {
                return Cow::Owned(format!("endpoint-picks-{}-{n}", proto.nft()))
            }
        })
    }

    /// The map that holds the picks of `slot`.
    pub fn picks(proto: Protocol, slot: u32) -> Self {
        FixedSet::EndpointPicks(proto, ((slot - 1) / SLOTS_PER_MAP) as u16)
    }

    /// Whether it is a map (otherwise a set).
    pub fn is_map(self) -> bool {
        !matches!(self, FixedSet::ClusterIps | FixedSet::Hairpin)
    }

    /// Whether it is a verdict map.
    pub fn is_verdict_map(self) -> bool {
        self.is_map() && !matches!(self, FixedSet::EndpointPicks(..))
    }

    /// The `nft` type declaration.
    fn nft_type(self) -> &'static str {
        match self {
            FixedSet::ClusterIps => "type ipv4_addr",
            FixedSet::Hairpin => "type ipv4_addr . ipv4_addr",
            FixedSet::ServiceIps | FixedSet::NoEndpointServices => {
                "type ipv4_addr . inet_proto . inet_service : verdict"
            }
            FixedSet::ServiceNodePorts | FixedSet::NoEndpointNodePorts => {
                "type inet_proto . inet_service : verdict"
            }
            // nft has no named type for numgen's integer; `typeof` gives it one.
            FixedSet::EndpointPicks(Protocol::Tcp, _) => {
                "typeof numgen random mod 1 : ip daddr . tcp dport"
            }
            FixedSet::EndpointPicks(Protocol::Udp, _) => {
                "typeof numgen random mod 1 : ip daddr . udp dport"
            }
            FixedSet::EndpointPicks(Protocol::Sctp, _) => {
                "typeof numgen random mod 1 : ip daddr . sctp dport"
            }
        }
    }
}

/// The key of an element of a [`FixedSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Ip(Ipv4Addr),
    IpProtoPort(Ipv4Addr, Protocol, u16),
    ProtoPort(Protocol, u16),
    /// `ip . ip` (hairpin).
    IpPair(Ipv4Addr),
    /// A pick number (`endpoint-picks`).
    Pick(u32),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Ip(ip) => write!(f, "{ip}"),
            Key::IpProtoPort(ip, proto, port) => write!(f, "{ip} . {} . {port}", proto.nft()),
            Key::ProtoPort(proto, port) => write!(f, "{} . {port}", proto.nft()),
            Key::IpPair(ip) => write!(f, "{ip} . {ip}"),
            Key::Pick(n) => write!(f, "{n}"),
        }
    }
}

/// The value of a map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// `goto <chain>` (verdict maps).
    Goto(String),
    /// `<ip> . <port>` (`endpoint-picks`).
    Endpoint(Ipv4Addr, u16),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Goto(chain) => write!(f, "goto {chain}"),
            Value::Endpoint(ip, port) => write!(f, "{ip} . {port}"),
        }
    }
}

/// Base chain kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

/// Netfilter hooks used by the base chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl HookPoint {
    pub fn name(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Input => "input",
            HookPoint::Forward => "forward",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
        }
    }
}

/// What makes a chain a base chain (policy accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub kind: ChainType,
    pub hook: HookPoint,
    pub priority: i32,
}

/// One rule. Each kind renders as `nft` text ([`fmt::Display`]); the fields are what a netlink
/// encoder needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `jump <chain>`
    Jump(String),
    /// `goto <chain>`
    Goto(String),
    /// `ct state new jump <chain>`
    CtNewJump(&'static str),
    /// `ip daddr . meta l4proto . th dport vmap @<map>`
    VmapIpProtoPort(FixedSet),
    /// `fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @<map>`
    VmapNodePort(FixedSet),
    /// `ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade`
    HairpinMark,
    /// `meta mark & <mark> == 0 return`
    ReturnUnmarked(u32),
    /// `meta mark set meta mark ^ <mark>`
    ClearMark(u32),
    /// `meta mark set meta mark | <mark>`
    SetMark(u32),
    /// `masquerade fully-random`
    Masquerade,
    /// `reject`
    Reject,
    /// `ip daddr @cluster-ips reject`
    RejectClusterIps,
    /// `ct original ip daddr @cluster-ips ip saddr != <cidr> jump mark-for-masquerade`:
    /// traffic to a ClusterIP from outside the pod network (one rule in `nat-postrouting`,
    /// where kube-proxy has one per service port).
    MarkOffCluster(Ipv4Net),
    /// `[ip saddr @<check>] [numgen random mod <pick> 0] [update @<update> { ip saddr }]
    /// meta l4proto <proto> counter dnat to <ip>:<port>` (the counter for `knode explain`)
    Dnat {
        check: Option<String>,
        pick: Option<u32>,
        update: Option<String>,
        proto: Protocol,
        ip: Ipv4Addr,
        port: u16,
    },
    /// `meta l4proto <proto> counter dnat ip to numgen random mod <n> offset <offset> map
    /// @endpoint-picks-<proto>-<n>`: one of the n endpoints at keys offset..offset+n, at random.
    DnatPick {
        proto: Protocol,
        n: u32,
        offset: u32,
    },
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Jump(c) => write!(f, "jump {c}"),
            Stmt::Goto(c) => write!(f, "goto {c}"),
            Stmt::CtNewJump(c) => write!(f, "ct state new jump {c}"),
            Stmt::VmapIpProtoPort(m) => {
                write!(f, "ip daddr . meta l4proto . th dport vmap @{}", m.name())
            }
            Stmt::VmapNodePort(m) => write!(
                f,
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{}",
                m.name()
            ),
            Stmt::HairpinMark => write!(
                f,
                "ip saddr . ip daddr @{} jump {MARK_FOR_MASQUERADE}",
                FixedSet::Hairpin.name()
            ),
            Stmt::ReturnUnmarked(m) => write!(f, "meta mark & {m:#x} == 0 return"),
            Stmt::ClearMark(m) => write!(f, "meta mark set meta mark ^ {m:#x}"),
            Stmt::SetMark(m) => write!(f, "meta mark set meta mark | {m:#x}"),
            Stmt::Masquerade => write!(f, "masquerade fully-random"),
            Stmt::Reject => write!(f, "reject"),
            Stmt::RejectClusterIps => {
                write!(f, "ip daddr @{} reject", FixedSet::ClusterIps.name())
            }
            Stmt::MarkOffCluster(cidr) => write!(
                f,
                "ct original ip daddr @{} ip saddr != {} jump {MARK_FOR_MASQUERADE}",
                FixedSet::ClusterIps.name(),
                cidr.trunc()
            ),
            Stmt::Dnat {
                check,
                pick,
                update,
                proto,
                ip,
                port,
            } => {
                if let Some(set) = check {
                    write!(f, "ip saddr @{set} ")?;
                }
                if let Some(n) = pick {
                    write!(f, "numgen random mod {n} 0 ")?;
                }
                if let Some(set) = update {
                    write!(f, "update @{set} {{ ip saddr }} ")?;
                }
                write!(
                    f,
                    "meta l4proto {} counter dnat to {ip}:{port}",
                    proto.nft()
                )
            }
            Stmt::DnatPick { proto, n, offset } => write!(
                f,
                "meta l4proto {} counter dnat ip to numgen random mod {n} offset {offset} map @{}",
                proto.nft(),
                FixedSet::picks(*proto, offset >> 16).name()
            ),
        }
    }
}

/// One change to the table. A sync is a list of them, applied as one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddFixedSet(FixedSet),
    /// A session affinity set: `ipv4_addr`, `flags dynamic,timeout`, with its timeout in seconds.
    AddAffinitySet {
        name: String,
        timeout: u32,
    },
    DeleteSet(String),
    AddChain {
        name: String,
        hook: Option<Hook>,
    },
    FlushChain(String),
    DeleteChain(String),
    AddRule {
        chain: String,
        stmt: Stmt,
    },
    /// An element of a set, or of a map with its value.
    AddElement {
        set: FixedSet,
        key: Key,
        value: Option<Value>,
    },
    DeleteElement {
        set: FixedSet,
        key: Key,
    },
}

/// The number of rules and set or map elements `ops` add: a rough measure of their size.
pub fn count(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, Op::AddRule { .. } | Op::AddElement { .. }))
        .count()
}

/// `ops` as one `nft -f` script for table `ip <table>`, consecutive element changes of one set
/// in one command.
pub fn script(ops: &[Op], table: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    // Writing to a String cannot fail.
    while i < ops.len() {
        match &ops[i] {
            Op::AddTable => {
                let _ = writeln!(out, "add table ip {table}");
            }
            Op::DeleteTable => {
                let _ = writeln!(out, "delete table ip {table}");
            }
            Op::AddFixedSet(set) => {
                let kind = if set.is_map() { "map" } else { "set" };
                let _ = writeln!(
                    out,
                    "add {kind} ip {table} {} {{ {}; }}",
                    set.name(),
                    set.nft_type()
                );
            }
            Op::AddAffinitySet { name, timeout } => {
                let _ = writeln!(
                    out,
                    "add set ip {table} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
                );
            }
            Op::DeleteSet(name) => {
                let _ = writeln!(out, "delete set ip {table} {name}");
            }
            Op::AddChain { name, hook: None } => {
                let _ = writeln!(out, "add chain ip {table} {name}");
            }
            Op::AddChain {
                name,
                hook: Some(h),
            } => {
                let kind = match h.kind {
                    ChainType::Nat => "nat",
                    ChainType::Filter => "filter",
                };
                let _ = writeln!(
                    out,
                    "add chain ip {table} {name} {{ type {kind} hook {} priority {}; policy accept; }}",
                    h.hook.name(),
                    h.priority
                );
            }
            Op::FlushChain(name) => {
                let _ = writeln!(out, "flush chain ip {table} {name}");
            }
            Op::DeleteChain(name) => {
                let _ = writeln!(out, "delete chain ip {table} {name}");
            }
            Op::AddRule { chain, stmt } => {
                let _ = writeln!(out, "add rule ip {table} {chain} {stmt}");
            }
            Op::AddElement { set, .. } | Op::DeleteElement { set, .. } => {
                let add = matches!(ops[i], Op::AddElement { .. });
                let verb = if add { "add" } else { "delete" };
                let _ = write!(out, "{verb} element ip {table} {} {{ ", set.name());
                let mut first = true;
                while let Some(op) = ops.get(i) {
                    let (s, key, value) = match op {
                        Op::AddElement { set, key, value } if add => (set, key, value.as_ref()),
                        Op::DeleteElement { set, key } if !add => (set, key, None),
                        _ => break,
                    };
                    if s != set {
                        break;
                    }
                    if !first {
                        out.push_str(", ");
                    }
                    first = false;
                    let _ = match value {
                        Some(value) => write!(out, "{key} : {value}"),
                        None => write!(out, "{key}"),
                    };
                    i += 1;
                }
                out.push_str(" }\n");
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The fixed chains, with the hook of the base chains.
fn fixed_chains() -> Vec<(&'static str, Option<Hook>)> {
    let hook = |kind, hook, priority| {
        Some(Hook {
            kind,
            hook,
            priority,
        })
    };
    use ChainType::{Filter, Nat};
    use HookPoint::*;
    vec![
        (NAT_PREROUTING, hook(Nat, Prerouting, -100)),
        (NAT_OUTPUT, hook(Nat, Output, -100)),
        (NAT_POSTROUTING, hook(Nat, Postrouting, 100)),
        (FILTER_INPUT, hook(Filter, Input, -1)),
        (FILTER_FORWARD, hook(Filter, Forward, -1)),
        (FILTER_OUTPUT, hook(Filter, Output, -1)),
        (SERVICES, None),
        (MASQUERADING, None),
        (MARK_FOR_MASQUERADE, None),
        (REJECT_CHAIN, None),
        (SERVICE_ENDPOINTS_CHECK, None),
        (NODEPORT_ENDPOINTS_CHECK, None),
        (CLUSTER_IPS_CHECK, None),
    ]
}

/// The rules of the fixed chains, in order.
fn fixed_rules(cfg: &Config) -> Vec<(&'static str, Stmt)> {
    let jump = |c: &str| Stmt::Jump(c.to_string());
    let off_cluster = cfg
        .cluster_cidr
        .filter(|c| c.prefix_len() > 0)
        .map(|cidr| (NAT_POSTROUTING, Stmt::MarkOffCluster(cidr)));
    let mut rules = vec![
        (NAT_PREROUTING, jump(SERVICES)),
        (NAT_OUTPUT, jump(SERVICES)),
        (NAT_POSTROUTING, Stmt::HairpinMark),
    ];
    // Before `jump masquerading` in nat-postrouting.
    rules.extend(off_cluster);
    rules.extend([
        (NAT_POSTROUTING, jump(MASQUERADING)),
        (FILTER_INPUT, Stmt::CtNewJump(NODEPORT_ENDPOINTS_CHECK)),
        (FILTER_INPUT, Stmt::CtNewJump(SERVICE_ENDPOINTS_CHECK)),
        (FILTER_INPUT, Stmt::CtNewJump(CLUSTER_IPS_CHECK)),
        (FILTER_FORWARD, Stmt::CtNewJump(SERVICE_ENDPOINTS_CHECK)),
        (FILTER_FORWARD, Stmt::CtNewJump(CLUSTER_IPS_CHECK)),
        (FILTER_OUTPUT, Stmt::CtNewJump(SERVICE_ENDPOINTS_CHECK)),
        (FILTER_OUTPUT, Stmt::CtNewJump(CLUSTER_IPS_CHECK)),
        (SERVICES, Stmt::VmapIpProtoPort(FixedSet::ServiceIps)),
        (SERVICES, Stmt::VmapNodePort(FixedSet::ServiceNodePorts)),
        (MASQUERADING, Stmt::ReturnUnmarked(cfg.mark)),
        (MASQUERADING, Stmt::ClearMark(cfg.mark)),
        (MASQUERADING, Stmt::Masquerade),
        (MARK_FOR_MASQUERADE, Stmt::SetMark(cfg.mark)),
        (REJECT_CHAIN, Stmt::Reject),
        (
            SERVICE_ENDPOINTS_CHECK,
            Stmt::VmapIpProtoPort(FixedSet::NoEndpointServices),
        ),
        (
            NODEPORT_ENDPOINTS_CHECK,
            Stmt::VmapNodePort(FixedSet::NoEndpointNodePorts),
        ),
        (CLUSTER_IPS_CHECK, Stmt::RejectClusterIps),
    ]);
    rules
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

/// An element of a fixed set: the set, the key, and for a map the value.
type Element = (FixedSet, Key, Option<Value>);

/// Most endpoints a service port picks from through `endpoint-picks` (the keys of one slot).
const PICKS_PER_SLOT: u32 = 1 << 16;
/// Slots are 1..=MAX_SLOT, so that a key is `slot << 16 | i` in a u32.
const MAX_SLOT: u32 = (1 << 16) - 1;
/// Slots (service ports) per `endpoint-picks-*` map. Each port's rule is a binding of its map,
/// and the kernel checks every new element against every binding of the map: one map for all
/// ports makes a full sync quadratic (17 s at 10,000 services). Small maps keep that linear;
/// the maps' names are looked up linearly too, so not too many of them.
pub const SLOTS_PER_MAP: u32 = 32;

/// Which service port holds which slot of `endpoint-picks`. A port keeps its slot while it
/// picks through the map, so that an endpoint change is a change of elements only: a commit
/// that adds rules makes the kernel re-check every chain of the table, one that changes the
/// elements of a data map does not.
struct Slots {
    by_chain: HashMap<String, u32>,
    free: Vec<u32>,
    next: u32,
}

impl Slots {
    fn new() -> Self {
        Slots {
            by_chain: HashMap::new(),
            free: Vec::new(),
            next: 1,
        }
    }

    /// The slot of the service chain `chain`, taken now if it has none; `None` when all are
    /// taken (the port then picks with rules).
    fn get(&mut self, chain: &str) -> Option<u32> {
        if let Some(slot) = self.by_chain.get(chain) {
            return Some(*slot);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.next <= MAX_SLOT => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.by_chain.insert(chain.to_string(), slot);
        Some(slot)
    }

    fn release(&mut self, chain: &str) {
        if let Some(slot) = self.by_chain.remove(chain) {
            self.free.push(slot);
        }
    }
}

/// What one service puts in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Objects {
    /// Affinity sets, with their timeout in seconds.
    sets: Vec<(String, u32)>,
    /// Chains, with their rules in order.
    chains: Vec<(String, Vec<Stmt>)>,
    elements: Vec<Element>,
    /// Endpoint addresses (for `hairpin-endpoints`), each once.
    hairpin: Vec<Ipv4Addr>,
    /// The service chains that hold a slot, and the map of the slot.
    slots: Vec<(String, FixedSet)>,
}

impl Objects {
    fn build(state: &ServiceState, slots: &mut Slots) -> Self {
        let mut o = Objects::default();
        let svc = &state.service;
        let Some(cluster_ip) = svc.cluster_ip else {
            return o;
        };
        o.elements
            .push((FixedSet::ClusterIps, Key::Ip(cluster_ip), None));
        for (i, port) in svc.ports.iter().enumerate() {
            let ready = ready_endpoints(state.endpoints.get(i));
            o.service_port(state, cluster_ip, port, &ready, slots);
        }
        o.hairpin.sort();
        o.hairpin.dedup();
        o
    }

    /// Adds the chains, sets and elements of one port of a service with a ClusterIP.
    fn service_port(
        &mut self,
        state: &ServiceState,
        cluster_ip: Ipv4Addr,
        port: &ServicePort,
        ready: &[&Endpoint],
        slots: &mut Slots,
    ) {
        let svc = &state.service;
        let proto = port.protocol;
        let ip_key = Key::IpProtoPort(cluster_ip, proto, port.port);
        let node_key = port.node_port.map(|np| Key::ProtoPort(proto, np));
        if ready.is_empty() {
            let reject = Some(Value::Goto(REJECT_CHAIN.to_string()));
            self.elements
                .push((FixedSet::NoEndpointServices, ip_key, reject.clone()));
            if let Some(key) = node_key {
                self.elements
                    .push((FixedSet::NoEndpointNodePorts, key, reject));
            }
            return;
        }

        let base = port_base(&svc.namespace, &svc.name, port);
        let service_chain = chain_name_service(&svc.namespace, &svc.name, port);
        let affinity = svc.affinity_timeout.map(|t| t.max(1));
        let mut rules = Vec::new();
        let sets: Vec<Option<String>> = ready
            .iter()
            .map(|ep| affinity.map(|t| set_name_affinity(&base, ep, t)))
            .collect();
        let dnat = |ep: &Endpoint, check, pick, update| Stmt::Dnat {
            check,
            pick,
            update,
            proto,
            ip: ep.ip,
            port: ep.port,
        };
        // A client in an endpoint's affinity set goes back to it (and stays for another
        // timeout).
        for (ep, set) in ready.iter().zip(&sets) {
            if let Some(set) = set {
                rules.push(dnat(ep, Some(set.clone()), None, Some(set.clone())));
            }
        }
        let n = ready.len() as u32;
        let slot = if affinity.is_none() && n > 1 && n <= PICKS_PER_SLOT {
            slots.get(&service_chain)
        } else {
            None
        };
        if let Some(slot) = slot {
            // One rule: a random key of the port's slot, mapped to its endpoint.
            let offset = slot << 16;
            rules.push(Stmt::DnatPick { proto, n, offset });
            for (i, ep) in ready.iter().enumerate() {
                self.elements.push((
                    FixedSet::picks(proto, slot),
                    Key::Pick(offset + i as u32),
                    Some(Value::Endpoint(ep.ip, ep.port)),
                ));
                self.hairpin.push(ep.ip);
            }
            self.slots
                .push((service_chain.clone(), FixedSet::picks(proto, slot)));
        } else {
            // Rule i picks endpoint i with probability 1/(N - i) when reached: 1/N for each.
            // With affinity, the picking rule also records the client in the endpoint's set.
            for (i, (ep, set)) in ready.iter().zip(&sets).enumerate() {
                let left = n - i as u32;
                let pick = (left > 1).then_some(left);
                rules.push(dnat(ep, None, pick, set.clone()));
                self.hairpin.push(ep.ip);
            }
        }
        for set in sets.into_iter().flatten() {
            self.sets.push((set, affinity.unwrap_or(1)));
        }
        self.chains.push((service_chain.clone(), rules));
        self.elements.push((
            FixedSet::ServiceIps,
            ip_key,
            Some(Value::Goto(service_chain.clone())),
        ));

        if let Some(key) = node_key {
            let external = chain_name_external(&base);
            let rules = vec![
                Stmt::Jump(MARK_FOR_MASQUERADE.to_string()),
                Stmt::Goto(service_chain),
            ];
            self.chains.push((external.clone(), rules));
            self.elements
                .push((FixedSet::ServiceNodePorts, key, Some(Value::Goto(external))));
        }
    }
}

/// Identifies a service: `<namespace>/<name>`.
type ServiceKey = String;

fn service_key(s: &ServiceState) -> ServiceKey {
    format!("{}/{}", s.service.namespace, s.service.name)
}

/// What the proxy has rendered for one service.
struct Rendered {
    state: ServiceState,
    objects: Objects,
    /// The last diff that found the service in its input.
    seen: u64,
    /// [`fingerprint`] of `state`.
    fingerprint: u64,
}

impl Rendered {
    fn new(state: &ServiceState, objects: Objects, generation: u64) -> Self {
        Rendered {
            state: state.clone(),
            objects,
            seen: generation,
            fingerprint: fingerprint(state),
        }
    }
}

/// A 64-bit hash (SipHash, fixed keys) of everything the proxy renders from a service. A diff
/// compares these instead of whole states: for 10,000 services, comparing states walks memory
/// all over the heap (7 ms here) and hashing the new ones is a third of that. Two states that
/// differ share a fingerprint with a probability of 2^-64.
fn fingerprint(state: &ServiceState) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// The proxy's view of its table: what it last rendered per service, so that a sync renders
/// and sends only the services that changed.
///
/// After a sync's ops were not applied (an error), call [`Proxy::forget`]: the next
/// [`Proxy::sync`] is then a full one.
pub struct Proxy {
    cfg: Config,
    /// `None`: what the kernel holds is unknown.
    services: Option<HashMap<ServiceKey, Rendered>>,
    /// How many services have each endpoint address (`hairpin-endpoints` holds those > 0).
    hairpin: HashMap<Ipv4Addr, usize>,
    /// Which service holds each element: when two services claim a key (a ClusterIP and port,
    /// or a NodePort), the one that has it keeps it.
    owners: HashMap<(FixedSet, Key), ServiceKey>,
    slots: Slots,
    /// The `endpoint-picks-*` maps, with how many ports use each.
    pick_maps: BTreeMap<FixedSet, usize>,
    /// Counts diffs (for [`Rendered::seen`]).
    generation: u64,
}

impl Proxy {
    pub fn new(cfg: Config) -> Self {
        Proxy {
            cfg,
            services: None,
            hairpin: HashMap::new(),
            owners: HashMap::new(),
            slots: Slots::new(),
            pick_maps: BTreeMap::new(),
            generation: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Forgets what the table holds: the next sync is a full one.
    pub fn forget(&mut self) {
        self.services = None;
        self.hairpin.clear();
        self.owners.clear();
        self.slots = Slots::new();
        self.pick_maps.clear();
    }

    /// The services as last synced (none when unknown).
    pub fn states(&self) -> impl Iterator<Item = &ServiceState> {
        self.services
            .iter()
            .flat_map(|m| m.values().map(|r| &r.state))
    }

    /// A diff when the table's content is known, a full sync otherwise.
    pub fn sync(&mut self, states: &[ServiceState]) -> Vec<Op> {
        if self.services.is_some() {
            self.diff(states)
        } else {
            self.full(states)
        }
    }

    /// Registers `objects` for `key`: claims its elements (dropping those another service
    /// holds) and counts its endpoint addresses. Returns the hairpin addresses whose count went
    /// from 0 to 1.
    fn claim(&mut self, key: &ServiceKey, objects: &mut Objects) -> Vec<Ipv4Addr> {
        objects.elements.retain(|(set, k, _)| {
            // Pick keys are the port's own by construction.
            if matches!(set, FixedSet::EndpointPicks(..)) {
                return true;
            }
            match self.owners.entry((*set, *k)) {
                std::collections::hash_map::Entry::Occupied(o) if o.get() != key => {
                    tracing::warn!(service = %key, key = %k, owner = %o.get(), "two services claim one key; the first keeps it");
                    false
                }
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(key.clone());
                    true
                }
            }
        });
        for (_, map) in &objects.slots {
            *self.pick_maps.entry(*map).or_default() += 1;
        }
        let mut added = Vec::new();
        for ip in &objects.hairpin {
            let n = self.hairpin.entry(*ip).or_default();
            *n += 1;
            if *n == 1 {
                added.push(*ip);
            }
        }
        added
    }

    /// Undoes [`Proxy::claim`]. Returns the hairpin addresses whose count went to 0.
    fn release(&mut self, objects: &Objects) -> Vec<Ipv4Addr> {
        for (set, k, _) in &objects.elements {
            if !matches!(set, FixedSet::EndpointPicks(..)) {
                self.owners.remove(&(*set, *k));
            }
        }
        for (_, map) in &objects.slots {
            if let Some(n) = self.pick_maps.get_mut(map) {
                *n -= 1;
                if *n == 0 {
                    self.pick_maps.remove(map);
                }
            }
        }
        let mut removed = Vec::new();
        for ip in &objects.hairpin {
            if let Some(n) = self.hairpin.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.hairpin.remove(ip);
                    removed.push(*ip);
                }
            }
        }
        removed
    }

    /// The whole table for `states`: `add table` (so that the `delete` works when there is
    /// none yet), `delete table`, then the table with everything in it, in one transaction that
    /// leaves nothing stale behind.
    pub fn full(&mut self, states: &[ServiceState]) -> Vec<Op> {
        self.forget();
        let mut rendered: HashMap<ServiceKey, Rendered> = HashMap::new();
        let mut order = Vec::new();
        for state in states {
            let key = service_key(state);
            if rendered.contains_key(&key) {
                continue;
            }
            let mut objects = Objects::build(state, &mut self.slots);
            self.claim(&key, &mut objects);
            order.push(key.clone());
            rendered.insert(key, Rendered::new(state, objects, self.generation));
        }

        let mut ops = vec![Op::AddTable, Op::DeleteTable, Op::AddTable];
        ops.extend(FixedSet::ALL.into_iter().map(Op::AddFixedSet));
        ops.extend(self.pick_maps.keys().copied().map(Op::AddFixedSet));
        let services = || order.iter().map(|k| &rendered[k].objects);
        for o in services() {
            for (name, timeout) in &o.sets {
                ops.push(Op::AddAffinitySet {
                    name: name.clone(),
                    timeout: *timeout,
                });
            }
        }
        for (name, hook) in fixed_chains() {
            ops.push(Op::AddChain {
                name: name.to_string(),
                hook,
            });
        }
        for o in services() {
            for (name, _) in &o.chains {
                ops.push(Op::AddChain {
                    name: name.clone(),
                    hook: None,
                });
            }
        }
        for (chain, stmt) in fixed_rules(&self.cfg) {
            ops.push(Op::AddRule {
                chain: chain.to_string(),
                stmt,
            });
        }
        for o in services() {
            for (chain, rules) in &o.chains {
                for stmt in rules {
                    ops.push(Op::AddRule {
                        chain: chain.clone(),
                        stmt: stmt.clone(),
                    });
                }
            }
        }
        // Grouped by set, each set's in service order.
        let mut elements: Vec<&Element> = services().flat_map(|o| &o.elements).collect();
        elements.sort_by_key(|e| e.0);
        ops.extend(
            elements
                .into_iter()
                .map(|(set, key, value)| Op::AddElement {
                    set: *set,
                    key: *key,
                    value: value.clone(),
                }),
        );
        let mut hairpin: Vec<&Ipv4Addr> = self.hairpin.keys().collect();
        hairpin.sort();
        ops.extend(hairpin.into_iter().map(|ip| Op::AddElement {
            set: FixedSet::Hairpin,
            key: Key::IpPair(*ip),
            value: None,
        }));
        self.services = Some(rendered);
        ops
    }

    /// The ops that turn the table last synced into the one for `states`; empty when nothing
    /// changed. Only the services whose state differs are rendered. Without a known table
    /// (after [`Proxy::forget`]) this is [`Proxy::full`].
    pub fn diff(&mut self, states: &[ServiceState]) -> Vec<Op> {
        let Some(mut current) = self.services.take() else {
            return self.full(states);
        };
        // The services that changed, were added (Some) or removed (None); of two with one
        // name, the first counts. This runs for every sync over every service, so it
        // allocates only for the changed ones.
        self.generation += 1;
        let generation = self.generation;
        let mut changed: Vec<(ServiceKey, Option<&ServiceState>)> = Vec::new();
        let mut added: HashSet<ServiceKey> = HashSet::new();
        let mut key = String::new();
        for state in states {
            key.clear();
            let _ = write!(key, "{}/{}", state.service.namespace, state.service.name);
            match current.get_mut(key.as_str()) {
                Some(r) if r.seen == generation => {}
                Some(r) => {
                    r.seen = generation;
                    if r.fingerprint != fingerprint(state) {
                        changed.push((key.clone(), Some(state)));
                    }
                }
                None => {
                    if added.insert(key.clone()) {
                        changed.push((key.clone(), Some(state)));
                    }
                }
            }
        }
        for (key, r) in &current {
            if r.seen != generation {
                changed.push((key.clone(), None));
            }
        }
        if changed.is_empty() {
            self.services = Some(current);
            return Vec::new();
        }
        changed.sort_by(|a, b| a.0.cmp(&b.0));

        // Release everything the changed services had, then claim what they have now, so that
        // a key moving from one service to another in one sync works.
        let empty = Objects::default();
        let maps_before: Vec<FixedSet> = self.pick_maps.keys().copied().collect();
        let mut old: BTreeMap<ServiceKey, Objects> = BTreeMap::new();
        let mut hairpin_gone: Vec<Ipv4Addr> = Vec::new();
        for (key, _) in &changed {
            if let Some(r) = current.remove(key) {
                hairpin_gone.extend(self.release(&r.objects));
                old.insert(key.clone(), r.objects);
            }
        }
        let mut new: BTreeMap<ServiceKey, Objects> = BTreeMap::new();
        let mut hairpin_new: Vec<Ipv4Addr> = Vec::new();
        for (key, state) in &changed {
            if let Some(state) = state {
                let mut objects = Objects::build(state, &mut self.slots);
                hairpin_new.extend(self.claim(key, &mut objects));
                new.insert(key.clone(), objects);
            }
        }
        // Slots given up are free for the next sync (not this one: their elements are only
        // deleted by it).
        for (key, o) in &old {
            for slot in &o.slots {
                if !new.get(key).is_some_and(|n| n.slots.contains(slot)) {
                    self.slots.release(&slot.0);
                }
            }
        }
        // An address that went and came back in this sync stays.
        let came: HashSet<Ipv4Addr> = hairpin_new.iter().copied().collect();
        let went: HashSet<Ipv4Addr> = hairpin_gone.iter().copied().collect();
        hairpin_gone.retain(|ip| !came.contains(ip));
        hairpin_new.retain(|ip| !went.contains(ip));
        hairpin_gone.sort();
        hairpin_new.sort();

        let mut ops: Vec<Op> = self
            .pick_maps
            .keys()
            .filter(|m| !maps_before.contains(m))
            .map(|m| Op::AddFixedSet(*m))
            .collect();
        let pairs = || {
            changed.iter().map(|(key, _)| {
                (
                    old.get(key).unwrap_or(&empty),
                    new.get(key).unwrap_or(&empty),
                )
            })
        };
        for (o, n) in pairs() {
            for (name, timeout) in &n.sets {
                if !o.sets.iter().any(|(s, t)| s == name && t == timeout) {
                    ops.push(Op::AddAffinitySet {
                        name: name.clone(),
                        timeout: *timeout,
                    });
                }
            }
        }
        for (o, n) in pairs() {
            for (name, _) in &n.chains {
                if !o.chains.iter().any(|(c, _)| c == name) {
                    ops.push(Op::AddChain {
                        name: name.clone(),
                        hook: None,
                    });
                }
            }
        }
        for (o, n) in pairs() {
            for (name, rules) in &n.chains {
                match o.chains.iter().find(|(c, _)| c == name) {
                    Some((_, old_rules)) if old_rules == rules => continue,
                    Some(_) => ops.push(Op::FlushChain(name.clone())),
                    None => {}
                }
                ops.extend(rules.iter().map(|stmt| Op::AddRule {
                    chain: name.clone(),
                    stmt: stmt.clone(),
                }));
            }
        }
        let mut deletes: Vec<(FixedSet, Key)> = Vec::new();
        let mut adds: Vec<&Element> = Vec::new();
        for (o, n) in pairs() {
            deletes.extend(
                o.elements
                    .iter()
                    .filter(|e| !n.elements.contains(e))
                    .map(|(s, k, _)| (*s, *k)),
            );
            adds.extend(n.elements.iter().filter(|e| !o.elements.contains(e)));
        }
        deletes.extend(
            hairpin_gone
                .iter()
                .map(|ip| (FixedSet::Hairpin, Key::IpPair(*ip))),
        );
        deletes.sort();
        adds.sort_by_key(|e| (e.0, e.1));
        ops.extend(
            deletes
                .into_iter()
                .map(|(set, key)| Op::DeleteElement { set, key }),
        );
        ops.extend(adds.into_iter().map(|(set, key, value)| Op::AddElement {
            set: *set,
            key: *key,
            value: value.clone(),
        }));
        ops.extend(hairpin_new.iter().map(|ip| Op::AddElement {
            set: FixedSet::Hairpin,
            key: Key::IpPair(*ip),
            value: None,
        }));
        let removed: Vec<&String> = pairs()
            .flat_map(|(o, n)| {
                o.chains
                    .iter()
                    .filter(|(c, _)| !n.chains.iter().any(|(d, _)| d == c))
                    .map(|(c, _)| c)
            })
            .collect();
        ops.extend(removed.iter().map(|c| Op::FlushChain((*c).clone())));
        ops.extend(removed.iter().map(|c| Op::DeleteChain((*c).clone())));
        for (o, n) in pairs() {
            for (name, timeout) in &o.sets {
                if !n.sets.iter().any(|(s, t)| s == name && t == timeout) {
                    ops.push(Op::DeleteSet(name.clone()));
                }
            }
        }
        ops.extend(
            maps_before
                .iter()
                .filter(|m| !self.pick_maps.contains_key(m))
                .map(|m| Op::DeleteSet(m.name().into_owned())),
        );

        for (key, state) in changed {
            if let (Some(state), Some(objects)) = (state, new.remove(&key)) {
                current.insert(key, Rendered::new(state, objects, self.generation));
            }
        }
        self.services = Some(current);
        ops
    }
}

/// The whole table for `states` as one `nft -f` script.
pub fn render_full(states: &[ServiceState], cfg: &Config) -> String {
    script(&Proxy::new(cfg.clone()).full(states), &cfg.table)
}

/// The script that turns the table rendered for `old` into the one for `new`; empty when
/// nothing changed. It assumes that `render_full(old, cfg)` (or an equivalent) is what is
/// applied, with the same `cfg`.
pub fn render_diff(old: &[ServiceState], new: &[ServiceState], cfg: &Config) -> String {
    let mut proxy = Proxy::new(cfg.clone());
    proxy.full(old);
    script(&proxy.diff(new), &cfg.table)
}

/// The number of rules and set or map elements a script adds (counted per element, also when
/// several are in one command).
pub fn count_rules(script: &str) -> usize {
    script
        .lines()
        .map(str::trim_start)
        .map(|l| {
            if l.starts_with("add rule ") {
                1
            } else if l.starts_with("add element ") {
                l.matches(',').count() + 1
            } else {
                0
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::service::{Protocol, ServiceView};
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
        assert!(script.contains(&format!(
            "add element ip knode-proxy service-ips {{ 10.96.0.5 . tcp . 80 : goto {chain} }}"
        )));
        assert!(script.contains("add element ip knode-proxy cluster-ips { 10.96.0.5 }"));
        assert!(script.contains(
            "add element ip knode-proxy hairpin-endpoints { 10.244.0.2 . 10.244.0.2, 10.244.0.3 . 10.244.0.3 }"
        ));
        // One of two keys of the port's slot (the first, 1 << 16), each an endpoint.
        assert_eq!(
            lines_with(&script, &format!("add rule ip knode-proxy {chain} ")),
            [format!("add rule ip knode-proxy {chain} meta l4proto tcp counter dnat ip to numgen random mod 2 offset 65536 map @endpoint-picks-tcp-0")]
        );
        // Traffic to a ClusterIP from outside the pod network is masqueraded: one rule for all.
        assert_eq!(
            lines_with(&script, "ip saddr != "),
            ["add rule ip knode-proxy nat-postrouting ct original ip daddr @cluster-ips ip saddr != 10.244.0.0/16 jump mark-for-masquerade"]
        );
        assert!(script.contains(
            "add element ip knode-proxy endpoint-picks-tcp-0 { 65536 : 10.244.0.2 . 8080, 65537 : 10.244.0.3 . 8080 }"
        ));
        // No chain per endpoint.
        assert!(lines_with(&script, "add chain ip knode-proxy endpoint-").is_empty());
        assert!(lines_with(&script, "no-endpoint")
            .iter()
            .all(|l| !l.contains("add element")));
    }

    #[test]
    fn map_picks_give_each_endpoint_one_key() {
        let eps = ["10.244.0.5", "10.244.0.3", "10.244.0.4", "10.244.0.2"];
        let states = [
            svc("a", "10.96.0.5", &eps),
            dns(&["10.244.0.2", "10.244.0.3"]),
        ];
        let script = render_full(&states, &Config::default());
        // Each port its own slot, in the map of its protocol.
        let rules = lines_with(&script, "dnat ip to numgen");
        assert_eq!(rules.len(), 3, "{script}");
        assert!(rules[0].ends_with(
            "tcp counter dnat ip to numgen random mod 4 offset 65536 map @endpoint-picks-tcp-0"
        ));
        assert!(rules[1].ends_with(
            "udp counter dnat ip to numgen random mod 2 offset 131072 map @endpoint-picks-udp-0"
        ));
        assert!(rules[2].ends_with(
            "tcp counter dnat ip to numgen random mod 2 offset 196608 map @endpoint-picks-tcp-0"
        ));
        assert!(script.contains(
            "add element ip knode-proxy endpoint-picks-tcp-0 { 65536 : 10.244.0.2 . 8080, 65537 : 10.244.0.3 . 8080, 65538 : 10.244.0.4 . 8080, 65539 : 10.244.0.5 . 8080, 196608 : 10.244.0.2 . 53, 196609 : 10.244.0.3 . 53 }"
        ), "{script}");
        assert!(script.contains(
            "add element ip knode-proxy endpoint-picks-udp-0 { 131072 : 10.244.0.2 . 53, 131073 : 10.244.0.3 . 53 }"
        ));
    }

    #[test]
    fn endpoint_changes_keep_the_slot_and_change_only_elements() {
        let cfg = cfg();
        let old = [svc(
            "web",
            "10.96.0.5",
            &["10.244.0.2", "10.244.0.3", "10.244.0.4"],
        )];
        let new = [svc(
            "web",
            "10.96.0.5",
            &["10.244.0.2", "10.244.0.9", "10.244.0.4"],
        )];
        let mut proxy = Proxy::new(cfg.clone());
        proxy.full(&old);
        let diff = script(&proxy.diff(&new), &cfg.table);
        assert!(!diff.contains("rule") && !diff.contains("chain"), "{diff}");
        assert!(
            diff.contains("delete element ip knode-proxy endpoint-picks-tcp-0 { 65537, 65538 }"),
            "{diff}"
        );
        assert!(diff.contains("add element ip knode-proxy endpoint-picks-tcp-0 { 65537 : 10.244.0.4 . 8080, 65538 : 10.244.0.9 . 8080 }"), "{diff}");
        // A port that no longer picks from the map gives its slot back, for a later sync.
        let one = [svc("web", "10.96.0.5", &["10.244.0.2"])];
        let diff = script(&proxy.diff(&one), &cfg.table);
        assert!(diff.contains("flush chain"), "{diff}");
        assert!(!diff.contains("numgen"), "{diff}");
        assert!(
            diff.ends_with("delete set ip knode-proxy endpoint-picks-tcp-0\n"),
            "{diff}"
        );
        let two = [
            svc("web", "10.96.0.5", &["10.244.0.2"]),
            svc("api", "10.96.0.6", &["10.244.0.2", "10.244.0.3"]),
        ];
        let diff = script(&proxy.diff(&two), &cfg.table);
        assert!(
            diff.contains("numgen random mod 2 offset 65536 map"),
            "{diff}"
        );
        assert!(
            diff.starts_with("add map ip knode-proxy endpoint-picks-tcp-0 "),
            "{diff}"
        );
    }

    #[test]
    fn pick_rules_give_each_endpoint_one_nth() {
        // With session affinity, picks are rules (each also records the client).
        let eps = ["10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5"];
        let s = with_affinity(svc("web", "10.96.0.5", &eps), 60);
        let script = render_full(&[s], &Config::default());
        let picks: Vec<&str> = lines_with(&script, "dnat to")
            .into_iter()
            .filter(|l| !l.contains(" ip saddr @"))
            .collect();
        assert_eq!(picks.len(), 4);
        // Rule i matches with 1/(N-i) of what reaches it: 1/4, then 1/3 of 3/4, ...
        for (i, rule) in picks.iter().enumerate() {
            let want = match 4 - i {
                1 => "} meta l4proto tcp counter dnat".to_string(),
                n => format!("numgen random mod {n} 0 update @"),
            };
            assert!(rule.contains(&want), "{rule}");
            assert!(rule.ends_with(&format!("{}:8080", eps[i])), "{rule}");
        }
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
        assert!(script.contains("meta l4proto tcp counter dnat to 10.244.0.2:8080"));
        assert!(!script.contains("numgen random mod 2"));
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
        let rules = lines_with(&script, "add rule ip knode-proxy service-7UCITOBJ-");
        // Two affinity checks, two picks; the checks before the picks.
        assert_eq!(rules.len(), 4, "{script}");
        assert!(rules[0].ends_with(&format!(
            "ip saddr @{set} update @{set} {{ ip saddr }} meta l4proto tcp counter dnat to 10.244.0.2:8080"
        )));
        assert!(rules[2].ends_with(&format!(
            "numgen random mod 2 0 update @{set} {{ ip saddr }} meta l4proto tcp counter dnat to 10.244.0.2:8080"
        )));
        assert!(rules[1].contains(" ip saddr @affinity-"));
        assert!(rules[3].contains(" update @affinity-") && !rules[3].contains("numgen"));
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
        // Service chain: dnat; elements: cluster-ips, service-ips, hairpin.
        assert_eq!(
            count_rules(&render_full(std::slice::from_ref(&s), &cfg())),
            fixed + 4
        );
        assert_eq!(count_rules(&render_diff(&[], &[s], &cfg())), 4);
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
    fn apply_in_netns(scripts: &[&str]) -> std::io::Result<String> {
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
            Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
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
        canonical_slots(&mut blocks);
        blocks
    }

    /// Slots depend on the order in which ports took them: name each by the chain that picks
    /// from it, in rules and in the keys of `endpoint-picks-*`.
    fn canonical_slots(blocks: &mut BTreeMap<String, Vec<String>>) {
        let mut by_offset: HashMap<u32, String> = HashMap::new();
        for (block, lines) in blocks.iter_mut() {
            for line in lines.iter_mut() {
                let Some((head, tail)) = line.split_once(" offset ") else {
                    continue;
                };
                let (offset, rest) = tail.split_once(' ').unwrap();
                by_offset.insert(
                    offset.parse().unwrap_or_else(|_| panic!("{line}")),
                    block.clone(),
                );
                *line = format!("{head} offset <{block}> {rest}");
            }
        }
        for (block, lines) in blocks.iter_mut() {
            if !block.starts_with("map endpoint-picks-") {
                continue;
            }
            for line in lines.iter_mut() {
                let Some(element) = line.strip_prefix("element ") else {
                    continue;
                };
                let (key, value) = element.split_once(" : ").unwrap();
                let key: u32 = key.parse().unwrap();
                let chain = &by_offset[&(key & !0xffff)];
                *line = format!("element <{chain}>+{} : {value}", key & 0xffff);
            }
            lines.sort();
        }
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

    /// Two endpoints pick through a map, one is a rule: the map goes when no port uses it.
    #[test]
    fn nft_endpoints_two_to_one() {
        check_transition(
            &[svc("web", "10.96.0.5", &["10.244.0.2", "10.244.0.4"])],
            &[svc("web", "10.96.0.5", &["10.244.0.4"])],
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
