//! A Service manifest, validated: what was asked for, before ClusterIP and NodePort
//! allocation. Every problem names the field and the value.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Protocol;
use crate::api::validation::{FieldError, Invalid};

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
    /// `type: ExternalName`: a DNS alias (a CNAME) only; no address, no proxying.
    pub external_name: Option<String>,
}

/// Validates a Service object as the API server does (every problem, each a field error),
/// within what knode implements (ClusterIP, NodePort and ExternalName, IPv4).
pub fn from_service(svc: &Service, file: PathBuf) -> Result<ServiceSpec, Invalid> {
    use crate::api::validation::{duplicate, forbidden, invalid, not_supported, required};
    let mut errs: Vec<FieldError> = Vec::new();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if name.is_empty() {
        errs.push(required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in crate::api::validation::dns_label(&name) {
            errs.push(invalid("metadata.name", name.as_str(), m));
        }
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let node_port = match kind.as_str() {
        "ClusterIP" | "ExternalName" => false,
        "NodePort" => true,
        other => {
            errs.push(not_supported(
                "spec.type",
                other,
                &["ClusterIP", "ExternalName", "NodePort"],
            ));
            false
        }
    };
    let external_name = (kind == "ExternalName").then(|| {
        // The value (a CNAME) may end with a dot, as upstream allows.
        let cname = spec.external_name.clone().unwrap_or_default();
        let cname = cname.trim_end_matches('.');
        if cname.is_empty() {
            errs.push(required("spec.externalName", ""));
        } else {
            for m in crate::api::validation::dns_subdomain(cname) {
                errs.push(invalid("spec.externalName", cname, m));
            }
        }
        if spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || spec.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty())
        {
            errs.push(forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
        cname.to_string()
    });
    let cluster_ip = match spec.cluster_ip.as_deref() {
        _ if external_name.is_some() => ClusterIp::Headless,
        None | Some("") => ClusterIp::Auto,
        Some("None") => ClusterIp::Headless,
        Some(s) => match s.parse() {
            Ok(ip) => ClusterIp::Fixed(ip),
            Err(_) => {
                errs.push(invalid(
                    "spec.clusterIP",
                    s,
                    "must be a valid IPv4 address (knode's services are IPv4), or None",
                ));
                ClusterIp::Auto
            }
        },
    };
    if node_port && cluster_ip == ClusterIp::Headless {
        errs.push(invalid(
            "spec.clusterIP",
            "None",
            "may not be set to 'None' for NodePort services",
        ));
    }
    let ports_in = spec.ports.clone().unwrap_or_default();
    if ports_in.is_empty() && cluster_ip != ClusterIp::Headless && external_name.is_none() {
        errs.push(required("spec.ports", "at least one port is required"));
    }
    let mut ports = Vec::new();
    for (i, p) in ports_in.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let pname = p.name.clone().unwrap_or_default();
        if ports_in.len() > 1 && pname.is_empty() {
            errs.push(required(
                &at("name"),
                "required when a service has more than one port",
            ));
        }
        if !pname.is_empty() {
            for m in crate::api::validation::dns_label(&pname) {
                errs.push(invalid(&at("name"), pname.as_str(), m));
            }
        }
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                errs.push(not_supported(
                    &at("protocol"),
                    other,
                    &["SCTP", "TCP", "UDP"],
                ));
                continue;
            }
        };
        let in_range = |n: i32| u16::try_from(n).ok().filter(|p| *p > 0);
        let Some(port) = in_range(p.port) else {
            errs.push(invalid(
                &at("port"),
                i64::from(p.port),
                "must be between 1 and 65535, inclusive",
            ));
            continue;
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match in_range(*n) {
                Some(n) => TargetPort::Number(n),
                None => {
                    errs.push(invalid(
                        &at("targetPort"),
                        i64::from(*n),
                        "must be between 1 and 65535, inclusive",
                    ));
                    continue;
                }
            },
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ if crate::api::validation::is_dns_label(s) && s.len() <= 15 => {
                    TargetPort::Name(s.clone())
                }
                _ => {
                    errs.push(invalid(
                        &at("targetPort"),
                        s.as_str(),
                        "must be a port number (1-65535) or a port name (an IANA_SVC_NAME: at most 15 characters, lowercase letters, digits and '-')",
                    ));
                    continue;
                }
            },
        };
        let np = match p.node_port {
            None | Some(0) => None,
            Some(n) if !node_port => {
                errs.push(forbidden_node_port(&at("nodePort"), n));
                None
            }
            Some(n) => match u16::try_from(n)
                .ok()
                .filter(|n| super::NODE_PORTS.contains(n))
            {
                Some(n) => Some(n),
                None => {
                    errs.push(invalid(
                        &at("nodePort"),
                        i64::from(n),
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            super::NODE_PORTS.start(),
                            super::NODE_PORTS.end()
                        ),
                    ));
                    None
                }
            },
        };
        if ports
            .iter()
            .any(|q: &PortSpec| q.port == port && q.protocol == protocol)
        {
            errs.push(duplicate(
                &format!("spec.ports[{i}]"),
                format!("{port}/{}", protocol.k8s()),
            ));
        }
        if ports
            .iter()
            .any(|q: &PortSpec| !pname.is_empty() && q.name == pname)
        {
            errs.push(duplicate(&at("name"), pname.as_str()));
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
                errs.push(invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    i64::from(t),
                    "must be greater than 0 and less than 86400",
                ));
            }
            Some(t.max(1) as u32)
        }
        Some(other) => {
            errs.push(not_supported(
                "spec.sessionAffinity",
                other,
                &["ClientIP", "None"],
            ));
            None
        }
    };
    if !errs.is_empty() {
        return Err(Invalid {
            kind: "Service".into(),
            name,
            causes: errs,
        });
    }
    Ok(ServiceSpec {
        namespace,
        name,
        file,
        node_port,
        cluster_ip,
        ports,
        selector: spec.selector.clone(),
        affinity_timeout,
        external_name,
    })
}

/// A nodePort on a service that is not of type NodePort (the API server's text).
fn forbidden_node_port(field: &str, n: i32) -> FieldError {
    crate::api::validation::forbidden(
        field,
        format!("may not be used when `type` is 'ClusterIP' (was {n})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServiceSpec, Invalid> {
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
            ("spec: {type: LoadBalancer, ports: [{port: 80}]}", "spec.type: Unsupported value: \"LoadBalancer\": supported values: \"ClusterIP\", \"ExternalName\", \"NodePort\""),
            ("spec: {type: ExternalName}", "spec.externalName: Required value"),
            ("spec: {type: ExternalName, externalName: Bad_Host}", "spec.externalName: Invalid value: \"Bad_Host\": a lowercase RFC 1123 subdomain"),
            ("spec: {type: ExternalName, externalName: db.example.com, clusterIP: 10.96.0.5}", "spec.clusterIPs: Forbidden: may not be set for ExternalName services"),
            ("spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}", "spec.clusterIP: Invalid value: \"10.96.0.300\""),
            ("spec: {ports: [{port: 70000}]}", "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"),
            ("spec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}", "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            ("spec: {ports: [{port: 80, nodePort: 30080}]}", "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
            ("spec: {ports: [{port: 80}, {port: 81}]}", "spec.ports[0].name: Required value"),
            ("spec: {ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol: Unsupported value: \"ICMP\""),
            ("spec: {ports: [{port: 80, targetPort: \"no_such!\"}]}", "spec.ports[0].targetPort: Invalid value: \"no_such!\""),
            ("spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}", "timeoutSeconds: Invalid value: 0"),
            ("spec: {ports: []}", "spec.ports: Required value"),
            ("spec: {ports: [{name: a, port: 80}, {name: b, port: 80}]}", "spec.ports[1]: Duplicate value: \"80/TCP\""),
        ];
        for (spec, want) in cases {
            let e = parse(&format!("metadata: {{name: s}}\n{spec}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("Service \"s\" is invalid: "), "{e}");
            assert!(e.contains(want), "{spec}: {e}");
        }
        // Every problem at once, as the API server reports them.
        let e =
            parse("metadata: {name: Bad_Name}\nspec: {type: LoadBalancer, ports: [{port: 0}]}\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with(
                "Service \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\""
            ),
            "{e}"
        );
        assert!(
            e.contains("spec.type: Unsupported value")
                && e.contains("spec.ports[0].port: Invalid value: 0"),
            "{e}"
        );
    }

    #[test]
    fn an_external_name_is_an_alias_with_no_address_or_ports() {
        let s = parse(
            "metadata: {name: ext}\nspec: {type: ExternalName, externalName: db.example.com.}\n",
        )
        .unwrap();
        assert_eq!(s.external_name.as_deref(), Some("db.example.com"));
        assert_eq!(s.cluster_ip, ClusterIp::Headless);
        assert!(s.ports.is_empty() && !s.node_port);
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
