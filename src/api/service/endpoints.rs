//! Endpoints from the node's pods, as the endpoints controller computes them: pods in the
//! service's namespace whose labels match its selector and that have an IP; ready ones
//! receive traffic. A named targetPort is resolved against each pod's container ports.
//! Also the kubelet's service environment variables.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

use super::spec::{ServiceSpec, TargetPort};
use super::{Endpoint, Protocol, ServiceView};

/// What the endpoints controller needs of a pod.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    pub ready: bool,
    /// (name, port, protocol) of every container port.
    pub ports: Vec<(String, u16, Protocol)>,
}

impl PodInfo {
    pub fn new(
        pod: &Pod,
        namespace: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
        ready: bool,
    ) -> PodInfo {
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    _ => Protocol::Tcp,
                };
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.container_port).ok()?,
                    proto,
                ))
            })
            .collect();
        PodInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            ready,
            ports,
        }
    }
}

/// The endpoints of each port of `spec` (same order as its ports), sorted.
pub fn compute(spec: &ServiceSpec, pods: &[PodInfo]) -> Vec<Vec<Endpoint>> {
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return vec![Vec::new(); spec.ports.len()];
    };
    let members: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| p.namespace == spec.namespace && p.ip.is_some())
        .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .collect();
    spec.ports
        .iter()
        .map(|port| {
            let mut eps: Vec<Endpoint> = members
                .iter()
                .filter_map(|p| {
                    let target = match &port.target_port {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => {
                            p.ports
                                .iter()
                                .find(|(n, _, proto)| n == name && *proto == port.protocol)?
                                .1
                        }
                    };
                    Some(Endpoint {
                        ip: p.ip?,
                        port: target,
                        ready: p.ready,
                    })
                })
                .collect();
            eps.sort();
            eps
        })
        .collect()
}

/// The kubelet's service environment variables for a container in `namespace`: every
/// non-headless service of that namespace that exists when the container starts.
pub fn env_vars(services: &[ServiceView], namespace: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in services.iter().filter(|s| s.namespace == namespace) {
        let (Some(ip), Some(first)) = (s.cluster_ip, s.ports.first()) else {
            continue;
        };
        let n = s.name.to_uppercase().replace('-', "_");
        out.push((format!("{n}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
            out.push((
                format!(
                    "{n}_SERVICE_PORT_{}",
                    p.name.to_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            ));
        }
        let proto = |p: &super::ServicePort| p.protocol.nft();
        out.push((
            format!("{n}_PORT"),
            format!("{}://{ip}:{}", proto(first), first.port),
        ));
        for p in &s.ports {
            let pre = format!("{n}_PORT_{}_{}", p.port, p.protocol.k8s());
            out.push((pre.clone(), format!("{}://{ip}:{}", proto(p), p.port)));
            out.push((format!("{pre}_PROTO"), proto(p).to_string()));
            out.push((format!("{pre}_PORT"), p.port.to_string()));
            out.push((format!("{pre}_ADDR"), ip.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::service::spec::from_service;
    use crate::api::service::ServicePort;

    fn pod(name: &str, app: &str, ip: &str, ready: bool) -> PodInfo {
        PodInfo {
            namespace: "default".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip: ip.parse().ok(),
            ready,
            ports: vec![("http".into(), 8080, Protocol::Tcp)],
        }
    }

    #[test]
    fn selector_readiness_and_named_ports() {
        let svc: k8s_openapi::api::core::v1::Service = serde_yaml::from_str(
            "metadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: a, port: 80, targetPort: http}\n  - {name: b, port: 81, targetPort: 9000}\n  - {name: c, port: 82, targetPort: nope}\n",
        )
        .unwrap();
        let spec = from_service(&svc, "x".into()).unwrap();
        let pods = [
            pod("w1", "web", "10.244.0.2", true),
            pod("w2", "web", "10.244.0.3", false),
            pod("x", "other", "10.244.0.4", true),
            pod("pending", "web", "", true),
        ];
        let eps = compute(&spec, &pods);
        assert_eq!(eps[0].len(), 2);
        assert_eq!((eps[0][0].port, eps[0][0].ready), (8080, true));
        assert!(!eps[0][1].ready);
        assert_eq!(eps[1][0].port, 9000);
        assert!(eps[2].is_empty(), "no pod has a port named nope");
    }

    #[test]
    fn service_env_vars_as_the_kubelet_writes_them() {
        let s = ServiceView {
            namespace: "default".into(),
            name: "redis-master".into(),
            cluster_ip: Some("10.96.0.11".parse().unwrap()),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 6379,
                node_port: None,
            }],
            affinity_timeout: None,
        };
        let headless = ServiceView {
            name: "db".into(),
            cluster_ip: None,
            ..s.clone()
        };
        let env: BTreeMap<_, _> = env_vars(&[s, headless], "default").into_iter().collect();
        assert_eq!(env["REDIS_MASTER_SERVICE_HOST"], "10.96.0.11");
        assert_eq!(env["REDIS_MASTER_SERVICE_PORT"], "6379");
        assert_eq!(env["REDIS_MASTER_PORT"], "tcp://10.96.0.11:6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP"], "tcp://10.96.0.11:6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_PROTO"], "tcp");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_PORT"], "6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_ADDR"], "10.96.0.11");
        assert!(!env.keys().any(|k| k.starts_with("DB_")));
    }
}
