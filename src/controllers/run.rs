//! The loops of the controllers: the ReplicaSet and ReplicationController controllers' owners and pods watched into reflector caches, a pass after every change (and
//! every 10 s), each owner's [`plan`] applied through the client.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams,
    PropagationPolicy,
};
use kube::Client;

use crate::client::Informers;

use super::deployment::{self, Rs, Write};
use super::gc;
use super::replicaset::{claim, plan, Claim, Kind, Owner};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

const MANAGER: &str = "replicaset-controller";
/// How long a write the cache has not shown yet holds its owner's next pass.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// Waits until every cache has its first list; returns from the loop if one never will (its
/// writer is gone: the process is ending).
macro_rules! all_ready {
    ($($store:expr),+ $(,)?) => {
        $(
            if $store.wait_until_ready().await.is_err() {
                return;
            }
        )+
    };
}

/// Writes asked for and not yet seen, per owner uid.
#[derive(Default)]
struct Expectations {
    creating: HashSet<String>,
    deleting: HashSet<String>,
    since: Option<Instant>,
}

/// Runs the controllers until the process ends (watches retry with backoff).
pub async fn run(inf: Arc<Informers>) {
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let rs_store = inf.cache::<ReplicaSet>(wake.clone());
    let rc_store = inf.cache::<ReplicationController>(wake.clone());
    let pod_store = inf.cache::<Pod>(wake.clone());
    let dep_store = inf.cache::<Deployment>(wake.clone());
    all_ready!(dep_store, rs_store, rc_store, pod_store);
    tracing::info!("replicaset and replicationcontroller controllers started");
    let mut expect: HashMap<String, Expectations> = HashMap::new();
    loop {
        let owners: Vec<Owner> = rs_store
            .state()
            .iter()
            .filter_map(|r| Owner::from_replica_set(r))
            .chain(
                rc_store
                    .state()
                    .iter()
                    .filter_map(|r| Owner::from_replication_controller(r)),
            )
            .collect();
        let pods = pod_store.state();
        let deployments = dep_store.state();
        let replica_sets = rs_store.state();
        deployments_pass(&client, &deployments, &replica_sets).await;
        pass(&client, &owners, &pods, &mut expect).await;
        // The next pass: at the next change, within 10 s, or when a rollout's progress
        // deadline passes.
        let now = chrono::Utc::now();
        let next = deployments
            .iter()
            .filter_map(|d| serde_json::to_value(d.as_ref()).ok())
            .filter_map(|d| deployment::until_deadline(&d, now))
            .fold(Duration::from_secs(10), Duration::min);
        let _ = tokio::time::timeout(next, wake.notified()).await;
    }
}

async fn pass(
    client: &Client,
    owners: &[Owner],
    pods: &[Arc<Pod>],
    expect: &mut HashMap<String, Expectations>,
) {
    let live: HashSet<&str> = owners.iter().map(|o| o.uid.as_str()).collect();
    expect.retain(|uid, _| live.contains(uid.as_str()));
    let now = chrono::Utc::now();
    for o in owners {
        let api: Api<Pod> = Api::namespaced(client.clone(), &o.namespace);
        let mut owned: Vec<&Pod> = Vec::new();
        let mut reowned = false;
        for p in pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(o.namespace.as_str()))
        {
            match claim(&o.uid, o.deleting, &o.selector, &p.metadata) {
                Claim::Owned => owned.push(p),
                Claim::Ignore => {}
                c => {
                    reowned = true;
                    let res = match c {
                        Claim::Adopt => reown(&api, &p.metadata, Some(o.owner_reference()), None),
                        _ => reown(&api, &p.metadata, None, Some(&o.uid)),
                    };
                    if let Err(err) = res.await {
                        tracing::debug!(pod = ?p.metadata.name, claim = ?c, error = %err, "claiming a pod");
                    }
                }
            }
        }
        // The next pass counts what was taken or let go, as the cache shows it then.
        if reowned {
            continue;
        }
        if let Some(e) = expect.get_mut(&o.uid) {
            let seen: HashSet<&str> = owned
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            e.creating.retain(|n| !seen.contains(n.as_str()));
            e.deleting.retain(|n| seen.contains(n.as_str()));
            let stale = e.since.is_some_and(|t| t.elapsed() > EXPECTATION_TTL);
            if (!e.creating.is_empty() || !e.deleting.is_empty()) && !stale {
                continue;
            }
            expect.remove(&o.uid);
        }
        let p = plan(o, &owned, now);
        let mut e = Expectations {
            since: Some(Instant::now()),
            ..Default::default()
        };
        for body in &p.create {
            let Ok(pod) = serde_json::from_value::<Pod>(body.clone()) else {
                continue;
            };
            match api.create(&PostParams::default(), &pod).await {
                Ok(made) => {
                    if let Some(n) = made.metadata.name {
                        e.creating.insert(n);
                    }
                }
                Err(err) => {
                    tracing::warn!(owner = %format!("{}/{}", o.namespace, o.name), error = %err, "creating a pod");
                    break;
                }
            }
        }
        for name in &p.delete {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    e.deleting.insert(name.clone());
                }
                Err(err) => tracing::debug!(pod = %name, error = %err, "deleting a pod"),
            }
        }
        if !e.creating.is_empty() || !e.deleting.is_empty() {
            expect.insert(o.uid.clone(), e);
        }
        if let Some(status) = p.status {
            let patch = serde_json::json!({ "status": status });
            let pp = PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            let res = match o.kind {
                Kind::ReplicaSet => Api::<ReplicaSet>::namespaced(client.clone(), &o.namespace)
                    .patch_status(&o.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                Kind::ReplicationController => {
                    Api::<ReplicationController>::namespaced(client.clone(), &o.namespace)
                        .patch_status(&o.name, &pp, &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                }
            };
            if let Err(err) = res {
                tracing::debug!(owner = %o.name, error = %err, "status");
            }
        }
    }
}

/// Each Deployment's plan, applied.
async fn deployments_pass(
    client: &Client,
    deployments: &[Arc<Deployment>],
    rss: &[Arc<ReplicaSet>],
) {
    tracing::debug!(
        deployments = deployments.len(),
        replica_sets = rss.len(),
        "deployments pass"
    );
    for d in deployments {
        let (Some(ns), Some(name), Some(uid)) = (
            d.metadata.namespace.as_deref(),
            d.metadata.name.as_deref(),
            d.metadata.uid.as_deref(),
        ) else {
            continue;
        };
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Ok(dv) = serde_json::to_value(d.as_ref()) else {
            continue;
        };
        let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
        let Ok(selector) = crate::api::selector::from_label_selector(&d.spec.selector) else {
            continue;
        };
        let me = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.to_string(),
            uid: uid.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut mine: Vec<Rs> = Vec::new();
        let mut reowned = false;
        for r in rss
            .iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(ns))
        {
            match claim(uid, false, &selector, &r.metadata) {
                Claim::Owned => mine.extend(
                    serde_json::to_value(r.as_ref())
                        .ok()
                        .map(|v| Rs::from_value(&v)),
                ),
                Claim::Ignore => {}
                c => {
                    reowned = true;
                    let res = match c {
                        Claim::Adopt => reown(&rs_api, &r.metadata, Some(me.clone()), None),
                        _ => reown(&rs_api, &r.metadata, None, Some(uid)),
                    };
                    if let Err(err) = res.await {
                        tracing::debug!(replicaset = ?r.metadata.name, claim = ?c, error = %err, "claiming a replica set");
                    }
                }
            }
        }
        if reowned {
            continue;
        }
        let pp = PatchParams {
            field_manager: Some("deployment-controller".into()),
            ..Default::default()
        };
        for w in deployment::plan(&dv, &mine) {
            let res = match w {
                Write::Create(body) => match serde_json::from_value::<ReplicaSet>(body) {
                    Ok(rs) => rs_api.create(&PostParams::default(), &rs).await.map(|_| ()),
                    Err(e) => {
                        tracing::warn!(deployment = %format!("{ns}/{name}"), error = %e, "a ReplicaSet the plan made does not parse");
                        Ok(())
                    }
                },
                Write::Scale { name: rs, replicas, annotations } => {
                    let mut patch = serde_json::json!({"spec": {"replicas": replicas}});
                    if let Some(a) = annotations {
                        patch["metadata"] = serde_json::json!({"annotations": a});
                    }
                    rs_api.patch(&rs, &pp, &Patch::Merge(&patch)).await.map(|_| ())
                }
                Write::Delete(rs) => rs_api.delete(&rs, &DeleteParams::background()).await.map(|_| ()),
                Write::Revision(rev) => Api::<Deployment>::namespaced(client.clone(), ns)
                    .patch(
                        name,
                        &pp,
                        &Patch::Merge(&serde_json::json!({"metadata": {"annotations": {deployment::REVISION: rev}}})),
                    )
                    .await
                    .map(|_| ()),
                Write::Status(status) => Api::<Deployment>::namespaced(client.clone(), ns)
                    .patch_status(name, &pp, &Patch::Merge(&serde_json::json!({ "status": status })))
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = res {
                tracing::debug!(deployment = %format!("{ns}/{name}"), error = %e, "deployment write");
            }
        }
    }
}

/// The Endpoints and EndpointSlice controllers: services and pods watched, every service with
/// a selector given the Endpoints and slices of [`super::endpoints::groups`].
pub async fn endpoints(inf: Arc<Informers>) {
    let client = inf.client().clone();
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let wake = Arc::new(tokio::sync::Notify::new());
    let svc_store = inf.cache::<Service>(wake.clone());
    let pod_store = inf.cache::<Pod>(wake.clone());
    let ep_store = inf.cache::<Endpoints>(wake.clone());
    let slice_store = inf.cache::<EndpointSlice>(wake.clone());
    all_ready!(svc_store, pod_store, ep_store, slice_store);
    tracing::info!("endpoints and endpointslice controllers started");
    loop {
        let pods = pod_store.state();
        let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let eps = ep_store.state();
        let slices = slice_store.state();
        let services = svc_store.state();
        for svc in &services {
            if super::endpoints::selector(svc).is_none() {
                continue;
            }
            if let Err(e) = sync_endpoints(&client, svc, &pods, &eps, &slices).await {
                tracing::debug!(service = ?svc.metadata.name, error = %e, "endpoints");
            }
        }
        // Endpoints this controller made whose Service is gone go too (upstream deletes them
        // with the Service; its slices go by their ownerReference). Endpoints someone else
        // wrote, without the controller's annotation, are left alone.
        let live: HashSet<(&str, &str)> = services
            .iter()
            .filter_map(|s| {
                Some((
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                ))
            })
            .collect();
        for ep in &eps {
            let (Some(ns), Some(name)) = (
                ep.metadata.namespace.as_deref(),
                ep.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let ours = ep.metadata.annotations.as_ref().is_some_and(|a| {
                a.contains_key("endpoints.kubernetes.io/last-change-trigger-time")
            });
            if ours && !live.contains(&(ns, name)) && ep.metadata.deletion_timestamp.is_none() {
                let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
                let dp = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: ep.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(e) = api.delete(name, &dp).await {
                    tracing::debug!(endpoints = %name, error = %e, "deleting leftover endpoints");
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}

async fn sync_endpoints(
    client: &Client,
    svc: &k8s_openapi::api::core::v1::Service,
    pods: &[&Pod],
    eps: &[Arc<k8s_openapi::api::core::v1::Endpoints>],
    slices: &[Arc<k8s_openapi::api::discovery::v1::EndpointSlice>],
) -> Result<(), kube::Error> {
    use super::endpoints as e;
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let groups = e::groups(svc, pods);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    // Endpoints: one object named as the service.
    let subsets = e::subsets(&groups, &ns);
    let labels = e::labels(svc);
    let current = eps.iter().find(|x| {
        x.metadata.namespace.as_deref() == Some(ns.as_str())
            && x.metadata.name.as_deref() == Some(name.as_str())
    });
    let same = current.is_some_and(|c| {
        serde_json::to_value(&c.subsets).unwrap_or_default() == subsets
            && c.metadata.labels.clone().unwrap_or_default() == labels
    });
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    if !same {
        let mut body = serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now}},
        });
        if !subsets.is_null() {
            body["subsets"] = subsets;
        }
        match current {
            None => {
                let ep: Endpoints =
                    serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &ep).await?;
            }
            Some(c) => {
                body["metadata"]["resourceVersion"] =
                    serde_json::json!(c.metadata.resource_version);
                let ep: Endpoints =
                    serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                api.replace(&name, &PostParams::default(), &ep).await?;
            }
        }
    }

    // EndpointSlices: one per group (one empty slice when there is no group).
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let mut mine: Vec<&EndpointSlice> = slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| {
            let l = s.metadata.labels.clone().unwrap_or_default();
            l.get(e::SERVICE_NAME) == Some(&name)
                && l.get(e::MANAGED_BY).map(String::as_str) == Some(e::SLICE_CONTROLLER)
        })
        .collect();
    mine.sort_by_key(|s| s.metadata.name.clone());
    let wanted: Vec<e::Group> = if groups.is_empty() {
        vec![e::Group::default()]
    } else {
        groups
    };
    let slice_labels = e::slice_labels(svc);
    let sapi: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    for (i, g) in wanted.iter().enumerate() {
        let (endpoints, ports) = e::slice_body(g, &ns);
        let mut body = serde_json::json!({
            "metadata": {
                "namespace": ns,
                "labels": slice_labels,
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                      "uid": uid, "controller": true, "blockOwnerDeletion": true}],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        match mine.get(i) {
            Some(cur) => {
                let same = serde_json::to_value(&cur.endpoints).unwrap_or_default()
                    == body["endpoints"]
                    && serde_json::to_value(&cur.ports).unwrap_or_default() == body["ports"]
                    && cur.metadata.labels.clone().unwrap_or_default() == slice_labels;
                if same {
                    continue;
                }
                let n = cur.metadata.name.clone().unwrap_or_default();
                body["metadata"]["name"] = serde_json::json!(n);
                body["metadata"]["resourceVersion"] =
                    serde_json::json!(cur.metadata.resource_version);
                let s: EndpointSlice =
                    serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                sapi.replace(&n, &PostParams::default(), &s).await?;
            }
            None => {
                body["metadata"]["generateName"] = serde_json::json!(format!("{name}-"));
                let s: EndpointSlice =
                    serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                sapi.create(&PostParams::default(), &s).await?;
            }
        }
    }
    for extra in mine.iter().skip(wanted.len()) {
        if let Some(n) = &extra.metadata.name {
            sapi.delete(n, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// The node lifecycle controller: nodes and their Leases watched, a pass every second (a
/// lease expires without an event), each node's [`super::nodelifecycle::plan`] applied, and
/// pods on NoExecute-tainted nodes evicted when their toleration runs out.
pub async fn node_lifecycle(inf: Arc<Informers>, grace: Duration) {
    let client = inf.client().clone();
    use super::nodelifecycle::{eviction_time, plan, Action};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    let wake = Arc::new(tokio::sync::Notify::new());
    let nodes = inf.cache::<Node>(wake.clone());
    let leases = crate::client::cache_of(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        Default::default(),
        wake.clone(),
    );
    let pods = inf.cache::<Pod>(wake.clone());
    all_ready!(nodes, leases, pods);
    tracing::info!("node lifecycle controller started");
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::seconds(40));
    let node_api: Api<Node> = Api::all(client.clone());
    let pp = PatchParams {
        field_manager: Some("node-controller".into()),
        ..Default::default()
    };
    loop {
        let now = chrono::Utc::now();
        let leases = leases.state();
        let pods = pods.state();
        for node in nodes.state() {
            let name = node.metadata.name.clone().unwrap_or_default();
            let lease = leases
                .iter()
                .find(|l| l.metadata.name.as_deref() == Some(name.as_str()));
            match plan(&node, lease.map(|l| l.as_ref()), now, grace) {
                Some(Action::Unreachable { status, taints }) => {
                    tracing::info!(node = %name, "node stopped posting its status: Unknown, tainted unreachable");
                    if let Err(e) = node_api
                        .patch_status(&name, &pp, &Patch::Merge(&status))
                        .await
                    {
                        tracing::warn!(node = %name, error = %e, "marking the node Unknown");
                        continue;
                    }
                    let _ = node_api
                        .patch(
                            &name,
                            &pp,
                            &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
                        )
                        .await;
                }
                Some(Action::Reachable { taints }) => {
                    tracing::info!(node = %name, "node is back: unreachable taints removed");
                    let _ = node_api
                        .patch(
                            &name,
                            &pp,
                            &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
                        )
                        .await;
                }
                None => {}
            }
            // Eviction from a NoExecute taint of ours.
            let Some(taint) = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .and_then(|t| {
                    t.iter().find(|t| {
                        t.key == super::nodelifecycle::UNREACHABLE && t.effect == "NoExecute"
                    })
                })
            else {
                continue;
            };
            for p in pods.iter().filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            }) {
                if eviction_time(p, taint).is_some_and(|t| t <= now) {
                    let ns = p.metadata.namespace.clone().unwrap_or_default();
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    tracing::info!(node = %name, pod = %format!("{ns}/{pod}"), "evicting a pod from an unreachable node");
                    let _ = Api::<Pod>::namespaced(client.clone(), &ns)
                        .delete(&pod, &DeleteParams::default())
                        .await;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

/// The service account controller's part that users see: every namespace that is not being
/// deleted has a ServiceAccount `default` (made again if it is deleted), as upstream's
/// ServiceAccountsController keeps it.
pub async fn service_accounts(inf: Arc<Informers>, root_ca: Option<String>) {
    let client = inf.client().clone();
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
    const ROOT_CA: &str = "kube-root-ca.crt";
    let wake = Arc::new(tokio::sync::Notify::new());
    let namespaces = inf.cache::<Namespace>(wake.clone());
    let accounts = inf.cache::<ServiceAccount>(wake.clone());
    let cas = crate::client::cache_of(
        Api::<ConfigMap>::all(client.clone()),
        kube::runtime::watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}")),
        wake.clone(),
    );
    all_ready!(namespaces, accounts, cas);
    loop {
        // The root CA publisher: `kube-root-ca.crt` in every namespace, kept as the CA.
        if let Some(ca) = &root_ca {
            let good: HashSet<String> = cas
                .state()
                .iter()
                .filter(|c| {
                    c.data
                        .as_ref()
                        .and_then(|d| d.get("ca.crt"))
                        .is_some_and(|d| d == ca)
                })
                .filter_map(|c| c.metadata.namespace.clone())
                .collect();
            for ns in namespaces.state() {
                let Some(name) = ns.metadata.name.clone() else {
                    continue;
                };
                if ns.metadata.deletion_timestamp.is_some() || good.contains(&name) {
                    continue;
                }
                let cm = serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA, "namespace": name, "annotations": {
                        "kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": {"ca.crt": ca},
                });
                let pp = PatchParams::apply("root-ca-cert-publisher").force();
                if let Err(e) = Api::<ConfigMap>::namespaced(client.clone(), &name)
                    .patch(ROOT_CA, &pp, &Patch::Apply(&cm))
                    .await
                {
                    tracing::debug!(namespace = %name, error = %e, "publishing the root CA");
                }
            }
        }
        let have: HashSet<String> = accounts
            .state()
            .iter()
            .filter(|a| a.metadata.name.as_deref() == Some("default"))
            .filter_map(|a| a.metadata.namespace.clone())
            .collect();
        for ns in namespaces.state() {
            let Some(name) = ns.metadata.name.clone() else {
                continue;
            };
            let terminating = ns.metadata.deletion_timestamp.is_some()
                || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
            if terminating || have.contains(&name) {
                continue;
            }
            let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "default", "namespace": name}
            }))
            .expect("a valid ServiceAccount");
            match Api::<ServiceAccount>::namespaced(client.clone(), &name)
                .create(&PostParams::default(), &sa)
                .await
            {
                Ok(_) => tracing::debug!(namespace = %name, "made the default service account"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::debug!(namespace = %name, error = %e, "default service account"),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}

/// The garbage collector ([`super::gc`]): the owners and dependents of the kinds below
/// watched, a pass after every change (and every 10 s, for writes that failed).
pub async fn garbage_collector(inf: Arc<Informers>) {
    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let deps = inf.cache::<Deployment>(wake.clone());
    let rss = inf.cache::<ReplicaSet>(wake.clone());
    let rcs = inf.cache::<ReplicationController>(wake.clone());
    let pods = inf.cache::<Pod>(wake.clone());
    let svcs = inf.cache::<Service>(wake.clone());
    let slices = inf.cache::<EndpointSlice>(wake.clone());
    let nodes = inf.cache::<Node>(wake.clone());
    let jobs = inf.cache::<k8s_openapi::api::batch::v1::Job>(wake.clone());
    let cjs = inf.cache::<k8s_openapi::api::batch::v1::CronJob>(wake.clone());
    let dss = inf.cache::<k8s_openapi::api::apps::v1::DaemonSet>(wake.clone());
    let stss = inf.cache::<k8s_openapi::api::apps::v1::StatefulSet>(wake.clone());
    let revs = inf.cache::<k8s_openapi::api::apps::v1::ControllerRevision>(wake.clone());
    all_ready!(deps, rss, rcs, pods, svcs, slices, nodes, jobs, cjs, dss, stss, revs);
    let kinds: Kinds = [
        kind::<Deployment>(true),
        kind::<ReplicaSet>(true),
        kind::<ReplicationController>(true),
        kind::<Pod>(true),
        kind::<Service>(true),
        kind::<EndpointSlice>(true),
        kind::<Node>(false),
        kind::<k8s_openapi::api::batch::v1::Job>(true),
        kind::<k8s_openapi::api::batch::v1::CronJob>(true),
        kind::<k8s_openapi::api::apps::v1::DaemonSet>(true),
        kind::<k8s_openapi::api::apps::v1::StatefulSet>(true),
        kind::<k8s_openapi::api::apps::v1::ControllerRevision>(true),
    ]
    .into_iter()
    .collect();
    let watched: Vec<&str> = kinds.keys().map(String::as_str).collect();
    tracing::info!("garbage collector started");
    loop {
        let mut items = Vec::new();
        items_of(&deps, &mut items);
        items_of(&rss, &mut items);
        items_of(&rcs, &mut items);
        items_of(&pods, &mut items);
        items_of(&svcs, &mut items);
        items_of(&slices, &mut items);
        items_of(&nodes, &mut items);
        items_of(&jobs, &mut items);
        items_of(&cjs, &mut items);
        items_of(&dss, &mut items);
        items_of(&stss, &mut items);
        items_of(&revs, &mut items);
        for a in gc::plan(&items, &watched) {
            if let Err(e) = collect(&client, &kinds, &a).await {
                tracing::debug!(action = ?a, error = %e, "garbage collection");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}

/// A kind's name, its resource and whether it is namespaced.
fn kind<K: crate::client::Cached>(namespaced: bool) -> (String, (ApiResource, bool)) {
    (
        K::kind(&()).to_string(),
        (ApiResource::erase::<K>(&()), namespaced),
    )
}

/// The collector's view of every object in `store`.
fn items_of<K: crate::client::Cached>(
    store: &crate::client::SharedStore<K>,
    out: &mut Vec<gc::Item>,
) {
    let (api_version, kind) = (K::api_version(&()), K::kind(&()));
    for o in store.state() {
        let m = o.meta();
        let (Some(name), Some(uid)) = (m.name.clone(), m.uid.clone()) else {
            continue;
        };
        out.push(gc::Item {
            this: gc::Ref {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                namespace: m.namespace.clone(),
                name,
                uid,
            },
            resource_version: m.resource_version.clone().unwrap_or_default(),
            owners: m
                .owner_references
                .iter()
                .flatten()
                .map(|r| gc::OwnerRef {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                    uid: r.uid.clone(),
                    block_owner_deletion: r.block_owner_deletion == Some(true),
                })
                .collect(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        });
    }
}

type Kinds = HashMap<String, (ApiResource, bool)>;

/// The API of `kind` objects in `ns`.
fn dynamic(
    client: &Client,
    kinds: &Kinds,
    kind: &str,
    ns: Option<&str>,
) -> Option<Api<DynamicObject>> {
    let (ar, namespaced) = kinds.get(kind)?;
    Some(match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        (true, None) => return None,
        (false, _) => Api::all_with(client.clone(), ar),
    })
}

/// Whether every owner in `absent` is really gone (not found, or found with another uid), by
/// a live read: the caches are separate watches, and one may not show an owner yet.
async fn all_gone(
    client: &Client,
    kinds: &Kinds,
    ns: Option<&str>,
    absent: &[gc::OwnerRef],
) -> kube::Result<bool> {
    for o in absent {
        let Some(api) = dynamic(client, kinds, &o.kind, ns) else {
            return Ok(false);
        };
        if let Some(live) = api.get_opt(&o.name).await? {
            if live.metadata.uid.as_deref() == Some(o.uid.as_str()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Applies one of the collector's writes.
async fn collect(client: &Client, kinds: &Kinds, a: &gc::Action) -> kube::Result<()> {
    let pp = PatchParams {
        field_manager: Some("generic-garbage-collector".into()),
        ..Default::default()
    };
    match a {
        gc::Action::Delete {
            this,
            policy,
            absent,
        } => {
            let ns = this.namespace.as_deref();
            if !all_gone(client, kinds, ns, absent).await? {
                return Ok(());
            }
            let Some(api) = dynamic(client, kinds, &this.kind, ns) else {
                return Ok(());
            };
            let dp = DeleteParams {
                propagation_policy: Some(match policy {
                    gc::Policy::Background => PropagationPolicy::Background,
                    gc::Policy::Foreground => PropagationPolicy::Foreground,
                }),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(this.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            tracing::debug!(kind = %this.kind, name = %this.name, "collecting");
            api.delete(&this.name, &dp).await.map(|_| ())
        }
        gc::Action::Unown {
            this,
            resource_version,
            uids,
            absent,
        } => {
            let ns = this.namespace.as_deref();
            if !all_gone(client, kinds, ns, absent).await? {
                return Ok(());
            }
            let Some(api) = dynamic(client, kinds, &this.kind, ns) else {
                return Ok(());
            };
            // The current references, less the ones that go, under the resourceVersion they
            // were read at (a merge patch replaces the whole list).
            let Some(cur) = api.get_opt(&this.name).await? else {
                return Ok(());
            };
            if cur.metadata.resource_version.as_deref() != Some(resource_version.as_str()) {
                return Ok(());
            }
            let kept: Vec<_> = cur
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| !uids.contains(&o.uid))
                .collect();
            let patch = meta_patch(resource_version, "ownerReferences", &kept);
            api.patch(&this.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        gc::Action::Finalize {
            this,
            resource_version,
            finalizers,
            finalizer,
        } => {
            let Some(api) = dynamic(client, kinds, &this.kind, this.namespace.as_deref()) else {
                return Ok(());
            };
            tracing::debug!(kind = %this.kind, name = %this.name, finalizer, "finalized");
            let patch = meta_patch(resource_version, "finalizers", finalizers);
            api.patch(&this.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    }
}

/// Takes `take` as the controller of the object with metadata `m`, or lets go of the owner
/// `release`: its references rewritten under the resourceVersion they were read at (a
/// concurrent change wins; the next pass looks again).
async fn reown<K: crate::client::Cached + serde::Serialize>(
    api: &Api<K>,
    m: &ObjectMeta,
    take: Option<OwnerReference>,
    release: Option<&str>,
) -> kube::Result<()> {
    let Some(name) = m.name.as_deref() else {
        return Ok(());
    };
    let mut refs: Vec<OwnerReference> = m.owner_references.clone().unwrap_or_default();
    if let Some(uid) = release {
        refs.retain(|r| r.uid != uid);
    }
    refs.extend(take);
    let patch = meta_patch(
        m.resource_version.as_deref().unwrap_or_default(),
        "ownerReferences",
        &refs,
    );
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &pp, &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// A merge patch setting the list `field` of `metadata` (null when empty: the field goes),
/// under `resource_version` (a precondition: a concurrent change makes it fail).
fn meta_patch<T: serde::Serialize>(
    resource_version: &str,
    field: &str,
    items: &[T],
) -> serde_json::Value {
    let list = if items.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!(items)
    };
    serde_json::json!({"metadata": {"resourceVersion": resource_version, field: list}})
}
