//! `knode run`: one container from an image, in the foreground, on knode's own runtime (like
//! `docker run --rm`). The image is mounted as an overlay (its snapshots plus a fresh upper
//! dir), a runtime spec is built with containerd's defaults and the image's config, and the
//! container runs in new mount, PID, UTS, IPC, network and cgroup namespaces. Everything is
//! unmounted and removed when it exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::node::error::{fail, Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;
use oci::runtime::spec::{self, ContainerConfig};

/// What `knode run` was asked for.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub image: String,
    /// Replaces the image's Cmd.
    pub args: Vec<String>,
    /// Replace the image's Entrypoint (space-separated words).
    pub entrypoint: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
    /// User: uid, uid:gid, name or name:group (resolved in the image).
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// Mount the image read-only.
    pub read_only: bool,
    /// All capabilities, no seccomp, no masked paths.
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Share the host's network namespace instead of a new one (loopback only).
    pub host_network: bool,
}

/// Unmounts and removes a container's directories, whatever happened.
struct Cleanup {
    rootfs: PathBuf,
    dirs: Vec<PathBuf>,
    mounted: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) =
                rustix::mount::unmount(&self.rootfs, rustix::mount::UnmountFlags::DETACH)
            {
                tracing::warn!(rootfs = %self.rootfs.display(), error = %e, "unmounting the container rootfs");
            }
        }
        for d in &self.dirs {
            // The writable layer is the container's: never followed, never recursed into.
            if let Err(e) = crate::node::safefs::remove_tree(d) {
                tracing::warn!(dir = %d.display(), error = %e, "removing the container's files");
            }
        }
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and takes integers only.
        unsafe { libc::kill(pid, sig) };
    }
}

fn new_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let d = oci::digest::Digest::of(format!("{}-{}", t.as_nanos(), std::process::id()).as_bytes());
    d.hex()[..12].to_string()
}

/// Runs the container and returns its exit code.
pub fn run(root: &Path, run_dir: &Path, a: &RunArgs) -> Result<i32> {
    let store = crate::node::images::store_at(root)?;
    let rec = match store.get(&a.image) {
        Ok(r) => r,
        Err(oci::image::ImageError::NotFound(_)) => {
            // Pull in a child process: this one must stay single-threaded for the runtime.
            let st = Command::new("/proc/self/exe")
                .arg("--root")
                .arg(root)
                .args(["image", "pull", &a.image])
                .status()
                .ctx("starting the image pull")?;
            if !st.success() {
                fail!("pulling {} failed", a.image);
            }
            store.get(&a.image)?
        }
        Err(e) => return Err(e.into()),
    };
    let id = new_id();
    let state = root.join("containers").join(&id);
    let rootfs = run_dir.join("containers").join(&id).join("rootfs");
    let (upper, work) = (state.join("upper"), state.join("work"));
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d).with_ctx(|| format!("creating {}", d.display()))?;
    }
    let mut cleanup = Cleanup {
        rootfs: rootfs.clone(),
        dirs: vec![state, run_dir.join("containers").join(&id)],
        mounted: false,
    };
    store.mount(&rec, &rootfs, &upper, &work)?;
    cleanup.mounted = true;

    let image = store.config(&rec)?.config.unwrap_or_default();
    let entrypoint: Option<Vec<String>> = a
        .entrypoint
        .as_ref()
        .map(|e| e.split_whitespace().map(str::to_string).collect());
    let hostname = a.hostname.clone().unwrap_or_else(|| id.clone());
    let args = spec::argv(
        &image,
        entrypoint.as_deref(),
        (!a.args.is_empty()).then_some(a.args.as_slice()),
    )?;
    let user = a
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()))
        .unwrap_or_default();
    let (uid, gid, additional_gids) = spec::resolve_user(&rootfs, &user)?;
    let mut namespaces: Vec<(String, Option<String>)> = ["pid", "ipc", "uts", "mount", "cgroup"]
        .iter()
        .map(|t| (t.to_string(), None))
        .collect();
    if !a.host_network {
        namespaces.push(("network".into(), None));
    }
    let cfg = ContainerConfig {
        env: spec::environment(&image, &a.env, &hostname),
        args,
        cwd: a
            .workdir
            .clone()
            .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into()),
        uid,
        gid,
        additional_gids,
        hostname,
        readonly_rootfs: a.read_only,
        privileged: a.privileged,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        namespaces,
        binds: vec![],
    };
    let spec = spec::build(&cfg, &rootfs)?;
    let started = oci::runtime::start(&spec)?;
    CHILD.store(started.pid, Ordering::SeqCst);
    // SAFETY: installs a handler that only calls kill(2), which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
    }
    let code = oci::runtime::wait(started.pid)?;
    drop(cleanup);
    Ok(code)
}

/// A container of a pod: its image mounted, started under a shim in the pod's sandbox.
#[derive(Clone, Debug)]
pub struct PodContainer {
    /// The shim's state directory (`pid`, `exit.json`, ...).
    pub state: PathBuf,
    pub rootfs: PathBuf,
    pub pid: i32,
}

/// What a pod container runs (already resolved from the pod spec and the image).
#[derive(Default)]
pub struct PodContainerSpec {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub log_path: PathBuf,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub readonly_rootfs: bool,
    /// `allowPrivilegeEscalation: true` turns no_new_privs off (knode sets it by default).
    pub allow_privilege_escalation: bool,
    /// Share the host's PID namespace (`hostPID`).
    pub host_pid: bool,
    /// Volumes, /etc/hosts and the like.
    pub binds: Vec<spec::Bind>,
    /// Where the writable layer goes (on disk, not in the runtime tmpfs).
    pub upper_dir: Option<PathBuf>,
    /// Extra supplementary groups (the pod's fsGroup and supplementalGroups).
    pub supplemental_groups: Vec<u32>,
    /// The container's cgroup (relative to the cgroup2 mount), which the runtime clones it
    /// into; none with `--cgroups=disabled`.
    pub cgroup: Option<String>,
    /// `stdin`, `stdinOnce` and `tty`: the shim keeps the container's stdin (or terminal)
    /// for attach sessions.
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

impl PodContainer {
    /// Mounts the image under `dir` (`rootfs`, `upper`, `work`, `state`) and starts the
    /// container in the sandbox's namespaces, with its own mount and PID namespaces.
    pub fn start(
        exe: &Path,
        store: &oci::image::ImageStore,
        sandbox: &crate::node::sandbox::Sandbox,
        hostname: &str,
        dir: &Path,
        c: &PodContainerSpec,
    ) -> Result<PodContainer> {
        let rec = store.get(&c.image)?;
        let layer = c.upper_dir.clone().unwrap_or_else(|| dir.to_path_buf());
        let (rootfs, upper, work, state) = (
            dir.join("rootfs"),
            layer.join("upper"),
            layer.join("work"),
            dir.join("state"),
        );
        for d in [&rootfs, &upper, &work, &state] {
            std::fs::create_dir_all(d).with_ctx(|| format!("creating {}", d.display()))?;
        }
        store.lease(&lease_name(dir), &rec)?;
        if let Err(e) = store.mount(&rec, &rootfs, &upper, &work) {
            store.release(&lease_name(dir));
            return Err(e.into());
        }
        let started = (|| -> Result<i32> {
            let image = store.config(&rec)?.config.unwrap_or_default();
            let args = spec::argv(&image, c.command.as_deref(), c.args.as_deref())?;
            let user = c
                .user
                .clone()
                .or_else(|| image.user.clone().filter(|u| !u.is_empty()))
                .unwrap_or_default();
            let (uid, gid, mut additional_gids) = spec::resolve_user(&rootfs, &user)?;
            for g in &c.supplemental_groups {
                if *g != gid && !additional_gids.contains(g) {
                    additional_gids.push(*g);
                }
            }
            let mut namespaces = sandbox.namespaces();
            let shared_pid = namespaces.iter().any(|(t, _)| t == "pid");
            let own: &[&str] = if c.host_pid || shared_pid {
                &["mount", "cgroup"]
            } else {
                &["pid", "mount", "cgroup"]
            };
            namespaces.extend(own.iter().map(|t| (t.to_string(), None)));
            let mut binds = vec![spec::Bind {
                source: sandbox.shm().to_string_lossy().into_owned(),
                destination: "/dev/shm".into(),
                readonly: false,
            }];
            binds.extend(c.binds.iter().cloned());
            let mut env = spec::environment(&image, &c.env, hostname);
            // As containerd does for a container on a terminal that names none.
            if c.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
            }
            let cfg = ContainerConfig {
                env,
                args,
                cwd: c
                    .working_dir
                    .clone()
                    .or_else(|| image.working_dir.clone())
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| "/".into()),
                uid,
                gid,
                additional_gids,
                hostname: hostname.to_string(),
                readonly_rootfs: c.readonly_rootfs,
                privileged: c.privileged,
                cap_add: c.cap_add.clone(),
                cap_drop: c.cap_drop.clone(),
                namespaces,
                binds,
            };
            let mut spec = spec::build(&cfg, &rootfs)?;
            if let Some(p) = spec.process_mut().as_mut() {
                p.set_terminal(Some(c.tty));
            }
            if c.allow_privilege_escalation && !c.privileged {
                if let Some(p) = spec.process_mut().as_mut() {
                    p.set_no_new_privileges(Some(false));
                }
            }
            if let (Some(cg), Some(l)) = (&c.cgroup, spec.linux_mut().as_mut()) {
                l.set_cgroups_path(Some(PathBuf::from(format!("/{cg}"))));
            }
            crate::node::shim::spawn(
                exe,
                &state,
                &crate::node::shim::ShimConfig {
                    spec,
                    log_path: c.log_path.clone(),
                    log_max_bytes: 10 << 20,
                    log_max_files: 5,
                    stdin: c.stdin,
                    stdin_once: c.stdin_once,
                    tty: c.tty,
                },
            )
        })();
        match started {
            Ok(pid) => Ok(PodContainer { state, rootfs, pid }),
            Err(e) => {
                let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
                store.release(&lease_name(dir));
                Err(e)
            }
        }
    }

    /// Unmounts the container's rootfs (after it exited) and removes its directory (and
    /// `upper_dir`, its writable layer, when it lives elsewhere).
    pub fn remove_with(&self, upper_dir: Option<&Path>) -> Result<()> {
        self.remove()?;
        if let Some(u) = upper_dir {
            crate::node::safefs::remove_tree(u).ctx("removing the container's writable layer")?;
        }
        Ok(())
    }

    /// Ends the container's lease on its image's snapshots (after `remove`).
    pub fn release(&self, store: &oci::image::ImageStore) {
        if let Some(dir) = self.rootfs.parent() {
            store.release(&lease_name(dir));
        }
    }

    /// Unmounts the container's rootfs (after it exited) and removes its directory.
    pub fn remove(&self) -> Result<()> {
        if let Some(dir) = self.rootfs.parent() {
            crate::node::kubelet::volumes::unmount_staged(&dir.join("subpaths"));
        }
        if let Err(e) = rustix::mount::unmount(&self.rootfs, rustix::mount::UnmountFlags::DETACH) {
            if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                return Err(e).ctx("unmounting the container rootfs");
            }
        }
        if let Some(dir) = self.rootfs.parent() {
            crate::node::safefs::remove_tree(dir).ctx("removing the container directory")?;
        }
        Ok(())
    }
}

/// The image-store lease of a container attempt: derived from its directory, so an adopted
/// container releases what its first agent leased.
pub fn lease_name(attempt_dir: &Path) -> String {
    oci::digest::Digest::of(attempt_dir.as_os_str().as_encoded_bytes()).hex()[..32].to_string()
}
