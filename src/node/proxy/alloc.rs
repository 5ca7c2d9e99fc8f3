//! ClusterIP and NodePort allocation, persisted (one JSON file, written atomically) so that a
//! service keeps its addresses across agent restarts, as it would in an API server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::node::error::{Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;

use crate::api::service::spec::{ClusterIp, ServiceSpec};
use crate::api::service::{ServicePort, ServiceView, NODE_PORTS};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Allocation {
    cluster_ip: Option<Ipv4Addr>,
    /// Per "<port>/<protocol>" of the service.
    node_ports: BTreeMap<String, u16>,
    /// When the service was first allocated (RFC 3339, UTC): its creationTimestamp. Files
    /// written before this was recorded get the time they are next read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
}

pub struct Allocator {
    path: PathBuf,
    cidr: Ipv4Net,
    /// By "namespace/name".
    state: BTreeMap<String, Allocation>,
}

fn key(s: &ServiceSpec) -> String {
    format!("{}/{}", s.namespace, s.name)
}

impl Allocator {
    /// Opens (or starts) the allocation file. A corrupt file is an error, never silently reset:
    /// services would change addresses under their clients.
    pub fn open(path: PathBuf, cidr: Ipv4Net) -> Result<Allocator> {
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_ctx(|| format!("{}: corrupt service allocations", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_ctx(|| path.display().to_string()),
        };
        Ok(Allocator { path, cidr, state })
    }

    fn ip_in_use(&self, ip: Ipv4Addr, except: &str) -> Option<&str> {
        self.state
            .iter()
            .find(|(k, a)| *k != except && a.cluster_ip == Some(ip))
            .map(|(k, _)| k.as_str())
    }

    fn node_port_in_use(&self, port: u16, except: &str) -> Option<&str> {
        self.state
            .iter()
            .find(|(k, a)| *k != except && a.node_ports.values().any(|p| *p == port))
            .map(|(k, _)| k.as_str())
    }

    /// Assigns addresses to `specs` (in order: earlier files win conflicts), releases those of
    /// services that are gone, and persists. Returns the services as the proxy sees them and,
    /// for the rejected ones, the service's file and the reason.
    pub fn assign(&mut self, specs: &[ServiceSpec]) -> Result<(Vec<ServiceView>, Vec<String>)> {
        let before = self.state.clone();
        let wanted: std::collections::BTreeSet<String> = specs.iter().map(key).collect();
        self.state.retain(|k, _| wanted.contains(k));
        let (mut views, mut errors) = (Vec::new(), Vec::new());
        for s in specs {
            let k = key(s);
            match self.assign_one(s, &k) {
                Ok(v) => views.push(v),
                Err(e) => {
                    self.state.remove(&k);
                    errors.push(format!("{}: service {k}: {e}", s.file.display()))
                }
            }
        }
        if self.state != before {
            let json = serde_json::to_vec_pretty(&self.state)?;
            if let Some(d) = self.path.parent() {
                std::fs::create_dir_all(d)?;
            }
            oci::fsutil::write_atomic(&self.path, &json)?;
        }
        Ok((views, errors))
    }

    /// When service `namespace/name` was created (RFC 3339), if it has an allocation.
    pub fn created(&self, namespace: &str, name: &str) -> Option<&str> {
        self.state
            .get(&format!("{namespace}/{name}"))
            .and_then(|a| a.created.as_deref())
    }

    fn assign_one(&mut self, s: &ServiceSpec, k: &str) -> Result<ServiceView, AllocError> {
        let mut a = self.state.get(k).cloned().unwrap_or_default();
        if a.created.is_none() {
            a.created = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let (first, last) = (
            u32::from(self.cidr.network()) + 1,
            u32::from(self.cidr.broadcast()) - 1,
        );
        a.cluster_ip = match s.cluster_ip {
            ClusterIp::Headless => None,
            ClusterIp::Fixed(ip) => {
                if !(first..=last).contains(&u32::from(ip)) {
                    return Err(AllocError::OutOfRange {
                        ip,
                        cidr: self.cidr,
                    });
                }
                if let Some(other) = self.ip_in_use(ip, k) {
                    return Err(AllocError::IpTaken {
                        ip,
                        other: other.to_string(),
                    });
                }
                Some(ip)
            }
            ClusterIp::Auto => match a.cluster_ip.filter(|ip| self.ip_in_use(*ip, k).is_none()) {
                Some(ip) => Some(ip),
                None => {
                    // Start at a spot derived from the name (spreads allocations), probe on;
                    // the first address stays free (the `kubernetes` service's).
                    let size = last - first;
                    let start = fnv(k) % size.max(1);
                    let ip = (0..size)
                        .map(|i| Ipv4Addr::from(first + 1 + (start + i) % size))
                        .find(|ip| self.ip_in_use(*ip, k).is_none())
                        .ok_or(AllocError::IpsExhausted(self.cidr))?;
                    Some(ip)
                }
            },
        };
        let mut ports = Vec::new();
        let mut node_ports = BTreeMap::new();
        for p in &s.ports {
            let pk = format!("{}/{}", p.port, p.protocol.k8s());
            let np = if !s.node_port {
                None
            } else {
                let np = match p.node_port {
                    Some(n) => {
                        if let Some(other) = self.node_port_in_use(n, k) {
                            return Err(AllocError::NodePortTaken {
                                port: n,
                                other: other.to_string(),
                            });
                        }
                        n
                    }
                    None => match a.node_ports.get(&pk).copied().filter(|n| {
                        self.node_port_in_use(*n, k).is_none()
                            && !node_ports.values().any(|m| m == n)
                    }) {
                        Some(n) => n,
                        None => {
                            let span = (NODE_PORTS.end() - NODE_PORTS.start() + 1) as u32;
                            let start = fnv(&format!("{k}/{pk}")) % span;
                            (0..span)
                                .map(|i| NODE_PORTS.start() + ((start + i) % span) as u16)
                                .find(|n| {
                                    self.node_port_in_use(*n, k).is_none()
                                        && !node_ports.values().any(|m| m == n)
                                        && !s.ports.iter().any(|q| q.node_port == Some(*n))
                                })
                                .ok_or(AllocError::NodePortsExhausted)?
                        }
                    },
                };
                node_ports.insert(pk, np);
                Some(np)
            };
            ports.push(ServicePort {
                name: p.name.clone(),
                protocol: p.protocol,
                port: p.port,
                node_port: np,
            });
        }
        a.node_ports = node_ports;
        let view = ServiceView {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            cluster_ip: a.cluster_ip,
            ports,
            affinity_timeout: s.affinity_timeout,
        };
        self.state.insert(k.to_string(), a);
        Ok(view)
    }
}

/// Why a service got no address or port.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("spec.clusterIP: {ip} is not in the service CIDR {cidr}")]
    OutOfRange { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("spec.clusterIP: {ip} is already allocated to service {other}")]
    IpTaken { ip: Ipv4Addr, other: String },
    #[error("nodePort {port} is already allocated to service {other}")]
    NodePortTaken { port: u16, other: String },
    #[error("the service CIDR {0} is full")]
    IpsExhausted(Ipv4Net),
    #[error("the node port range is full")]
    NodePortsExhausted,
}

impl crate::api::error::Classify for AllocError {
    fn class(&self) -> crate::api::error::ErrorClass {
        use crate::api::error::ErrorClass;
        match self {
            AllocError::OutOfRange { .. } => ErrorClass::Invalid,
            AllocError::IpTaken { .. } | AllocError::NodePortTaken { .. } => {
                ErrorClass::AlreadyExists
            }
            AllocError::IpsExhausted(_) | AllocError::NodePortsExhausted => ErrorClass::Internal,
        }
    }
}

/// FNV-1a: a stable hash (the std hasher is not stable across releases).
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x01000193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::service::spec::from_service;

    fn spec(yaml: &str) -> ServiceSpec {
        let svc: k8s_openapi::api::core::v1::Service = serde_yaml::from_str(yaml).unwrap();
        from_service(&svc, "x.yaml".into()).unwrap()
    }

    #[test]
    fn allocations_persist_conflict_and_release() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("alloc.json");
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let web = spec("metadata: {name: web}\nspec: {type: NodePort, ports: [{port: 80}]}\n");
        let db =
            spec("metadata: {name: db}\nspec: {clusterIP: 10.96.0.50, ports: [{port: 5432}]}\n");
        let mut a = Allocator::open(path.clone(), cidr).unwrap();
        let (v, e) = a.assign(&[web.clone(), db.clone()]).unwrap();
        assert!(e.is_empty(), "{e:?}");
        let ip = v[0].cluster_ip.unwrap();
        assert!(cidr.contains(&ip) && ip != "10.96.0.1".parse::<Ipv4Addr>().unwrap());
        let np = v[0].ports[0].node_port.unwrap();
        assert!(NODE_PORTS.contains(&np));
        assert_eq!(v[1].cluster_ip, Some("10.96.0.50".parse().unwrap()));
        let created = a.created("default", "web").unwrap().to_string();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&created).is_ok(),
            "{created}"
        );
        assert_eq!(a.created("default", "nope"), None);
        // A restart keeps them, and when the service was created.
        let mut a = Allocator::open(path.clone(), cidr).unwrap();
        let (v2, _) = a.assign(&[web.clone(), db.clone()]).unwrap();
        assert_eq!(v, v2);
        assert_eq!(a.created("default", "web"), Some(created.as_str()));
        // Conflicts: a second service asking for the same IP or node port is rejected, with
        // the field, the value and the owner.
        let clash =
            spec("metadata: {name: clash}\nspec: {clusterIP: 10.96.0.50, ports: [{port: 1}]}\n");
        let clash2 = spec(&format!(
            "metadata: {{name: clash2}}\nspec: {{type: NodePort, ports: [{{port: 1, nodePort: {np}}}]}}\n"
        ));
        let outside =
            spec("metadata: {name: out}\nspec: {clusterIP: 10.200.0.1, ports: [{port: 1}]}\n");
        let (v3, e) = a
            .assign(&[web.clone(), db.clone(), clash, clash2, outside])
            .unwrap();
        assert_eq!(v3.len(), 2);
        assert!(
            e[0].contains("spec.clusterIP: 10.96.0.50 is already allocated to service default/db"),
            "{e:?}"
        );
        assert!(
            e[1].contains(&format!(
                "nodePort {np} is already allocated to service default/web"
            )),
            "{e:?}"
        );
        assert!(
            e[2].contains("10.200.0.1 is not in the service CIDR 10.96.0.0/12"),
            "{e:?}"
        );
        // Deleting web frees its node port for another service.
        let (_, e) = a.assign(std::slice::from_ref(&db)).unwrap();
        assert!(e.is_empty());
        let again = spec(&format!(
            "metadata: {{name: clash2}}\nspec: {{type: NodePort, ports: [{{port: 1, nodePort: {np}}}]}}\n"
        ));
        let (v4, e) = a.assign(&[db, again]).unwrap();
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(v4[1].ports[0].node_port, Some(np));
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("alloc.json");
        std::fs::write(&path, b"{not json").unwrap();
        let e = Allocator::open(path.clone(), "10.96.0.0/12".parse().unwrap())
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("corrupt service allocations"),
            "{e:#}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    }
}
