//! knode: a Kubernetes cluster in one binary, on Linux kernel primitives. The library holds
//! everything the `knode` binary, the integration tests and the benchmarks share; its folders
//! are its layers, and imports only go down (see the README's Layout and `layout_tests`):
//!
//! - `cli`: clap and printing, one file per verb (only `main.rs` imports it);
//! - `apiserver`: the Kubernetes API server (beside `node`);
//! - `dns`: cluster DNS, the zone built from Services and EndpointSlices (beside `node`);
//! - `node`: everything that runs on a node (kubelet, sandbox, containers, shims, logs, pod
//!   network, images, cgroups, service proxy);
//! - `store`: the API server's etcd-shaped storage (embedded, etcd) and its conformance suite;
//! - `config`: resolved configuration handed to a component;
//! - `api`: the Kubernetes API's rules without I/O (validation, quantities, Services).

pub mod api;
pub mod apiserver;
pub mod cli;
pub mod client;
pub mod config;
pub mod controllers;
pub mod dns;
pub mod node;
pub mod scheduler;
pub mod store;

#[cfg(test)]
mod layout_tests;
