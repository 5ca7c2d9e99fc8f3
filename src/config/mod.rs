//! Resolved configuration: what the command line (and later a config file) asked for, with
//! every default applied and every value checked, handed to the component that runs. Nothing
//! here does I/O; the components open what it names.

#![forbid(unsafe_code)]

pub mod registries;

use std::path::PathBuf;

/// A node agent's configuration (`knode agent`).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The static pods' directory (Pods, Services, ConfigMaps, Secrets).
    pub manifests: PathBuf,
    /// State (images, snapshots, writable layers, emptyDirs): `--root`.
    pub root: PathBuf,
    /// Runtime state (sockets, sandboxes, mounts of running things): `--run-dir`.
    pub run_dir: PathBuf,
    /// Container logs, in the CRI layout.
    pub log_dir: PathBuf,
    pub node_name: String,
    /// The knode binary (shims and pause processes are started from it).
    pub exe: PathBuf,
    /// How registries are reached.
    pub client: oci::registry::ClientOptions,
    /// The pod network's CNI configuration list; when it does not exist pods get a
    /// loopback-only network namespace.
    pub cni_conf: PathBuf,
    /// Where CNI plugins other than knode's own are found.
    pub cni_bin_dir: PathBuf,
    /// Where ClusterIPs are allocated.
    pub service_cidr: ipnet::Ipv4Net,
    pub cgroups: CgroupConfig,
    /// Pods admitted at once (the kubelet's `maxPods`).
    pub max_pods: usize,
    /// A kubeconfig for the API server the node registers with (none: a standalone node).
    pub kubeconfig: Option<PathBuf>,
    /// The kubelet API's port on an API server (0: any free port).
    pub kubelet_port: u16,
    /// How often the Node's status is posted and its Lease renewed.
    pub heartbeat: std::time::Duration,
    /// Tear every pod down, each within at most this many seconds of grace, remove the
    /// node's cgroups and return (`knode down`).
    pub drain: Option<u64>,
    /// The cluster DNS this node serves (pods' resolv.conf points at it, and the proxy
    /// leaves `kube-system/kube-dns` to it); none: pods get the node's resolv.conf.
    pub cluster_dns: Option<crate::api::resolv::ClusterDns>,
    /// The resolv.conf pods start from (the kubelet's --resolv-conf).
    pub resolv_conf: std::path::PathBuf,
}

/// Resource limits: on (the default, cgroup v2 required) or explicitly off.
#[derive(Clone, Debug)]
pub struct CgroupConfig {
    pub enabled: bool,
    /// The knode cgroup, relative to the cgroup2 mount.
    pub root: String,
    /// pids.max of every pod (none: unlimited).
    pub pod_max_pids: Option<u64>,
    /// Why limits are off, when `enabled` is false (default: the --cgroups=disabled flag).
    pub off_reason: Option<String>,
}

/// An API server's configuration (`knode server`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where it listens (HTTPS).
    pub listen: std::net::SocketAddr,
    /// Its state: `<root>/server/` (store, certificates, kubeconfig, token).
    pub root: PathBuf,
    /// etcd endpoints (none: the embedded store).
    pub datastore: Vec<String>,
    /// Where to write the admin kubeconfig besides `<root>/server/admin.kubeconfig`.
    pub write_kubeconfig: Option<PathBuf>,
    /// The addresses the serving certificate covers besides 127.0.0.1 and the service IP.
    pub addresses: Vec<std::net::IpAddr>,
    /// The `kubernetes` Service's ClusterIP (the first address of the service CIDR).
    pub service_ip: std::net::Ipv4Addr,
    /// Where Services' ClusterIPs come from.
    pub service_cidr: ipnet::Ipv4Net,
    /// How often the store's history is compacted (keeping one interval of it); zero: never.
    pub compaction_interval: std::time::Duration,
}
