//! One pod's life, in a worker thread of its own: sandbox, images, init containers in order,
//! app containers, restarts with the kubelet's back-off, status, and teardown.
//!
//! The worker sleeps in poll(2) on its containers' exit descriptors (shim pidfds: an exit
//! wakes it at once), a wake pipe (stop requests), the pulls in flight and the next back-off
//! deadline. Its state is persisted in `<run-dir>/pods/<uid>/pod.json`, so a restarted agent
//! adopts running containers.
//!
//! It decides; the node below it acts: images, sandboxes, containers, the pod network and the
//! clock are reached only through the traits of [`super::cri`], so `pod/tests.rs` runs its
//! state machine against in-memory fakes. Image pulls run on threads of their own: a stop
//! request never waits for one.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

use super::cri::{Clock, ContainerState, ImageService, PodNetwork, RuntimeService};
use super::manifests::PodManifest;
use super::volumes::ConfigError;
use crate::api::pod::{PodPhase, RestartPolicy, TerminatedReason, WaitingReason};
use crate::node::container::{PodContainer, PodContainerSpec};
use crate::node::safefs::Beneath;
use crate::node::sandbox::SandboxOptions;

/// Kubelet restart back-off: 10 s, doubling, at most 5 min; reset after 10 min of running.
pub const BACKOFF_START: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What the agent shares with every pod worker.
pub struct NodeContext {
    /// The node below the worker: images, sandboxes and containers, the pod network (none:
    /// pods get a loopback-only network namespace) and the clock.
    pub images: Arc<dyn ImageService>,
    pub runtime: Arc<dyn RuntimeService>,
    pub network: Option<Arc<dyn PodNetwork>>,
    pub clock: Arc<dyn Clock>,
    pub root: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The three state roots again, through which every path built from a pod's names is
    /// made and removed (never outside them, never through a symlink or a mount).
    pub run: Beneath,
    pub state: Beneath,
    pub logs: Beneath,
    pub node_name: String,
    /// ConfigMaps and Secrets from the manifests directory (shared, replaced as a whole).
    pub objects: std::sync::RwLock<Arc<super::volumes::Objects>>,
    /// Written to when a pod's address or readiness changes (the agent recomputes endpoints).
    pub changed: OwnedFd,
    /// Resource limits (none with `--cgroups=disabled`).
    pub cgroups: Option<Arc<crate::node::cgroup::Cgroups>>,
    /// Runs container probes.
    pub prober: Arc<dyn super::cri::Prober>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CState {
    Waiting {
        reason: WaitingReason,
        message: String,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated {
        exit_code: i32,
        reason: TerminatedReason,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
        /// What the container left in its terminationMessagePath (or, with
        /// FallbackToLogsOnError and a failure, the end of its log).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerView {
    /// The running process and its shim state (for exec), not shown in the API.
    #[serde(skip)]
    pub running: Option<(i32, PathBuf)>,
    /// The running container's cgroup (for usage figures).
    #[serde(skip)]
    pub cgroup: Option<String>,
    pub name: String,
    pub image: String,
    pub init: bool,
    pub state: CState,
    pub last_state: Option<CState>,
    pub restart_count: u32,
    /// Running and past its startup probe (if any).
    pub started: bool,
    /// Started and past its readiness probe (if any): it takes Service traffic.
    pub ready: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// The pod as the API shows it; the worker keeps it current.
#[derive(Clone, Debug)]
pub struct PodView {
    pub manifest: Arc<PodManifest>,
    pub phase: PodPhase,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub containers: Vec<ContainerView>,
    pub created: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub events: Vec<Event>,
    pub deleting: bool,
    pub node_name: String,
    pub pod_ip: Option<String>,
    /// The worker has published the pod's state at least once (after adopting what runs).
    pub published: bool,
    /// The pod's cgroup, once made.
    pub cgroup: Option<String>,
    /// Events ever recorded (the list keeps the last 100): what is new since a count.
    pub event_seq: u64,
}

impl PodView {
    /// Ready for Service traffic: running, not being deleted, every app container running.
    pub fn ready(&self) -> bool {
        !self.deleting
            && self.phase == PodPhase::Running
            && self
                .containers
                .iter()
                .filter(|c| !c.init)
                .all(|c| matches!(c.state, CState::Running { .. }) && c.ready)
    }

    pub fn event(&mut self, kind: &str, reason: &str, message: String) {
        tracing::info!(pod = %self.manifest.name, reason, %message, "event");
        self.event_seq += 1;
        self.events.push(Event {
            time: Utc::now(),
            kind: kind.into(),
            reason: reason.into(),
            message,
        });
        if self.events.len() > 100 {
            self.events.remove(0);
        }
    }
}

/// Persisted per-container bookkeeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    restart_count: u32,
    /// Attempt number of the current (or last) run; its directory and log use it.
    attempt: Option<u32>,
    started_at: Option<DateTime<Utc>>,
    done: bool,
    backoff_secs: u64,
    last: Option<CState>,
}

struct Ctr {
    spec: Container,
    init: bool,
    p: Persisted,
    running: Option<PodContainer>,
    not_before: Option<Instant>,
    waiting: Option<(WaitingReason, String)>,
    /// The last pull of its image failed (the next failure is ImagePullBackOff).
    pull_failed: bool,
    /// Its probes, while it runs.
    probes: Option<Probes>,
}

/// A running container's probes, for the attempt they were made for.
struct Probes {
    attempt: u32,
    trackers: Vec<super::probe::Tracker>,
    jobs: Vec<(super::probe::Kind, super::cri::ProbeJob)>,
    /// A liveness or startup probe (or the postStart hook) failed: the container is being
    /// stopped (by this thread), nothing more is probed.
    killing: Option<std::thread::JoinHandle<bool>>,
    /// The postStart hook, while it runs: the container is not started until it ends.
    post_start: Option<super::cri::ProbeJob>,
}

impl Probes {
    fn result(&self, k: super::probe::Kind) -> Option<Option<bool>> {
        self.trackers
            .iter()
            .find(|t| t.spec.kind == k)
            .map(|t| t.result)
    }

    /// Past its postStart hook, no startup probe or it has succeeded, and not being stopped.
    fn started(&self) -> bool {
        self.post_start.is_none()
            && self.killing.is_none()
            && self
                .result(super::probe::Kind::Startup)
                .is_none_or(|r| r == Some(true))
    }

    fn ready(&self) -> bool {
        self.killing.is_none()
            && self.started()
            && self
                .result(super::probe::Kind::Readiness)
                .is_none_or(|r| r == Some(true))
    }
}

/// Whether probe `t` runs: a startup probe until it succeeds, the others once the
/// container has `started`.
fn wanted(t: &super::probe::Tracker, started: bool) -> bool {
    if t.spec.kind == super::probe::Kind::Startup {
        t.result != Some(true)
    } else {
        started
    }
}

/// The grace period: the deletion's (`kubectl delete --grace-period`), else the pod's.
fn grace(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64,
    )
}

/// `:latest` or no tag pulls every time, anything else only when missing (Kubernetes' default).
fn must_pull(c: &Container, present: bool) -> bool {
    let image = c.image.clone().unwrap_or_default();
    let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
        let r: Result<oci::reference::Reference, _> = image.parse();
        match r {
            Ok(r) if r.digest.is_none() && r.tag.as_deref() == Some("latest") => "Always".into(),
            _ => "IfNotPresent".into(),
        }
    });
    match policy.as_str() {
        "Always" => true,
        "Never" => false,
        _ => !present,
    }
}

/// What the node records of a pod beside its containers (`<run-dir>/pods/<uid>/meta.json`):
/// enough for a restarted agent to show it as it was and to tear it down as it should be,
/// even when its manifest is gone.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's creationTimestamp, kept across agent restarts.
    pub created: DateTime<Utc>,
    pub grace_seconds: u64,
    /// When its deletion began (a restarted agent waits only for what is left of the grace
    /// period).
    #[serde(default)]
    pub deleting_since: Option<DateTime<Utc>>,
    /// When a container of the pod first ran (its status' startTime), kept across restarts.
    #[serde(default)]
    pub started: Option<DateTime<Utc>>,
}

impl PodMeta {
    pub fn load(pod_dir: &Path) -> Option<PodMeta> {
        serde_json::from_slice(&std::fs::read(pod_dir.join("meta.json")).ok()?).ok()
    }

    fn save(&self, pod_dir: &Path) {
        if let Err(e) = oci::fsutil::replace(
            &pod_dir.join("meta.json"),
            &serde_json::to_vec(self).unwrap_or_default(),
        ) {
            tracing::warn!(pod = %self.name, error = %e, "recording the pod's metadata");
        }
    }

    /// The grace period left for a deletion that began earlier.
    pub fn grace_left(&self, now: DateTime<Utc>) -> Duration {
        let full = Duration::from_secs(self.grace_seconds);
        match self.deleting_since {
            None => full,
            Some(t) => full.saturating_sub((now - t).to_std().unwrap_or_default()),
        }
    }
}

/// An image pull running in a thread of its own, so that a stop request never waits for it:
/// `done` becomes readable when it ends.
struct PullJob {
    result: Receiver<Result<usize, super::cri::CriError>>,
    done: OwnedFd,
}

fn spawn_pull(ctx: &Arc<NodeContext>, image: &str) -> std::io::Result<PullJob> {
    let (r, w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ctx, image) = (ctx.clone(), image.to_string());
    std::thread::Builder::new()
        .name("pull".into())
        .spawn(move || {
            let r = ctx.images.pull(&image);
            // The worker may be gone (its pod deleted): then nobody reads this.
            let _ = tx.send(r);
            let _ = rustix::io::write(&w, b"x");
        })?;
    Ok(PullJob {
        result: rx,
        done: r,
    })
}

pub struct Worker {
    ctx: Arc<NodeContext>,
    view: Arc<Mutex<PodView>>,
    /// The pod's names as path components (validated), and its directories: runtime state
    /// and on disk (emptyDir volumes, writable layers); its logs are `log_name` under the
    /// log root.
    uid: String,
    log_name: String,
    dir: PathBuf,
    disk: PathBuf,
    meta: PodMeta,
    /// The sandbox is complete (made, or adopted with its `ready` mark).
    sandbox: bool,
    volumes: Option<BTreeMap<String, PathBuf>>,
    ctrs: Vec<Ctr>,
    pulled: BTreeMap<String, ()>,
    pulls: BTreeMap<String, PullJob>,
    /// Containers whose shim died while they ran (reported once).
    shim_lost: std::collections::BTreeSet<String>,
    /// An adopted sandbox whose network is gone: why, and the address it had.
    lost_network: Option<(String, Option<String>)>,
    /// The address and readiness last reported to the agent.
    reported: (Option<String>, bool),
    /// Requests and limits per container, and the pod's cgroup once made.
    resources: BTreeMap<String, crate::node::cgroup::resources::ContainerResources>,
    cgroup: Option<String>,
}

impl Worker {
    /// A worker for a valid pod (the agent never makes one for an invalid pod: nothing may be
    /// built from its names). Fails only if a name cannot be a path component.
    pub fn new(
        ctx: Arc<NodeContext>,
        view: Arc<Mutex<PodView>>,
    ) -> Result<Worker, crate::node::safefs::SafeFsError> {
        let m = view.lock().expect("view").manifest.clone();
        let log_name = crate::node::logs::pod_dir_name(&m.namespace, &m.name, &m.uid);
        let dir = ctx.run.join(&["pods", &m.uid])?;
        let disk = ctx.state.join(&["pods", &m.uid])?;
        ctx.logs.join(&[&log_name])?;
        for c in m
            .pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        {
            crate::node::safefs::check_name(&c.name)?;
        }
        let spec = m.pod.spec.as_ref();
        let persisted: BTreeMap<String, Persisted> = std::fs::read(dir.join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let ctrs = spec
            .into_iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .map(|c| (c, true))
                    .chain(s.containers.iter().map(|c| (c, false)))
            })
            .map(|(c, init)| {
                let p = persisted.get(&c.name).cloned().unwrap_or_default();
                Ctr {
                    spec: c.clone(),
                    init,
                    p,
                    running: None,
                    not_before: None,
                    waiting: None,
                    pull_failed: false,
                    probes: None,
                }
            })
            .collect();
        // An adopted pod keeps its creation time; a pod whose deletion was interrupted but
        // whose manifest is back is simply wanted again.
        let meta = match PodMeta::load(&dir) {
            Some(mut old) => {
                let mut v = view.lock().expect("view");
                v.created = old.created;
                v.started = v.started.or(old.started);
                drop(v);
                old.deleting_since = None;
                old.grace_seconds = grace(&m.pod).as_secs();
                old
            }
            None => PodMeta {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                uid: m.uid.clone(),
                created: view.lock().expect("view").created,
                grace_seconds: grace(&m.pod).as_secs(),
                deleting_since: None,
                started: None,
            },
        };
        Ok(Worker {
            uid: m.uid.clone(),
            log_name,
            disk,
            volumes: None,
            ctx,
            view,
            dir,
            meta,
            sandbox: false,
            ctrs,
            pulled: BTreeMap::new(),
            pulls: BTreeMap::new(),
            shim_lost: Default::default(),
            lost_network: None,
            reported: (None, false),
            resources: crate::node::cgroup::resources::pod(&m.pod)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            cgroup: None,
        })
    }

    /// The pod's cgroup with the pod-level values (made again, idempotently, after an agent
    /// restart). Returns false while it cannot be made.
    fn ensure_cgroup(&mut self) -> bool {
        let Some(cgs) = self.ctx.cgroups.clone() else {
            return true;
        };
        if self.cgroup.is_some() {
            return true;
        }
        use crate::node::cgroup::resources;
        let spec = self.manifest().pod.spec.clone().unwrap_or_default();
        let of = |cs: &[Container]| -> Vec<resources::ContainerResources> {
            cs.iter()
                .filter_map(|c| self.resources.get(&c.name).cloned())
                .collect()
        };
        let init = of(spec.init_containers.as_deref().unwrap_or(&[]));
        let apps = of(&spec.containers);
        let all: Vec<_> = init.iter().chain(&apps).cloned().collect();
        let qos = resources::qos(&all);
        let uid = self.uid.clone();
        match cgs.create_pod(&uid, qos, &resources::pod_total(&init, &apps)) {
            Ok(p) => {
                self.view.lock().expect("view").cgroup = Some(p.clone());
                self.cgroup = Some(p);
                true
            }
            Err(e) => {
                self.blocked(
                    "FailedCreatePodCgroup",
                    format!("creating the pod cgroup: {e}"),
                    Some("waiting for the pod cgroup"),
                );
                false
            }
        }
    }

    /// The pod cannot go on for now (`reason`, `msg`): the message is shown, the event given
    /// once per distinct message, and every container waits 2 s (as `ContainerCreating` with
    /// `waiting`, if given) before the next try.
    fn blocked(&mut self, reason: &str, msg: String, waiting: Option<&str>) {
        {
            let mut v = self.view.lock().expect("view");
            if v.message.as_deref() != Some(msg.as_str()) {
                v.event("Warning", reason, msg.clone());
            }
            v.message = Some(msg);
        }
        let retry = self.ctx.clock.now() + Duration::from_secs(2);
        for c in &mut self.ctrs {
            if let Some(w) = waiting {
                c.waiting = Some((WaitingReason::ContainerCreating, w.into()));
            }
            c.not_before = Some(retry);
        }
    }

    /// The cgroup of one run of a container, when cgroups are on.
    fn container_cgroup(&self, name: &str, attempt: u32) -> Option<String> {
        self.cgroup
            .as_ref()
            .map(|p| crate::node::cgroup::container_path(p, name, attempt))
    }

    fn manifest(&self) -> Arc<PodManifest> {
        self.view.lock().expect("view").manifest.clone()
    }

    fn event(&self, kind: &str, reason: &str, message: String) {
        self.view.lock().expect("view").event(kind, reason, message);
    }

    fn attempt_dir(&self, name: &str, attempt: u32) -> PathBuf {
        self.dir
            .join("containers")
            .join(name)
            .join(attempt.to_string())
    }

    /// Runs until told to stop, then tears the pod down.
    pub fn run(mut self, stop: Receiver<()>, wake: OwnedFd) {
        let m = self.manifest();
        if m.invalid.is_some() {
            // Never reached (the agent runs no worker for an invalid pod); and if it were,
            // nothing is built from an invalid pod's names, not even to remove it.
            return;
        }
        for w in &m.warnings {
            self.event("Warning", "UnsupportedField", w.clone());
        }
        self.adopt();
        loop {
            match stop.try_recv() {
                Ok(()) | Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            self.step();
            // Recorded before it is shown: an agent killed right after a container is
            // reported running finds its start time again.
            self.persist();
            self.publish();
            self.wait(&wake);
        }
        self.teardown();
    }

    /// Picks up what a previous agent left running, and cleans up what it left half done:
    /// attempts other than each container's current one (an agent killed between a rootfs
    /// mount and its shim's start leaves one mounted and its image leased).
    fn adopt(&mut self) {
        if let Some(a) = crate::node::network::Attachment::load(&self.dir) {
            self.view.lock().expect("view").pod_ip = a.ip.map(|i| i.to_string());
        }
        if self.dir.join("sandbox").join("ready").exists() {
            self.sandbox = true;
            self.reattach_if_lost();
        }
        for i in 0..self.ctrs.len() {
            let name = self.ctrs[i].spec.name.clone();
            let current = self.ctrs[i].p.attempt.and_then(|attempt| {
                let pc = self
                    .ctx
                    .runtime
                    .find_container(&self.attempt_dir(&name, attempt))?;
                if self.ctx.runtime.container_state(&pc) == ContainerState::Running {
                    tracing::info!(container = %name, pid = pc.pid, "adopted a running container");
                }
                Some((attempt, pc))
            });
            let keep = current.as_ref().map(|(a, _)| a.to_string());
            for a in std::fs::read_dir(self.dir.join("containers").join(&name))
                .into_iter()
                .flatten()
                .flatten()
            {
                if keep.as_deref() == Some(&*a.file_name().to_string_lossy()) {
                    continue;
                }
                tracing::info!(container = %name, attempt = %a.file_name().to_string_lossy(), "removing an attempt a previous agent left unfinished");
                remove_attempt(&self.ctx, &a.path());
            }
            // Running or exited: `step` reads the exit status either way.
            self.ctrs[i].running = current.map(|(_, pc)| pc);
        }
    }

    fn host_network(&self) -> bool {
        let m = self.manifest();
        let spec = m.pod.spec.as_ref();
        spec.and_then(|s| s.host_network).unwrap_or(false)
    }

    /// ADD through the pod network (none for hostNetwork pods or without a network); records
    /// the attachment in the pod directory and the address in the pod's status.
    fn attach_network(&mut self) -> Result<(), super::cri::CriError> {
        let Some(n) = self.ctx.network.as_ref().filter(|_| !self.host_network()) else {
            return Ok(());
        };
        let a = n.attach(&self.manifest().uid, &self.dir.join("sandbox/ns/net"))?;
        a.save(&self.dir)?;
        self.view.lock().expect("view").pod_ip = a.ip.map(|i| i.to_string());
        Ok(())
    }

    /// At adoption: a sandbox whose network is gone or broken (CHECK fails: a deleted veth or
    /// route, a bridge removed, or a network configured since) is detached, and `step`
    /// attaches it again.
    fn reattach_if_lost(&mut self) {
        let Some(n) = self.ctx.network.as_ref().filter(|_| !self.host_network()) else {
            return;
        };
        let uid = self.manifest().uid.clone();
        let netns = self.dir.join("sandbox/ns/net");
        let old = crate::node::network::Attachment::load(&self.dir);
        let broken = match &old {
            None => Some("no network attachment".to_string()),
            Some(a) => n
                .check(&uid, &netns, &a.result)
                .err()
                .map(|e| format!("{e:#}")),
        };
        let Some(why) = broken else {
            return;
        };
        tracing::warn!(uid, reason = %why, "re-attaching a pod to the network");
        if let Some(a) = &old {
            let _ = n.detach(&uid, &netns, Some(&a.result));
            let _ = std::fs::remove_file(self.dir.join("network.json"));
        }
        self.view.lock().expect("view").pod_ip = None;
        self.lost_network = Some((why, old.and_then(|a| a.ip).map(|i| i.to_string())));
    }

    /// Attaches an adopted sandbox that lost its network (retried like a sandbox). The
    /// address may change; the pod's /etc/hosts follows it.
    fn repair_network(&mut self) -> bool {
        let Some((why, old_ip)) = self.lost_network.clone() else {
            return true;
        };
        if let Err(e) = self.attach_network() {
            let msg = format!("network: {e:#}");
            let mut v = self.view.lock().expect("view");
            if v.message.as_deref() != Some(msg.as_str()) {
                v.event("Warning", "NetworkNotReady", msg.clone());
            }
            v.message = Some(msg);
            return false;
        }
        self.lost_network = None;
        let new_ip = self.view.lock().expect("view").pod_ip.clone();
        if let (Some(o), Some(n)) = (old_ip, new_ip) {
            // In place: running containers have the file bind-mounted.
            let hosts = self.dir.join("etc/hosts");
            if let Ok(t) = std::fs::read_to_string(&hosts) {
                let t: String = t
                    .lines()
                    .map(|l| match l.strip_prefix(&format!("{o}\t")) {
                        Some(rest) => format!("{n}\t{rest}\n"),
                        None => format!("{l}\n"),
                    })
                    .collect();
                let _ = std::fs::write(&hosts, t);
            }
        }
        let mut v = self.view.lock().expect("view");
        v.message = None;
        v.event("Normal", "NetworkRepaired", format!("re-attached: {why}"));
        true
    }

    /// The pod's directories, root's only (the kubelet keeps its pods directory 0750,
    /// containerd its state 0700): nothing a container leaves in them (a setuid binary in a
    /// writable layer or an emptyDir) is reachable by the node's other users.
    fn make_dirs(&mut self) -> Result<(), crate::node::safefs::SafeFsError> {
        self.ctx.run.create_dir_all(&["pods"], 0o700)?;
        self.ctx.run.create_dir_all(&["pods", &self.uid], 0o700)?;
        self.ctx.state.create_dir_all(&["pods"], 0o700)?;
        self.ctx.state.create_dir_all(&["pods", &self.uid], 0o700)?;
        self.ctx.logs.create_dir_all(&[&self.log_name], 0o750)?;
        if !self.dir.join("meta.json").exists() {
            self.meta.save(&self.dir);
        }
        Ok(())
    }

    fn step(&mut self) {
        let m = self.manifest();
        let pod = &m.pod;
        let policy = RestartPolicy::of(pod);
        if !self.ensure_cgroup() {
            return;
        }
        if !self.sandbox {
            let spec = pod.spec.clone().unwrap_or_default();
            let o = SandboxOptions {
                hostname: pod_hostname(&m),
                host_network: spec.host_network.unwrap_or(false),
                host_ipc: spec.host_ipc.unwrap_or(false),
                share_pid: spec.share_process_namespace.unwrap_or(false),
            };
            if let Err(e) = self.make_dirs() {
                self.blocked("FailedCreatePodSandBox", e.to_string(), None);
                return;
            }
            match self.ctx.runtime.create_sandbox(&self.dir, &o) {
                Ok(()) => {
                    // The pod network, before the sandbox counts as ready.
                    if let Err(e) = self.attach_network() {
                        let _ = self.ctx.runtime.remove_sandbox(&self.dir);
                        self.blocked(
                            "FailedCreatePodSandBox",
                            format!("network: {e:#}"),
                            Some("waiting for the pod network"),
                        );
                        return;
                    }
                    // Adoption trusts only a sandbox that was completed.
                    let _ = oci::fsutil::replace(&self.dir.join("sandbox").join("ready"), b"");
                    self.sandbox = true
                }
                Err(e) => {
                    self.event("Warning", "FailedCreatePodSandBox", format!("{e:#}"));
                    let mut v = self.view.lock().expect("view");
                    v.message = Some(format!("{e:#}"));
                    return;
                }
            }
        }
        if !self.repair_network() {
            return;
        }
        if self.volumes.is_none() {
            let objects = self.ctx.objects.read().expect("objects").clone();
            let prepared = Beneath::open(&self.disk, 0o700)
                .and_then(|disk| Ok((disk, Beneath::open(&self.dir, 0o700)?)))
                .map_err(|e| ConfigError::from(e.to_string()))
                .and_then(|(disk, mem)| {
                    super::volumes::prepare(pod, &m.namespace, &disk, &mem, &objects)
                });
            match prepared.and_then(|v| {
                let ip = self.view.lock().expect("view").pod_ip.clone();
                self.ctx
                    .runtime
                    .write_pod_files(&self.dir, &m, ip.as_deref())
                    .map_err(|e| ConfigError::from(e.to_string()))?;
                Ok(v)
            }) {
                Ok(v) => self.volumes = Some(v),
                Err(e) => {
                    self.blocked("FailedMount", e.to_string(), Some("waiting for volumes"));
                    return;
                }
            }
            self.view.lock().expect("view").message = None;
        }
        // Collect exits.
        let now = self.ctx.clock.now();
        for i in 0..self.ctrs.len() {
            let Some(run) = &self.ctrs[i].running else {
                continue;
            };
            let exit = match self.ctx.runtime.container_state(run) {
                ContainerState::Exited(e) => e,
                ContainerState::Running => continue,
                // The shim is gone but the container runs on: nobody logs its output or will
                // record its exit. Say so once; a stop still reaches the container itself.
                ContainerState::ShimLost => {
                    let name = self.ctrs[i].spec.name.clone();
                    if self.shim_lost.insert(name.clone()) {
                        self.event(
                            "Warning",
                            "ShimLost",
                            format!("the supervisor of container {name} exited while it runs: its output is no longer logged and its exit code will be unknown"),
                        );
                    }
                    continue;
                }
            };
            let dir = run
                .rootfs
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            // Processes the container left behind (with a shared or the host's PID namespace)
            // die with its cgroup before its root is unmounted.
            if let (Some(cgs), Some(cg)) = (
                &self.ctx.cgroups,
                self.container_cgroup(&self.ctrs[i].spec.name, self.ctrs[i].p.attempt.unwrap_or(0)),
            ) {
                if let Err(e) = cgs.remove(&cg) {
                    tracing::warn!(error = %e, "removing a container's cgroup");
                }
            }
            let message = self.termination_message(i, &dir, exit.code);
            remove_attempt(&self.ctx, &dir);
            let c = &mut self.ctrs[i];
            c.running = None;
            c.probes = None;
            let finished = DateTime::parse_from_rfc3339(&exit.finished_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| self.ctx.clock.utc());
            let reason = TerminatedReason::of(exit.code, &exit.reason);
            c.p.last = Some(CState::Terminated {
                exit_code: exit.code,
                reason,
                started_at: c.p.started_at,
                finished_at: finished,
                message,
            });
            let ran =
                c.p.started_at
                    .map(|s| (finished - s).to_std().unwrap_or_default())
                    .unwrap_or_default();
            let restart = policy.restarts(c.init, exit.code);
            let name = c.spec.name.clone();
            if !restart {
                c.p.done = true;
                continue;
            }
            if ran >= BACKOFF_RESET {
                c.p.backoff_secs = 0;
            }
            if c.p.backoff_secs == 0 {
                c.not_before = None;
                c.p.backoff_secs = BACKOFF_START.as_secs();
            } else {
                let b = Duration::from_secs(c.p.backoff_secs);
                c.not_before = Some(now + b);
                c.waiting = Some((
                    WaitingReason::CrashLoopBackOff,
                    format!(
                        "back-off {}s restarting failed container={name} pod={}_{}({})",
                        b.as_secs(),
                        m.name,
                        m.namespace,
                        m.uid
                    ),
                ));
                c.p.backoff_secs = (c.p.backoff_secs * 2).min(BACKOFF_MAX.as_secs());
            }
            self.event(
                "Normal",
                "BackOff",
                format!(
                    "container {name} exited with code {}; restarting",
                    exit.code
                ),
            );
        }
        // An init container that failed for good fails the pod.
        if self.ctrs.iter().any(|c| c.init && c.p.done && matches!(&c.p.last, Some(CState::Terminated { exit_code, .. }) if *exit_code != 0)) {
            return;
        }
        // Start what should run: init containers one at a time, then all app containers.
        let inits_done = self.ctrs.iter().filter(|c| c.init).all(|c| c.p.done);
        let candidates: Vec<usize> = if inits_done {
            (0..self.ctrs.len())
                .filter(|&i| !self.ctrs[i].init)
                .collect()
        } else {
            self.ctrs
                .iter()
                .position(|c| c.init && !c.p.done)
                .into_iter()
                .collect()
        };
        for i in candidates {
            let c = &self.ctrs[i];
            if c.running.is_some() || c.p.done || c.not_before.is_some_and(|t| t > now) {
                continue;
            }
            self.start(i, &m);
        }
        // After the starts: a container started now has its probes from the start.
        self.probe(&m);
    }

    /// Pulls the container's image if it must be, in the background. True when the image
    /// is there to start from; false while the pull runs or after it failed (back-off).
    fn image_ready(&mut self, i: usize) -> bool {
        let image = self.ctrs[i].spec.image.clone().unwrap_or_default();
        // A pull in flight is seen through first, even if the image is present by now: its
        // result is reported, and its job (whose descriptor wakes the worker) goes.
        if !self.pulls.contains_key(&image)
            && (self.pulled.contains_key(&image)
                || !must_pull(&self.ctrs[i].spec, self.ctx.images.present(&image)))
        {
            return true;
        }
        let result = match self.pulls.get(&image).map(|j| j.result.try_recv()) {
            None => {
                match spawn_pull(&self.ctx, &image) {
                    Ok(job) => {
                        self.pulls.insert(image.clone(), job);
                        self.ctrs[i].waiting = Some((
                            WaitingReason::ContainerCreating,
                            format!("pulling image {image:?}"),
                        ));
                        self.event("Normal", "Pulling", format!("Pulling image {image:?}"));
                    }
                    Err(e) => {
                        // Out of threads or descriptors: try again shortly.
                        tracing::warn!(image, error = %e, "starting an image pull");
                        self.ctrs[i].not_before =
                            Some(self.ctx.clock.now() + Duration::from_secs(1));
                    }
                }
                return false;
            }
            Some(Err(TryRecvError::Empty)) => return false,
            Some(Err(TryRecvError::Disconnected)) => Err("the pull ended without a result".into()),
            Some(Ok(r)) => r.map_err(|e| e.to_string()),
        };
        self.pulls.remove(&image);
        match result {
            Ok(layers_fetched) => {
                self.pulled.insert(image.clone(), ());
                self.ctrs[i].pull_failed = false;
                self.event(
                    "Normal",
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} ({} layers fetched)",
                        layers_fetched
                    ),
                );
                true
            }
            Err(e) => {
                let c = &mut self.ctrs[i];
                let (reason, b) = if c.pull_failed {
                    (
                        WaitingReason::ImagePullBackOff,
                        (c.p.backoff_secs * 2)
                            .clamp(BACKOFF_START.as_secs(), BACKOFF_MAX.as_secs()),
                    )
                } else {
                    (WaitingReason::ErrImagePull, BACKOFF_START.as_secs())
                };
                c.pull_failed = true;
                c.p.backoff_secs = b;
                c.not_before = Some(self.ctx.clock.now() + Duration::from_secs(b));
                c.waiting = Some((reason, e.clone()));
                self.event(
                    "Warning",
                    "Failed",
                    format!("Failed to pull image {image:?}: {e}"),
                );
                false
            }
        }
    }

    /// The kubelet's `runAsNonRoot` check (`verifyRunAsNonRoot`): with it set, a container
    /// must have a non-zero `runAsUser`, or an image whose user is a non-zero number.
    fn verify_non_root(
        &self,
        i: usize,
        m: &PodManifest,
        run_as_user: Option<i64>,
    ) -> Result<(), ConfigError> {
        let spec = &self.ctrs[i].spec;
        let pod_sc = m
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let non_root = spec
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            .or(pod_sc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false);
        if !non_root {
            return Ok(());
        }
        let pod = format!("{}_{}({})", m.name, m.namespace, m.uid);
        let pod = crate::api::validation::go_quote(&pod);
        let ctr = &spec.name;
        match run_as_user {
            Some(0) => {
                return Err(ConfigError::invalid(format!(
                    "container's runAsUser breaks non-root policy (pod: {pod}, container: {ctr})"
                )))
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let image = spec.image.clone().unwrap_or_default();
        let user = self
            .ctx
            .images
            .user(&image)
            .map_err(|e| ConfigError::from(format!("reading the image's user: {e}")))?
            .unwrap_or_default();
        let name = user.split(':').next().unwrap_or("");
        match name.parse::<u64>() {
            Ok(0) => Err(ConfigError::invalid(format!(
                "container has runAsNonRoot and image will run as root (pod: {pod}, container: {ctr})"
            ))),
            Ok(_) => Ok(()),
            Err(_) if name.is_empty() => Err(ConfigError::invalid(format!(
                "container has runAsNonRoot and image will run as root (pod: {pod}, container: {ctr})"
            ))),
            Err(_) => Err(ConfigError::invalid(format!(
                "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: {pod}, container: {ctr})"
            ))),
        }
    }

    /// A configuration error (`CreateContainerConfigError`): the container waits, retried in
    /// a few seconds.
    fn config_error(&mut self, i: usize, e: ConfigError) {
        let e = e.to_string();
        let ctr = &mut self.ctrs[i];
        ctr.waiting = Some((WaitingReason::CreateContainerConfigError, e.clone()));
        ctr.not_before = Some(self.ctx.clock.now() + Duration::from_secs(2));
        self.event("Warning", "Failed", format!("Error: {e}"));
    }

    /// Removes the logs of runs before the previous one (the kubelet keeps the current and
    /// the previous run's, for `logs --previous`): a container restarting all day does not
    /// fill the disk with logs nobody can ask for.
    fn prune_logs(&self, container: &str, restart_count: u32) {
        if restart_count < 2 {
            return;
        }
        let Ok(dir) = self.ctx.logs.join(&[&self.log_name, container]) else {
            return;
        };
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let run: Option<u32> = name.split(".log").next().and_then(|n| n.parse().ok());
            if run.is_some_and(|r| r + 1 < restart_count) {
                if let Err(e) = self
                    .ctx
                    .logs
                    .remove_all(&[&self.log_name, container, &name])
                {
                    tracing::warn!(error = %e, "removing an old log");
                }
            }
        }
    }

    fn start(&mut self, i: usize, m: &PodManifest) {
        if !self.image_ready(i) {
            return;
        }
        let spec = self.ctrs[i].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        let attempt = self.ctrs[i].p.attempt.map(|a| a + 1).unwrap_or(0);
        // A restart is a start after the container has run before.
        let restart_count = if self.ctrs[i].p.started_at.is_some() {
            self.ctrs[i].p.restart_count + 1
        } else {
            0
        };
        let dir = self.attempt_dir(&spec.name, attempt);
        let pod_sc = m.pod.spec.as_ref().and_then(|s| s.security_context.clone());
        let sc = spec.security_context.clone().unwrap_or_default();
        let uid = sc
            .run_as_user
            .or(pod_sc.as_ref().and_then(|s| s.run_as_user));
        let gid = sc
            .run_as_group
            .or(pod_sc.as_ref().and_then(|s| s.run_as_group));
        let user = match (uid, gid) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => Some(format!("0:{g}")),
            (None, None) => None,
        };
        if let Err(e) = self.verify_non_root(i, m, uid) {
            self.config_error(i, e);
            return;
        }
        // Whatever an earlier agent left at this attempt (never a mount it exposes).
        remove_attempt(&self.ctx, &dir);
        let objects = self.ctx.objects.read().expect("objects").clone();
        let pod_ip = self.view.lock().expect("view").pod_ip.clone();
        let config = super::volumes::env(
            &spec,
            &m.pod,
            &m.namespace,
            &m.uid,
            &self.ctx.node_name,
            pod_ip.as_deref(),
            &objects,
        )
        .and_then(|env| {
            let mut binds = super::volumes::binds(
                &spec,
                &m.pod,
                self.volumes.as_ref().expect("volumes prepared"),
                &dir.join("subpaths"),
            )?;
            for f in ["hosts", "hostname", "resolv.conf"] {
                if !binds.iter().any(|b| b.destination == format!("/etc/{f}")) {
                    binds.push(oci::runtime::spec::Bind {
                        source: self.dir.join("etc").join(f).to_string_lossy().into_owned(),
                        destination: format!("/etc/{f}"),
                        readonly: false,
                    });
                }
            }
            // The termination message file: the kubelet's, writable by any user of the
            // container (0666), read back when the container ends.
            let path = termination_path(&spec);
            if !path.is_empty() && !binds.iter().any(|b| b.destination == path) {
                let file = dir.join(TERMINATION_LOG);
                std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::File::open(&dir))
                    .and_then(|d| crate::node::safefs::write_at(&d, TERMINATION_LOG, b"", 0o666))
                    .map_err(|e| ConfigError::from(format!("the termination message file: {e}")))?;
                binds.push(oci::runtime::spec::Bind {
                    source: file.to_string_lossy().into_owned(),
                    destination: path,
                    readonly: false,
                });
            }
            Ok((env, binds))
        });
        let (env, binds) = match config {
            Ok(x) => x,
            Err(e) => {
                self.config_error(i, e);
                return;
            }
        };
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let expand = |v: &Option<Vec<String>>| -> Result<Option<Vec<String>>, ConfigError> {
            v.as_ref()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            super::volumes::expand(x, &vars).ok_or_else(|| {
                                ConfigError::invalid(format!(
                                    "an argument expands to more than {} bytes (the kernel's limit on one argument)",
                                    super::volumes::MAX_ARG
                                ))
                            })
                        })
                        .collect()
                })
                .transpose()
        };
        let (command, args) = match (expand(&spec.command), expand(&spec.args)) {
            (Ok(c), Ok(a)) => (c, a),
            (Err(e), _) | (_, Err(e)) => {
                self.config_error(i, e);
                return;
            }
        };
        let arg_bytes: usize = env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
            + command
                .iter()
                .chain(&args)
                .flatten()
                .map(|a| a.len() + 1)
                .sum::<usize>();
        if arg_bytes > super::volumes::MAX_ARGS_TOTAL {
            self.config_error(
                i,
                ConfigError::invalid(format!(
                    "the environment and arguments hold {arg_bytes} bytes, more than {} (knode's limit)",
                    super::volumes::MAX_ARGS_TOTAL
                )),
            );
            return;
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        let host_pid = m
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_pid)
            .unwrap_or(false);
        let hostname = pod_hostname(m);
        let log_dir = match self
            .ctx
            .logs
            .create_dir_all(&[&self.log_name, &spec.name], 0o750)
        {
            Ok(d) => d,
            Err(e) => {
                self.config_error(i, ConfigError::from(e.to_string()));
                return;
            }
        };
        self.prune_logs(&spec.name, restart_count);
        let c = PodContainerSpec {
            image: image.clone(),
            command,
            args,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            user,
            working_dir: spec.working_dir.clone(),
            log_path: log_dir.join(format!("{restart_count}.log")),
            privileged: sc.privileged.unwrap_or(false),
            cap_add: caps.add.unwrap_or_default(),
            cap_drop: caps.drop.unwrap_or_default(),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            allow_privilege_escalation: sc.allow_privilege_escalation.unwrap_or(false),
            host_pid,
            binds,
            upper_dir: Some(
                self.disk
                    .join("containers")
                    .join(&spec.name)
                    .join(attempt.to_string()),
            ),
            supplemental_groups: pod_sc
                .as_ref()
                .map(|p| {
                    p.fs_group
                        .into_iter()
                        .chain(p.supplemental_groups.clone().unwrap_or_default())
                        .map(|g| g as u32)
                        .collect()
                })
                .unwrap_or_default(),
            cgroup: None,
            stdin: spec.stdin.unwrap_or(false),
            stdin_once: spec.stdin_once.unwrap_or(false),
            tty: spec.tty.unwrap_or(false),
        };
        // Record the attempt before it exists: an agent killed from here on finds it again.
        self.ctrs[i].p.attempt = Some(attempt);
        self.persist();
        let mut c = c;
        let made = match (&self.ctx.cgroups, &self.cgroup) {
            (Some(cgs), Some(pod_cg)) => {
                let r = self.resources.get(&spec.name).cloned().unwrap_or_default();
                cgs.create_container(pod_cg, &spec.name, attempt, &r)
                    .map(Some)
                    .map_err(super::cri::CriError::from)
            }
            _ => Ok(None),
        };
        let started = made.and_then(|cg| {
            c.cgroup = cg.clone();
            self.ctx
                .runtime
                .start_container(&self.dir, &hostname, &dir, &c)
                .inspect_err(|_| {
                    if let (Some(cgs), Some(cg)) = (&self.ctx.cgroups, &cg) {
                        let _ = cgs.remove(cg);
                    }
                })
        });
        match started {
            Ok(pc) => {
                let ctr = &mut self.ctrs[i];
                ctr.p.attempt = Some(attempt);
                ctr.p.restart_count = restart_count;
                ctr.p.started_at = Some(self.ctx.clock.utc());
                ctr.running = Some(pc);
                ctr.waiting = None;
                ctr.not_before = None;
                self.event(
                    "Normal",
                    "Started",
                    format!("Started container {}", spec.name),
                );
            }
            Err(e) => {
                let ctr = &mut self.ctrs[i];
                ctr.p.backoff_secs = ctr
                    .p
                    .backoff_secs
                    .clamp(BACKOFF_START.as_secs(), BACKOFF_MAX.as_secs());
                ctr.not_before =
                    Some(self.ctx.clock.now() + Duration::from_secs(ctr.p.backoff_secs));
                ctr.waiting = Some((WaitingReason::CreateContainerError, format!("{e:#}")));
                remove_attempt(&self.ctx, &dir);
                self.event("Warning", "Failed", format!("Error: {e:#}"));
            }
        }
    }

    /// Recomputes the pod's phase and container states for the API.
    fn publish(&mut self) {
        self.publish_view();
        let now = {
            let v = self.view.lock().expect("view");
            (v.pod_ip.clone(), v.ready())
        };
        if now != self.reported {
            self.reported = now;
            let _ = rustix::io::write(&self.ctx.changed, b"x");
        }
    }

    fn publish_view(&mut self) {
        let policy = RestartPolicy::of(&self.manifest().pod);
        let mut v = self.view.lock().expect("view");
        v.published = true;
        v.containers = self
            .ctrs
            .iter()
            .map(|c| {
                let state = if let Some(_r) = &c.running {
                    CState::Running {
                        started_at: c.p.started_at.unwrap_or_else(|| self.ctx.clock.utc()),
                    }
                } else if let Some((reason, message)) = &c.waiting {
                    CState::Waiting {
                        reason: *reason,
                        message: message.clone(),
                    }
                } else if c.p.done {
                    c.p.last.clone().unwrap_or(CState::Waiting {
                        reason: WaitingReason::Unknown,
                        message: String::new(),
                    })
                } else if c.init || self.ctrs.iter().filter(|x| x.init).all(|x| x.p.done) {
                    CState::Waiting {
                        reason: WaitingReason::ContainerCreating,
                        message: String::new(),
                    }
                } else {
                    CState::Waiting {
                        reason: WaitingReason::PodInitializing,
                        message: String::new(),
                    }
                };
                let last_state = if c.p.done { None } else { c.p.last.clone() };
                let running = c.running.is_some();
                let (started, ready) = match &c.probes {
                    Some(p) if running => (p.started(), p.ready()),
                    _ => (running, running),
                };
                ContainerView {
                    running: c.running.as_ref().map(|r| (r.pid, r.state.clone())),
                    cgroup: c.running.as_ref().and_then(|_| {
                        self.container_cgroup(&c.spec.name, c.p.attempt.unwrap_or(0))
                    }),
                    name: c.spec.name.clone(),
                    image: c.spec.image.clone().unwrap_or_default(),
                    init: c.init,
                    state,
                    last_state,
                    restart_count: c.p.restart_count,
                    started,
                    ready,
                }
            })
            .collect();
        let apps: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        let init_failed = self.ctrs.iter().any(|c| c.init && c.p.done && matches!(&c.p.last, Some(CState::Terminated { exit_code, .. }) if *exit_code != 0));
        let code = |c: &Ctr| match &c.p.last {
            Some(CState::Terminated { exit_code, .. }) => *exit_code,
            _ => 0,
        };
        v.phase = if init_failed {
            PodPhase::Failed
        } else if apps.iter().all(|c| c.p.done) && policy != RestartPolicy::Always {
            if apps.iter().all(|c| code(c) == 0) {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            }
        } else if apps.iter().any(|c| c.running.is_some()) {
            if v.started.is_none() {
                // Recorded before it is shown, as the containers' state is.
                let now = self.ctx.clock.utc();
                v.started = Some(now);
                self.meta.started = Some(now);
                if self.dir.exists() {
                    self.meta.save(&self.dir);
                }
            }
            PodPhase::Running
        } else {
            PodPhase::Pending
        };
    }

    fn persist(&self) {
        let map: BTreeMap<String, Persisted> = self
            .ctrs
            .iter()
            .map(|c| (c.spec.name.clone(), c.p.clone()))
            .collect();
        if self.dir.exists() {
            let _ = oci::fsutil::replace(
                &self.dir.join("pod.json"),
                &serde_json::to_vec(&map).unwrap_or_default(),
            );
        }
    }

    /// Sleeps until a container exits, a stop is requested, or the next back-off ends.
    fn wait(&self, wake: &OwnedFd) {
        let now = self.ctx.clock.now();
        // Back-offs ending, and probes due (those not running now, of containers not being
        // stopped; liveness and readiness once started).
        let due = self
            .ctrs
            .iter()
            .filter_map(|c| c.probes.as_ref())
            .flat_map(|p| {
                p.trackers
                    .iter()
                    .filter(move |t| {
                        p.killing.is_none()
                            && !p.jobs.iter().any(|(k, _)| *k == t.spec.kind)
                            && wanted(t, p.started())
                    })
                    .map(|t| t.next())
            });
        let next = self
            .ctrs
            .iter()
            .filter_map(|c| c.not_before)
            .filter(|t| *t > now)
            .chain(due.map(|t| t.max(now)))
            .min();
        let timeout = next
            .map(|t| t - now)
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        let fds: Vec<OwnedFd> = self
            .ctrs
            .iter()
            .filter_map(|c| c.running.as_ref())
            .filter_map(|r| self.ctx.runtime.exit_fd(r))
            .collect();
        let mut polls: Vec<rustix::event::PollFd> = fds
            .iter()
            .map(|f| rustix::event::PollFd::new(f, rustix::event::PollFlags::IN))
            .collect();
        polls.push(rustix::event::PollFd::new(
            wake,
            rustix::event::PollFlags::IN,
        ));
        // An image pull or a probe run that ends wakes the worker too.
        for j in self.pulls.values() {
            polls.push(rustix::event::PollFd::new(
                &j.done,
                rustix::event::PollFlags::IN,
            ));
        }
        for (_, j) in self
            .ctrs
            .iter()
            .filter_map(|c| c.probes.as_ref())
            .flat_map(|p| &p.jobs)
        {
            polls.push(rustix::event::PollFd::new(
                &j.done,
                rustix::event::PollFlags::IN,
            ));
        }
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let _ = rustix::event::poll(&mut polls, Some(&ts));
        // Drain the wake pipe.
        let mut buf = [0u8; 64];
        let _ = rustix::io::read(wake.as_fd(), &mut buf);
    }

    /// Runs the running containers' probes: takes in the runs that ended, starts those due.
    /// A readiness result changes the container's readiness (the pod's, its endpoints'); a
    /// failed liveness or startup probe stops the container, and its restart policy decides
    /// what comes next, as the kubelet does.
    fn probe(&mut self, m: &PodManifest) {
        use super::probe::{Kind, Spec, Target, Tracker};
        let now = self.ctx.clock.now();
        let pod_ip = self
            .view
            .lock()
            .expect("view")
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok());
        for i in 0..self.ctrs.len() {
            let c = &mut self.ctrs[i];
            if c.running.is_none() {
                continue;
            }
            let attempt = c.p.attempt.unwrap_or(0);
            let name = c.spec.name.clone();
            let target = Target {
                pod_ip,
                namespace: m.namespace.clone(),
                pod: m.name.clone(),
                container: name.clone(),
            };
            if c.probes.as_ref().map(|p| p.attempt) != Some(attempt) {
                // A new run: its postStart hook first (the kubelet runs it right after the
                // start; it has no timeout of its own, an hour here).
                let post_start = c
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.post_start.as_ref())
                    .map(|h| super::probe::hook(&c.spec, h))
                    .and_then(|a| {
                        self.ctx
                            .prober
                            .start(&a, target.clone(), Duration::from_secs(3600))
                            .ok()
                    });
                c.probes = Some(Probes {
                    attempt,
                    trackers: [Kind::Startup, Kind::Liveness, Kind::Readiness]
                        .into_iter()
                        .filter_map(|k| Spec::of(&c.spec, k))
                        .map(|s| Tracker::new(s, now))
                        .collect(),
                    jobs: vec![],
                    killing: None,
                    post_start,
                });
            }
            let p = c.probes.as_mut().expect("made above");
            if p.killing.is_some() {
                continue;
            }
            if let Some(job) = &p.post_start {
                let out = match job.result.try_recv() {
                    Ok(out) => out,
                    Err(std::sync::mpsc::TryRecvError::Empty) => continue,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        Err("the hook ended without an outcome".into())
                    }
                };
                p.post_start = None;
                if let Err(why) = out {
                    let msg = format!("PostStartHook failed: {why}");
                    self.view
                        .lock()
                        .expect("view")
                        .event("Warning", "FailedPostStartHook", msg);
                    self.kill(i, grace(&m.pod));
                    continue;
                }
            }
            let c = &mut self.ctrs[i];
            let p = c.probes.as_mut().expect("made above");
            if p.trackers.is_empty() {
                continue;
            }
            let mut events = vec![];
            let mut kill = None;
            let trackers = &mut p.trackers;
            p.jobs.retain(|(k, job)| {
                let out = match job.result.try_recv() {
                    Ok(out) => out,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        Err("the probe ended without an outcome".into())
                    }
                };
                let Some(t) = trackers.iter_mut().find(|t| t.spec.kind == *k) else {
                    return false;
                };
                if let Err(why) = &out {
                    events.push(format!("{} probe failed: {why}", k.label()));
                }
                if t.record(out.is_ok(), now) == Some(false) && *k != Kind::Readiness {
                    kill = Some((*k, t.spec.grace));
                }
                false
            });
            for e in events {
                self.view
                    .lock()
                    .expect("view")
                    .event("Warning", "Unhealthy", e);
            }
            if let Some((k, probe_grace)) = kill {
                let what = if k == Kind::Startup {
                    "startup"
                } else {
                    "liveness"
                };
                let grace = probe_grace
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| grace(&m.pod));
                let msg = format!("Container {name} failed {what} probe, will be restarted");
                self.view
                    .lock()
                    .expect("view")
                    .event("Normal", "Killing", msg);
                self.kill(i, grace);
                continue;
            }
            let p = self.ctrs[i].probes.as_mut().expect("made above");
            let started = p.started();
            let busy: Vec<Kind> = p.jobs.iter().map(|(k, _)| *k).collect();
            for t in &mut p.trackers {
                if t.next() > now || busy.contains(&t.spec.kind) || !wanted(t, started) {
                    continue;
                }
                match self
                    .ctx
                    .prober
                    .start(&t.spec.action, target.clone(), t.spec.timeout)
                {
                    Ok(job) => p.jobs.push((t.spec.kind, job)),
                    Err(e) => {
                        // Not the container's fault: tried again a period later.
                        tracing::warn!(error = %e, "starting a probe");
                        t.postpone(now);
                    }
                }
            }
        }
    }

    /// Container `i`'s termination message, read from its attempt `dir` before it goes (at
    /// most 4 KiB, as the kubelet's); with FallbackToLogsOnError and no message after a
    /// failure, the last 80 lines of its log, at most 2 KiB.
    fn termination_message(&self, i: usize, dir: &Path, code: i32) -> Option<String> {
        let c = &self.ctrs[i];
        let mut msg = crate::node::safefs::read_limited(&dir.join(TERMINATION_LOG), 4096)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if msg.is_empty()
            && code != 0
            && c.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            let log = self
                .ctx
                .log_dir
                .join(&self.log_name)
                .join(&c.spec.name)
                .join(format!("{}.log", c.p.restart_count));
            let lines = crate::node::logs::read(&log, Some(80)).unwrap_or_default();
            let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            if text.len() > 2048 {
                let mut cut = text.len() - 2048;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text = text[cut..].to_string();
            }
            msg = text;
        }
        (!msg.is_empty()).then_some(msg)
    }

    /// Stops container `i` in the background, its preStop hook first (the worker goes on;
    /// the exit wakes it). Nothing more is probed in this run.
    fn kill(&mut self, i: usize, grace: Duration) {
        let hook = self.pre_stop(i);
        let c = &mut self.ctrs[i];
        let (Some(pc), Some(p)) = (c.running.clone(), c.probes.as_mut()) else {
            return;
        };
        let (rt, prober) = (self.ctx.runtime.clone(), self.ctx.prober.clone());
        p.killing = std::thread::Builder::new()
            .name("kill".into())
            .spawn(move || stop_with_hook(rt.as_ref(), prober.as_ref(), &pc, hook, grace))
            .ok();
    }

    /// Container `i`'s preStop hook, if it has one.
    fn pre_stop(&self, i: usize) -> Option<(super::probe::Action, super::probe::Target)> {
        let c = &self.ctrs[i];
        let h = c.spec.lifecycle.as_ref()?.pre_stop.as_ref()?;
        let v = self.view.lock().expect("view");
        Some((
            super::probe::hook(&c.spec, h),
            super::probe::Target {
                pod_ip: v.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
                namespace: v.manifest.namespace.clone(),
                pod: v.manifest.name.clone(),
                container: c.spec.name.clone(),
            },
        ))
    }

    /// Stops every container (SIGTERM, grace period, SIGKILL) and removes all the pod's
    /// mounts, namespaces, directories and logs. An image pull in progress is left to finish
    /// on its own: nothing waits for it.
    fn teardown(mut self) {
        self.view.lock().expect("view").deleting = true;
        self.pulls.clear();
        if self.dir.exists() {
            self.meta.deleting_since = Some(self.ctx.clock.utc());
            self.meta.grace_seconds = grace(&self.manifest().pod).as_secs();
            self.meta.save(&self.dir);
        }
        let hooks: Vec<_> = (0..self.ctrs.len()).map(|i| self.pre_stop(i)).collect();
        let running: Vec<Running> = self
            .ctrs
            .iter_mut()
            .zip(hooks)
            .filter_map(|(c, h)| Some((c.running.take()?, h)))
            .collect();
        teardown_pod(&self.ctx, &self.uid, &self.log_name, &self.meta, running);
    }
}

/// Tears a pod down (its worker's, or an orphan's that a previous agent left): containers
/// stopped in parallel within what is left of the grace period, cgroups, leases, network,
/// sandbox, mounts, directories and logs.
pub fn teardown_pod(
    ctx: &NodeContext,
    uid: &str,
    log_name: &str,
    meta: &PodMeta,
    running: Vec<Running>,
) {
    let Ok(dir) = ctx.run.join(&["pods", uid]) else {
        return;
    };
    // Every attempt with a state directory, running or not (an orphan's are all unknown,
    // and have no hooks).
    let mut attempts: Vec<Running> = running;
    for c in std::fs::read_dir(dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            if attempts
                .iter()
                .any(|(r, _)| r.state == a.path().join("state"))
            {
                continue;
            }
            if let Some(pc) = ctx.runtime.find_container(&a.path()) {
                attempts.push((pc, None));
            }
        }
    }
    let grace = meta.grace_left(ctx.clock.utc());
    let stopped = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        for (r, hook) in &attempts {
            let stopped = &stopped;
            let stop = move |grace: Duration| {
                let hook = hook.clone().filter(|_| !grace.is_zero());
                if !stop_with_hook(ctx.runtime.as_ref(), ctx.prober.as_ref(), r, hook, grace) {
                    stopped.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            };
            // A thread each (at most a pod's container limit): every container gets the
            // whole grace period, not a share of it.
            if std::thread::Builder::new()
                .name("stop".into())
                .spawn_scoped(s, move || stop(grace))
                .is_err()
            {
                stop(Duration::ZERO);
            }
        }
    });
    if !stopped.into_inner() {
        // Its state is kept, so that the agent finds the pod again and retries: removing
        // it now would leave a container nobody knows about.
        tracing::warn!(
            uid,
            "a container of the pod could not be stopped yet; trying again later"
        );
        return;
    }
    // Whatever is left in the pod's cgroup (processes a container forked into the
    // background) goes with cgroup.kill, then the cgroups themselves, before any root is
    // unmounted.
    if let Some(cgs) = &ctx.cgroups {
        if let Err(e) = cgs.remove_pod(uid) {
            tracing::warn!(uid, error = %e, "removing the pod's cgroup");
        }
    }
    unmount_attempts(ctx, &dir);
    // The pod network, if it was ever attached (or its namespace pinned: an ADD cut short).
    let attached = dir.join("network.json").exists() || dir.join("sandbox/ns/net").exists();
    if let (Some(n), true) = (&ctx.network, attached) {
        let prev = crate::node::network::Attachment::load(&dir).map(|a| a.result);
        if let Err(e) = n.detach(uid, &dir.join("sandbox/ns/net"), prev.as_ref()) {
            tracing::warn!(uid, error = %e, "CNI DEL");
        }
    }
    if let Err(e) = ctx.runtime.remove_sandbox(&dir) {
        tracing::warn!(uid, error = %e, "removing the pod sandbox");
    }
    // Volumes, /etc files and anything else still mounted are detached by the removal,
    // which never descends through a mount.
    for (root, parts) in [
        (&ctx.state, vec!["pods", uid]),
        (&ctx.state, vec!["containers", uid]),
        (&ctx.logs, vec![log_name]),
        (&ctx.run, vec!["pods", uid]),
    ] {
        if let Err(e) = root.remove_all(&parts) {
            tracing::warn!(uid, error = %e, "removing the pod's files");
        }
    }
}

/// The file in a container attempt's directory bound at its terminationMessagePath.
const TERMINATION_LOG: &str = "termination-log";

/// A container's terminationMessagePath (the API server's default when absent).
fn termination_path(c: &Container) -> String {
    c.termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into())
}

/// A container to stop, and its preStop hook.
pub type Running = (
    PodContainer,
    Option<(super::probe::Action, super::probe::Target)>,
);

/// The extra time SIGTERM gets when a preStop hook used the whole grace period (the
/// kubelet's one-off 2 s).
const HOOK_EXTRA: Duration = Duration::from_secs(2);

/// Stops a container as the kubelet does: its preStop hook (within the grace period), then
/// SIGTERM, what is left of the grace period, SIGKILL.
fn stop_with_hook(
    rt: &dyn super::cri::RuntimeService,
    prober: &dyn super::cri::Prober,
    pc: &PodContainer,
    hook: Option<(super::probe::Action, super::probe::Target)>,
    grace: Duration,
) -> bool {
    let start = std::time::Instant::now();
    let mut left = grace;
    if let Some((action, target)) = hook {
        let name = target.container.clone();
        if let Err(e) = prober.run_hook(&action, target, grace) {
            tracing::warn!(container = %name, error = %e, "the preStop hook failed");
        }
        left = grace.saturating_sub(start.elapsed());
        if left.is_zero() {
            left = HOOK_EXTRA;
        }
    }
    rt.stop_container(pc, left)
}

/// Stops what may still run in one attempt of a container, unmounts it, ends its image
/// lease and removes its directories (runtime state, and its writable layer on disk).
fn remove_attempt(ctx: &NodeContext, dir: &Path) {
    if let Some(pc) = ctx.runtime.find_container(dir) {
        if !ctx.runtime.stop_container(&pc, Duration::ZERO) {
            // Kept: the pod's teardown (or the next agent) tries again.
            tracing::warn!(dir = %dir.display(), "a container attempt could not be stopped; its state is kept");
            return;
        }
    }
    ctx.runtime.release_attempt(dir);
    if let Err(e) = ctx.run.remove_path(dir) {
        tracing::warn!(error = %e, "removing a container attempt");
    }
    if let Ok(rel) = dir.strip_prefix(ctx.run.path()) {
        if let Err(e) = ctx.state.remove_path(&ctx.state.path().join(rel)) {
            tracing::warn!(error = %e, "removing a container's writable layer");
        }
    }
}

/// Unmounts every container attempt's rootfs under a pod directory and ends its image lease
/// (best effort).
pub fn unmount_attempts(ctx: &NodeContext, pod_dir: &Path) {
    for c in std::fs::read_dir(pod_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            ctx.runtime.release_attempt(&a.path());
        }
    }
}

/// The pod's hostname: `spec.hostname`, or its name cut to a DNS label's 63 characters
/// (without a trailing '-' or '.'), as the kubelet makes it.
pub fn pod_hostname(m: &PodManifest) -> String {
    match m.pod.spec.as_ref().and_then(|s| s.hostname.clone()) {
        Some(h) => h,
        None => m
            .name
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string(),
    }
}

/// The kubelet-managed /etc/hosts, /etc/hostname and /etc/resolv.conf of a pod: 0644 (any
/// user of the container reads them; the kubelet writes them so), on a small tmpfs of the
/// pod's own (`nosuid,nodev,noexec`), so that a container writing to them can neither fill
/// the node's `/run` nor grow them without bound. An adopted pod keeps the files it has.
pub(super) fn write_etc_files(
    dir: &Path,
    m: &PodManifest,
    ip: Option<&str>,
    cluster_dns: Option<&crate::api::resolv::ClusterDns>,
    host_resolv_conf: &str,
) -> std::io::Result<()> {
    let spec = m.pod.spec.as_ref();
    let hostname = pod_hostname(m);
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    if crate::node::safefs::is_mount_point(&etc) {
        return Ok(());
    }
    let hosts = if spec.and_then(|s| s.host_network).unwrap_or(false) {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        // With a subdomain (and a cluster domain), the pod's own name is its FQDN under it
        // too, as the kubelet writes it: `10.244.0.5\tweb-0.web.default.svc.cluster.local\tweb-0`.
        let names = match (spec.and_then(|s| s.subdomain.as_deref()), cluster_dns) {
            (Some(sub), Some(d)) if !sub.is_empty() => format!(
                "{hostname}.{sub}.{}.svc.{}\t{hostname}",
                m.pod.metadata.namespace.as_deref().unwrap_or("default"),
                d.domain
            ),
            _ => hostname.clone(),
        };
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{names}\n", ip.unwrap_or("127.0.1.1")
        )
    };
    // The pod's dnsPolicy and dnsConfig over the cluster DNS or the node's resolv.conf
    // (with no cluster DNS, ClusterFirst falls back to the node's, as the kubelet does).
    let host = crate::api::resolv::Resolv::parse(host_resolv_conf);
    let resolv = match spec {
        Some(s) => crate::api::resolv::pod_resolv(
            s,
            m.pod.metadata.namespace.as_deref().unwrap_or("default"),
            cluster_dns,
            &host,
        ),
        None => host,
    }
    .render()
    .into_bytes();
    // Room for the files and for a container to rewrite them a few times, never more.
    let size = ((hosts.len() + resolv.len()) as u64 * 4).max(256 << 10);
    let opts =
        std::ffi::CString::new(format!("mode=0755,size={size}")).map_err(std::io::Error::other)?;
    use rustix::mount::MountFlags as F;
    rustix::mount::mount(
        "tmpfs",
        &etc,
        "tmpfs",
        F::NOSUID | F::NODEV | F::NOEXEC,
        Some(opts.as_c_str()),
    )?;
    let d = std::fs::File::open(&etc)?;
    crate::node::safefs::write_at(&d, "hosts", hosts.as_bytes(), 0o644)?;
    crate::node::safefs::write_at(&d, "hostname", format!("{hostname}\n").as_bytes(), 0o644)?;
    crate::node::safefs::write_at(&d, "resolv.conf", &resolv, 0o644)
}

#[cfg(test)]
mod tests;
