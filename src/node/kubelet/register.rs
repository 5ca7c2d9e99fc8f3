//! The node on an API server (`knode agent --kubeconfig`): it registers its Node (capacity,
//! allocatable, addresses-free status, nodeInfo and conditions from [`super::node::node`]),
//! and every 10 s (the kubelet's defaults for status updates and lease renewals) posts its
//! status and renews its Lease in `kube-node-lease`, so `kubectl get nodes` shows it Ready and
//! the scheduler places pods on it. The credentials are a kubeconfig: the admin's, or one
//! with the server's node join token (`knode token`), whose rights are a node's.
//!
//! The pods bound to the node come from the API too (`source`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use super::NodeState;

/// How often the Node's status is posted and its Lease renewed, by default.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The Lease's duration (the kubelet's default, 40 s).
const LEASE_SECONDS: i32 = 40;
const MANAGER: &str = "knode-agent";

/// Registers the node and keeps it fresh, until the process ends. Errors (the server away,
/// a refused write) are logged and tried again at the next beat.
pub async fn heartbeat(
    client: Client,
    state: Arc<RwLock<NodeState>>,
    name: String,
    every: Duration,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut told = false;
    loop {
        let node = {
            let st = state.read().expect("state");
            super::node::node(&st.node)
        };
        match beat(&nodes, &leases, &name, node).await {
            Ok(()) if !told => {
                tracing::info!(node = %name, "registered with the API server");
                told = true;
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(node = %name, error = %e, "node status"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn beat(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    name: &str,
    mut node: Node,
) -> Result<(), kube::Error> {
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let status = node.status.take();
    node.metadata.creation_timestamp = None;
    let uid = match nodes.get_opt(name).await? {
        Some(n) => {
            // The annotations this node publishes (its storage directory) follow it.
            let have = n.metadata.annotations.clone().unwrap_or_default();
            let want = node.metadata.annotations.clone().unwrap_or_default();
            if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
                nodes
                    .patch(
                        name,
                        &pp,
                        &Patch::Merge(&json!({"metadata": {"annotations": want}})),
                    )
                    .await?;
            }
            n.metadata.uid
        }
        None => {
            nodes
                .create(&PostParams::default(), &node)
                .await?
                .metadata
                .uid
        }
    };
    nodes
        .patch_status(name, &pp, &Patch::Merge(&json!({ "status": status })))
        .await?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if leases.get_opt(name).await?.is_some() {
        leases
            .patch(
                name,
                &pp,
                &Patch::Merge(&json!({"spec": {"holderIdentity": name, "renewTime": now}})),
            )
            .await?;
    } else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-node-lease",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
        }))
        .map_err(kube::Error::SerdeError)?;
        leases.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}
