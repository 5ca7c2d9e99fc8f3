//! The node as the API shows it: a Kubernetes Node object (capacity and allocatable read
//! from the host, conditions, whether resource limits are enforced) and the usage summary
//! modelled on the kubelet's `/stats/summary`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::pod::PodView;
use crate::node::cgroup::stats::{self, Rates};

/// The kubelet's default hard eviction threshold, kept out of allocatable memory.
pub const EVICTION_MEMORY: u64 = 100 << 20;
/// The kubelet's default maximum number of pods.
pub const MAX_PODS: u64 = 110;

#[derive(Default)]
pub struct NodeInfo {
    pub name: String,
    pub started: DateTime<Utc>,
    pub cgroups: Option<Arc<crate::node::cgroup::Cgroups>>,
    /// How resource limits are enforced, or why they are not.
    pub cgroup_note: String,
    pub rates: Rates,
    /// Pods admitted at once (`--max-pods`).
    pub max_pods: u64,
    /// The kubelet API's port, once it listens.
    pub kubelet_port: Option<u16>,
    /// Where local-path volumes go (published on the Node for the provisioner).
    pub storage_dir: Option<std::path::PathBuf>,
}

impl NodeInfo {
    pub fn new(
        name: &str,
        cgroups: Option<Arc<crate::node::cgroup::Cgroups>>,
        cgroup_note: String,
    ) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            started: Utc::now(),
            cgroups,
            cgroup_note,
            rates: Rates::default(),
            max_pods: MAX_PODS,
            kubelet_port: None,
            storage_dir: None,
        }
    }
}

/// CPUs online and total memory (bytes) of the host.
pub fn capacity() -> (u64, u64) {
    // SAFETY: sysconf takes an integer and returns one.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64;
    let mem = stats::meminfo().get("MemTotal").copied().unwrap_or(0);
    (cpus, mem)
}

/// Capacity minus the kubelet's default reservations (the memory eviction threshold).
pub fn allocatable() -> (u64, u64) {
    let (cpus, mem) = capacity();
    (cpus, mem.saturating_sub(EVICTION_MEMORY))
}

fn resources(cpus: u64, mem: u64, pods: u64) -> std::collections::BTreeMap<String, Quantity> {
    [
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{}Ki", mem / 1024))),
        ("pods".to_string(), Quantity(pods.to_string())),
    ]
    .into_iter()
    .collect()
}

fn uname() -> (String, String) {
    let u = rustix::system::uname();
    (
        u.release().to_string_lossy().into_owned(),
        u.machine().to_string_lossy().into_owned(),
    )
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// The node's address: the one its default route leaves from, or, on a node without one (an
/// isolated lab namespace), 127.0.0.1.
pub fn node_ip() -> String {
    internal_ip().unwrap_or_else(|| "127.0.0.1".into())
}

/// The address the default route leaves from (a UDP socket connected to a public address,
/// which sends nothing), or none when there is no such route.
pub fn internal_ip() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then(|| ip.to_string())
}

/// The Node object.
pub fn node(info: &NodeInfo) -> core::Node {
    let (cpus, mem) = capacity();
    let (acpus, amem) = allocatable();
    let (kernel, machine) = uname();
    let arch = match machine.as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string();
    let now = crate::api::time::time(Utc::now());
    let since = crate::api::time::time(info.started);
    let enforced = info.cgroups.is_some();
    core::Node {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            creation_timestamp: Some(since.clone()),
            labels: Some(
                [
                    ("kubernetes.io/hostname".to_string(), info.name.clone()),
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ("kubernetes.io/arch".to_string(), arch.clone()),
                ]
                .into_iter()
                .collect(),
            ),
            annotations: info.storage_dir.as_ref().map(|d| {
                [(
                    crate::api::STORAGE_DIR_ANNOTATION.to_string(),
                    d.display().to_string(),
                )]
                .into_iter()
                .collect()
            }),
            ..Default::default()
        },
        status: Some(core::NodeStatus {
            capacity: Some(resources(cpus, mem, info.max_pods)),
            allocatable: Some(resources(acpus, amem, info.max_pods)),
            conditions: Some(vec![
                core::NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    message: Some("knode is posting ready status".into()),
                    last_heartbeat_time: Some(now.clone()),
                    last_transition_time: Some(since.clone()),
                },
                core::NodeCondition {
                    type_: "ResourceLimits".into(),
                    status: if enforced { "True" } else { "False" }.into(),
                    reason: Some(
                        if enforced {
                            "CgroupV2"
                        } else {
                            "CgroupsDisabled"
                        }
                        .into(),
                    ),
                    message: Some(info.cgroup_note.clone()),
                    last_heartbeat_time: Some(now),
                    last_transition_time: Some(since),
                },
            ]),
            addresses: Some(vec![
                core::NodeAddress {
                    type_: "InternalIP".into(),
                    address: node_ip(),
                },
                core::NodeAddress {
                    type_: "Hostname".into(),
                    address: info.name.clone(),
                },
            ]),
            daemon_endpoints: info.kubelet_port.map(|p| core::NodeDaemonEndpoints {
                kubelet_endpoint: Some(core::DaemonEndpoint { port: p as i32 }),
            }),
            node_info: Some(core::NodeSystemInfo {
                architecture: arch,
                kernel_version: kernel,
                operating_system: "linux".into(),
                os_image: os_image(),
                container_runtime_version: format!("knode://{}", env!("CARGO_PKG_VERSION")),
                kubelet_version: format!("knode-{}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CPU and memory of one cgroup, the CPU rate against the sample kept under `key`.
fn usage(info: &NodeInfo, cg: &str) -> Option<(Value, Value)> {
    let cgs = info.cgroups.as_ref()?;
    let (cpu, mem) = stats::read_cgroup(cgs.fs(), cg)?;
    Some((json!(info.rates.cpu(cg, cpu)), json!(mem)))
}

/// The usage summary: the node, and every pod and container with a cgroup.
pub fn summary(info: &NodeInfo, pods: &[PodView]) -> Value {
    let node = stats::read_node().map(|(cpu, mem)| {
        json!({
            "nodeName": info.name,
            "startTime": crate::api::time::time(info.started),
            "cpu": info.rates.cpu("node", cpu),
            "memory": mem,
        })
    });
    let mut keys = vec!["node".to_string()];
    let items: Vec<Value> = pods
        .iter()
        .map(|v| {
            let mut pod = json!({
                "podRef": {"name": v.manifest.name, "namespace": v.manifest.namespace, "uid": v.manifest.uid},
                "startTime": v.started.map(crate::api::time::time),
            });
            if let Some((cpu, mem)) = v.cgroup.as_deref().and_then(|cg| usage(info, cg)) {
                keys.push(v.cgroup.clone().unwrap_or_default());
                pod["cpu"] = cpu;
                pod["memory"] = mem;
            }
            let containers: Vec<Value> = v
                .containers
                .iter()
                .filter_map(|c| {
                    let cg = c.cgroup.as_deref()?;
                    let (cpu, mem) = usage(info, cg)?;
                    keys.push(cg.to_string());
                    let started = match &c.state {
                        super::pod::CState::Running { started_at } => Some(crate::api::time::time(*started_at)),
                        _ => None,
                    };
                    Some(json!({"name": c.name, "startTime": started, "cpu": cpu, "memory": mem}))
                })
                .collect();
            pod["containers"] = json!(containers);
            pod
        })
        .collect();
    // Samples of cgroups that are gone are forgotten.
    info.rates.retain(&|k| keys.iter().any(|x| x == k));
    json!({
        "node": node,
        "pods": items,
        "cgroups": if info.cgroups.is_some() { "enabled" } else { "disabled" },
        "message": info.cgroup_note,
    })
}
