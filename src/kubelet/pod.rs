//! One pod's life, in a worker thread of its own: sandbox, images, init containers in order,
//! app containers, restarts with the kubelet's back-off, status, and teardown.
//!
//! The worker sleeps in poll(2) on its containers' shim pidfds (an exit wakes it at once), a
//! wake pipe (stop requests) and the next back-off deadline. Its state is persisted in
//! `<run-dir>/pods/<uid>/pod.json`, so a restarted agent adopts running containers.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

use super::manifests::PodManifest;
use crate::container::{PodContainer, PodContainerSpec};
use crate::sandbox::{Sandbox, SandboxOptions};

/// Kubelet restart back-off: 10 s, doubling, at most 5 min; reset after 10 min of running.
pub const BACKOFF_START: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What the agent shares with every pod worker.
pub struct NodeContext {
    pub exe: PathBuf,
    pub store: oci::image::ImageStore,
    pub root: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub node_name: String,
    pub client: oci::registry::ClientOptions,
    /// ConfigMaps and Secrets from the manifests directory.
    pub objects: std::sync::RwLock<super::volumes::Objects>,
    /// The pod network.
    pub network: Option<crate::network::Network>,
    /// Written to when a pod's address or readiness changes (the agent recomputes endpoints).
    pub changed: OwnedFd,
    /// Resource limits (none with `--cgroups=disabled`).
    pub cgroups: Option<Arc<crate::cgroup::Cgroups>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
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
    pub manifest: PodManifest,
    pub phase: String,
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
}

impl PodView {
    /// Ready for Service traffic: running, not being deleted, every app container running.
    pub fn ready(&self) -> bool {
        !self.deleting
            && self.phase == "Running"
            && self
                .containers
                .iter()
                .filter(|c| !c.init)
                .all(|c| matches!(c.state, CState::Running { .. }))
    }

    pub fn event(&mut self, kind: &str, reason: &str, message: String) {
        tracing::info!(pod = %self.manifest.name, reason, %message, "event");
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
    waiting: Option<(String, String)>,
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

fn grace(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
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

pub struct Worker {
    ctx: Arc<NodeContext>,
    view: Arc<Mutex<PodView>>,
    dir: PathBuf,
    logs: PathBuf,
    sandbox: Option<Sandbox>,
    /// The pod's directory on disk (emptyDir volumes, writable layers).
    disk: PathBuf,
    volumes: Option<BTreeMap<String, PathBuf>>,
    ctrs: Vec<Ctr>,
    pulled: BTreeMap<String, ()>,
    /// An adopted sandbox whose network is gone: why, and the address it had.
    lost_network: Option<(String, Option<String>)>,
    /// The address and readiness last reported to the agent.
    reported: (Option<String>, bool),
    /// Requests and limits per container, and the pod's cgroup once made.
    resources: BTreeMap<String, crate::cgroup::resources::ContainerResources>,
    cgroup: Option<String>,
}

fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes integers only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: the kernel returned a new descriptor we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn shim_pid(state: &Path) -> Option<i32> {
    std::fs::read_to_string(state.join("shim.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Worker {
    pub fn new(ctx: Arc<NodeContext>, view: Arc<Mutex<PodView>>) -> Worker {
        let m = view.lock().expect("view").manifest.clone();
        let dir = ctx.run_dir.join("pods").join(&m.uid);
        let logs = ctx
            .log_dir
            .join(format!("{}_{}_{}", m.namespace, m.name, m.uid));
        let spec = m.pod.spec.clone().unwrap_or_default();
        let persisted: BTreeMap<String, Persisted> = std::fs::read(dir.join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let ctrs = spec
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, true))
            .chain(spec.containers.clone().into_iter().map(|c| (c, false)))
            .map(|(c, init)| {
                let p = persisted.get(&c.name).cloned().unwrap_or_default();
                Ctr {
                    spec: c,
                    init,
                    p,
                    running: None,
                    not_before: None,
                    waiting: None,
                }
            })
            .collect();
        Worker {
            disk: ctx.root.join("pods").join(&m.uid),
            volumes: None,
            ctx,
            view,
            dir,
            logs,
            sandbox: None,
            ctrs,
            pulled: BTreeMap::new(),
            lost_network: None,
            reported: (None, false),
            // An invalid pod never starts, so its resources are never needed.
            resources: crate::cgroup::resources::pod(&m.pod)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            cgroup: None,
        }
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
        use crate::cgroup::resources;
        let spec = self.manifest().pod.spec.unwrap_or_default();
        let of = |cs: &[Container]| -> Vec<resources::ContainerResources> {
            cs.iter()
                .filter_map(|c| self.resources.get(&c.name).cloned())
                .collect()
        };
        let init = of(spec.init_containers.as_deref().unwrap_or(&[]));
        let apps = of(&spec.containers);
        let all: Vec<_> = init.iter().chain(&apps).cloned().collect();
        let qos = resources::qos(&all);
        let uid = self.manifest().uid;
        match cgs.create_pod(&uid, qos, &resources::pod_total(&init, &apps)) {
            Ok(p) => {
                self.view.lock().expect("view").cgroup = Some(p.clone());
                self.cgroup = Some(p);
                true
            }
            Err(e) => {
                let msg = format!("creating the pod cgroup: {e}");
                let mut v = self.view.lock().expect("view");
                if v.message.as_deref() != Some(msg.as_str()) {
                    v.event("Warning", "FailedCreatePodCgroup", msg.clone());
                }
                v.message = Some(msg);
                for c in &mut self.ctrs {
                    c.waiting = Some((
                        "ContainerCreating".into(),
                        "waiting for the pod cgroup".into(),
                    ));
                    c.not_before = Some(Instant::now() + Duration::from_secs(2));
                }
                false
            }
        }
    }

    /// The cgroup of one run of a container, when cgroups are on.
    fn container_cgroup(&self, name: &str, attempt: u32) -> Option<String> {
        self.cgroup
            .as_ref()
            .map(|p| crate::cgroup::container_path(p, name, attempt))
    }

    fn manifest(&self) -> PodManifest {
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
        if let Some(why) = &m.invalid {
            {
                let mut v = self.view.lock().expect("view");
                v.phase = "Failed".into();
                v.reason = Some("InvalidPod".into());
                v.message = Some(why.clone());
            }
            self.event("Warning", "FailedValidation", why.clone());
            let _ = stop.recv();
            self.teardown();
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
            self.publish();
            self.persist();
            self.wait(&wake);
        }
        self.teardown();
    }

    /// Picks up what a previous agent left running.
    fn adopt(&mut self) {
        if let Some(a) = crate::network::Attachment::load(&self.dir) {
            self.view.lock().expect("view").pod_ip = a.ip.map(|i| i.to_string());
        }
        if self.dir.join("sandbox").join("ready").exists() {
            self.sandbox = Some(Sandbox::open(&self.dir.join("sandbox")));
            self.reattach_if_lost();
        }
        for i in 0..self.ctrs.len() {
            let Some(attempt) = self.ctrs[i].p.attempt else {
                continue;
            };
            let d = self.attempt_dir(&self.ctrs[i].spec.name, attempt);
            let state = d.join("state");
            let Some(pid) = crate::shim::pid(&state) else {
                continue;
            };
            if crate::shim::exit_status(&state).is_none()
                && shim_pid(&state).is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
            {
                tracing::info!(container = %self.ctrs[i].spec.name, pid, "adopted a running container");
            }
            // Running or exited: `step` reads the exit status either way.
            self.ctrs[i].running = Some(PodContainer {
                state,
                rootfs: d.join("rootfs"),
                pid,
            });
        }
    }

    fn host_network(&self) -> bool {
        let m = self.manifest();
        let spec = m.pod.spec.as_ref();
        spec.and_then(|s| s.host_network).unwrap_or(false)
    }

    /// ADD through the pod network (none for hostNetwork pods or without a network); records
    /// the attachment in the pod directory and the address in the pod's status.
    fn attach_network(&mut self) -> anyhow::Result<()> {
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
        let old = crate::network::Attachment::load(&self.dir);
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

    fn step(&mut self) {
        let m = self.manifest();
        let pod = m.pod.clone();
        let policy = restart_policy(&pod);
        if !self.ensure_cgroup() {
            return;
        }
        if self.sandbox.is_none() {
            let spec = pod.spec.clone().unwrap_or_default();
            let hostname = spec
                .hostname
                .clone()
                .unwrap_or_else(|| m.name.chars().take(63).collect());
            let o = SandboxOptions {
                hostname,
                host_network: spec.host_network.unwrap_or(false),
                host_ipc: spec.host_ipc.unwrap_or(false),
                share_pid: spec.share_process_namespace.unwrap_or(false),
            };
            let _ = std::fs::create_dir_all(&self.dir);
            if self.dir.join("sandbox").exists() {
                let _ = Sandbox::open(&self.dir.join("sandbox")).remove();
            }
            match Sandbox::create(&self.ctx.exe, &self.dir.join("sandbox"), &o) {
                Ok(s) => {
                    // The pod network, before the sandbox counts as ready.
                    if let Err(e) = self.attach_network() {
                        let _ = s.remove();
                        let msg = format!("network: {e:#}");
                        let mut v = self.view.lock().expect("view");
                        if v.message.as_deref() != Some(msg.as_str()) {
                            v.event("Warning", "FailedCreatePodSandBox", msg.clone());
                        }
                        v.message = Some(msg);
                        for c in &mut self.ctrs {
                            c.waiting = Some((
                                "ContainerCreating".into(),
                                "waiting for the pod network".into(),
                            ));
                            c.not_before = Some(Instant::now() + Duration::from_secs(2));
                        }
                        return;
                    }
                    // Adoption trusts only a sandbox that was completed.
                    let _ = oci::fsutil::replace(&self.dir.join("sandbox").join("ready"), b"");
                    self.sandbox = Some(s)
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
            match super::volumes::prepare(&pod, &m.namespace, &self.disk, &self.dir, &objects)
                .and_then(|v| {
                    let ip = self.view.lock().expect("view").pod_ip.clone();
                    write_etc_files(&self.dir, &pod, &m.name, ip.as_deref())
                        .map_err(|e| e.to_string())?;
                    Ok(v)
                }) {
                Ok(v) => self.volumes = Some(v),
                Err(e) => {
                    let mut v = self.view.lock().expect("view");
                    if v.message.as_deref() != Some(e.as_str()) {
                        v.event("Warning", "FailedMount", e.clone());
                    }
                    v.message = Some(e);
                    for c in &mut self.ctrs {
                        c.waiting =
                            Some(("ContainerCreating".into(), "waiting for volumes".into()));
                        c.not_before = Some(Instant::now() + Duration::from_secs(2));
                    }
                    return;
                }
            }
            self.view.lock().expect("view").message = None;
        }
        // Collect exits.
        let now = Instant::now();
        for i in 0..self.ctrs.len() {
            let Some(run) = &self.ctrs[i].running else {
                continue;
            };
            let alive =
                |pid: Option<i32>| pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            let exit = match crate::shim::exit_status(&run.state) {
                Some(e) => e,
                // The shim and its container are both gone without a record (e.g. the shim was
                // killed): report it as Kubernetes does and let the restart policy act.
                None if !alive(shim_pid(&run.state)) && !alive(Some(run.pid)) => {
                    crate::shim::ExitStatus {
                        code: 137,
                        finished_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                        reason: "ContainerStatusUnknown".into(),
                    }
                }
                None => continue,
            };
            let layer = self
                .disk
                .join("containers")
                .join(&self.ctrs[i].spec.name)
                .join(self.ctrs[i].p.attempt.unwrap_or(0).to_string());
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
            let _ = run.remove_with(Some(&layer));
            run.release(&self.ctx.store);
            let c = &mut self.ctrs[i];
            c.running = None;
            let finished = DateTime::parse_from_rfc3339(&exit.finished_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now());
            let reason = match (exit.code, exit.reason.as_str()) {
                (_, "ContainerStatusUnknown") => "ContainerStatusUnknown",
                (_, "OOMKilled") => "OOMKilled",
                (0, _) => "Completed",
                _ => "Error",
            };
            c.p.last = Some(CState::Terminated {
                exit_code: exit.code,
                reason: reason.into(),
                started_at: c.p.started_at,
                finished_at: finished,
            });
            let ran =
                c.p.started_at
                    .map(|s| (finished - s).to_std().unwrap_or_default())
                    .unwrap_or_default();
            let restart = match (c.init, policy.as_str()) {
                (true, _) if exit.code == 0 => false,
                (true, "Never") => false,
                (_, "Always") if !c.init => true,
                (_, "OnFailure") | (true, _) => exit.code != 0,
                _ => false,
            };
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
                    "CrashLoopBackOff".into(),
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
    }

    fn start(&mut self, i: usize, m: &PodManifest) {
        let spec = self.ctrs[i].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        let present = self.ctx.store.get(&image).is_ok();
        if must_pull(&spec, present) && !self.pulled.contains_key(&image) {
            self.ctrs[i].waiting = Some((
                "ContainerCreating".into(),
                format!("pulling image {image:?}"),
            ));
            self.publish();
            self.event("Normal", "Pulling", format!("Pulling image {image:?}"));
            let r = self.ctx.store.pull(
                &image,
                self.ctx.client.clone(),
                &oci::image::PullOptions::default(),
                &oci::progress::NoProgress,
            );
            match r {
                Ok(rep) => {
                    self.pulled.insert(image.clone(), ());
                    self.event(
                        "Normal",
                        "Pulled",
                        format!(
                            "Successfully pulled image {image:?} ({} layers fetched)",
                            rep.layers_fetched
                        ),
                    );
                }
                Err(e) => {
                    let c = &mut self.ctrs[i];
                    let (reason, b) = match &c.waiting {
                        Some((r, _)) if r == "ErrImagePull" || r == "ImagePullBackOff" => (
                            "ImagePullBackOff",
                            (c.p.backoff_secs * 2)
                                .clamp(BACKOFF_START.as_secs(), BACKOFF_MAX.as_secs()),
                        ),
                        _ => ("ErrImagePull", BACKOFF_START.as_secs()),
                    };
                    c.p.backoff_secs = b;
                    c.not_before = Some(Instant::now() + Duration::from_secs(b));
                    c.waiting = Some((reason.into(), e.to_string()));
                    self.event(
                        "Warning",
                        "Failed",
                        format!("Failed to pull image {image:?}: {e}"),
                    );
                    return;
                }
            }
        }
        let attempt = self.ctrs[i].p.attempt.map(|a| a + 1).unwrap_or(0);
        // A restart is a start after the container has run before.
        let restart_count = if self.ctrs[i].p.started_at.is_some() {
            self.ctrs[i].p.restart_count + 1
        } else {
            0
        };
        let dir = self.attempt_dir(&spec.name, attempt);
        // Staged subPath mounts first: removing through them would empty the volumes.
        super::volumes::unmount_staged(&dir.join("subpaths"));
        let _ = std::fs::remove_dir_all(&dir);
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
        let objects = self.ctx.objects.read().expect("objects").clone();
        let config = super::volumes::env(
            &spec,
            &m.pod,
            &m.namespace,
            &m.uid,
            &self.ctx.node_name,
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
            Ok((env, binds))
        });
        let (env, binds) = match config {
            Ok(x) => x,
            Err(e) => {
                let ctr = &mut self.ctrs[i];
                ctr.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
                ctr.not_before = Some(Instant::now() + Duration::from_secs(2));
                self.event("Warning", "Failed", format!("Error: {e}"));
                return;
            }
        };
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let expand = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|a| a.iter().map(|x| super::volumes::expand(x, &vars)).collect())
        };
        let caps = sc.capabilities.clone().unwrap_or_default();
        let pod_spec = m.pod.spec.clone().unwrap_or_default();
        let hostname = pod_spec.hostname.clone().unwrap_or_else(|| m.name.clone());
        let c = PodContainerSpec {
            image: image.clone(),
            command: expand(&spec.command),
            args: expand(&spec.args),
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            user,
            working_dir: spec.working_dir.clone(),
            log_path: self
                .logs
                .join(&spec.name)
                .join(format!("{restart_count}.log")),
            privileged: sc.privileged.unwrap_or(false),
            cap_add: caps.add.unwrap_or_default(),
            cap_drop: caps.drop.unwrap_or_default(),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            allow_privilege_escalation: sc.allow_privilege_escalation.unwrap_or(false),
            host_pid: pod_spec.host_pid.unwrap_or(false),
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
                    .map_err(anyhow::Error::from)
            }
            _ => Ok(None),
        };
        let started = made.and_then(|cg| {
            c.cgroup = cg.clone();
            let sandbox = self.sandbox.as_ref().expect("sandbox exists");
            PodContainer::start(&self.ctx.exe, &self.ctx.store, sandbox, &hostname, &dir, &c)
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
                ctr.p.started_at = Some(Utc::now());
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
                ctr.not_before = Some(Instant::now() + Duration::from_secs(ctr.p.backoff_secs));
                ctr.waiting = Some(("CreateContainerError".into(), format!("{e:#}")));
                // Staged subPath mounts first: removing through them would empty the volumes.
                super::volumes::unmount_staged(&dir.join("subpaths"));
                let _ = std::fs::remove_dir_all(&dir);
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

    fn publish_view(&self) {
        let policy = restart_policy(&self.manifest().pod);
        let mut v = self.view.lock().expect("view");
        v.published = true;
        v.containers = self
            .ctrs
            .iter()
            .map(|c| {
                let state = if let Some(_r) = &c.running {
                    CState::Running {
                        started_at: c.p.started_at.unwrap_or_else(Utc::now),
                    }
                } else if let Some((reason, message)) = &c.waiting {
                    CState::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    }
                } else if c.p.done {
                    c.p.last.clone().unwrap_or(CState::Waiting {
                        reason: "Unknown".into(),
                        message: String::new(),
                    })
                } else if c.init || self.ctrs.iter().filter(|x| x.init).all(|x| x.p.done) {
                    CState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    }
                } else {
                    CState::Waiting {
                        reason: "PodInitializing".into(),
                        message: String::new(),
                    }
                };
                let last_state = if c.p.done { None } else { c.p.last.clone() };
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
            "Failed".into()
        } else if apps.iter().all(|c| c.p.done) && policy != "Always" {
            if apps.iter().all(|c| code(c) == 0) {
                "Succeeded".into()
            } else {
                "Failed".into()
            }
        } else if apps.iter().any(|c| c.running.is_some()) {
            if v.started.is_none() {
                v.started = Some(Utc::now());
            }
            "Running".into()
        } else {
            "Pending".into()
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
        let now = Instant::now();
        let next = self
            .ctrs
            .iter()
            .filter_map(|c| c.not_before)
            .filter(|t| *t > now)
            .min();
        let timeout = next
            .map(|t| t - now)
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        let fds: Vec<OwnedFd> = self
            .ctrs
            .iter()
            .filter_map(|c| c.running.as_ref())
            // The shim's exit means the container's is recorded; if the shim is gone but the
            // container is not, wait for the container itself (never spin on a dead shim).
            .filter_map(|r| {
                match shim_pid(&r.state).filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
                    Some(shim) => pidfd(shim),
                    None => pidfd(r.pid),
                }
            })
            .collect();
        let mut polls: Vec<rustix::event::PollFd> = fds
            .iter()
            .map(|f| rustix::event::PollFd::new(f, rustix::event::PollFlags::IN))
            .collect();
        polls.push(rustix::event::PollFd::new(
            wake,
            rustix::event::PollFlags::IN,
        ));
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let _ = rustix::event::poll(&mut polls, Some(&ts));
        // Drain the wake pipe.
        let mut buf = [0u8; 64];
        let _ = rustix::io::read(wake.as_fd(), &mut buf);
    }

    /// Stops every container (SIGTERM, grace period, SIGKILL) and removes all the pod's
    /// mounts, namespaces, directories and logs.
    fn teardown(mut self) {
        self.view.lock().expect("view").deleting = true;
        let grace = grace(&self.manifest().pod);
        let running: Vec<PodContainer> = self
            .ctrs
            .iter_mut()
            .filter_map(|c| c.running.take())
            .collect();
        std::thread::scope(|s| {
            for r in &running {
                s.spawn(move || stop_container(r, grace));
            }
        });
        // Whatever is left in the pod's cgroup (processes a container forked into the
        // background) goes with cgroup.kill, then the cgroups themselves, before any root is
        // unmounted.
        if let Some(cgs) = &self.ctx.cgroups {
            if let Err(e) = cgs.remove_pod(&self.manifest().uid) {
                tracing::warn!(error = %e, "removing the pod's cgroup");
            }
        }
        for r in &running {
            let _ = r.remove();
            r.release(&self.ctx.store);
        }
        if let Some(n) = self.ctx.network.as_ref().filter(|_| !self.host_network()) {
            let prev = crate::network::Attachment::load(&self.dir).map(|a| a.result);
            let netns = self.dir.join("sandbox/ns/net");
            if let Err(e) = n.detach(&self.manifest().uid, &netns, prev.as_ref()) {
                tracing::warn!(error = %e, "CNI DEL");
            }
        }
        if let Some(sb) = self.sandbox.take().or_else(|| {
            self.dir
                .join("sandbox")
                .exists()
                .then(|| Sandbox::open(&self.dir.join("sandbox")))
        }) {
            if let Err(e) = sb.remove() {
                tracing::warn!(error = %e, "removing the pod sandbox");
            }
        }
        // Leftover attempt directories (exited containers), volumes, and the pod's own.
        unmount_attempts(&self.dir);
        super::volumes::teardown(&self.dir);
        super::volumes::teardown(&self.disk);
        let _ = std::fs::remove_dir_all(&self.disk);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.logs);
        let _ = std::fs::remove_dir_all(self.ctx.root.join("containers").join(self.manifest().uid));
    }
}

/// SIGTERM, up to `grace` for the exit, then SIGKILL.
pub fn stop_container(r: &PodContainer, grace: Duration) {
    if crate::shim::exit_status(&r.state).is_some() {
        return;
    }
    let pid = rustix::process::Pid::from_raw(r.pid);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if crate::shim::wait_exit(&r.state, grace).is_err() {
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = crate::shim::wait_exit(&r.state, Duration::from_secs(10));
    }
}

/// Unmounts every container attempt's rootfs under a pod directory (best effort).
pub fn unmount_attempts(pod_dir: &Path) {
    for c in std::fs::read_dir(pod_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            super::volumes::unmount_staged(&a.path().join("subpaths"));
            let _ = rustix::mount::unmount(
                a.path().join("rootfs"),
                rustix::mount::UnmountFlags::DETACH,
            );
        }
    }
}

/// The kubelet-managed /etc/hosts, /etc/hostname and /etc/resolv.conf of a pod.
fn write_etc_files(dir: &Path, pod: &Pod, name: &str, ip: Option<&str>) -> std::io::Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.to_string());
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let hosts = if spec.host_network.unwrap_or(false) {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{hostname}\n", ip.unwrap_or("127.0.1.1")
        )
    };
    oci::fsutil::replace(&etc.join("hosts"), hosts.as_bytes())?;
    oci::fsutil::replace(&etc.join("hostname"), format!("{hostname}\n").as_bytes())?;
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    oci::fsutil::replace(&etc.join("resolv.conf"), &resolv)
}
