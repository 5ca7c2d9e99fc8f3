//! The agent's Services: allocation of ClusterIPs and NodePorts for the Service manifests,
//! endpoints from the node's pods, and the proxy (knode's nftables table) kept in sync.
//!
//! The proxy leaves no trace on a node without services: its table appears with the first
//! service that has a ClusterIP and is removed with the last one.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use crate::service::alloc::Allocator;
use crate::service::endpoints::{compute, PodInfo};
use crate::service::spec::ServiceSpec;
use crate::service::{ServiceState, ServiceView};

pub struct Services {
    alloc: Allocator,
    cfg: crate::proxy::nft::Config,
    /// What the kernel holds (None: unknown, the next sync is a full one).
    applied: Option<Vec<ServiceState>>,
    /// When the table was last checked for removal from outside.
    checked: std::time::Instant,
}

/// Runs one `nft -f -` transaction (atomic: all of it or nothing).
pub fn nft_apply(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Services {
    pub fn new(
        root: &std::path::Path,
        service_cidr: Ipv4Net,
        cluster_cidr: Option<Ipv4Net>,
    ) -> Result<Services> {
        Ok(Services {
            alloc: Allocator::open(root.join("services/allocations.json"), service_cidr)?,
            cfg: crate::proxy::nft::Config {
                table: "knode-proxy".into(),
                mark: 0x4000,
                cluster_cidr,
            },
            applied: None,
            checked: std::time::Instant::now(),
        })
    }

    /// Allocates, computes endpoints and (with `sync_proxy`) syncs the proxy. Returns the services with their
    /// endpoints, the views (for environment variables) and the problems to report.
    pub fn sync(
        &mut self,
        specs: &[ServiceSpec],
        pods: &[PodInfo],
        sync_proxy: bool,
    ) -> (Vec<ServiceState>, Vec<ServiceView>, Vec<String>) {
        let (views, mut errors) = match self.alloc.assign(specs) {
            Ok(x) => x,
            Err(e) => (Vec::new(), vec![format!("service allocations: {e:#}")]),
        };
        let states: Vec<ServiceState> = views
            .iter()
            .filter_map(|v| {
                let spec = specs
                    .iter()
                    .find(|s| s.namespace == v.namespace && s.name == v.name)?;
                Some(ServiceState {
                    service: v.clone(),
                    endpoints: compute(spec, pods),
                })
            })
            .collect();
        if !sync_proxy {
            return (states, views, errors);
        }
        if let Err(e) = self.proxy_sync(&states) {
            tracing::warn!(error = %format!("{e:#}"), "proxy sync failed; the next one is a full sync");
            errors.push(format!("proxy: {e:#}"));
            self.applied = None;
        }
        (states, views, errors)
    }

    fn table_present(&self) -> bool {
        Command::new("nft")
            .args(["list", "table", "ip", &self.cfg.table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// UDP has no connection to end: conntrack entries DNATed to an endpoint that is gone
    /// would keep sending a client's datagrams into the void. Removes them.
    fn clear_stale_udp(&self, old: &[ServiceState], new: &[ServiceState]) {
        let live = |s: &ServiceState, i: usize| -> Vec<std::net::Ipv4Addr> {
            s.endpoints
                .get(i)
                .into_iter()
                .flatten()
                .filter(|e| e.ready)
                .map(|e| e.ip)
                .collect()
        };
        for o in old {
            let Some(ip) = o.service.cluster_ip else {
                continue;
            };
            let n = new.iter().find(|n| {
                n.service.namespace == o.service.namespace && n.service.name == o.service.name
            });
            for (i, p) in o.service.ports.iter().enumerate() {
                if p.protocol != crate::service::Protocol::Udp {
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
                    for f in filters {
                        let r = Command::new("conntrack")
                            .args(["-D", "-p", "udp"])
                            .args(&f)
                            .args(["--dst-nat", &gone.to_string()])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "conntrack (install conntrack): stale UDP entries stay");
                        }
                    }
                }
            }
        }
    }

    fn proxy_sync(&mut self, states: &[ServiceState]) -> Result<()> {
        // Every few seconds: a table deleted from outside means the next sync is a full one.
        if self.checked.elapsed() > std::time::Duration::from_secs(5) {
            self.checked = std::time::Instant::now();
            let live = self
                .applied
                .as_ref()
                .is_some_and(|a| a.iter().any(|s| s.service.cluster_ip.is_some()));
            if live && !self.table_present() {
                tracing::warn!(table = %self.cfg.table, "the proxy table was removed from outside: full sync");
                self.applied = None;
            }
        }
        if self.applied.as_deref() == Some(states) {
            // Nothing changed since the last sync: no rendering, no nft.
            return Ok(());
        }
        let live = states.iter().any(|s| s.service.cluster_ip.is_some());
        let script = match (&self.applied, live) {
            // Nothing to do, nothing there.
            (Some(old), false) if old.iter().all(|s| s.service.cluster_ip.is_none()) => {
                return Ok(())
            }
            (None, false) => {
                // Unknown state and no services: remove a table a previous agent left (looked
                // up first, so a node without services never has its ruleset written).
                let present = Command::new("nft")
                    .args(["list", "table", "ip", &self.cfg.table])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                match present {
                    true => format!("delete table ip {}\n", self.cfg.table),
                    false => String::new(),
                }
            }
            (Some(_), false) => format!("delete table ip {}\n", self.cfg.table),
            (Some(old), true) if old.iter().any(|s| s.service.cluster_ip.is_some()) => {
                crate::proxy::nft::render_diff(old, states, &self.cfg)
            }
            _ => crate::proxy::nft::render_full(states, &self.cfg),
        };
        if !script.is_empty() {
            nft_apply(&script)?;
        }
        if let Some(old) = &self.applied {
            self.clear_stale_udp(old, states);
        }
        self.applied = Some(states.to_vec());
        Ok(())
    }
}
