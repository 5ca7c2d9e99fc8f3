//! In-memory models of the node below the pod worker, for its unit tests: a clock that moves
//! only when told, an image service whose pulls can fail or hang, a runtime whose containers
//! exit, lose their shim or ignore SIGTERM on command, and a pod network handing out
//! addresses. Each records what the worker asked of it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Clock, ContainerState, CriError, ImageService, PodNetwork, RuntimeService};
use crate::node::container::{PodContainer, PodContainerSpec};
use crate::node::kubelet::manifests::PodManifest;
use crate::node::network::Attachment;
use crate::node::sandbox::SandboxOptions;
use crate::node::shim::ExitStatus;

/// Time that moves only with [`FakeClock::advance`].
pub struct FakeClock {
    start: Instant,
    utc: DateTime<Utc>,
    offset: Mutex<Duration>,
}

impl FakeClock {
    pub fn new() -> Arc<FakeClock> {
        Arc::new(FakeClock {
            start: Instant::now(),
            utc: Utc::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    pub fn advance(&self, d: Duration) {
        *self.offset.lock().expect("clock") += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().expect("clock")
    }

    fn utc(&self) -> DateTime<Utc> {
        self.utc + *self.offset.lock().expect("clock")
    }
}

#[derive(Default)]
struct ImagesState {
    present: BTreeSet<String>,
    /// Pulls of an image still to fail, with the error.
    failing: BTreeMap<String, (u32, String)>,
    /// Pulls wait while this is set.
    hold: bool,
    pulls_started: u32,
    users: BTreeMap<String, String>,
}

/// Images: pulls succeed (and make the image present) unless told to fail or to hang.
#[derive(Default)]
pub struct FakeImages {
    s: Mutex<ImagesState>,
    cv: Condvar,
}

impl FakeImages {
    /// `image` is stored already.
    pub fn add(&self, image: &str) {
        self.s.lock().expect("images").present.insert(image.into());
    }

    /// The next `n` pulls of `image` fail with `error`.
    pub fn fail(&self, image: &str, n: u32, error: &str) {
        let mut s = self.s.lock().expect("images");
        s.failing.insert(image.into(), (n, error.into()));
    }

    /// Pulls hang until [`FakeImages::release`].
    pub fn hold(&self) {
        self.s.lock().expect("images").hold = true;
    }

    pub fn release(&self) {
        self.s.lock().expect("images").hold = false;
        self.cv.notify_all();
    }

    /// Waits until `n` pulls have begun.
    pub fn wait_pulls_started(&self, n: u32) {
        let s = self.s.lock().expect("images");
        let _s = self
            .cv
            .wait_while(s, |s| s.pulls_started < n)
            .expect("images");
    }

    pub fn pulls_started(&self) -> u32 {
        self.s.lock().expect("images").pulls_started
    }

    pub fn set_user(&self, image: &str, user: &str) {
        let mut s = self.s.lock().expect("images");
        s.present.insert(image.into());
        s.users.insert(image.into(), user.into());
    }
}

impl ImageService for FakeImages {
    fn present(&self, image: &str) -> bool {
        self.s.lock().expect("images").present.contains(image)
    }

    fn pull(&self, image: &str) -> Result<usize, CriError> {
        let mut s = self.s.lock().expect("images");
        s.pulls_started += 1;
        self.cv.notify_all();
        let mut s = self.cv.wait_while(s, |s| s.hold).expect("images");
        if let Some((n, e)) = s.failing.get_mut(image) {
            if *n > 0 {
                *n -= 1;
                return Err(e.clone().into());
            }
        }
        s.present.insert(image.into());
        Ok(1)
    }

    fn user(&self, image: &str) -> Result<Option<String>, CriError> {
        Ok(self.s.lock().expect("images").users.get(image).cloned())
    }
}

struct FakeContainer {
    /// The container's name (from its attempt directory: `.../containers/<name>/<attempt>`).
    name: String,
    state: ContainerState,
    /// It ignores SIGTERM (only the SIGKILL after the grace period ends it).
    stubborn: bool,
}

#[derive(Default)]
struct RuntimeState {
    sandboxes: BTreeSet<PathBuf>,
    next_pid: i32,
    /// By state directory.
    containers: BTreeMap<PathBuf, FakeContainer>,
    starts: Vec<String>,
    stops: Vec<(String, Duration)>,
    /// Attempts holding an image lease (from their start to their release).
    leases: BTreeSet<PathBuf>,
    fail_starts: Option<String>,
    pod_files: Vec<Option<String>>,
}

/// Sandboxes and containers in memory. The directories the worker expects to find on disk
/// (`<pod>/sandbox`, `<attempt>/state`) are made, nothing else.
pub struct FakeRuntime {
    clock: Arc<FakeClock>,
    s: Mutex<RuntimeState>,
}

impl FakeRuntime {
    pub fn new(clock: Arc<FakeClock>) -> FakeRuntime {
        FakeRuntime {
            clock,
            s: Mutex::new(RuntimeState {
                next_pid: 1000,
                ..Default::default()
            }),
        }
    }

    /// Names of the containers started, in order.
    pub fn starts(&self) -> Vec<String> {
        self.s.lock().expect("runtime").starts.clone()
    }

    /// Stop requests: container name and grace period.
    pub fn stops(&self) -> Vec<(String, Duration)> {
        self.s.lock().expect("runtime").stops.clone()
    }

    pub fn sandboxes(&self) -> usize {
        self.s.lock().expect("runtime").sandboxes.len()
    }

    /// Image leases held.
    pub fn leases(&self) -> usize {
        self.s.lock().expect("runtime").leases.len()
    }

    /// The address each write of the pod's /etc files had.
    pub fn pod_files(&self) -> Vec<Option<String>> {
        self.s.lock().expect("runtime").pod_files.clone()
    }

    /// Starts fail with `error` (none: they succeed again).
    pub fn fail_starts(&self, error: Option<&str>) {
        self.s.lock().expect("runtime").fail_starts = error.map(str::to_string);
    }

    fn with_running(&self, name: &str, f: impl FnOnce(&mut FakeContainer)) {
        let mut s = self.s.lock().expect("runtime");
        let c = s
            .containers
            .values_mut()
            .find(|c| {
                c.name == name
                    && matches!(c.state, ContainerState::Running | ContainerState::ShimLost)
            })
            .unwrap_or_else(|| panic!("no running container {name}"));
        f(c);
    }

    /// The running container `name` exits with `code`.
    pub fn exit(&self, name: &str, code: i32) {
        let finished_at = self
            .clock
            .utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.with_running(name, |c| {
            c.state = ContainerState::Exited(ExitStatus {
                code,
                finished_at,
                reason: String::new(),
            })
        });
    }

    /// The shim of the running container `name` dies; the container runs on.
    pub fn lose_shim(&self, name: &str) {
        self.with_running(name, |c| c.state = ContainerState::ShimLost);
    }

    /// The running container `name` ignores SIGTERM.
    pub fn stubborn(&self, name: &str) {
        self.with_running(name, |c| c.stubborn = true);
    }

    pub fn running(&self, name: &str) -> bool {
        self.s
            .lock()
            .expect("runtime")
            .containers
            .values()
            .any(|c| {
                c.name == name
                    && matches!(c.state, ContainerState::Running | ContainerState::ShimLost)
            })
    }
}

fn container_name(attempt_dir: &Path) -> String {
    attempt_dir
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl RuntimeService for FakeRuntime {
    fn create_sandbox(&self, pod_dir: &Path, _o: &SandboxOptions) -> Result<(), CriError> {
        std::fs::create_dir_all(pod_dir.join("sandbox"))?;
        self.s
            .lock()
            .expect("runtime")
            .sandboxes
            .insert(pod_dir.to_path_buf());
        Ok(())
    }

    fn remove_sandbox(&self, pod_dir: &Path) -> Result<(), CriError> {
        self.s.lock().expect("runtime").sandboxes.remove(pod_dir);
        Ok(())
    }

    fn write_pod_files(
        &self,
        _pod_dir: &Path,
        _m: &PodManifest,
        ip: Option<&str>,
    ) -> Result<(), CriError> {
        self.s
            .lock()
            .expect("runtime")
            .pod_files
            .push(ip.map(str::to_string));
        Ok(())
    }

    fn start_container(
        &self,
        pod_dir: &Path,
        _hostname: &str,
        attempt_dir: &Path,
        _c: &PodContainerSpec,
    ) -> Result<PodContainer, CriError> {
        let mut s = self.s.lock().expect("runtime");
        assert!(
            s.sandboxes.contains(pod_dir),
            "a container needs its sandbox"
        );
        if let Some(e) = &s.fail_starts {
            return Err(e.clone().into());
        }
        let state = attempt_dir.join("state");
        std::fs::create_dir_all(&state)?;
        s.next_pid += 1;
        let pid = s.next_pid;
        let name = container_name(attempt_dir);
        s.starts.push(name.clone());
        s.leases.insert(attempt_dir.to_path_buf());
        s.containers.insert(
            state.clone(),
            FakeContainer {
                name,
                state: ContainerState::Running,
                stubborn: false,
            },
        );
        Ok(PodContainer {
            state,
            rootfs: attempt_dir.join("rootfs"),
            pid,
        })
    }

    fn find_container(&self, attempt_dir: &Path) -> Option<PodContainer> {
        let state = attempt_dir.join("state");
        let s = self.s.lock().expect("runtime");
        s.containers.get(&state).map(|_| PodContainer {
            state: state.clone(),
            rootfs: attempt_dir.join("rootfs"),
            pid: 1,
        })
    }

    fn container_state(&self, c: &PodContainer) -> ContainerState {
        let s = self.s.lock().expect("runtime");
        match s.containers.get(&c.state) {
            Some(c) => c.state.clone(),
            None => ContainerState::Exited(ExitStatus {
                code: 137,
                finished_at: self
                    .clock
                    .utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                reason: "ContainerStatusUnknown".into(),
            }),
        }
    }

    fn exit_fd(&self, _c: &PodContainer) -> Option<OwnedFd> {
        None
    }

    fn stop_container(&self, c: &PodContainer, grace: Duration) -> bool {
        let finished_at = self
            .clock
            .utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut s = self.s.lock().expect("runtime");
        let Some(fc) = s.containers.get_mut(&c.state) else {
            return true;
        };
        let name = fc.name.clone();
        if matches!(fc.state, ContainerState::Running | ContainerState::ShimLost) {
            // SIGTERM ends it, or the SIGKILL after the grace period does.
            let code = if fc.stubborn { 137 } else { 143 };
            fc.state = ContainerState::Exited(ExitStatus {
                code,
                finished_at,
                reason: String::new(),
            });
            s.stops.push((name, grace));
        }
        true
    }

    fn release_attempt(&self, attempt_dir: &Path) {
        self.s.lock().expect("runtime").leases.remove(attempt_dir);
    }
}

#[derive(Default)]
struct NetworkState {
    next: u8,
    attached: BTreeMap<String, std::net::Ipv4Addr>,
    broken: bool,
}

/// A pod network handing out 10.88.0.2, .3, ...
#[derive(Default)]
pub struct FakeNetwork {
    s: Mutex<NetworkState>,
}

impl FakeNetwork {
    /// CHECK fails from now on (a deleted veth, say).
    pub fn break_links(&self) {
        self.s.lock().expect("network").broken = true;
    }

    pub fn attached(&self) -> usize {
        self.s.lock().expect("network").attached.len()
    }
}

impl PodNetwork for FakeNetwork {
    fn attach(&self, id: &str, _netns: &Path) -> Result<Attachment, CriError> {
        let mut s = self.s.lock().expect("network");
        s.next += 1;
        s.broken = false;
        let ip = std::net::Ipv4Addr::new(10, 88, 0, 1 + s.next);
        s.attached.insert(id.into(), ip);
        Ok(Attachment {
            ip: Some(ip),
            result: serde_json::json!({ "ip": ip.to_string() }),
        })
    }

    fn check(&self, id: &str, _netns: &Path, _prev: &Value) -> Result<(), CriError> {
        let s = self.s.lock().expect("network");
        match (s.broken, s.attached.contains_key(id)) {
            (false, true) => Ok(()),
            _ => Err("the pod's veth is gone".into()),
        }
    }

    fn detach(&self, id: &str, _netns: &Path, _prev: Option<&Value>) -> Result<(), CriError> {
        self.s.lock().expect("network").attached.remove(id);
        Ok(())
    }

    fn gc(&self, valid: &[String]) -> Result<(), CriError> {
        self.s
            .lock()
            .expect("network")
            .attached
            .retain(|k, _| valid.contains(k));
        Ok(())
    }
}

/// A prober whose runs end at once with the outcome set for their container and kind of
/// action (`exec`, `http`, `tcp`, `grpc`; success when none is set), recording each run as
/// (container, kind of action).
#[derive(Default)]
pub struct FakeProber {
    outcomes: Mutex<BTreeMap<(String, String), Result<(), String>>>,
    runs: Mutex<Vec<(String, String)>>,
}

fn action_kind(a: &crate::node::kubelet::probe::Action) -> &'static str {
    use crate::node::kubelet::probe::Action;
    match a {
        Action::Exec(_) => "exec",
        Action::Http { .. } => "http",
        Action::Tcp { .. } => "tcp",
        Action::Grpc { .. } => "grpc",
        Action::Invalid(_) => "invalid",
        Action::Sleep(_) => "sleep",
    }
}

impl FakeProber {
    pub fn set(&self, container: &str, action: &str, outcome: Result<(), String>) {
        self.outcomes
            .lock()
            .expect("outcomes")
            .insert((container.into(), action.into()), outcome);
    }

    pub fn runs(&self) -> Vec<(String, String)> {
        self.runs.lock().expect("runs").clone()
    }
}

impl super::Prober for FakeProber {
    fn start(
        &self,
        action: &crate::node::kubelet::probe::Action,
        target: crate::node::kubelet::probe::Target,
        _timeout: Duration,
    ) -> std::io::Result<super::ProbeJob> {
        let key = (target.container.clone(), action_kind(action).to_string());
        self.runs.lock().expect("runs").push(key.clone());
        let out = self
            .outcomes
            .lock()
            .expect("outcomes")
            .get(&key)
            .cloned()
            .unwrap_or(Ok(()));
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = tx.send(out);
        drop(w);
        Ok(super::ProbeJob {
            result: rx,
            done: r,
        })
    }

    fn run_hook(
        &self,
        action: &crate::node::kubelet::probe::Action,
        target: crate::node::kubelet::probe::Target,
        _timeout: Duration,
    ) -> Result<(), String> {
        let key = (target.container.clone(), action_kind(action).to_string());
        self.runs.lock().expect("runs").push(key.clone());
        self.outcomes
            .lock()
            .expect("outcomes")
            .get(&key)
            .cloned()
            .unwrap_or(Ok(()))
    }
}
