//! What a pod worker needs of its node, as four small traits (the kubelet's CRI, in process):
//! an [`ImageService`], a [`RuntimeService`] for sandboxes and containers, the [`PodNetwork`]
//! and a [`Clock`]. The `Node*` types are the real ones over `oci`, the sandbox, the shim and
//! CNI; [`fake`] (tests only) models them in memory, the way `cgroup::fs::FakeFs` models the
//! cgroupfs, so that the worker's state machine (restarts, back-off, init containers, pulls,
//! stops, adoption) is unit-tested without root, images or processes.
//!
//! The seam is where the worker stops deciding and starts doing: a call here changes or reads
//! the outside world, everything else in the worker is bookkeeping.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::manifests::PodManifest;
use crate::node::container::{PodContainer, PodContainerSpec};
use crate::node::network::Attachment;
use crate::node::sandbox::{Sandbox, SandboxOptions};
use crate::node::shim::ExitStatus;

/// An error of the node below the worker, kept whole (its causes print with `{:#}`). The
/// worker only reports it (in a container's waiting message or an event) and retries.
pub type CriError = Box<dyn std::error::Error + Send + Sync>;

/// Images: presence, pulls, and what a container's start needs to know of one.
pub trait ImageService: Send + Sync {
    /// The image is stored (by name or ID).
    fn present(&self, image: &str) -> bool;
    /// Pulls it, blocking; the worker calls this on a thread of its own. Returns the number
    /// of layers fetched.
    fn pull(&self, image: &str) -> Result<usize, CriError>;
    /// The user its config names (`USER`), if any.
    fn user(&self, image: &str) -> Result<Option<String>, CriError>;
}

/// How a started container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// It exited; its shim recorded how (or, when both are gone without a record, the
    /// worker is told `ContainerStatusUnknown`).
    Exited(ExitStatus),
    /// Its shim is gone but the container runs on: nobody logs it or will record its exit.
    ShimLost,
}

/// Sandboxes and containers.
pub trait RuntimeService: Send + Sync {
    /// Makes the pod's sandbox (namespaces, /dev/shm, pause process) under
    /// `<pod_dir>/sandbox`, replacing an unfinished one.
    fn create_sandbox(&self, pod_dir: &Path, o: &SandboxOptions) -> Result<(), CriError>;
    /// Removes it (namespaces unpinned, pause process killed); nothing to do if none.
    fn remove_sandbox(&self, pod_dir: &Path) -> Result<(), CriError>;
    /// Writes the kubelet-managed /etc/hosts, /etc/hostname and /etc/resolv.conf under
    /// `<pod_dir>/etc` (an adopted pod keeps those it has).
    fn write_pod_files(
        &self,
        pod_dir: &Path,
        m: &PodManifest,
        ip: Option<&str>,
    ) -> Result<(), CriError>;
    /// Mounts the image under `attempt_dir` and starts the container in the pod's sandbox.
    fn start_container(
        &self,
        pod_dir: &Path,
        hostname: &str,
        attempt_dir: &Path,
        c: &PodContainerSpec,
    ) -> Result<PodContainer, CriError>;
    /// The container an attempt directory records (started, running or not), if any.
    fn find_container(&self, attempt_dir: &Path) -> Option<PodContainer>;
    fn container_state(&self, c: &PodContainer) -> ContainerState;
    /// A descriptor that becomes readable when the container's exit is recorded (or, with
    /// its shim gone, when the container itself exits).
    fn exit_fd(&self, c: &PodContainer) -> Option<OwnedFd>;
    /// SIGTERM, up to `grace` for the exit, then SIGKILL. False if the container could not be
    /// reached and may still run.
    fn stop_container(&self, c: &PodContainer, grace: Duration) -> bool;
    /// Unmounts an attempt's root and staged subPaths and ends its image lease (its
    /// directories are the worker's to remove).
    fn release_attempt(&self, attempt_dir: &Path);
}

/// The pod network (CNI ADD, CHECK, DEL, GC).
pub trait PodNetwork: Send + Sync {
    fn attach(&self, id: &str, netns: &Path) -> Result<Attachment, CriError>;
    fn check(&self, id: &str, netns: &Path, prev: &Value) -> Result<(), CriError>;
    fn detach(&self, id: &str, netns: &Path, prev: Option<&Value>) -> Result<(), CriError>;
    /// Releases what is held for pods other than `valid`.
    fn gc(&self, valid: &[String]) -> Result<(), CriError>;
}

/// Container probes: one run of a probe's action, in the background.
pub trait Prober: Send + Sync {
    /// Starts one run; its outcome comes on the job's channel and its end makes `done`
    /// readable (the worker sleeps on it).
    fn start(
        &self,
        action: &super::probe::Action,
        target: super::probe::Target,
        timeout: Duration,
    ) -> std::io::Result<ProbeJob>;

    /// Runs a lifecycle hook (preStop) to its end or `timeout`, here and now.
    fn run_hook(
        &self,
        action: &super::probe::Action,
        target: super::probe::Target,
        timeout: Duration,
    ) -> Result<(), String>;
}

/// A probe run in flight.
pub struct ProbeJob {
    pub result: std::sync::mpsc::Receiver<Result<(), String>>,
    pub done: OwnedFd,
}

/// The node's prober: runs on the agent's runtime, within the probe's timeout.
pub struct NodeProber(pub super::probe::ExecVia);

impl Prober for NodeProber {
    fn start(
        &self,
        action: &super::probe::Action,
        target: super::probe::Target,
        timeout: Duration,
    ) -> std::io::Result<ProbeJob> {
        let (r, w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (action, via) = (action.clone(), self.0.clone());
        crate::node::rt::handle()?.spawn(async move {
            let out = super::probe::run(&action, &target, &via, timeout).await;
            // The worker may be gone (its pod deleted): then nobody reads this.
            let _ = tx.send(out);
            let _ = rustix::io::write(&w, b"x");
        });
        Ok(ProbeJob {
            result: rx,
            done: r,
        })
    }

    fn run_hook(
        &self,
        action: &super::probe::Action,
        target: super::probe::Target,
        timeout: Duration,
    ) -> Result<(), String> {
        let rt = crate::node::rt::handle().map_err(|e| format!("the node's runtime: {e}"))?;
        rt.block_on(super::probe::run(action, &target, &self.0, timeout))
    }
}

/// Time, monotonic for deadlines and wall-clock for what the API shows.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn utc(&self) -> DateTime<Utc>;
}

/// The node's image store and how registries are reached.
pub struct NodeImages {
    pub store: Arc<oci::image::ImageStore>,
    pub client: oci::registry::ClientOptions,
}

impl ImageService for NodeImages {
    fn present(&self, image: &str) -> bool {
        self.store.get(image).is_ok()
    }

    fn pull(&self, image: &str) -> Result<usize, CriError> {
        let r = self.store.pull(
            image,
            self.client.clone(),
            &oci::image::PullOptions::default(),
            &oci::progress::NoProgress,
        )?;
        Ok(r.layers_fetched)
    }

    fn user(&self, image: &str) -> Result<Option<String>, CriError> {
        let rec = self.store.get(image)?;
        Ok(self.store.config(&rec)?.config.and_then(|c| c.user))
    }
}

/// knode's runtime: sandboxes of pinned namespaces, containers under shims.
pub struct NodeRuntime {
    /// The knode binary (shims and pause processes).
    pub exe: PathBuf,
    pub store: Arc<oci::image::ImageStore>,
    /// The cluster DNS pods' resolv.conf points at (none: the node's).
    pub cluster_dns: Option<crate::api::resolv::ClusterDns>,
    /// The node's resolv.conf for pods (the kubelet's --resolv-conf).
    pub resolv_conf: PathBuf,
}

impl RuntimeService for NodeRuntime {
    fn create_sandbox(&self, pod_dir: &Path, o: &SandboxOptions) -> Result<(), CriError> {
        let dir = pod_dir.join("sandbox");
        if dir.exists() {
            let _ = Sandbox::open(&dir).remove();
        }
        Sandbox::create(&self.exe, &dir, o)?;
        Ok(())
    }

    fn remove_sandbox(&self, pod_dir: &Path) -> Result<(), CriError> {
        let dir = pod_dir.join("sandbox");
        if dir.exists() {
            Sandbox::open(&dir).remove()?;
        }
        Ok(())
    }

    fn write_pod_files(
        &self,
        pod_dir: &Path,
        m: &PodManifest,
        ip: Option<&str>,
    ) -> Result<(), CriError> {
        let host = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
        super::pod::write_etc_files(pod_dir, m, ip, self.cluster_dns.as_ref(), &host)
            .map_err(|e| format!("writing the pod's /etc files: {e}").into())
    }

    fn start_container(
        &self,
        pod_dir: &Path,
        hostname: &str,
        attempt_dir: &Path,
        c: &PodContainerSpec,
    ) -> Result<PodContainer, CriError> {
        let sandbox = Sandbox::open(&pod_dir.join("sandbox"));
        Ok(PodContainer::start(
            &self.exe,
            &self.store,
            &sandbox,
            hostname,
            attempt_dir,
            c,
        )?)
    }

    fn find_container(&self, attempt_dir: &Path) -> Option<PodContainer> {
        let state = attempt_dir.join("state");
        let pid = crate::node::shim::pid(&state)?;
        Some(PodContainer {
            state,
            rootfs: attempt_dir.join("rootfs"),
            pid,
        })
    }

    fn container_state(&self, c: &PodContainer) -> ContainerState {
        use crate::node::shim;
        match shim::exit_status(&c.state) {
            Some(e) => ContainerState::Exited(e),
            None if !shim::shim(&c.state).gone() => ContainerState::Running,
            // The shim and its container are both gone without a record (the shim was
            // killed, say): reported as Kubernetes does, and the restart policy acts.
            None if shim::container(&c.state).gone() => ContainerState::Exited(ExitStatus {
                code: 137,
                finished_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                reason: "ContainerStatusUnknown".into(),
            }),
            None => ContainerState::ShimLost,
        }
    }

    fn exit_fd(&self, c: &PodContainer) -> Option<OwnedFd> {
        // The shim's exit means the container's is recorded; if the shim is gone but the
        // container is not, wait for the container itself (never spin on a dead shim).
        crate::node::shim::shim_pidfd(&c.state)
            .or_else(|| crate::node::shim::container_pidfd(&c.state))
    }

    fn stop_container(&self, c: &PodContainer, grace: Duration) -> bool {
        stop_container(c, grace)
    }

    fn release_attempt(&self, attempt_dir: &Path) {
        // Staged subPath mounts first: removing through them would empty the volumes.
        super::volumes::unmount_staged(&attempt_dir.join("subpaths"));
        let _ = rustix::mount::unmount(
            attempt_dir.join("rootfs"),
            rustix::mount::UnmountFlags::DETACH,
        );
        self.store
            .release(&crate::node::container::lease_name(attempt_dir));
    }
}

/// SIGTERM, up to `grace` for the exit, then SIGKILL. The signals go through a pidfd of the
/// container checked against its recorded start time (never to a recycled PID); when its
/// shim is gone, the container itself is waited for. False if the container could not be
/// reached (its state unreadable for lack of descriptors, say) and may still run.
pub fn stop_container(r: &PodContainer, grace: Duration) -> bool {
    use crate::node::shim::{self, Proc};
    if shim::exit_status(&r.state).is_some() {
        return true;
    }
    // Out of descriptors, the container's state may not be readable for a moment: keep
    // trying for a while rather than leave it running.
    let deadline = Instant::now() + grace.max(Duration::from_secs(10));
    let ctr = loop {
        match shim::container(&r.state) {
            Proc::Alive(fd) => break fd,
            Proc::Gone => return true,
            Proc::Unknown(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Proc::Unknown(e) => {
                tracing::warn!(state = %r.state.display(), error = %e, "cannot reach a container to stop it");
                return false;
            }
        }
    };
    let shim_fd = shim::shim_pidfd(&r.state);
    let watch = shim_fd.as_ref().unwrap_or(&ctr);
    shim::signal(&ctr, rustix::process::Signal::TERM);
    if shim::wait_readable(watch, grace) {
        return true;
    }
    shim::signal(&ctr, rustix::process::Signal::KILL);
    shim::wait_readable(watch, Duration::from_secs(10))
}

/// The pod network through CNI.
pub struct CniNetwork(pub crate::node::network::Network);

impl PodNetwork for CniNetwork {
    fn attach(&self, id: &str, netns: &Path) -> Result<Attachment, CriError> {
        Ok(self.0.attach(id, netns)?)
    }

    fn check(&self, id: &str, netns: &Path, prev: &Value) -> Result<(), CriError> {
        Ok(self.0.check(id, netns, prev)?)
    }

    fn detach(&self, id: &str, netns: &Path, prev: Option<&Value>) -> Result<(), CriError> {
        Ok(self.0.detach(id, netns, prev)?)
    }

    fn gc(&self, valid: &[String]) -> Result<(), CriError> {
        Ok(self.0.gc(valid)?)
    }
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[cfg(test)]
pub mod fake;
