//! nf_tables over netlink: [`apply`] sends a sync's [`Op`]s to the kernel as one batch (one
//! transaction, all of it or nothing), with the same expressions `nft` generates for the
//! text form of each rule (checked by tests against `nft --debug=netlink` listings).
//!
//! Why not the `nft` binary: every `nft -f` first loads the table from the kernel (its cache),
//! so even a one-element change costs time proportional to the whole table, and its parser
//! sets a floor of about 25 µs per rule for full syncs. A batch built here costs what it holds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::nft::{ChainType, Config, FixedSet, HookPoint, Key, Op, Stmt, Value};
use crate::api::service::Protocol;

/// A batch the kernel refused, or a socket error.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nf_tables refused {what}: {err}")]
    Refused {
        what: String,
        #[source]
        err: io::Error,
    },
}

// nfnetlink / nf_tables constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFPROTO_IPV4: u8 = 2;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// nft's datatype ids, for the key types `nft list` shows (concatenations: 6 bits a field).
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

// Registers.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;
const REG32_02: u32 = 10;

// Payload bases, meta and ct keys, operators.
const NETWORK: u32 = 1;
const TRANSPORT: u32 = 2;
const META_MARK: u32 = 3;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CT_DST_IP: u32 = 20;
const CT_STATE_NEW: u32 = 8;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const RTN_LOCAL: u32 = 2;

/// Netlink messages of one batch, with what each one does (for errors).
struct Batch {
    buf: Vec<u8>,
    what: Vec<String>,
}

impl Batch {
    fn new() -> Self {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            what: Vec::new(),
        };
        let m = b.msg_raw(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.end(m);
        b.what.push("the batch".into());
        b
    }

    /// Starts a message: header (length filled by [`Batch::end`]) and nfgenmsg.
    fn msg_raw(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        let seq = self.what.len() as u32;
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn msg(&mut self, ty: u16, flags: u16, what: String) -> usize {
        let m = self.msg_raw(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            NFPROTO_IPV4,
            0,
        );
        self.what.push(what);
        m
    }

    /// Ends a message or a nested attribute started at `start`: writes its length.
    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.pad();
    }

    fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// `NFTA_DATA_VALUE` nested in `ty`.
    fn data(&mut self, ty: u16, value: &[u8]) {
        let n = self.nest(ty);
        self.attr(NFTA_DATA_VALUE, value);
        self.end_nest(n);
    }

    /// `NFTA_DATA_VERDICT` nested in `ty`.
    fn verdict(&mut self, ty: u16, code: i32, chain: Option<&str>) {
        let n = self.nest(ty);
        let v = self.nest(NFTA_DATA_VERDICT);
        self.u32(NFTA_VERDICT_CODE, code as u32);
        if let Some(chain) = chain {
            self.str(NFTA_VERDICT_CHAIN, chain);
        }
        self.end_nest(v);
        self.end_nest(n);
    }

    fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        let m = self.msg_raw(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.end(m);
        self.what.push("the batch".into());
        (self.buf, self.what)
    }
}

/// Writes the expressions of one rule.
struct Exprs<'a>(&'a mut Batch);

impl Exprs<'_> {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Batch)) {
        let b = &mut *self.0;
        let e = b.nest(NFTA_LIST_ELEM);
        b.str(NFTA_EXPR_NAME, name);
        let d = b.nest(NFTA_EXPR_DATA);
        body(b);
        b.end_nest(d);
        b.end_nest(e);
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        self.expr("payload", |b| {
            b.u32(1, dreg);
            b.u32(2, base);
            b.u32(3, offset);
            b.u32(4, len);
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |b| {
            b.u32(1, REG_1);
            b.u32(2, op);
            b.data(3, value);
        });
    }

    fn meta(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |b| {
            b.u32(2, key);
            b.u32(1, dreg);
        });
    }

    fn meta_set(&mut self, key: u32) {
        self.expr("meta", |b| {
            b.u32(2, key);
            b.u32(3, REG_1);
        });
    }

    fn bitwise(&mut self, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |b| {
            b.u32(1, REG_1);
            b.u32(2, REG_1);
            b.u32(3, mask.len() as u32);
            b.data(4, mask);
            b.data(5, xor);
        });
    }

    fn lookup(&mut self, set: &str, dreg: Option<u32>) {
        self.expr("lookup", |b| {
            b.str(1, set);
            b.u32(2, REG_1);
            if let Some(dreg) = dreg {
                b.u32(3, dreg);
            }
        });
    }

    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        self.expr("immediate", |b| {
            b.u32(1, REG_VERDICT);
            b.verdict(2, code, chain);
        });
    }

    fn immediate(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |b| {
            b.u32(1, dreg);
            b.data(2, value);
        });
    }

    /// `counter`: packets and bytes through the rule (from zero).
    fn counter(&mut self) {
        self.expr("counter", |_| {});
    }

    fn l4proto(&mut self, proto: Protocol) {
        self.meta(META_L4PROTO, REG_1);
        self.cmp(CMP_EQ, &[proto_number(proto)]);
    }

    fn reject(&mut self) {
        // ICMP port unreachable, nft's `reject` for family ip.
        self.expr("reject", |b| {
            b.u32(1, 0);
            b.attr(2, &[3]);
        });
    }

    /// `ip daddr . meta l4proto . th dport` in registers 1, 9 and 10.
    fn ip_proto_port(&mut self) {
        self.payload(NETWORK, 16, 4, REG_1);
        self.meta(META_L4PROTO, REG32_01);
        self.payload(TRANSPORT, 2, 2, REG32_02);
    }

    /// `meta mark set meta mark & and ^ xor`
    fn mark(&mut self, and: u32, xor: u32) {
        self.meta(META_MARK, REG_1);
        self.bitwise(&and.to_ne_bytes(), &xor.to_ne_bytes());
        self.meta_set(META_MARK);
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Encodes one rule as nft does for its text form.
fn encode_stmt(e: &mut Exprs<'_>, stmt: &Stmt) {
    match stmt {
        Stmt::Jump(c) => e.verdict(NFT_JUMP, Some(c)),
        Stmt::Goto(c) => e.verdict(NFT_GOTO, Some(c)),
        Stmt::CtNewJump(c) => {
            e.expr("ct", |b| {
                b.u32(2, CT_STATE);
                b.u32(1, REG_1);
            });
            e.bitwise(&CT_STATE_NEW.to_ne_bytes(), &0u32.to_ne_bytes());
            e.cmp(CMP_NEQ, &0u32.to_ne_bytes());
            e.verdict(NFT_JUMP, Some(c));
        }
        Stmt::VmapIpProtoPort(map) => {
            e.ip_proto_port();
            e.lookup(&map.name(), Some(REG_VERDICT));
        }
        Stmt::VmapNodePort(map) => {
            e.expr("fib", |b| {
                b.u32(1, REG_1);
                b.u32(2, 3); // result: address type
                b.u32(3, 2); // flags: daddr
            });
            e.cmp(CMP_EQ, &RTN_LOCAL.to_ne_bytes());
            e.payload(NETWORK, 16, 1, REG_1);
            e.cmp(CMP_NEQ, &[127]);
            e.meta(META_L4PROTO, REG_1);
            e.payload(TRANSPORT, 2, 2, REG32_01);
            e.lookup(&map.name(), Some(REG_VERDICT));
        }
        Stmt::HairpinMark => {
            e.payload(NETWORK, 12, 4, REG_1);
            e.payload(NETWORK, 16, 4, REG32_01);
            e.lookup(&FixedSet::Hairpin.name(), None);
            e.verdict(NFT_JUMP, Some(super::nft::MARK_FOR_MASQUERADE));
        }
        Stmt::ReturnUnmarked(m) => {
            e.meta(META_MARK, REG_1);
            e.bitwise(&m.to_ne_bytes(), &0u32.to_ne_bytes());
            e.cmp(CMP_EQ, &0u32.to_ne_bytes());
            e.verdict(NFT_RETURN, None);
        }
        Stmt::ClearMark(m) => e.mark(u32::MAX, *m),
        Stmt::SetMark(m) => e.mark(!m, *m),
        Stmt::Masquerade => e.expr("masq", |b| b.u32(1, 0x10)),
        Stmt::Reject => e.reject(),
        Stmt::RejectClusterIps => {
            e.payload(NETWORK, 16, 4, REG_1);
            e.lookup(&FixedSet::ClusterIps.name(), None);
            e.reject();
        }
        Stmt::MarkOffCluster(cidr) => {
            e.expr("ct", |b| {
                b.u32(2, CT_DST_IP);
                b.u32(1, REG_1);
                b.attr(3, &[0]); // direction: original
            });
            e.lookup(&FixedSet::ClusterIps.name(), None);
            // Like nft: a byte-aligned prefix loads only its bytes; any other loads the whole
            // address and masks it.
            let net = cidr.trunc().network().octets();
            if cidr.prefix_len().is_multiple_of(8) {
                let len = usize::from(cidr.prefix_len() / 8);
                e.payload(NETWORK, 12, len as u32, REG_1);
                e.cmp(CMP_NEQ, &net[..len]);
            } else {
                e.payload(NETWORK, 12, 4, REG_1);
                e.bitwise(&cidr.netmask().octets(), &[0; 4]);
                e.cmp(CMP_NEQ, &net);
            }
            e.verdict(NFT_JUMP, Some(super::nft::MARK_FOR_MASQUERADE));
        }
        Stmt::Dnat {
            check,
            pick,
            update,
            proto,
            ip,
            port,
        } => {
            if let Some(set) = check {
                e.payload(NETWORK, 12, 4, REG_1);
                e.lookup(set, None);
            }
            if let Some(n) = pick {
                e.expr("numgen", |b| {
                    b.u32(1, REG_1);
                    b.u32(2, *n);
                    b.u32(3, 1); // random
                });
                e.cmp(CMP_EQ, &0u32.to_ne_bytes());
            }
            if let Some(set) = update {
                e.payload(NETWORK, 12, 4, REG_1);
                e.expr("dynset", |b| {
                    b.str(1, set);
                    b.u32(3, 1); // update
                    b.u32(4, REG_1);
                });
            }
            e.l4proto(*proto);
            e.counter();
            e.immediate(REG_1, &ip.octets());
            e.immediate(REG_2, &port.to_be_bytes());
            e.expr("nat", |b| {
                b.u32(1, 1); // dnat
                b.u32(2, u32::from(NFPROTO_IPV4));
                b.u32(3, REG_1);
                b.u32(5, REG_2);
                b.u32(7, 0x2); // proto range given
            });
        }
        Stmt::DnatPick { proto, n, offset } => {
            e.l4proto(*proto);
            e.counter();
            e.expr("numgen", |b| {
                b.u32(1, REG_1);
                b.u32(2, *n);
                b.u32(3, 1); // random
                b.u32(4, *offset);
            });
            e.lookup(&FixedSet::picks(*proto, offset >> 16).name(), Some(REG_1));
            // The map's value is `ip . port`: the address in register 1, the port in the
            // 32-bit register after it.
            e.expr("nat", |b| {
                b.u32(1, 1); // dnat
                b.u32(2, u32::from(NFPROTO_IPV4));
                b.u32(3, REG_1);
                b.u32(5, REG32_01);
            });
        }
    }
}

/// A map value `ipv4_addr . inet_service`: the address, the port in network order, padded to
/// 32 bits.
fn ip_port(ip: std::net::Ipv4Addr, port: u16) -> [u8; 8] {
    let mut v = [0; 8];
    v[..4].copy_from_slice(&ip.octets());
    v[4..6].copy_from_slice(&port.to_be_bytes());
    v
}

/// The set user data nft 1.0.6 stores for `typeof numgen random mod 1 : ip daddr . <proto>
/// dport` (key byte order host, data byte order network, then the key and data expressions),
/// copied from `nft --debug=mnl`. nft shows the map's types from it. The protocols differ in
/// one byte: nft's id of the transport header.
fn endpoint_picks_typeof(proto: Protocol) -> [u8; 100] {
    let mut udata = ENDPOINT_PICKS_TYPEOF_TCP;
    udata[TRANSPORT_ID_AT] = match proto {
        Protocol::Tcp => 0x08,
        Protocol::Udp => 0x06,
        Protocol::Sctp => 0x0a,
    };
    udata
}

const TRANSPORT_ID_AT: usize = 84;
const ENDPOINT_PICKS_TYPEOF_TCP: [u8; 100] = [
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
    0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00,
    0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00,
    0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0c, 0x00,
    0x00, 0x00, 0x01, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00,
    0x01, 0x0c, 0x00, 0x04, 0x08, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06, 0x04,
    0x00, 0x00, 0x00, 0x00,
];

/// Key type (nft's datatype id) and length of a fixed set.
fn key_type(set: FixedSet) -> (u32, u32) {
    let concat = |types: &[u32]| types.iter().fold(0, |acc, t| (acc << 6) | t);
    match set {
        FixedSet::ClusterIps => (TYPE_IPADDR, 4),
        FixedSet::Hairpin => (concat(&[TYPE_IPADDR, TYPE_IPADDR]), 8),
        FixedSet::ServiceIps | FixedSet::NoEndpointServices => (
            concat(&[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            12,
        ),
        FixedSet::ServiceNodePorts | FixedSet::NoEndpointNodePorts => {
            (concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), 8)
        }
        FixedSet::EndpointPicks(..) => (TYPE_INTEGER, 4),
    }
}

/// A key's bytes: concatenated fields each padded to 4 bytes.
fn key_bytes(key: &Key) -> Vec<u8> {
    let proto = |p: &Protocol| [proto_number(*p), 0, 0, 0];
    let port = |p: &u16| {
        let b = p.to_be_bytes();
        [b[0], b[1], 0, 0]
    };
    match key {
        Key::Ip(ip) => ip.octets().to_vec(),
        Key::IpPair(ip) => [ip.octets(), ip.octets()].concat(),
        Key::IpProtoPort(ip, p, n) => [ip.octets(), proto(p), port(n)].concat(),
        Key::ProtoPort(p, n) => [proto(p), port(n)].concat(),
        // numgen writes its result in host order.
        Key::Pick(n) => n.to_ne_bytes().to_vec(),
    }
}

fn hook_number(h: HookPoint) -> u32 {
    match h {
        HookPoint::Prerouting => 0,
        HookPoint::Input => 1,
        HookPoint::Forward => 2,
        HookPoint::Output => 3,
        HookPoint::Postrouting => 4,
    }
}

/// Element messages are cut at this size.
const ELEMENTS_PER_MESSAGE: usize = 100;

/// Builds the batch for `ops` on table `ip <cfg.table>`.
fn build(ops: &[Op], cfg: &Config) -> (Vec<u8>, Vec<String>) {
    let table = cfg.table.as_str();
    let mut b = Batch::new();
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            Op::AddTable | Op::DeleteTable => {
                let (ty, flags, verb) = match ops[i] {
                    Op::AddTable => (NFT_MSG_NEWTABLE, NLM_F_CREATE, "adding"),
                    _ => (NFT_MSG_DELTABLE, 0, "deleting"),
                };
                let m = b.msg(ty, flags, format!("{verb} table ip {table}"));
                b.str(NFTA_TABLE_NAME, table);
                b.end(m);
            }
            Op::AddFixedSet(set) => {
                let (kt, kl) = key_type(*set);
                let m = b.msg(
                    NFT_MSG_NEWSET,
                    NLM_F_CREATE,
                    format!("adding set {}", set.name()),
                );
                b.str(NFTA_SET_TABLE, table);
                b.str(NFTA_SET_NAME, &set.name());
                b.u32(NFTA_SET_ID, b.what.len() as u32);
                b.u32(NFTA_SET_FLAGS, if set.is_map() { NFT_SET_MAP } else { 0 });
                b.u32(NFTA_SET_KEY_TYPE, kt);
                b.u32(NFTA_SET_KEY_LEN, kl);
                if set.is_verdict_map() {
                    b.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                    b.u32(NFTA_SET_DATA_LEN, 0);
                } else if let FixedSet::EndpointPicks(proto, _) = set {
                    // ipv4_addr . inet_service, and nft's description of its `typeof` so that
                    // `nft list` shows it as nft would.
                    b.u32(NFTA_SET_DATA_TYPE, (TYPE_IPADDR << 6) | TYPE_INET_SERVICE);
                    b.u32(NFTA_SET_DATA_LEN, 8);
                    b.attr(NFTA_SET_USERDATA, &endpoint_picks_typeof(*proto));
                }
                b.end(m);
            }
            Op::AddAffinitySet { name, timeout } => {
                let m = b.msg(NFT_MSG_NEWSET, NLM_F_CREATE, format!("adding set {name}"));
                b.str(NFTA_SET_TABLE, table);
                b.str(NFTA_SET_NAME, name);
                b.u32(NFTA_SET_ID, b.what.len() as u32);
                b.u32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
                b.u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
                b.u32(NFTA_SET_KEY_LEN, 4);
                b.attr(
                    NFTA_SET_TIMEOUT,
                    &(u64::from(*timeout) * 1000).to_be_bytes(),
                );
                b.end(m);
            }
            Op::DeleteSet(name) => {
                let m = b.msg(NFT_MSG_DELSET, 0, format!("deleting set {name}"));
                b.str(NFTA_SET_TABLE, table);
                b.str(NFTA_SET_NAME, name);
                b.end(m);
            }
            Op::AddChain { name, hook } => {
                let m = b.msg(
                    NFT_MSG_NEWCHAIN,
                    NLM_F_CREATE,
                    format!("adding chain {name}"),
                );
                b.str(NFTA_CHAIN_TABLE, table);
                b.str(NFTA_CHAIN_NAME, name);
                if let Some(h) = hook {
                    let n = b.nest(NFTA_CHAIN_HOOK);
                    b.u32(NFTA_HOOK_HOOKNUM, hook_number(h.hook));
                    b.u32(NFTA_HOOK_PRIORITY, h.priority as u32);
                    b.end_nest(n);
                    b.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                    let kind = match h.kind {
                        ChainType::Nat => "nat",
                        ChainType::Filter => "filter",
                    };
                    b.str(NFTA_CHAIN_TYPE, kind);
                }
                b.end(m);
            }
            Op::FlushChain(name) => {
                let m = b.msg(NFT_MSG_DELRULE, 0, format!("flushing chain {name}"));
                b.str(NFTA_RULE_TABLE, table);
                b.str(NFTA_RULE_CHAIN, name);
                b.end(m);
            }
            Op::DeleteChain(name) => {
                let m = b.msg(NFT_MSG_DELCHAIN, 0, format!("deleting chain {name}"));
                b.str(NFTA_CHAIN_TABLE, table);
                b.str(NFTA_CHAIN_NAME, name);
                b.end(m);
            }
            Op::AddRule { chain, stmt } => {
                let m = b.msg(
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND,
                    format!("adding rule to {chain}: {stmt}"),
                );
                b.str(NFTA_RULE_TABLE, table);
                b.str(NFTA_RULE_CHAIN, chain);
                let n = b.nest(NFTA_RULE_EXPRESSIONS);
                encode_stmt(&mut Exprs(&mut b), stmt);
                b.end_nest_long(n);
                b.end(m);
            }
            Op::AddElement { set, .. } | Op::DeleteElement { set, .. } => {
                let add = matches!(ops[i], Op::AddElement { .. });
                let (ty, flags, verb) = match add {
                    true => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "adding"),
                    false => (NFT_MSG_DELSETELEM, 0, "deleting"),
                };
                let first = i;
                let mut keys = Vec::new();
                let m = b.msg(ty, flags, String::new());
                b.str(NFTA_SET_ELEM_LIST_TABLE, table);
                b.str(NFTA_SET_ELEM_LIST_SET, &set.name());
                let list = b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
                while let Some(op) = ops.get(i).filter(|_| i - first < ELEMENTS_PER_MESSAGE) {
                    let (s, key, value) = match op {
                        Op::AddElement { set, key, value } if add => (set, key, value.as_ref()),
                        Op::DeleteElement { set, key } if !add => (set, key, None),
                        _ => break,
                    };
                    if s != set {
                        break;
                    }
                    let e = b.nest(NFTA_LIST_ELEM);
                    b.data(NFTA_SET_ELEM_KEY, &key_bytes(key));
                    match value {
                        Some(Value::Goto(chain)) => {
                            b.verdict(NFTA_SET_ELEM_DATA, NFT_GOTO, Some(chain))
                        }
                        Some(Value::Endpoint(ip, port)) => {
                            b.data(NFTA_SET_ELEM_DATA, &ip_port(*ip, *port))
                        }
                        None => {}
                    }
                    b.end_nest(e);
                    keys.push(key.to_string());
                    i += 1;
                }
                b.end_nest_long(list);
                b.end(m);
                let what = b.what.last_mut().expect("message just added");
                *what = format!("{verb} {} {{ {} }}", set.name(), keys.join(", "));
                continue;
            }
        }
        i += 1;
    }
    b.finish()
}

impl Batch {
    /// Ends a nested attribute that may be longer than a u16 allows: netlink attributes
    /// cannot, so such a batch is refused by the kernel with a clear error rather than
    /// corrupted here.
    fn end_nest_long(&mut self, start: usize) {
        let len = self.buf.len() - start;
        let len = u16::try_from(len).unwrap_or(0);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// Applies `ops` to table `ip <cfg.table>` in one nf_tables transaction, on a socket of its
/// own. The agent keeps a [`Socket`] instead.
pub fn apply(ops: &[Op], cfg: &Config) -> Result<(), NetlinkError> {
    if ops.is_empty() {
        return Ok(());
    }
    Socket::open()?.apply(ops, cfg)
}

/// An nf_tables netlink socket, kept open from one sync to the next: closing one makes the
/// kernel finish the cleanup of earlier transactions first (an RCU grace period, 5-25 ms
/// here), which a sync need not wait for.
pub struct Socket {
    fd: OwnedFd,
    sndbuf: usize,
}

impl Socket {
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sock = Socket { fd, sndbuf: 0 };
        // Errors come back in the receive buffer.
        sock.set_buffer(libc::SO_RCVBUFFORCE, 4 << 20)?;
        Ok(sock)
    }

    fn set_buffer(&mut self, opt: i32, size: usize) -> Result<(), NetlinkError> {
        let size = i32::try_from(size).unwrap_or(i32::MAX);
        // SAFETY: setsockopt with a pointer to a live i32 and its size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if r < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Applies `ops` to table `ip <cfg.table>` in one nf_tables transaction.
    pub fn apply(&mut self, ops: &[Op], cfg: &Config) -> Result<(), NetlinkError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (buf, what) = build(ops, cfg);
        // The whole batch goes in one message.
        if buf.len() + 65536 > self.sndbuf {
            self.set_buffer(libc::SO_SNDBUFFORCE, buf.len() + 65536)?;
            self.sndbuf = buf.len() + 65536;
        }
        let sock = &self.fd;
        // SAFETY: an all-zero sockaddr_nl is valid; the kernel is nl_pid 0.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buf outlives the call; addr is a valid sockaddr_nl of the given size.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // The kernel handles the batch inside sendto: any error is already queued.
        let mut rbuf = vec![0u8; 65536];
        let mut first_error: Option<NetlinkError> = None;
        loop {
            // SAFETY: rbuf is a live buffer of the given length.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    rbuf.as_mut_ptr().cast(),
                    rbuf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                return Err(NetlinkError::Socket(err));
            }
            let mut off = 0;
            let n = n as usize;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(rbuf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([rbuf[off + 4], rbuf[off + 5]]);
                if len < 16 || off + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 36 && first_error.is_none() {
                    let code =
                        i32::from_ne_bytes(rbuf[off + 16..off + 20].try_into().unwrap_or_default());
                    let seq =
                        u32::from_ne_bytes(rbuf[off + 28..off + 32].try_into().unwrap_or_default());
                    if code != 0 {
                        first_error = Some(NetlinkError::Refused {
                            what: what
                                .get(seq as usize)
                                .cloned()
                                .unwrap_or_else(|| format!("message {seq}")),
                            err: io::Error::from_raw_os_error(-code),
                        });
                    }
                }
                off += (len + 3) & !3;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::service::{Endpoint, ServicePort, ServiceState, ServiceView};
    use crate::node::proxy::nft::{script, Proxy};
    use std::process::Command;

    fn svc(
        name: &str,
        ip: &str,
        ports: &[(Protocol, u16, Option<u16>)],
        eps: &[&str],
    ) -> ServiceState {
        ServiceState {
            service: ServiceView {
                namespace: "default".into(),
                name: name.into(),
                cluster_ip: Some(ip.parse().unwrap()),
                ports: ports
                    .iter()
                    .enumerate()
                    .map(|(i, (protocol, port, node_port))| ServicePort {
                        name: format!("p{i}"),
                        protocol: *protocol,
                        port: *port,
                        node_port: *node_port,
                    })
                    .collect(),
                affinity_timeout: None,
            },
            endpoints: ports
                .iter()
                .map(|(_, port, _)| {
                    eps.iter()
                        .map(|ip| Endpoint {
                            ip: ip.parse().unwrap(),
                            port: port + 8000,
                            ready: true,
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// Every kind of rule, set and element the proxy makes.
    fn states(generation: u8) -> Vec<ServiceState> {
        let mut web = svc(
            "web",
            "10.96.0.5",
            &[(Protocol::Tcp, 80, Some(30080))],
            &["10.244.0.2", "10.244.0.3", "10.244.0.4"][..usize::from(generation) + 1],
        );
        web.service.affinity_timeout = Some(10800);
        let dns = svc(
            "dns",
            "10.96.0.10",
            &[
                (Protocol::Udp, 53, None),
                (Protocol::Tcp, 53, None),
                (Protocol::Sctp, 99, Some(30999)),
            ],
            &["10.244.1.2"][..usize::from(generation).min(1)],
        );
        let empty = svc(
            "empty",
            "10.96.0.6",
            &[(Protocol::Tcp, 80, Some(30081))],
            &[],
        );
        // Picks through `endpoint-picks` from two endpoints on (a single endpoint is a rule).
        let api = svc(
            "api",
            "10.96.0.7",
            &[(Protocol::Tcp, 443, Some(30443)), (Protocol::Udp, 53, None)],
            &["10.244.2.2", "10.244.2.3", "10.244.2.4"][..usize::from(generation) + 1],
        );
        // Services that gain chains come last, so that a diff creates chains in the order a
        // full sync does (`nft list` shows chains in creation order).
        let mut v = vec![web, api, dns];
        if generation == 0 {
            v.push(empty);
        }
        v
    }

    fn nft(args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut c = Command::new("nft")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft (install nftables)");
        c.stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Moves this test's thread into a network namespace of its own (the host's ruleset is
    /// never touched); nft run from this thread works there too.
    fn private_netns() {
        // SAFETY: unshare of the calling thread's network namespace; no pointers involved.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (run as root)",
            io::Error::last_os_error()
        );
    }

    /// The table's sets, maps and chains, each as `nft list` shows it, sorted (nft lists them
    /// in the order they were made, which a diff and a full sync do not share for sets).
    fn listing(cfg: &Config) -> Vec<String> {
        let text = nft(&["list", "table", "ip", &cfg.table], None);
        let mut blocks: Vec<String> = text.split("\n\n").map(str::to_string).collect();
        blocks.sort();
        blocks
    }

    /// The netlink batch leaves the same table as the nft script of the same ops, for full
    /// syncs and for diffs in both directions, with a byte-aligned and an unaligned cluster
    /// CIDR.
    #[test]
    fn netlink_and_nft_script_make_the_same_table() {
        private_netns();
        for cidr in ["10.244.0.0/16", "10.240.0.0/12"] {
            let cfg = Config {
                cluster_cidr: Some(cidr.parse().unwrap()),
                ..Config::default()
            };
            for (from, to) in [(0, 1), (1, 2), (2, 0)] {
                let mut text = Proxy::new(cfg.clone());
                let want = {
                    nft(
                        &["-f", "-"],
                        Some(&script(&text.full(&states(to)), &cfg.table)),
                    );
                    listing(&cfg)
                };
                let mut p = Proxy::new(cfg.clone());
                apply(&p.full(&states(from)), &cfg).unwrap();
                apply(&p.full(&states(from)), &cfg).unwrap();
                let diff = p.diff(&states(to));
                assert!(!diff.is_empty());
                apply(&diff, &cfg).unwrap();
                assert_eq!(listing(&cfg), want, "{cidr}: {from} -> {to}");
                let mut p = Proxy::new(cfg.clone());
                apply(&p.full(&states(to)), &cfg).unwrap();
                assert_eq!(listing(&cfg), want, "{cidr}: full {to}");
            }
            nft(&["delete", "table", "ip", &cfg.table], None);
        }
    }

    /// A refused batch names what was refused and changes nothing.
    #[test]
    fn refused_batch_names_the_op_and_changes_nothing() {
        private_netns();
        let cfg = Config::default();
        let mut p = Proxy::new(cfg.clone());
        apply(&p.full(&states(1)), &cfg).unwrap();
        let before = listing(&cfg);
        let ops = vec![
            Op::AddChain {
                name: "new-chain".into(),
                hook: None,
            },
            Op::AddRule {
                chain: "no-such-chain".into(),
                stmt: Stmt::Reject,
            },
        ];
        let err = apply(&ops, &cfg).unwrap_err().to_string();
        assert!(
            err.contains("adding rule to no-such-chain: reject"),
            "{err}"
        );
        assert!(err.contains("No such file or directory"), "{err}");
        assert_eq!(listing(&cfg), before);
    }
}
