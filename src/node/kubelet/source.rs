//! The node on an API server: its pods come from the API (the pods bound to it, by the field
//! selector `spec.nodeName=<node>`, as the kubelet watches them), with the ConfigMaps, Secrets
//! and Services they use; what the workers see goes back as `pods/status` patches and Events,
//! and a pod being deleted is stopped within its grace period and then removed from the API.
//!
//! The sync loop stays the one of static pods: [`ApiSource::snapshot`] yields the same
//! [`Manifests`] a directory does, and the loop merges the two. The caches are kube-runtime
//! reflectors over the agent's client; each change wakes the loop through its pipe.
//!
//! Secrets are cached by a watch when the credentials may list them (the admin's, as `knode
//! up`'s agent has). A node join token may only get the Secrets that pods bound to a node
//! use: the agent then reads those of its pods one by one, again every 30 s ([`SecretGets`]).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{reflector::Store, watcher};
use kube::Client;
use serde_json::{json, Value};

use super::manifests::{Manifests, PodManifest};
use super::pod::PodView;
use super::NodeState;

/// The `file` of a pod from the API (static pods have their manifest's path).
pub const API_SOURCE: &str = "api";
const MANAGER: &str = "knode-agent";

/// The cluster's CA (PEM) from a kubeconfig's current cluster: the kubelet API trusts the
/// client certificates it signed.
pub fn cluster_ca(kubeconfig: &Path) -> Result<Vec<u8>, crate::node::error::NodeError> {
    use base64::Engine;
    let bad =
        |m: String| crate::node::error::NodeError::failed(format!("{}: {m}", kubeconfig.display()));
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let ctx_name = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| bad(format!("no context {ctx_name:?}")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| bad(format!("no cluster {cluster_name:?}")))?;
    if let Some(d) = &cluster.certificate_authority_data {
        return base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map_err(|e| bad(format!("certificate-authority-data: {e}")));
    }
    if let Some(f) = &cluster.certificate_authority {
        return std::fs::read(f).map_err(|e| bad(format!("certificate-authority {f}: {e}")));
    }
    Err(bad("the cluster has no certificate authority".into()))
}

/// The annotation that marks a mirror pod (its value: the static pod's hash, its UID).
pub const MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether the API's pod is the mirror of a static pod.
pub fn is_mirror(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR))
}

/// A static pod's mirror pod, as the kubelet creates it: `<name>-<node>`, bound to the node
/// and owned by it, its spec the static pod's, annotated with the static pod's hash.
fn mirror_pod(m: &PodManifest, node: &str, node_uid: &str) -> Value {
    let mut pod = serde_json::to_value(&m.pod).unwrap_or_default();
    pod["status"] = Value::Null;
    let meta = &mut pod["metadata"];
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generateName",
        "managedFields",
        "ownerReferences",
        "deletionTimestamp",
    ] {
        if let Some(o) = meta.as_object_mut() {
            o.remove(f);
        }
    }
    meta["name"] = json!(format!("{}-{node}", m.name));
    meta["namespace"] = json!(m.namespace);
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    let a = &mut meta["annotations"];
    a[MIRROR] = json!(m.uid);
    a["kubernetes.io/config.hash"] = json!(m.uid);
    a["kubernetes.io/config.source"] = json!("file");
    a["kubernetes.io/config.seen"] = json!(crate::api::time::time(chrono::Utc::now()));
    meta["ownerReferences"] = json!([{
        "apiVersion": "v1",
        "kind": "Node",
        "name": node,
        "uid": node_uid,
        "controller": true,
    }]);
    pod["spec"]["nodeName"] = json!(node);
    if let Some(o) = pod.as_object_mut() {
        o.remove("status");
    }
    pod
}

/// How this node mounts claim `c`: the directory of the volume it is bound to (a volume
/// whose claimRef names another claim does not count), or why not.
fn claim(
    c: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
    vols: &[Arc<k8s_openapi::api::core::v1::PersistentVolume>],
) -> super::volumes::Claim {
    use super::volumes::Claim;
    let name = c.metadata.name.clone().unwrap_or_default();
    let Some(vn) = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
    else {
        return Claim::Pending(format!("persistentvolumeclaim {name:?} is not bound yet"));
    };
    let Some(v) = vols
        .iter()
        .find(|v| v.metadata.name.as_deref() == Some(vn.as_str()))
    else {
        return Claim::Pending(format!("persistentvolume {vn:?} not found"));
    };
    let spec = v.spec.clone().unwrap_or_default();
    // The volume must name this claim: namespace, name, and uid when it has one (a claim
    // may not take a volume meant for a claim in another namespace by naming it).
    let mine = spec.claim_ref.as_ref().is_some_and(|r| {
        r.namespace == c.metadata.namespace
            && r.name == c.metadata.name
            && (r.uid.is_none() || r.uid == c.metadata.uid)
    });
    if !mine {
        return Claim::Pending(format!("persistentvolume {vn:?} is bound to another claim"));
    }
    // A local-path volume's directory is this node's own, named after its claim: the path
    // written on the volume is not trusted (it comes from a Node annotation).
    let provisioned = v
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
        .is_some_and(|p| p == crate::api::LOCAL_PATH_PROVISIONER);
    if provisioned {
        return Claim::Local {
            dir: format!(
                "pvc-{}_{}_{}",
                c.metadata.uid.as_deref().unwrap_or(""),
                c.metadata.namespace.as_deref().unwrap_or(""),
                name
            ),
        };
    }
    match (spec.host_path, spec.local) {
        (Some(h), _) => Claim::Bound {
            path: h.path,
            kind: h.type_.unwrap_or_default(),
        },
        (None, Some(l)) => Claim::Bound {
            path: l.path,
            kind: "Directory".into(),
        },
        _ => Claim::Pending(format!(
            "persistentvolume {vn:?}: only hostPath and local volumes can be mounted on a knode node"
        )),
    }
}

/// Whether a pod came from the API server (not from the manifests directory).
pub fn from_api(m: &PodManifest) -> bool {
    m.file == Path::new(API_SOURCE)
}

/// The API's objects this node needs, kept by watches.
pub struct ApiSource {
    pods: Store<Pod>,
    config_maps: Store<ConfigMap>,
    /// All Secrets when the credentials may list them; otherwise those of this node's pods,
    /// one GET each.
    secrets: Result<Store<Secret>, Arc<SecretGets>>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    claims: Store<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    volumes: Store<k8s_openapi::api::core::v1::PersistentVolume>,
    /// Whether the first list of the pods (and what they use) is in: until then the agent
    /// neither removes pod directories nor releases addresses (they may be API pods').
    synced: Arc<std::sync::atomic::AtomicBool>,
    tokens: Arc<Tokens>,
}

/// How often a Secret fetched on its own is fetched again (a missing one: every
/// [`SECRET_RETRY`]).
const SECRET_TTL: Duration = Duration::from_secs(30);
const SECRET_RETRY: Duration = Duration::from_secs(2);

/// A Secret fetched on its own: what the API gave (none: not found yet, or refused), when.
struct Fetched {
    secret: Option<Arc<Secret>>,
    at: Option<std::time::Instant>,
    asking: bool,
}

/// The Secrets of this node's pods, one GET each, for credentials that may not list Secrets
/// (a node may read only the Secrets pods use): fetched as soon as a pod that uses one is
/// seen, then again every [`SECRET_TTL`], as the kubelet's TTL secret manager does; a change
/// wakes the sync loop.
pub struct SecretGets {
    client: Client,
    runtime: tokio::runtime::Handle,
    notify: Arc<tokio::sync::Notify>,
    have: std::sync::Mutex<BTreeMap<(String, String), Fetched>>,
}

impl SecretGets {
    /// Keeps `wanted` (and only it), fetching what is due.
    fn want(self: &Arc<Self>, wanted: std::collections::BTreeSet<(String, String)>) {
        {
            let mut have = self.have.lock().expect("secrets");
            have.retain(|k, _| wanted.contains(k));
            for k in wanted {
                have.entry(k).or_insert(Fetched {
                    secret: None,
                    at: None,
                    asking: false,
                });
            }
        }
        self.fetch_due();
    }

    /// Fetches the Secrets never fetched, missing for [`SECRET_RETRY`], or fetched
    /// [`SECRET_TTL`] ago.
    fn fetch_due(self: &Arc<Self>) {
        let due: Vec<(String, String)> = {
            let mut have = self.have.lock().expect("secrets");
            have.iter_mut()
                .filter(|(_, f)| {
                    !f.asking
                        && f.at.is_none_or(|at| {
                            at.elapsed()
                                >= if f.secret.is_some() {
                                    SECRET_TTL
                                } else {
                                    SECRET_RETRY
                                }
                        })
                })
                .map(|(k, f)| {
                    f.asking = true;
                    k.clone()
                })
                .collect()
        };
        for (ns, name) in due {
            let me = self.clone();
            self.runtime.spawn(async move {
                let got = Api::<Secret>::namespaced(me.client.clone(), &ns)
                    .get_opt(&name)
                    .await;
                let changed = {
                    let mut have = me.have.lock().expect("secrets");
                    let Some(f) = have.get_mut(&(ns.clone(), name.clone())) else {
                        return;
                    };
                    f.asking = false;
                    f.at = Some(std::time::Instant::now());
                    let new = match got {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(secret = %format!("{ns}/{name}"), error = %e, "reading a pod's Secret");
                            None
                        }
                    };
                    let rv = |s: &Option<Arc<Secret>>| {
                        s.as_ref().map(|s| s.metadata.resource_version.clone())
                    };
                    let new = new.map(Arc::new);
                    let changed = rv(&f.secret) != rv(&new);
                    f.secret = new;
                    changed
                };
                if changed {
                    me.notify.notify_one();
                }
            });
        }
    }

    fn secrets(&self) -> Vec<((String, String), Arc<Secret>)> {
        self.have
            .lock()
            .expect("secrets")
            .iter()
            .filter_map(|(k, f)| Some((k.clone(), f.secret.clone()?)))
            .collect()
    }
}

/// (pod uid, audience).
type TokenKey = (String, String);

/// A token being asked for, issued, or refused.
enum TokenState {
    Asking,
    Issued(String),
    Refused(String),
}

/// The ServiceAccount tokens of this node's pods: asked for (a TokenRequest bound to the
/// pod, as the kubelet asks) as soon as a pod that projects one is seen, on the runtime;
/// a pod's worker waits for its token when it makes the volume. Kept while the pod exists.
struct Tokens {
    client: Client,
    runtime: tokio::runtime::Handle,
    have: std::sync::Mutex<BTreeMap<TokenKey, TokenState>>,
    issued: std::sync::Condvar,
}

impl Tokens {
    /// Starts asking for `pod`'s token for `audience` unless it is issued or being asked.
    fn ask(self: &Arc<Self>, pod: &Pod, audience: &str, expiration: i64) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), audience.to_string());
        {
            let mut have = self.have.lock().expect("tokens");
            if matches!(
                have.get(&key),
                Some(TokenState::Asking | TokenState::Issued(_))
            ) {
                return;
            }
            have.insert(key.clone(), TokenState::Asking);
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let req: Result<k8s_openapi::api::authentication::v1::TokenRequest, _> =
            serde_json::from_value(json!({"spec": {
                "audiences": if audience.is_empty() { json!(null) } else { json!([audience]) },
                "expirationSeconds": expiration,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid},
            }}));
        let me = self.clone();
        self.runtime.spawn(async move {
            let api = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
                me.client.clone(),
                &ns,
            );
            let state = match req {
                Err(e) => TokenState::Refused(e.to_string()),
                Ok(req) => match api
                    .create_token_request(&sa, &PostParams::default(), &req)
                    .await
                {
                    Ok(r) => TokenState::Issued(r.status.and_then(|s| s.token).unwrap_or_default()),
                    Err(e) => TokenState::Refused(format!(
                        "requesting the token of service account {ns}/{sa}: {e}"
                    )),
                },
            };
            me.have.lock().expect("tokens").insert(key, state);
            me.issued.notify_all();
        });
    }

    /// The tokens `pod` projects, asked for.
    fn ask_all(self: &Arc<Self>, pod: &Pod) {
        for t in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
        {
            self.ask(
                pod,
                t.audience.as_deref().unwrap_or(""),
                t.expiration_seconds.unwrap_or(3600),
            );
        }
    }

    /// Forgets the tokens of pods that are gone.
    fn keep(&self, uids: &std::collections::HashSet<String>) {
        self.have
            .lock()
            .expect("tokens")
            .retain(|(uid, _), _| uids.contains(uid));
    }
}

/// The pod's worker, making the volume, waits here (up to 10 s) for the token.
struct TokenWaiter(Arc<Tokens>);

impl super::volumes::TokenSource for TokenWaiter {
    fn token(&self, pod: &Pod, audience: &str, expiration: i64) -> Result<String, String> {
        let t = &self.0;
        let key = (
            pod.metadata.uid.clone().unwrap_or_default(),
            audience.to_string(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        t.ask(pod, audience, expiration);
        let mut have = t.have.lock().expect("tokens");
        loop {
            match have.get(&key) {
                Some(TokenState::Issued(tok)) => return Ok(tok.clone()),
                Some(TokenState::Refused(e)) => {
                    let e = e.clone();
                    // Asked again at the next attempt.
                    have.remove(&key);
                    return Err(e);
                }
                Some(TokenState::Asking) => {}
                None => {
                    drop(have);
                    t.ask(pod, audience, expiration);
                    have = t.have.lock().expect("tokens");
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(
                    "its service account token: no answer from the API server in 10 s".into(),
                );
            }
            have = t.issued.wait_timeout(have, left).expect("tokens").0;
        }
    }
}

impl ApiSource {
    /// Starts the watches (on the current tokio runtime); every change writes to `wake`.
    pub async fn start(client: &Client, node: &str, wake: OwnedFd) -> ApiSource {
        let notify = Arc::new(tokio::sync::Notify::new());
        let pods = crate::client::cache_of(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            notify.clone(),
        );
        let config_maps = crate::client::cache(client, notify.clone());
        let services = crate::client::cache(client, notify.clone());
        let slices = crate::client::cache(client, notify.clone());
        let claims = crate::client::cache(client, notify.clone());
        let volumes = crate::client::cache(client, notify.clone());
        let secrets = match Api::<Secret>::all(client.clone())
            .list_metadata(&ListParams::default().limit(1))
            .await
        {
            Ok(_) => Ok(crate::client::cache(client, notify.clone())),
            Err(e) => {
                tracing::info!(error = %e, "these credentials may not list Secrets: the Secrets of this node's pods are read one by one");
                let gets = Arc::new(SecretGets {
                    client: client.clone(),
                    runtime: tokio::runtime::Handle::current(),
                    notify: notify.clone(),
                    have: Default::default(),
                });
                let g = gets.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(SECRET_RETRY).await;
                        g.fetch_due();
                    }
                });
                Err(gets)
            }
        };
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (pods, cms, svcs, secrets, synced) = (
                pods.clone(),
                config_maps.clone(),
                services.clone(),
                secrets.clone().ok(),
                synced.clone(),
            );
            let (pvcs, pvs) = (claims.clone(), volumes.clone());
            let notify = notify.clone();
            tokio::spawn(async move {
                let _ = pods.wait_until_ready().await;
                let _ = cms.wait_until_ready().await;
                let _ = svcs.wait_until_ready().await;
                let _ = pvcs.wait_until_ready().await;
                let _ = pvs.wait_until_ready().await;
                if let Some(s) = &secrets {
                    let _ = s.wait_until_ready().await;
                }
                synced.store(true, std::sync::atomic::Ordering::SeqCst);
                notify.notify_one();
            });
        }
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                let _ = rustix::io::write(&wake, b"a");
            }
        });
        let tokens = Arc::new(Tokens {
            client: client.clone(),
            runtime: tokio::runtime::Handle::current(),
            have: Default::default(),
            issued: std::sync::Condvar::new(),
        });
        ApiSource {
            pods,
            config_maps,
            secrets,
            services,
            slices,
            claims,
            volumes,
            synced,
            tokens,
        }
    }

    /// Whether the pods bound to this node are known (the first list is in).
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The objects as the sync loop takes them: the pods to run, and apart the pods being
    /// deleted (their worker stops with the grace period these carry).
    pub fn snapshot(&self) -> (Manifests, BTreeMap<String, Arc<PodManifest>>) {
        let mut m = Manifests::default();
        let mut deleting = BTreeMap::new();
        let mut uids = std::collections::HashSet::new();
        for p in self.pods.state() {
            // A mirror pod stands for a static pod of this node: it is not run.
            if is_mirror(&p) {
                continue;
            }
            let Some(pm) = manifest(&p) else { continue };
            uids.insert(pm.uid.clone());
            if p.metadata.deletion_timestamp.is_some() {
                deleting.insert(pm.uid.clone(), Arc::new(pm));
            } else if !finished(&p) {
                self.tokens.ask_all(&p);
                m.pods.push(pm);
            } else {
                m.finished.insert(pm.uid.clone());
            }
        }
        if self.synced() {
            self.tokens.keep(&uids);
        }
        m.tokens = Some(Arc::new(TokenWaiter(self.tokens.clone())));
        for c in self.config_maps.state() {
            let (ns, name) = key(&c.metadata);
            m.config_maps.insert((ns, name), c);
        }
        let vols = self.volumes.state();
        for c in self.claims.state() {
            m.claims.insert(key(&c.metadata), claim(&c, &vols));
        }
        if self.synced() {
            m.volume_names = Some(
                vols.iter()
                    .filter_map(|v| v.metadata.name.clone())
                    .collect(),
            );
        }
        match &self.secrets {
            Ok(store) => {
                for s in store.state() {
                    let (ns, name) = key(&s.metadata);
                    m.secrets.insert((ns, name), s);
                }
            }
            Err(gets) => {
                let wanted = m
                    .pods
                    .iter()
                    .flat_map(|p| {
                        let v = serde_json::to_value(&p.pod).unwrap_or_default();
                        crate::api::pod::secret_names(&v)
                            .into_iter()
                            .map(|n| (p.namespace.clone(), n))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                gets.want(wanted);
                m.secrets.extend(gets.secrets());
            }
        }
        let slices = self.slices.state();
        for s in self.services.state() {
            let kind = s.spec.as_ref().and_then(|s| s.type_.as_deref());
            if !matches!(kind, None | Some("ClusterIP") | Some("NodePort")) {
                continue;
            }
            match crate::api::service::spec::from_service(&s, PathBuf::from(API_SOURCE)) {
                Ok(spec) => {
                    let key = (spec.namespace.clone(), spec.name.clone());
                    if let Some(eps) = slice_endpoints(&spec, &slices) {
                        m.endpoints.insert(key, eps);
                    }
                    m.services.push(spec)
                }
                Err(e) => m.errors.push(e.to_string()),
            }
        }
        (m, deleting)
    }

    /// The pods bound to this node, as the API has them.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }
}

fn key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// A service's endpoints per port (in the spec's order) from its EndpointSlices, or None when
/// it has none yet (its endpoints then come from this node's pods).
fn slice_endpoints(
    spec: &crate::api::service::spec::ServiceSpec,
    slices: &[Arc<EndpointSlice>],
) -> Option<Vec<Vec<crate::api::service::Endpoint>>> {
    let mine: Vec<&EndpointSlice> = slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.metadata.namespace.as_deref() == Some(spec.namespace.as_str()))
        .filter(|s| s.address_type == "IPv4")
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&spec.name)
        })
        .collect();
    if mine.is_empty() {
        return None;
    }
    let per_port = spec
        .ports
        .iter()
        .map(|p| {
            let mut eps: Vec<crate::api::service::Endpoint> = mine
                .iter()
                .flat_map(|s| {
                    let port = s
                        .ports
                        .iter()
                        .flatten()
                        .find(|sp| sp.name.as_deref().unwrap_or("") == p.name)
                        .and_then(|sp| sp.port)
                        .and_then(|n| u16::try_from(n).ok());
                    s.endpoints.iter().flatten().filter_map(move |e| {
                        let ip: std::net::Ipv4Addr = e.addresses.first()?.parse().ok()?;
                        // A loopback endpoint (a server listening on 127.0.0.1 only) is no
                        // backend a pod can reach; the API server refuses such addresses.
                        if ip.is_loopback() || ip.is_unspecified() {
                            return None;
                        }
                        Some(crate::api::service::Endpoint {
                            ip,
                            port: port?,
                            ready: e.conditions.as_ref().and_then(|c| c.ready) != Some(false),
                        })
                    })
                })
                .collect();
            eps.sort();
            eps.dedup();
            eps
        })
        .collect();
    Some(per_port)
}

/// A pod the API reports finished before this agent saw it run (after a restart of the
/// node, say): it is not started again.
fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    ) && p
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .is_some()
        && p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Always")
}

/// Pod spec fields only the scheduler reads.
const SCHEDULER_FIELDS: &[&str] = &[
    "tolerations",
    "nodeSelector",
    "affinity",
    "priorityClassName",
    "preemptionPolicy",
    "topologySpreadConstraints",
    "schedulingGates",
];

/// A pod from the API as a manifest; its UID must be a plain name (it names directories).
fn manifest(p: &Pod) -> Option<PodManifest> {
    let (namespace, name) = key(&p.metadata);
    let uid = p.metadata.uid.clone()?;
    if crate::node::safefs::check_name(&uid).is_err() || namespace.is_empty() || name.is_empty() {
        return None;
    }
    let mut raw = serde_json::to_value(p).ok()?;
    // The scheduler's fields did their work when the pod was bound here: not the agent's to
    // report as unsupported (the API server also adds default tolerations to every pod).
    if let Some(spec) = raw["spec"].as_object_mut() {
        for f in SCHEDULER_FIELDS {
            spec.remove(*f);
        }
    }
    let (warnings, invalid) = super::manifests::check_pod(&raw, p);
    let mut pod = p.clone();
    pod.status = None;
    pod.metadata.managed_fields = None;
    Some(PodManifest {
        pod,
        namespace,
        name,
        uid,
        file: PathBuf::from(API_SOURCE),
        warnings,
        invalid,
    })
}

/// The pod's status as the kubelet reports it.
pub fn status(v: &PodView, host_ip: Option<&str>) -> Value {
    let pod = super::api::to_pod(v);
    let mut s = serde_json::to_value(pod.status.unwrap_or_default()).unwrap_or_default();
    if let Some(ip) = host_ip {
        s["hostIP"] = json!(ip);
        s["hostIPs"] = json!([{ "ip": ip }]);
    }
    s
}

/// A merge patch from what was last sent to `new`: fields that went away become null.
fn status_patch(old: Option<&Value>, new: &Value) -> Value {
    let mut patch = new.clone();
    if let (Some(Value::Object(o)), Value::Object(p)) = (old, &mut patch) {
        for k in o.keys() {
            if !p.contains_key(k) {
                p.insert(k.clone(), Value::Null);
            }
        }
    }
    json!({ "status": patch })
}

/// How long the same event counts up one Event (client-go's EventCorrelator: ten minutes).
const SERIES: std::time::Duration = std::time::Duration::from_secs(600);

/// What was published of each pod (by UID).
#[derive(Default)]
struct Published {
    status: HashMap<String, Value>,
    /// Events posted (the view's `event_seq` then).
    events: HashMap<String, u64>,
    /// Events posted in the last ten minutes by (pod UID, reason, message): the Event's
    /// name, its count and when it was first posted. The same event again within that
    /// time raises the count of the one posted (client-go's EventCorrelator), so that a
    /// probe failing every second does not make an Event a second.
    series: HashMap<(String, String, String), (String, i32, std::time::Instant)>,
    /// The Node's UID (mirror pods' owner).
    node_uid: Option<String>,
    /// Static pods whose mirror pod could not be made (by UID): why, and when (tried again
    /// after [`MIRROR_RETRY`]; warned about when the reason changes).
    mirror_failed: HashMap<String, (String, std::time::Instant)>,
}

/// Publishes the pods' statuses and events, and removes the API objects of pods whose
/// deletion finished, until the process ends. `wake` hears the loop's passes.
pub async fn publish(
    client: Client,
    source: Arc<ApiSource>,
    state: Arc<RwLock<NodeState>>,
    run_dir: PathBuf,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut done = Published::default();
    loop {
        if let Err(e) = publish_once(&client, &source, &state, &run_dir, &mut done).await {
            tracing::warn!(error = %e, "publishing pod statuses");
        }
        // At once on a change; at least every second (a container's state changes too).
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

async fn publish_once(
    client: &Client,
    source: &ApiSource,
    state: &RwLock<NodeState>,
    run_dir: &Path,
    done: &mut Published,
) -> Result<(), kube::Error> {
    let (all, node, host_ip, loaded): (Vec<PodView>, String, Option<String>, bool) = {
        let st = state.read().expect("state");
        (
            st.pods
                .values()
                .map(|v| v.lock().expect("view").clone())
                .collect(),
            st.node.name.clone(),
            Some(super::node::node_ip()),
            st.loaded,
        )
    };
    let (views, statics): (Vec<PodView>, Vec<PodView>) =
        all.into_iter().partition(|v| from_api(&v.manifest));
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let api_pods = source.pods();
    let by_uid: HashMap<&str, &Pod> = api_pods
        .iter()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, &**p)))
        .collect();
    // Once both the API's pods and the static pods are known (an agent starting would
    // otherwise delete the mirror pods it is about to find again).
    let mirrors = if source.synced() && loaded {
        sync_mirrors(client, &api_pods, &statics, &node, done).await?
    } else {
        Vec::new()
    };
    let targets = views
        .iter()
        .filter_map(|v| Some((v, *by_uid.get(v.manifest.uid.as_str())?)))
        .chain(mirrors.iter().map(|(v, p)| (*v, &**p)));
    for (v, p) in targets {
        // The API object's UID: the pod's own, or its mirror pod's.
        let Some(uid) = p.metadata.uid.as_deref() else {
            continue;
        };
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &v.manifest.namespace);
        let new = status(v, host_ip.as_deref());
        if done.status.get(uid) != Some(&new) {
            let mut patch = status_patch(done.status.get(uid), &new);
            // Conditions the scheduler set (PodScheduled) stay unless the agent has its own.
            if let Some(c) = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .filter(|_| new.get("conditions").is_none())
            {
                patch["status"]["conditions"] = json!(c);
            }
            patch["metadata"] = json!({ "uid": uid });
            match pods.patch_status(name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    done.status.insert(uid.to_string(), new);
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        let posted = done.events.get(uid).copied().unwrap_or(0);
        if v.event_seq > posted {
            let fresh = ((v.event_seq - posted) as usize).min(v.events.len());
            let events: Api<CoreEvent> = Api::namespaced(client.clone(), &v.manifest.namespace);
            for e in &v.events[v.events.len() - fresh..] {
                let key = (uid.to_string(), e.reason.clone(), e.message.clone());
                let now = std::time::Instant::now();
                if let Some((name, count, _)) = done
                    .series
                    .get_mut(&key)
                    .filter(|(_, _, first)| now.duration_since(*first) < SERIES)
                {
                    *count += 1;
                    let patch = json!({
                        "count": *count,
                        "lastTimestamp": crate::api::time::time(e.time),
                    });
                    match events
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => continue,
                        // Gone (deleted, or expired): posted anew below.
                        Err(kube::Error::Api(a)) if a.code == 404 => {}
                        Err(err) => {
                            tracing::warn!(pod = %v.manifest.name, error = %err, "counting an event");
                            continue;
                        }
                    }
                }
                let ev = event(v, p, e, &node);
                match events.create(&PostParams::default(), &ev).await {
                    Ok(made) => {
                        let name = made.metadata.name.unwrap_or_default();
                        done.series.insert(key, (name, 1, now));
                    }
                    Err(err) => {
                        tracing::warn!(pod = %v.manifest.name, error = %err, "posting an event")
                    }
                }
            }
            done.events.insert(uid.to_string(), v.event_seq);
        }
    }
    // Pods whose deletion finished here (no worker, no pod directory): their objects go.
    let running: std::collections::HashSet<&str> =
        views.iter().map(|v| v.manifest.uid.as_str()).collect();
    for p in &api_pods {
        let (Some(uid), Some(_)) = (
            p.metadata.uid.as_deref(),
            p.metadata.deletion_timestamp.as_ref(),
        ) else {
            continue;
        };
        if running.contains(uid)
            || crate::node::safefs::check_name(uid).is_err()
            || run_dir.join("pods").join(uid).exists()
        {
            continue;
        }
        let (ns, name) = key(&p.metadata);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let live: std::collections::HashSet<&str> = by_uid.keys().copied().collect();
    done.status.retain(|u, _| live.contains(u.as_str()));
    done.events.retain(|u, _| live.contains(u.as_str()));
    done.series
        .retain(|(u, _, _), (_, _, first)| live.contains(u.as_str()) && first.elapsed() < SERIES);
    Ok(())
}

/// How long after a failure a mirror pod is tried again.
const MIRROR_RETRY: Duration = Duration::from_secs(10);

/// Keeps a mirror pod in the API for each static pod of this node: made when missing,
/// replaced when its static pod changed (its hash differs), deleted when its static pod is
/// gone. Returns the static pods with their mirror pods.
async fn sync_mirrors<'a>(
    client: &Client,
    api_pods: &[Arc<Pod>],
    statics: &'a [PodView],
    node: &str,
    done: &mut Published,
) -> Result<Vec<(&'a PodView, Arc<Pod>)>, kube::Error> {
    let mirrors: Vec<&Arc<Pod>> = api_pods.iter().filter(|p| is_mirror(p)).collect();
    let mut out = Vec::new();
    let mut kept = std::collections::HashSet::new();
    for v in statics.iter().filter(|v| !v.deleting) {
        let (ns, name) = (
            v.manifest.namespace.clone(),
            format!("{}-{node}", v.manifest.name),
        );
        let found = mirrors
            .iter()
            .find(|p| key(&p.metadata) == (ns.clone(), name.clone()));
        if let Some(p) = found {
            let hash = p.metadata.annotations.as_ref().and_then(|a| a.get(MIRROR));
            if p.metadata.deletion_timestamp.is_none() && hash == Some(&v.manifest.uid) {
                kept.insert(p.metadata.uid.clone());
                out.push((v, (*p).clone()));
            }
            // Otherwise outdated or being deleted: it goes, and a later pass makes it again.
            continue;
        }
        if done
            .mirror_failed
            .get(&v.manifest.uid)
            .is_some_and(|(_, at)| at.elapsed() < MIRROR_RETRY)
        {
            continue;
        }
        let node_uid = match &done.node_uid {
            Some(u) => u.clone(),
            None => {
                let n = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
                    .get(node)
                    .await?;
                let u = n.metadata.uid.unwrap_or_default();
                done.node_uid = Some(u.clone());
                u
            }
        };
        let made = serde_json::from_value::<Pod>(mirror_pod(&v.manifest, node, &node_uid))
            .map_err(|e| e.to_string());
        let created = match made {
            Ok(pod) => match Api::<Pod>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &pod)
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) => Err(e.message),
                Err(e) => return Err(e),
            },
            Err(e) => Err(e),
        };
        match created {
            Ok(()) => {
                done.mirror_failed.remove(&v.manifest.uid);
            }
            Err(e) => {
                let before = done.mirror_failed.get(&v.manifest.uid).map(|(m, _)| m);
                if before != Some(&e) {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "the static pod has no mirror pod in the API");
                }
                done.mirror_failed
                    .insert(v.manifest.uid.clone(), (e, std::time::Instant::now()));
            }
        }
    }
    let statics: std::collections::HashSet<&str> =
        statics.iter().map(|v| v.manifest.uid.as_str()).collect();
    done.mirror_failed
        .retain(|u, _| statics.contains(u.as_str()));
    for p in mirrors {
        let Some(uid) = p.metadata.uid.clone() else {
            continue;
        };
        if kept.contains(&Some(uid.clone())) || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (ns, name) = key(&p.metadata);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match Api::<Pod>::namespaced(client.clone(), &ns)
            .delete(&name, &dp)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A core v1 Event about the pod, from the kubelet.
fn event(v: &PodView, p: &Pod, e: &super::pod::Event, node: &str) -> CoreEvent {
    let time = crate::api::time::time(e.time);
    let nanos = e.time.timestamp_nanos_opt().unwrap_or(0);
    // The API object: the pod itself, or a static pod's mirror pod.
    let name = p.metadata.name.as_deref().unwrap_or(&v.manifest.name);
    let uid = p.metadata.uid.as_deref().unwrap_or(&v.manifest.uid);
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}.{nanos:x}"),
            "namespace": v.manifest.namespace,
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": v.manifest.namespace,
            "name": name,
            "uid": uid,
            "resourceVersion": p.metadata.resource_version,
        },
        "reason": e.reason,
        "message": e.message,
        "type": e.kind,
        "source": { "component": "kubelet", "host": node },
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    }))
    .expect("a valid Event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_patch_clears_what_went_away() {
        let old = json!({"phase": "Pending", "reason": "X", "podIP": "10.0.0.2"});
        let new = json!({"phase": "Running", "podIP": "10.0.0.2"});
        assert_eq!(
            status_patch(Some(&old), &new),
            json!({"status": {"phase": "Running", "podIP": "10.0.0.2", "reason": null}})
        );
        assert_eq!(
            status_patch(None, &new),
            json!({"status": {"phase": "Running", "podIP": "10.0.0.2"}})
        );
    }

    #[test]
    fn pods_from_the_api_keep_their_uid_and_lose_their_status() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "3f1c2a9e-0000-4000-8000-000000000001"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending"},
        }))
        .unwrap();
        let m = manifest(&p).unwrap();
        assert!(from_api(&m));
        assert_eq!(m.uid, "3f1c2a9e-0000-4000-8000-000000000001");
        assert!(m.pod.status.is_none());
        assert!(m.invalid.is_none(), "{:?}", m.invalid);
        // The scheduler's fields are no warnings on a bound pod.
        let mut t = p.clone();
        t.spec.as_mut().unwrap().tolerations = Some(vec![Default::default()]);
        assert!(manifest(&t).unwrap().warnings.is_empty());
        // A UID that is not a plain name never becomes a directory.
        let mut bad = p.clone();
        bad.metadata.uid = Some("../x".into());
        assert!(manifest(&bad).is_none());
    }

    #[test]
    fn a_mirror_pod_is_named_for_its_node_bound_and_owned_by_it() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "etcd", "namespace": "kube-system", "uid": "static-hash",
                "resourceVersion": "7", "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        let m = PodManifest {
            pod: p,
            namespace: "kube-system".into(),
            name: "etcd".into(),
            uid: "static-hash".into(),
            file: PathBuf::from("/etc/knode/manifests/etcd.yaml"),
            warnings: vec![],
            invalid: None,
        };
        let v = mirror_pod(&m, "node-1", "node-uid");
        assert_eq!(v["metadata"]["name"], "etcd-node-1");
        assert_eq!(v["metadata"]["namespace"], "kube-system");
        assert!(
            v["metadata"].get("uid").is_none() && v["metadata"].get("resourceVersion").is_none()
        );
        assert_eq!(v["metadata"]["annotations"][MIRROR], "static-hash");
        assert_eq!(v["metadata"]["annotations"]["a"], "b");
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "node-uid", "controller": true}])
        );
        assert_eq!(v["spec"]["nodeName"], "node-1");
        assert!(v.get("status").is_none());
        let pod: Pod = serde_json::from_value(v).unwrap();
        assert!(is_mirror(&pod));
    }

    #[test]
    fn endpoint_slices_give_each_service_port_its_endpoints() {
        let spec = crate::api::service::spec::from_service(
            &serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.9",
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            }))
            .unwrap(),
            PathBuf::from(API_SOURCE),
        )
        .unwrap();
        let slice = |name: &str, ns: &str, eps: Value| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4",
                    "endpoints": eps,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                }))
                .unwrap(),
            )
        };
        assert_eq!(slice_endpoints(&spec, &[]), None);
        let slices = [
            slice(
                "web-a",
                "default",
                json!([{"addresses": ["10.244.1.2"], "conditions": {"ready": true}}]),
            ),
            slice(
                "web-b",
                "default",
                json!([{"addresses": ["10.244.0.3"], "conditions": {"ready": false}}]),
            ),
            slice("web-c", "other", json!([{"addresses": ["10.9.9.9"]}])),
            slice("web-d", "default", json!([{"addresses": ["127.0.0.1"]}])),
        ];
        let eps = slice_endpoints(&spec, &slices).unwrap();
        let got: Vec<(String, u16, bool)> = eps[0]
            .iter()
            .map(|e| (e.ip.to_string(), e.port, e.ready))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.0.3".to_string(), 8080, false),
                ("10.244.1.2".to_string(), 8080, true)
            ]
        );
    }

    #[test]
    fn a_finished_pod_is_not_run_again_unless_it_always_restarts() {
        let p = |policy: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "j", "namespace": "default", "uid": "u1"},
                "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "busybox"}]},
                "status": {"phase": "Succeeded", "startTime": "2026-01-01T00:00:00Z"},
            }))
            .unwrap()
        };
        assert!(finished(&p("Never")));
        assert!(!finished(&p("Always")));
    }
}
