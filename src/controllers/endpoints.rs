//! The Endpoints and EndpointSlice controllers' plan: for a Service with a selector, the pods
//! of its namespace whose labels match, that have an IP, are not finished and are not being
//! deleted; each service port's targetPort resolved against the pod's container ports (a
//! named one may differ from pod to pod, so pods are grouped by their resolved ports, as
//! upstream's subsets and slices are). Ready pods (condition Ready) are `addresses`, others
//! `notReadyAddresses` (unless the Service publishes not-ready addresses). Services without
//! a selector keep the endpoints their users write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{json, Value};

/// The EndpointSlice label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A resolved port: (name, port, protocol).
pub type Port = (String, i32, String);

/// A pod's address in a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    pub ip: String,
    pub node: Option<String>,
    pub pod: String,
    pub uid: String,
    pub ready: bool,
    /// The pod's `hostname`, when its `subdomain` is this service (a StatefulSet's pods
    /// under their headless service): DNS gives it a name of its own.
    pub hostname: Option<String>,
}

/// Pods with the same resolved ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub ports: Vec<Port>,
    pub addresses: Vec<Address>,
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The service's selector, if it has one (Endpoints are then the controller's).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// A service port's target on a pod, or None when a named port is not there.
fn target(sp: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let proto = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port),
        },
    }
}

/// The service's pods grouped by resolved ports (sorted; addresses sorted by IP).
pub fn groups(svc: &Service, pods: &[&Pod]) -> Vec<Group> {
    let Some(sel) = selector(svc) else {
        return vec![];
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let mut by_ports: BTreeMap<Vec<Port>, Vec<Address>> = BTreeMap::new();
    for p in pods {
        if p.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let st = p.status.clone().unwrap_or_default();
        let Some(ip) = st.pod_ip.filter(|i| !i.is_empty()) else {
            continue;
        };
        if matches!(st.phase.as_deref(), Some("Succeeded") | Some("Failed"))
            || (p.metadata.deletion_timestamp.is_some() && !publish)
        {
            continue;
        }
        let ports: Vec<Port> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                Some((
                    sp.name.clone().unwrap_or_default(),
                    target(sp, p)?,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        let pspec = p.spec.as_ref();
        let hostname = pspec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .filter(|_| pspec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref());
        by_ports.entry(ports).or_default().push(Address {
            ip,
            hostname,
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            pod: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            ready: publish || ready(p),
        });
    }
    let has_ports = spec.ports.as_ref().is_some_and(|p| !p.is_empty());
    by_ports
        .into_iter()
        // A pod none of whose service ports resolve has no endpoint (upstream's too).
        .filter(|(ports, _)| !ports.is_empty() || !has_ports)
        .map(|(ports, mut addresses)| {
            addresses.sort();
            Group { ports, addresses }
        })
        .collect()
}

fn address_json(a: &Address, ns: &str) -> Value {
    let mut v = json!({
        "ip": a.ip,
        "targetRef": {"kind": "Pod", "namespace": ns, "name": a.pod, "uid": a.uid},
    });
    if let Some(n) = &a.node {
        v["nodeName"] = json!(n);
    }
    if let Some(h) = &a.hostname {
        v["hostname"] = json!(h);
    }
    v
}

fn port_json(p: &Port) -> Value {
    let mut v = json!({"port": p.1, "protocol": p.2});
    if !p.0.is_empty() {
        v["name"] = json!(p.0);
    }
    v
}

/// The Endpoints object's `subsets` for `groups` (absent when empty, as upstream's).
pub fn subsets(groups: &[Group], ns: &str) -> Value {
    let s: Vec<Value> = groups
        .iter()
        .filter(|g| !g.addresses.is_empty())
        .map(|g| {
            let (r, nr): (Vec<&Address>, Vec<&Address>) = g.addresses.iter().partition(|a| a.ready);
            let mut v = json!({"ports": g.ports.iter().map(port_json).collect::<Vec<_>>()});
            if !r.is_empty() {
                v["addresses"] = json!(r.iter().map(|a| address_json(a, ns)).collect::<Vec<_>>());
            }
            if !nr.is_empty() {
                v["notReadyAddresses"] =
                    json!(nr.iter().map(|a| address_json(a, ns)).collect::<Vec<_>>());
            }
            v
        })
        .collect();
    if s.is_empty() {
        Value::Null
    } else {
        json!(s)
    }
}

/// A slice port: its name always set, "" for an unnamed one (clients dereference it, as
/// upstream's controller always sets it).
fn slice_port_json(p: &Port) -> Value {
    json!({"name": p.0, "port": p.1, "protocol": p.2})
}

/// An EndpointSlice's `endpoints` and `ports` for one group.
pub fn slice_body(g: &Group, ns: &str) -> (Value, Value) {
    let endpoints: Vec<Value> = g
        .addresses
        .iter()
        .map(|a| {
            let mut v = json!({
                "addresses": [a.ip],
                "conditions": {"ready": a.ready, "serving": a.ready, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": a.pod, "uid": a.uid},
            });
            if let Some(n) = &a.node {
                v["nodeName"] = json!(n);
            }
            if let Some(h) = &a.hostname {
                v["hostname"] = json!(h);
            }
            v
        })
        .collect();
    (
        json!(endpoints),
        json!(g.ports.iter().map(slice_port_json).collect::<Vec<_>>()),
    )
}

/// The labels of the service's Endpoints: the service's own.
pub fn labels(svc: &Service) -> BTreeMap<String, String> {
    svc.metadata.labels.clone().unwrap_or_default()
}

/// The labels of the service's EndpointSlices.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = labels(svc);
    l.insert(
        SERVICE_NAME.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    l.insert(MANAGED_BY.into(), SLICE_CONTROLLER.into());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: Value, ip: Option<&str>, ready: bool, ports: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x", "ports": ports}]},
            "status": {"podIP": ip, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn svc(target: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": target}]},
        }))
        .unwrap()
    }

    /// A pod's hostname is its endpoint's when its subdomain names the service (upstream's
    /// rule), not otherwise.
    #[test]
    fn a_pods_hostname_is_its_endpoints_under_its_subdomain() {
        let mut pods = vec![];
        for (name, ip, sub) in [("a", "10.0.0.2", "web"), ("b", "10.0.0.3", "other")] {
            let mut p = pod(name, json!({"app": "web"}), Some(ip), true, json!([]));
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some(format!("{name}-0"));
            spec.subdomain = Some(sub.into());
            pods.push(p);
        }
        let refs: Vec<&Pod> = pods.iter().collect();
        let g = groups(&svc(json!(8080)), &refs);
        let (eps, _) = slice_body(&g[0], "default");
        assert_eq!(eps[0]["hostname"], "a-0");
        assert!(eps[1].get("hostname").is_none(), "{eps}");
        let s = subsets(&g, "default");
        assert_eq!(s[0]["addresses"][0]["hostname"], "a-0");
        assert!(s[0]["addresses"][1].get("hostname").is_none());
    }

    #[test]
    fn ready_and_unready_pods_with_ips_are_addresses_others_are_not() {
        let pods = [
            pod(
                "a",
                json!({"app": "web"}),
                Some("10.0.0.2"),
                true,
                json!([]),
            ),
            pod(
                "b",
                json!({"app": "web"}),
                Some("10.0.0.3"),
                false,
                json!([]),
            ),
            pod("c", json!({"app": "web"}), None, true, json!([])),
            pod("d", json!({"app": "db"}), Some("10.0.0.5"), true, json!([])),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let g = groups(&svc(json!(8080)), &refs);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].ports, vec![(String::new(), 8080, "TCP".to_string())]);
        let ips: Vec<(&str, bool)> = g[0]
            .addresses
            .iter()
            .map(|a| (a.ip.as_str(), a.ready))
            .collect();
        assert_eq!(ips, [("10.0.0.2", true), ("10.0.0.3", false)]);
        let s = subsets(&g, "default");
        assert_eq!(s[0]["addresses"][0]["ip"], "10.0.0.2");
        assert_eq!(s[0]["addresses"][0]["targetRef"]["name"], "a");
        assert_eq!(s[0]["notReadyAddresses"][0]["ip"], "10.0.0.3");
        assert_eq!(s[0]["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
        let (eps, ports) = slice_body(&g[0], "default");
        assert_eq!(eps[1]["conditions"]["ready"], false);
        assert_eq!(eps[0]["nodeName"], "n1");
        assert_eq!(
            ports,
            json!([{"name": "", "port": 8080, "protocol": "TCP"}])
        );
    }

    #[test]
    fn a_named_target_port_groups_pods_by_their_numbers() {
        let pods = [
            pod(
                "a",
                json!({"app": "web"}),
                Some("10.0.0.2"),
                true,
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "b",
                json!({"app": "web"}),
                Some("10.0.0.3"),
                true,
                json!([{"name": "http", "containerPort": 9090}]),
            ),
            pod(
                "c",
                json!({"app": "web"}),
                Some("10.0.0.4"),
                true,
                json!([]),
            ),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let g = groups(&svc(json!("http")), &refs);
        let ports: Vec<i32> = g.iter().map(|g| g.ports[0].1).collect();
        // The pod without the named port is no endpoint of the service.
        assert_eq!(ports, [8080, 9090]);
        assert_eq!(g[0].addresses[0].pod, "a");
    }

    #[test]
    fn no_pods_no_subsets_and_no_selector_no_groups() {
        assert_eq!(
            subsets(&groups(&svc(json!(80)), &[]), "default"),
            Value::Null
        );
        let mut s = svc(json!(80));
        s.spec.as_mut().unwrap().selector = None;
        let p = pod(
            "a",
            json!({"app": "web"}),
            Some("10.0.0.2"),
            true,
            json!([]),
        );
        assert!(groups(&s, &[&p]).is_empty());
    }
}
