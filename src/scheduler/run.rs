//! The scheduler's loop: pods and nodes watched into reflector caches, a scheduling pass after
//! every change (and every 10 s, for pods that failed on a transient error), each decision
//! applied through the client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::client::Informers;

use super::{
    event, node_states, pending, schedule_with, unresolvable, volume_needs, Storage, NAME,
};

/// Runs until the client's server goes away for good (it retries with backoff meanwhile).
pub async fn run(inf: Arc<Informers>) {
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let nodes = inf.cache::<Node>(wake.clone());
    let pods = inf.cache::<Pod>(wake.clone());
    let claims = inf.cache::<PersistentVolumeClaim>(wake.clone());
    let volumes = inf.cache::<PersistentVolume>(wake.clone());
    let classes = inf.cache::<StorageClass>(wake.clone());
    if nodes.wait_until_ready().await.is_err()
        || pods.wait_until_ready().await.is_err()
        || claims.wait_until_ready().await.is_err()
        || volumes.wait_until_ready().await.is_err()
        || classes.wait_until_ready().await.is_err()
    {
        return;
    }
    tracing::info!("scheduler started");
    // The last FailedScheduling message per pod uid: an unchanged one is not repeated.
    let mut told: HashMap<String, String> = HashMap::new();
    loop {
        let (cs, vs, ss) = (claims.state(), volumes.state(), classes.state());
        let storage = Storage {
            claims: cs
                .iter()
                .map(|c| {
                    (
                        (
                            c.metadata.namespace.clone().unwrap_or_default(),
                            c.metadata.name.clone().unwrap_or_default(),
                        ),
                        c.as_ref(),
                    )
                })
                .collect(),
            volumes: vs
                .iter()
                .map(|v| (v.metadata.name.clone().unwrap_or_default(), v.as_ref()))
                .collect(),
            classes: ss
                .iter()
                .map(|c| (c.metadata.name.clone().unwrap_or_default(), c.as_ref()))
                .collect(),
        };
        pass(&client, &nodes.state(), pods.state(), &storage, &mut told).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}

async fn pass(
    client: &Client,
    nodes: &[Arc<Node>],
    all: Vec<Arc<Pod>>,
    storage: &Storage<'_>,
    told: &mut HashMap<String, String>,
) {
    let mut waiting: Vec<Arc<Pod>> = all.iter().filter(|p| pending(p)).cloned().collect();
    waiting.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let live: std::collections::HashSet<&str> = all
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    told.retain(|uid, _| live.contains(uid.as_str()));
    // What each node has taken, updated as this pass binds pods.
    let mut states = node_states(nodes, &all);
    // Claims given a node in this pass (the cache does not show it yet).
    let mut chosen: HashMap<(String, String), String> = HashMap::new();
    for pod in waiting {
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        ) else {
            continue;
        };
        let mut needs = volume_needs(&pod, storage);
        if let Ok(v) = &mut needs {
            for ((cns, c), node) in &chosen {
                if *cns == ns {
                    v.chosen(c, node);
                }
            }
        }
        let decision = match &needs {
            Ok(v) => schedule_with(&pod, &states, v),
            Err(reason) => Err(unresolvable(states.len(), reason)),
        };
        match decision {
            Ok(node) => {
                // Claims waiting for their first consumer learn the node first; the
                // provisioner makes their volumes there (the node waits for them).
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                let mut annotated = true;
                for c in needs.iter().flat_map(|n| n.select.iter()) {
                    // Only the claim as read: one chosen meanwhile is not chosen again.
                    let rv = storage
                        .claims
                        .get(&(ns.clone(), c.clone()))
                        .and_then(|x| x.metadata.resource_version.clone());
                    let patch = json!({"metadata": {"resourceVersion": rv,
                        "annotations": {crate::api::SELECTED_NODE: node}}});
                    let pp = PatchParams {
                        field_manager: Some(NAME.into()),
                        ..Default::default()
                    };
                    match claims.patch(c, &pp, &Patch::Merge(&patch)).await {
                        Ok(_) => {
                            chosen.insert((ns.clone(), c.clone()), node.clone());
                        }
                        Err(e) => {
                            tracing::debug!(claim = %c, error = %e, "selected node");
                            annotated = false;
                        }
                    }
                }
                if !annotated {
                    continue;
                }
                let binding = json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                });
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                match api
                    .create_subresource::<_, serde_json::Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(pod = %format!("{ns}/{name}"), %node, "bound");
                        told.remove(&uid);
                        // Counted on its node for the rest of this pass.
                        if let Some(st) = states
                            .iter_mut()
                            .find(|st| st.node.metadata.name.as_deref() == Some(node.as_str()))
                        {
                            st.add(&pod);
                        }
                        emit(
                            client,
                            &pod,
                            "Normal",
                            "Scheduled",
                            &format!("Successfully assigned {ns}/{name} to {node}"),
                        )
                        .await;
                    }
                    // Bound meanwhile, or gone: the next pass sees it.
                    Err(e) => tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "binding"),
                }
            }
            Err(message) => {
                if told.get(&uid) == Some(&message) {
                    continue;
                }
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let now = crate::api::time::rfc3339(chrono::Utc::now());
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null, "lastTransitionTime": now}]}});
                let pp = PatchParams {
                    field_manager: Some(NAME.into()),
                    ..Default::default()
                };
                if let Err(e) = api
                    .patch_status(&name, &pp, &Patch::Strategic(&patch))
                    .await
                {
                    tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "pod status");
                    continue;
                }
                emit(client, &pod, "Warning", "FailedScheduling", &message).await;
                told.insert(uid, message);
            }
        }
    }
}

async fn emit(client: &Client, pod: &Pod, kind: &str, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let Ok(ev) = serde_json::from_value::<Event>(event(pod, kind, reason, message)) else {
        return;
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(error = %e, "event");
    }
}
