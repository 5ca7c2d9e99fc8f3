//! The agent's Services: allocation of ClusterIPs and NodePorts for the Service manifests,
//! endpoints from the node's pods, and the proxy (knode's nftables table) kept in sync.
//!
//! The proxy leaves no trace on a node without services: its table appears with the first
//! service that has a ClusterIP and is removed with the last one.

use std::process::{Command, Stdio};

use crate::node::error::NodeError;

type Result<T, E = NodeError> = std::result::Result<T, E>;
use ipnet::Ipv4Net;

use crate::api::service::endpoints::{compute, PodInfo};
use crate::api::service::spec::ServiceSpec;
use crate::api::service::{ServiceState, ServiceView};
use crate::node::proxy::alloc::Allocator;
use crate::node::proxy::netlink;
use crate::node::proxy::nft::{Op, Proxy};

/// What the agent knows about its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// Nothing (at start, or after a failed sync): the next sync is a full one.
    Unknown,
    /// There is none (no service with a ClusterIP).
    Absent,
    /// It holds what the proxy last rendered.
    Synced,
}

/// Endpoints known from elsewhere (the API's EndpointSlices), per service and port.
pub type Known =
    std::collections::BTreeMap<(String, String), Vec<Vec<crate::api::service::Endpoint>>>;

pub struct Services {
    alloc: Allocator,
    /// What the table holds, per service.
    proxy: Proxy,
    /// Whether the table exists.
    table: Table,
    /// When the table was last checked for removal from outside.
    checked: std::time::Instant,
    /// The nf_tables socket, kept open between syncs (opened at the first).
    socket: Option<netlink::Socket>,
    /// A service the proxy leaves alone (the node serves it itself).
    left_out: Option<(&'static str, &'static str)>,
}

/// The cluster DNS Service: a node that serves cluster DNS holds its address itself.
pub const KUBE_DNS: (&str, &str) = ("kube-system", "kube-dns");

impl Services {
    pub fn new(
        root: &std::path::Path,
        service_cidr: Ipv4Net,
        cluster_cidr: Option<Ipv4Net>,
    ) -> Result<Services> {
        Ok(Services {
            alloc: Allocator::open(root.join("services/allocations.json"), service_cidr)?,
            proxy: Proxy::new(crate::node::proxy::nft::Config {
                cluster_cidr,
                ..Default::default()
            }),
            table: Table::Unknown,
            checked: std::time::Instant::now(),
            socket: None,
            left_out: None,
        })
    }

    /// Leaves service `(namespace, name)` out of the proxy's rules (its environment
    /// variables stay).
    pub fn leave_out(&mut self, service: (&'static str, &'static str)) {
        self.left_out = Some(service);
    }

    /// When service `namespace/name` was created (RFC 3339).
    pub fn created(&self, namespace: &str, name: &str) -> Option<String> {
        self.alloc.created(namespace, name).map(str::to_string)
    }

    /// Allocates, computes endpoints (those `known` has for a service, from the API; else from
    /// `pods`) and (with `sync_proxy`) syncs the proxy. Returns the services with their
    /// endpoints, the views (for environment variables) and the problems to report.
    pub fn sync(
        &mut self,
        specs: &[ServiceSpec],
        pods: &[PodInfo],
        known: &Known,
        sync_proxy: bool,
    ) -> (Vec<ServiceState>, Vec<ServiceView>, Vec<String>) {
        let (views, mut errors) = match self.alloc.assign(specs) {
            Ok(x) => x,
            Err(e) => (Vec::new(), vec![format!("service allocations: {e:#}")]),
        };
        let mut states: Vec<ServiceState> = views
            .iter()
            .filter_map(|v| {
                let spec = specs
                    .iter()
                    .find(|s| s.namespace == v.namespace && s.name == v.name)?;
                let endpoints = match known.get(&(v.namespace.clone(), v.name.clone())) {
                    Some(e) => e.clone(),
                    None => compute(spec, pods),
                };
                Some(ServiceState {
                    service: v.clone(),
                    endpoints,
                })
            })
            .collect();
        if !sync_proxy {
            return (states, views, errors);
        }
        // The service left out is taken out of the list for the sync and put back after (a
        // move, not a copy of every service).
        let left_out = self.left_out.and_then(|(ns, name)| {
            let i = states
                .iter()
                .position(|s| s.service.namespace == ns && s.service.name == name)?;
            Some((i, states.remove(i)))
        });
        if let Err(e) = self.proxy_sync(&states) {
            tracing::warn!(error = %format!("{e:#}"), "proxy sync failed; the next one is a full sync");
            errors.push(format!("proxy: {e:#}"));
            self.proxy.forget();
            self.table = Table::Unknown;
        }
        if let Some((i, s)) = left_out {
            states.insert(i, s);
        }
        (states, views, errors)
    }

    fn table_present(&self) -> bool {
        Command::new("nft")
            .args(["list", "table", "ip", &self.proxy.config().table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// UDP has no connection to end: conntrack entries DNATed to an endpoint that is gone
    /// would keep sending a client's datagrams into the void. Returns the `conntrack -D`
    /// arguments that remove them, for the services with UDP ports in the last sync.
    fn stale_udp(&self, new: &[ServiceState]) -> Vec<Vec<String>> {
        let has_udp = |s: &ServiceState| {
            s.service.cluster_ip.is_some()
                && s.service
                    .ports
                    .iter()
                    .any(|p| p.protocol == crate::api::service::Protocol::Udp)
        };
        let old: Vec<&ServiceState> = self.proxy.states().filter(|s| has_udp(s)).collect();
        if old.is_empty() {
            return Vec::new();
        }
        let live = |s: &ServiceState, i: usize| -> Vec<std::net::Ipv4Addr> {
            s.endpoints
                .get(i)
                .into_iter()
                .flatten()
                .filter(|e| e.ready)
                .map(|e| e.ip)
                .collect()
        };
        let mut out = Vec::new();
        for o in old {
            let Some(ip) = o.service.cluster_ip else {
                continue;
            };
            let n = new.iter().find(|n| {
                n.service.namespace == o.service.namespace && n.service.name == o.service.name
            });
            if n == Some(o) {
                continue;
            }
            for (i, p) in o.service.ports.iter().enumerate() {
                if p.protocol != crate::api::service::Protocol::Udp {
                    continue;
                }
                let still: Vec<_> = n
                    .and_then(|n| {
                        let j = n.service.ports.iter().position(|q| q == p)?;
                        Some(live(n, j))
                    })
                    .unwrap_or_default();
                for gone in live(o, i).into_iter().filter(|e| !still.contains(e)) {
                    let mut filters = vec![vec![
                        "--orig-dst".to_string(),
                        ip.to_string(),
                        "--orig-port-dst".into(),
                        p.port.to_string(),
                    ]];
                    if let Some(np) = p.node_port {
                        filters.push(vec!["--orig-port-dst".into(), np.to_string()]);
                    }
                    for mut f in filters {
                        f.extend(["--dst-nat".to_string(), gone.to_string()]);
                        out.push(f);
                    }
                }
            }
        }
        out
    }

    fn clear_stale_udp(filters: Vec<Vec<String>>) {
        for f in filters {
            let r = Command::new("conntrack")
                .args(["-D", "-p", "udp"])
                .args(&f)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Err(e) = r {
                tracing::warn!(error = %e, "conntrack (install conntrack): stale UDP entries stay");
                return;
            }
        }
    }

    fn proxy_sync(&mut self, states: &[ServiceState]) -> Result<()> {
        let table = self.proxy.config().table.clone();
        // Every few seconds: a table deleted from outside means the next sync is a full one.
        if self.checked.elapsed() > std::time::Duration::from_secs(5) {
            self.checked = std::time::Instant::now();
            if self.table == Table::Synced && !self.table_present() {
                tracing::warn!(table = %table, "the proxy table was removed from outside: full sync");
                self.proxy.forget();
                self.table = Table::Unknown;
            }
        }
        let live = states.iter().any(|s| s.service.cluster_ip.is_some());
        if !live {
            // No service with a ClusterIP: no table. When unknown, it is looked up first, so a
            // node without services never has its ruleset written.
            let delete = match self.table {
                Table::Absent => false,
                Table::Synced => true,
                Table::Unknown => self.table_present(),
            };
            if delete {
                self.apply(&[Op::DeleteTable])?;
            }
            self.proxy.forget();
            self.table = Table::Absent;
            return Ok(());
        }
        if self.table != Table::Synced {
            self.proxy.forget();
        }
        let stale = self.stale_udp(states);
        let ops = self.proxy.sync(states);
        self.apply(&ops)?;
        self.table = Table::Synced;
        Self::clear_stale_udp(stale);
        Ok(())
    }

    /// Sends `ops` as one transaction; a socket that failed is replaced at the next call.
    fn apply(&mut self, ops: &[Op]) -> Result<(), netlink::NetlinkError> {
        if ops.is_empty() {
            return Ok(());
        }
        let socket = match self.socket.as_mut() {
            Some(socket) => socket,
            None => self.socket.insert(netlink::Socket::open()?),
        };
        let result = socket.apply(ops, self.proxy.config());
        if let Err(netlink::NetlinkError::Socket(_)) = result {
            self.socket = None;
        }
        result
    }
}
