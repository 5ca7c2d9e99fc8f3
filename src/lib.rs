//! knode: a Kubernetes node in one binary. This library holds the pieces the `knode` binary,
//! the integration tests and the benchmarks share.

pub mod api;
pub mod cgroup;
pub mod container;
pub mod demo;
pub mod image_cli;
pub mod kubelet;
pub mod localregistry;
pub mod logs;
pub mod network;
pub mod node_cli;
pub mod pod_cli;
pub mod proxy;
pub mod safefs;
pub mod sandbox;
pub mod service;
pub mod shim;
