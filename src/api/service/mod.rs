//! Services, free of I/O: the Service model the proxy is fed with (shaped like a Service plus
//! its EndpointSlices, so the source can later be an API server), a Service's validation
//! ([`spec`]), endpoints computed from pods and the kubelet's service environment variables
//! ([`endpoints`]). The allocation of ClusterIPs and NodePorts, which keeps a record on disk,
//! is the node's (`node::proxy::alloc`) until the API server allocates them.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

pub mod endpoints;
pub mod spec;

/// The default NodePort range (the API server's `--service-node-port-range`).
pub const NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

/// L4 protocol of a service port.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The nftables / conntrack name (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
    /// The Kubernetes name (`TCP`, `UDP`, `SCTP`).
    pub fn k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// One port of a service, allocation done (a NodePort service has `node_port` set).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ServicePort {
    /// Empty for a service's only, unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A service as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// None for a headless service (no rules at all).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// One endpoint of one service port (what an EndpointSlice lists, resolved per port).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Only ready endpoints receive new connections.
    pub ready: bool,
}

/// A service and, per service port name, its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ServiceState {
    pub service: ServiceView,
    /// Endpoints per port name (same order as `service.ports`).
    pub endpoints: Vec<Vec<Endpoint>>,
}

/// A service as the agent lists it (`GET /services`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedService {
    #[serde(flatten)]
    pub state: ServiceState,
    /// When the service was created (RFC 3339), for kubectl's AGE column.
    #[serde(
        rename = "creationTimestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<String>,
}
