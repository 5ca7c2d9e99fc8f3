//! A Service manifest, validated: what was asked for, before ClusterIP and NodePort
//! allocation. Every problem names the field and the value.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Protocol;

/// Where a service port sends traffic on its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    /// Asked for (NodePort services); allocated when None.
    pub node_port: Option<u16>,
}

/// The ClusterIP asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterIp {
    /// Allocate one (or keep the one allocated before).
    Auto,
    Fixed(Ipv4Addr),
    /// `clusterIP: None`: a headless service.
    Headless,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub file: PathBuf,
    pub node_port: bool,
    pub cluster_ip: ClusterIp,
    pub ports: Vec<PortSpec>,
    /// No selector: endpoints are not computed from pods (none on this node).
    pub selector: Option<BTreeMap<String, String>>,
    pub affinity_timeout: Option<u32>,
}

/// Validates a Service object.
pub fn from_service(svc: &Service, file: PathBuf) -> Result<ServiceSpec, String> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if !crate::api::validation::is_dns_label(&name) {
        return Err(format!(
            "metadata.name: {name:?} is not a valid service name (a DNS-1123 label)"
        ));
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let node_port = match kind.as_str() {
        "ClusterIP" => false,
        "NodePort" => true,
        other => {
            return Err(format!(
                "spec.type: {other:?} is not supported (ClusterIP or NodePort)"
            ))
        }
    };
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") => ClusterIp::Auto,
        Some("None") => ClusterIp::Headless,
        Some(s) => ClusterIp::Fixed(
            s.parse()
                .map_err(|_| format!("spec.clusterIP: {s:?} is not an IPv4 address"))?,
        ),
    };
    if node_port && cluster_ip == ClusterIp::Headless {
        return Err("spec.clusterIP: a NodePort service cannot be headless".into());
    }
    let ports_in = spec.ports.clone().unwrap_or_default();
    if ports_in.is_empty() && cluster_ip != ClusterIp::Headless {
        return Err("spec.ports: at least one port is required".into());
    }
    let mut ports = Vec::new();
    for (i, p) in ports_in.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let pname = p.name.clone().unwrap_or_default();
        if ports_in.len() > 1 && pname.is_empty() {
            return Err(format!(
                "{}: required when a service has more than one port",
                at("name")
            ));
        }
        if !pname.is_empty() && !crate::api::validation::is_dns_label(&pname) {
            return Err(format!(
                "{}: {pname:?} is not a valid port name",
                at("name")
            ));
        }
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return Err(format!(
                    "{}: {other:?} is not TCP, UDP or SCTP",
                    at("protocol")
                ))
            }
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{}: {} is not in 1-65535", at("port"), p.port))?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(
                u16::try_from(*n)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{}: {n} is not in 1-65535", at("targetPort")))?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ if crate::api::validation::is_dns_label(s) && s.len() <= 15 => {
                    TargetPort::Name(s.clone())
                }
                _ => {
                    return Err(format!(
                        "{}: {s:?} is neither a port number nor a port name",
                        at("targetPort")
                    ))
                }
            },
        };
        let np = match p.node_port {
            None | Some(0) => None,
            Some(n) if !node_port => {
                return Err(format!(
                    "{}: {n} is only allowed for type NodePort",
                    at("nodePort")
                ))
            }
            Some(n) => Some(
                u16::try_from(n)
                    .ok()
                    .filter(|n| super::NODE_PORTS.contains(n))
                    .ok_or_else(|| {
                        format!(
                            "{}: {n} is outside the node port range {}-{}",
                            at("nodePort"),
                            super::NODE_PORTS.start(),
                            super::NODE_PORTS.end()
                        )
                    })?,
            ),
        };
        if ports
            .iter()
            .any(|q: &PortSpec| q.port == port && q.protocol == protocol)
        {
            return Err(format!(
                "{}: {port}/{} is listed twice",
                at("port"),
                protocol.k8s()
            ));
        }
        if ports
            .iter()
            .any(|q: &PortSpec| !pname.is_empty() && q.name == pname)
        {
            return Err(format!("{}: {pname:?} is listed twice", at("name")));
        }
        ports.push(PortSpec {
            name: pname,
            protocol,
            port,
            target_port,
            node_port: np,
        });
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            if !(1..=86400).contains(&t) {
                return Err(format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1-86400"
                ));
            }
            Some(t as u32)
        }
        Some(other) => {
            return Err(format!(
                "spec.sessionAffinity: {other:?} is not None or ClientIP"
            ))
        }
    };
    Ok(ServiceSpec {
        namespace,
        name,
        file,
        node_port,
        cluster_ip,
        ports,
        selector: spec.selector.clone(),
        affinity_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServiceSpec, String> {
        let svc: Service = serde_yaml::from_str(yaml).unwrap();
        from_service(&svc, "svc.yaml".into())
    }

    #[test]
    fn a_nodeport_service_with_named_target_ports() {
        let s = parse(
            "metadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}\n",
        )
        .unwrap();
        assert!(s.node_port);
        assert_eq!(s.cluster_ip, ClusterIp::Auto);
        assert_eq!(s.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        assert_eq!(s.ports[1].node_port, Some(30053));
    }

    #[test]
    fn bad_input_names_the_field_and_value() {
        let cases = [
            ("spec: {type: LoadBalancer, ports: [{port: 80}]}", "spec.type: \"LoadBalancer\""),
            ("spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}", "spec.clusterIP: \"10.96.0.300\""),
            ("spec: {ports: [{port: 70000}]}", "spec.ports[0].port: 70000"),
            ("spec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}", "spec.ports[0].nodePort: 80 is outside"),
            ("spec: {ports: [{port: 80, nodePort: 30080}]}", "only allowed for type NodePort"),
            ("spec: {ports: [{port: 80}, {port: 81}]}", "spec.ports[0].name: required"),
            ("spec: {ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol: \"ICMP\""),
            ("spec: {ports: [{port: 80, targetPort: \"no_such!\"}]}", "spec.ports[0].targetPort"),
            ("spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}", "timeoutSeconds: 0"),
            ("spec: {ports: []}", "spec.ports: at least one"),
        ];
        for (spec, want) in cases {
            let e = parse(&format!("metadata: {{name: s}}\n{spec}\n")).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn headless_and_affinity() {
        let s = parse("metadata: {name: db}\nspec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}\n").unwrap();
        assert_eq!(s.cluster_ip, ClusterIp::Headless);
        let s = parse(
            "metadata: {name: db}\nspec: {sessionAffinity: ClientIP, ports: [{port: 5432}]}\n",
        )
        .unwrap();
        assert_eq!(s.affinity_timeout, Some(10800));
    }
}
