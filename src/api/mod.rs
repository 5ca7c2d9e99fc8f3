//! The Kubernetes API's rules, free of I/O: names, field errors and validation, as the API
//! server applies them. The node checks every object with them before anything is built
//! from it (a path, a mount, a syscall argument).

#![forbid(unsafe_code)]

pub mod cron;
pub mod error;
pub mod jws;
pub mod pod;
pub mod quantity;
pub mod resolv;
pub mod selector;
pub mod service;
pub mod time;
pub mod validation;

/// The garbage collector's finalizer on an owner whose dependents are deleted before it
/// (`propagationPolicy: Foreground`).
pub const FOREGROUND_DELETION: &str = "foregroundDeletion";
/// The garbage collector's finalizer on an owner whose dependents are kept, no longer owned
/// (`propagationPolicy: Orphan`).
pub const ORPHAN_DEPENDENTS: &str = "orphan";

/// The common name of the API server's client certificate toward node agents (kubeadm's
/// name); a node agent's kubelet API accepts no other.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The StorageClass every cluster starts with, marked default.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Its provisioner: a directory under the node's `<root>/storage` for each claim.
pub const LOCAL_PATH_PROVISIONER: &str = "knode.io/local-path";
/// The annotation a node publishes with the directory its local-path volumes go in.
pub const STORAGE_DIR_ANNOTATION: &str = "knode.io/storage-dir";
/// The annotation the scheduler puts on a claim waiting for its first consumer: the node.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
