//! Everything that runs on a node: the kubelet (pod sources, pod workers, volumes, the node's
//! own API), the sandbox and container runtime above `oci::runtime`, the shim that supervises
//! each container, logs, the pod network (through `cni`), images (through `oci`), cgroups and
//! the service proxy. It never imports `cli` (imports only go down: see the README's Layout).

pub mod attach;
pub mod cgroup;
pub mod container;
pub mod error;
pub mod images;
pub mod kubelet;
pub mod logs;
pub mod network;
pub mod proxy;
pub mod rt;
pub mod safefs;
pub mod sandbox;
pub mod shim;
