//! The loops of the Job, CronJob and DaemonSet controllers: their objects and what they own
//! watched into caches, each object's plan ([`super::job`], [`super::cronjob`],
//! [`super::daemonset`]) applied through the client after every change, at the time a plan
//! asks to look again, and every 10 s. Each records upstream's events on its objects.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::Client;
use serde_json::{json, Value};

use super::{cronjob, daemonset, job, volumes};
use crate::client::{Informers, SharedStore};

/// How long creations the cache has not shown yet hold their owner's next plan.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// Names created per owner uid and not yet seen in the cache.
#[derive(Default)]
struct Pending(HashMap<String, (HashSet<String>, Instant)>);

impl Pending {
    /// Whether `uid` still waits for its creations (those in `seen` no longer count).
    fn blocks(&mut self, uid: &str, seen: &HashSet<&str>) -> bool {
        let Some((names, since)) = self.0.get_mut(uid) else {
            return false;
        };
        names.retain(|n| !seen.contains(n.as_str()));
        if names.is_empty() || since.elapsed() > EXPECTATION_TTL {
            self.0.remove(uid);
            return false;
        }
        true
    }

    fn expect(&mut self, uid: &str, names: HashSet<String>) {
        if !names.is_empty() {
            self.0.insert(uid.to_string(), (names, Instant::now()));
        }
    }

    fn keep(&mut self, live: &HashSet<String>) {
        self.0.retain(|uid, _| live.contains(uid));
    }
}

/// Waits for the first list of every cache; false if one never comes (the process ends).
async fn ready<K: crate::client::Cached>(s: &SharedStore<K>) -> bool {
    s.wait_until_ready().await.is_ok()
}

fn controlled_by(m: &ObjectMeta) -> Option<&str> {
    m.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Records an event on an object, as `component`.
async fn emit(
    client: &Client,
    obj: (&str, &str, &ObjectMeta),
    component: &str,
    (kind, reason, message): (&str, &str, &str),
) {
    let (api_version, obj_kind, m) = obj;
    let ns = m.namespace.clone().unwrap_or_default();
    let name = m.name.clone().unwrap_or_default();
    let now = crate::api::time::rfc3339(chrono::Utc::now());
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"kind": obj_kind, "namespace": ns, "name": name, "uid": m.uid,
            "apiVersion": api_version, "resourceVersion": m.resource_version},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": component, "reportingInstance": component,
    });
    let Ok(ev) = serde_json::from_value::<Event>(ev) else {
        return;
    };
    if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::debug!(error = %e, "event");
    }
}

fn manager(name: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(name.into()),
        ..Default::default()
    }
}

/// Creates `body` as a pod; its name.
async fn create_pod(api: &Api<Pod>, body: Value) -> kube::Result<String> {
    let pod: Pod = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
    let made = api.create(&PostParams::default(), &pod).await?;
    Ok(made.metadata.name.unwrap_or_default())
}

/// Deletes a pod; a pod already gone is not an error.
async fn delete_pod(api: &Api<Pod>, name: &str) -> kube::Result<bool> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// An owner's identity for its events: apiVersion, kind, metadata.
type Owner<'a> = (&'a str, &'a str, &'a ObjectMeta);

/// Creates `body` as a pod of `me` and records `SuccessfulCreate` (`Created pod: NAME`) or
/// `FailedCreate` on it, as the Job and DaemonSet controllers word them; the name if made.
async fn create_and_tell(
    client: &Client,
    api: &Api<Pod>,
    me: Owner<'_>,
    component: &str,
    body: Value,
) -> Option<String> {
    match create_pod(api, body).await {
        Ok(n) => {
            let msg = format!("Created pod: {n}");
            emit(client, me, component, ("Normal", "SuccessfulCreate", &msg)).await;
            Some(n)
        }
        Err(e) => {
            let msg = format!("Error creating: {e}");
            emit(client, me, component, ("Warning", "FailedCreate", &msg)).await;
            None
        }
    }
}

/// Deletes pod `n` of `me` and records `SuccessfulDelete` with `message` (a pod already gone
/// says nothing).
async fn delete_and_tell(
    client: &Client,
    api: &Api<Pod>,
    me: Owner<'_>,
    component: &str,
    n: &str,
    message: String,
) {
    match delete_pod(api, n).await {
        Ok(true) => {
            emit(
                client,
                me,
                component,
                ("Normal", "SuccessfulDelete", &message),
            )
            .await
        }
        Ok(false) => {}
        Err(e) => tracing::debug!(pod = %n, error = %e, "deleting a pod"),
    }
}

/// The Job controller (and the TTL-after-finished controller for Jobs).
pub async fn jobs(inf: Arc<Informers>) {
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let job_store = inf.cache::<Job>(wake.clone());
    let pod_store = inf.cache::<Pod>(wake.clone());
    if !(ready(&job_store).await && ready(&pod_store).await) {
        return;
    }
    tracing::info!("job controller started");
    let mut pending = Pending::default();
    // The resourceVersion each Job had when its status was last written, until the cache
    // shows the write: a plan made on the older status would count from stale figures.
    let mut written: HashMap<String, (String, Instant)> = HashMap::new();
    loop {
        let pods = pod_store.state();
        let jobs = job_store.state();
        let mut by_owner: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in &pods {
            if let Some(uid) = controlled_by(&p.metadata) {
                by_owner.entry(uid).or_default().push(p);
            }
        }
        let live: HashSet<String> = jobs.iter().filter_map(|j| j.metadata.uid.clone()).collect();
        written.retain(|uid, _| live.contains(uid));
        pending.keep(&live);
        let mut next = Duration::from_secs(10);
        for j in &jobs {
            let (Some(ns), Some(name), Some(uid)) = (
                j.metadata.namespace.as_deref(),
                j.metadata.name.as_deref(),
                j.metadata.uid.as_deref(),
            ) else {
                continue;
            };
            let owned = by_owner.get(uid).cloned().unwrap_or_default();
            let seen: HashSet<&str> = owned
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            if pending.blocks(uid, &seen) {
                continue;
            }
            let rv = j.metadata.resource_version.clone().unwrap_or_default();
            if let Some((old, at)) = written.get(uid) {
                if *old == rv && at.elapsed() < EXPECTATION_TTL {
                    continue;
                }
                written.remove(uid);
            }
            let Ok(v) = serde_json::to_value(j.as_ref()) else {
                continue;
            };
            let plan = job::plan(&v, &owned, chrono::Utc::now());
            if let Some(n) = plan.next {
                next = next.min(n + Duration::from_millis(100));
            }
            let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
            let me = ("batch/v1", "Job", &j.metadata);
            let mut made = HashSet::new();
            for w in plan.writes {
                match w {
                    job::Write::CreatePod(body) => {
                        match create_and_tell(&client, &pods_api, me, "job-controller", body).await
                        {
                            Some(n) => {
                                made.insert(n);
                            }
                            None => break,
                        }
                    }
                    job::Write::DeletePod(n) => {
                        let msg = format!("Deleted pod: {n}");
                        delete_and_tell(&client, &pods_api, me, "job-controller", &n, msg).await;
                    }
                    job::Write::Status(st) => {
                        match jobs_api
                            .patch_status(
                                name,
                                &manager("job-controller"),
                                &Patch::Merge(&json!({"status": st})),
                            )
                            .await
                        {
                            Ok(_) => {
                                written.insert(uid.to_string(), (rv.clone(), Instant::now()));
                            }
                            Err(e) => tracing::debug!(job = %name, error = %e, "job status"),
                        }
                    }
                    job::Write::Event(kind, reason, msg) => {
                        emit(&client, me, "job-controller", (kind, reason, &msg)).await;
                    }
                    job::Write::DeleteJob => {
                        let dp = DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Foreground),
                            ..Default::default()
                        };
                        if let Err(e) = jobs_api.delete(name, &dp).await {
                            tracing::debug!(job = %name, error = %e, "deleting a finished job");
                        }
                    }
                }
            }
            pending.expect(uid, made);
        }
        let _ = tokio::time::timeout(next, wake.notified()).await;
    }
}

/// The CronJob controller.
pub async fn cronjobs(inf: Arc<Informers>) {
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let cj_store = inf.cache::<CronJob>(wake.clone());
    let job_store = inf.cache::<Job>(wake.clone());
    if !(ready(&cj_store).await && ready(&job_store).await) {
        return;
    }
    tracing::info!("cronjob controller started");
    let mut pending = Pending::default();
    // Events already recorded (cronjob uid, reason, message): each is said once.
    let mut said: HashSet<(String, &'static str, String)> = HashSet::new();
    loop {
        let jobs = job_store.state();
        let cjs = cj_store.state();
        let mut by_owner: HashMap<&str, Vec<Value>> = HashMap::new();
        for j in &jobs {
            if let (Some(uid), Ok(v)) =
                (controlled_by(&j.metadata), serde_json::to_value(j.as_ref()))
            {
                by_owner.entry(uid).or_default().push(v);
            }
        }
        let live: HashSet<String> = cjs.iter().filter_map(|c| c.metadata.uid.clone()).collect();
        said.retain(|(uid, _, _)| live.contains(uid));
        pending.keep(&live);
        let mut next = Duration::from_secs(10);
        for c in &cjs {
            let (Some(ns), Some(name), Some(uid)) = (
                c.metadata.namespace.as_deref(),
                c.metadata.name.as_deref(),
                c.metadata.uid.as_deref(),
            ) else {
                continue;
            };
            let owned: Vec<&Value> = by_owner
                .get(uid)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let seen: HashSet<&str> = owned
                .iter()
                .filter_map(|j| j["metadata"]["name"].as_str())
                .collect();
            if pending.blocks(uid, &seen) {
                continue;
            }
            let Ok(v) = serde_json::to_value(c.as_ref()) else {
                continue;
            };
            let plan = cronjob::plan(&v, &owned, chrono::Utc::now());
            if let Some(n) = plan.next {
                next = next.min(n);
            }
            let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
            let me = ("batch/v1", "CronJob", &c.metadata);
            let mut made = HashSet::new();
            // A Job that could not be made leaves the status as it was: the slot is tried
            // again at the next pass.
            let mut failed = false;
            for w in plan.writes {
                match w {
                    cronjob::Write::CreateJob(body) => {
                        let Ok(j) = serde_json::from_value::<Job>(body) else {
                            continue;
                        };
                        let jname = j.metadata.name.clone().unwrap_or_default();
                        match jobs_api.create(&PostParams::default(), &j).await {
                            Ok(_) => {
                                let msg = format!("Created job {jname}");
                                emit(
                                    &client,
                                    me,
                                    "cronjob-controller",
                                    ("Normal", "SuccessfulCreate", &msg),
                                )
                                .await;
                                made.insert(jname);
                            }
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => {
                                failed = true;
                                let msg = format!("Error creating job: {e}");
                                emit(
                                    &client,
                                    me,
                                    "cronjob-controller",
                                    ("Warning", "FailedCreate", &msg),
                                )
                                .await;
                            }
                        }
                    }
                    cronjob::Write::DeleteJob(n) => {
                        if let Err(e) = jobs_api.delete(&n, &DeleteParams::background()).await {
                            tracing::debug!(job = %n, error = %e, "deleting a cronjob's job");
                        }
                    }
                    cronjob::Write::Status(_) if failed => {}
                    cronjob::Write::Status(st) => {
                        if let Err(e) = Api::<CronJob>::namespaced(client.clone(), ns)
                            .patch_status(
                                name,
                                &manager("cronjob-controller"),
                                &Patch::Merge(&json!({"status": st})),
                            )
                            .await
                        {
                            tracing::debug!(cronjob = %name, error = %e, "cronjob status");
                        }
                    }
                    cronjob::Write::Event(kind, reason, msg) => {
                        if said.insert((uid.to_string(), reason, msg.clone())) {
                            emit(&client, me, "cronjob-controller", (kind, reason, &msg)).await;
                        }
                    }
                }
            }
            pending.expect(uid, made);
        }
        let _ = tokio::time::timeout(next, wake.notified()).await;
    }
}

/// The DaemonSet controller.
pub async fn daemonsets(inf: Arc<Informers>) {
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let ds_store = inf.cache::<DaemonSet>(wake.clone());
    let pod_store = inf.cache::<Pod>(wake.clone());
    let node_store = inf.cache::<Node>(wake.clone());
    if !(ready(&ds_store).await && ready(&pod_store).await && ready(&node_store).await) {
        return;
    }
    tracing::info!("daemonset controller started");
    let mut pending = Pending::default();
    loop {
        let pods = pod_store.state();
        let nodes = node_store.state();
        let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let all = ds_store.state();
        let mut by_owner: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in &pods {
            if let Some(uid) = controlled_by(&p.metadata) {
                by_owner.entry(uid).or_default().push(p);
            }
        }
        pending.keep(&all.iter().filter_map(|d| d.metadata.uid.clone()).collect());
        for d in &all {
            let (Some(ns), Some(name), Some(uid)) = (
                d.metadata.namespace.as_deref(),
                d.metadata.name.as_deref(),
                d.metadata.uid.as_deref(),
            ) else {
                continue;
            };
            let owned = by_owner.get(uid).cloned().unwrap_or_default();
            let seen: HashSet<&str> = owned
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            if pending.blocks(uid, &seen) {
                continue;
            }
            let Ok(v) = serde_json::to_value(d.as_ref()) else {
                continue;
            };
            let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let me = ("apps/v1", "DaemonSet", &d.metadata);
            let mut made = HashSet::new();
            for w in daemonset::plan(&v, &nodes, &owned, chrono::Utc::now()) {
                match w {
                    daemonset::Write::CreatePod { node, body } => {
                        let made_one =
                            create_and_tell(&client, &pods_api, me, "daemonset-controller", body)
                                .await;
                        match made_one {
                            Some(n) => {
                                made.insert(n);
                            }
                            None => {
                                tracing::debug!(node = %node, "a daemon pod could not be made");
                                break;
                            }
                        }
                    }
                    daemonset::Write::DeletePod(n) => {
                        let msg = format!("Deleted pod: {n}");
                        delete_and_tell(&client, &pods_api, me, "daemonset-controller", &n, msg)
                            .await;
                    }
                    daemonset::Write::Status(st) => {
                        if let Err(e) = Api::<DaemonSet>::namespaced(client.clone(), ns)
                            .patch_status(
                                name,
                                &manager("daemonset-controller"),
                                &Patch::Merge(&json!({"status": st})),
                            )
                            .await
                        {
                            tracing::debug!(daemonset = %name, error = %e, "daemonset status");
                        }
                    }
                }
            }
            pending.expect(uid, made);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}

/// The persistent volume controller, the local-path provisioner and the protection of
/// claims and volumes in use ([`super::volumes`]).
pub async fn volumes(inf: Arc<Informers>) {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let claims = inf.cache::<PersistentVolumeClaim>(wake.clone());
    let vols = inf.cache::<PersistentVolume>(wake.clone());
    let classes = inf.cache::<StorageClass>(wake.clone());
    let nodes = inf.cache::<Node>(wake.clone());
    let pods = inf.cache::<Pod>(wake.clone());
    if !(ready(&claims).await
        && ready(&vols).await
        && ready(&classes).await
        && ready(&nodes).await
        && ready(&pods).await)
    {
        return;
    }
    tracing::info!("persistentvolume controller and local-path provisioner started");
    // Events already recorded (claim uid, reason, message): each is said once.
    let mut said: HashSet<(String, &'static str, String)> = HashSet::new();
    loop {
        let (cs, vs, ss, ns, ps) = (
            claims.state(),
            vols.state(),
            classes.state(),
            nodes.state(),
            pods.state(),
        );
        let c: Vec<&PersistentVolumeClaim> = cs.iter().map(|x| x.as_ref()).collect();
        let v: Vec<&PersistentVolume> = vs.iter().map(|x| x.as_ref()).collect();
        let s: Vec<&StorageClass> = ss.iter().map(|x| x.as_ref()).collect();
        let n: Vec<&Node> = ns.iter().map(|x| x.as_ref()).collect();
        let p: Vec<&Pod> = ps.iter().map(|x| x.as_ref()).collect();
        let live: HashSet<String> = c.iter().filter_map(|c| c.metadata.uid.clone()).collect();
        said.retain(|(uid, _, _)| live.contains(uid));
        let pp = manager("persistentvolume-binder-controller");
        for w in volumes::plan(&c, &v, &s, &n, &p) {
            let res = match w {
                volumes::Write::Patch { on, patch, status } => match on {
                    volumes::Target::Claim(ns, name) => {
                        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                        if status {
                            api.patch_status(&name, &pp, &Patch::Merge(&patch))
                                .await
                                .map(|_| ())
                        } else {
                            api.patch(&name, &pp, &Patch::Merge(&patch))
                                .await
                                .map(|_| ())
                        }
                    }
                    volumes::Target::Volume(name) => {
                        let api: Api<PersistentVolume> = Api::all(client.clone());
                        if status {
                            api.patch_status(&name, &pp, &Patch::Merge(&patch))
                                .await
                                .map(|_| ())
                        } else {
                            api.patch(&name, &pp, &Patch::Merge(&patch))
                                .await
                                .map(|_| ())
                        }
                    }
                },
                volumes::Write::CreateVolume(body) => {
                    match serde_json::from_value::<PersistentVolume>(body) {
                        Ok(pv) => Api::<PersistentVolume>::all(client.clone())
                            .create(&PostParams::default(), &pv)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(kube::Error::SerdeError(e)),
                    }
                }
                volumes::Write::DeleteVolume(name) => Api::<PersistentVolume>::all(client.clone())
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
                volumes::Write::Event {
                    on,
                    uid,
                    kind,
                    reason,
                    message,
                } => {
                    if said.insert((uid.clone(), reason, message.clone())) {
                        if let (volumes::Target::Claim(..), Some(cl)) = (
                            &on,
                            c.iter()
                                .find(|c| c.metadata.uid.as_deref() == Some(uid.as_str())),
                        ) {
                            emit(
                                &client,
                                ("v1", "PersistentVolumeClaim", &cl.metadata),
                                "persistentvolume-controller",
                                (kind, reason, &message),
                            )
                            .await;
                        }
                    }
                    Ok(())
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "persistent volume write");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}

/// The StatefulSet controller ([`super::statefulset`]).
pub async fn statefulsets(inf: Arc<Informers>) {
    use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let client = inf.client().clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let sets = inf.cache::<StatefulSet>(wake.clone());
    let pod_store = inf.cache::<Pod>(wake.clone());
    let rev_store = inf.cache::<ControllerRevision>(wake.clone());
    let claim_store = inf.cache::<PersistentVolumeClaim>(wake.clone());
    if !(ready(&sets).await
        && ready(&pod_store).await
        && ready(&rev_store).await
        && ready(&claim_store).await)
    {
        return;
    }
    tracing::info!("statefulset controller started");
    let mut pending = Pending::default();
    const ME: &str = "statefulset-controller";
    loop {
        let pods = pod_store.state();
        let revs: Vec<Value> = rev_store
            .state()
            .iter()
            .filter_map(|r| serde_json::to_value(r.as_ref()).ok())
            .collect();
        let claims = claim_store.state();
        let all = sets.state();
        pending.keep(&all.iter().filter_map(|d| d.metadata.uid.clone()).collect());
        for s in &all {
            let (Some(ns), Some(name), Some(uid)) = (
                s.metadata.namespace.as_deref(),
                s.metadata.name.as_deref(),
                s.metadata.uid.as_deref(),
            ) else {
                continue;
            };
            let owned: Vec<&Pod> = pods
                .iter()
                .filter(|p| controlled_by(&p.metadata) == Some(uid))
                .map(|p| p.as_ref())
                .collect();
            let seen: HashSet<&str> = owned
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            if pending.blocks(uid, &seen) {
                continue;
            }
            let my_revs: Vec<&Value> = revs
                .iter()
                .filter(|r| {
                    r["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|o| {
                            o.iter().any(|o| o["uid"] == uid && o["controller"] == true)
                        })
                })
                .collect();
            let claim_names: std::collections::BTreeSet<String> = claims
                .iter()
                .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            let Ok(v) = serde_json::to_value(s.as_ref()) else {
                continue;
            };
            let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let me = ("apps/v1", "StatefulSet", &s.metadata);
            let mut made = HashSet::new();
            for w in
                super::statefulset::plan(&v, &owned, &my_revs, &claim_names, chrono::Utc::now())
            {
                use super::statefulset::Write as W;
                match w {
                    W::CreateRevision(body) => {
                        let res = match serde_json::from_value::<ControllerRevision>(body) {
                            Ok(r) => Api::<ControllerRevision>::namespaced(client.clone(), ns)
                                .create(&PostParams::default(), &r)
                                .await
                                .map(|_| ()),
                            Err(e) => Err(kube::Error::SerdeError(e)),
                        };
                        if let Err(e) = res {
                            tracing::debug!(statefulset = %name, error = %e, "revision");
                        }
                    }
                    W::CreateClaim(body) => {
                        let cname = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                        let pod = cname
                            .split_once('-')
                            .map(|(_, p)| p)
                            .unwrap_or("")
                            .to_string();
                        let res = match serde_json::from_value::<PersistentVolumeClaim>(body) {
                            Ok(c) => Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                                .create(&PostParams::default(), &c)
                                .await
                                .map(|_| ()),
                            Err(e) => Err(kube::Error::SerdeError(e)),
                        };
                        match res {
                            Ok(()) => {
                                let msg = format!(
                                    "create Claim {cname} Pod {pod} in StatefulSet {name} success"
                                );
                                emit(&client, me, ME, ("Normal", "SuccessfulCreate", &msg)).await;
                            }
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => {
                                let msg = format!("create Claim {cname} for Pod {pod} in StatefulSet {name} failed error: {e}");
                                emit(&client, me, ME, ("Warning", "FailedCreate", &msg)).await;
                            }
                        }
                    }
                    W::CreatePod(body) => {
                        let pname = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                        match create_pod(&pods_api, body).await {
                            Ok(n) => {
                                let msg =
                                    format!("create Pod {n} in StatefulSet {name} successful");
                                emit(&client, me, ME, ("Normal", "SuccessfulCreate", &msg)).await;
                                made.insert(n);
                            }
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => {
                                let msg = format!(
                                    "create Pod {pname} in StatefulSet {name} failed error: {e}"
                                );
                                emit(&client, me, ME, ("Warning", "FailedCreate", &msg)).await;
                            }
                        }
                    }
                    W::DeletePod(n) => {
                        let msg = format!("delete Pod {n} in StatefulSet {name} successful");
                        delete_and_tell(&client, &pods_api, me, ME, &n, msg).await;
                    }
                    W::Status(st) => {
                        if let Err(e) = Api::<StatefulSet>::namespaced(client.clone(), ns)
                            .patch_status(name, &manager(ME), &Patch::Merge(&json!({"status": st})))
                            .await
                        {
                            tracing::debug!(statefulset = %name, error = %e, "statefulset status");
                        }
                    }
                }
            }
            pending.expect(uid, made);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), wake.notified()).await;
    }
}
