//! Pod sandboxes: the network, IPC and UTS namespaces a pod's containers share, held for the
//! pod's life.
//!
//! Choice: the namespaces are pinned by bind-mounting their nsfs files
//! (`<dir>/ns/{net,ipc,uts}`), as CRI-O does, instead of keeping a pause process. Nothing runs
//! for an idle sandbox, nothing can crash, and nothing needs re-adopting after an agent
//! restart: the mounts are the state. A short-lived thread creates the namespaces with
//! unshare(2) (network, IPC and UTS namespaces are per thread), sets the hostname, brings
//! loopback up and bind-mounts its own `/proc/thread-self/ns/*` files, then exits.

use std::path::{Path, PathBuf};

use crate::node::error::{fail, Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Which namespaces a pod shares with the host instead of having its own.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    pub hostname: String,
    /// `hostNetwork` (also keeps the host's UTS namespace, as Kubernetes does).
    pub host_network: bool,
    /// `hostIPC`.
    pub host_ipc: bool,
    /// `shareProcessNamespace`: one PID namespace for all the pod's containers.
    pub share_pid: bool,
}

pub struct Sandbox {
    pub dir: PathBuf,
}

const KINDS: [(&str, &str, libc::c_int); 3] = [
    ("net", "network", libc::CLONE_NEWNET),
    ("ipc", "ipc", libc::CLONE_NEWIPC),
    ("uts", "uts", libc::CLONE_NEWUTS),
];

impl Sandbox {
    /// Creates the sandbox's namespaces under `dir` (which must not exist yet). `exe` (the
    /// knode binary) runs the pod's pause process when it shares one PID namespace.
    pub fn create(exe: &Path, dir: &Path, o: &SandboxOptions) -> Result<Sandbox> {
        let ns = dir.join("ns");
        std::fs::create_dir_all(&ns).with_ctx(|| format!("creating {}", ns.display()))?;
        let mut kinds = vec![];
        if !o.host_network {
            kinds.extend(["net", "uts"]);
        }
        if !o.host_ipc {
            kinds.push("ipc");
        }
        let sb = Sandbox {
            dir: dir.to_path_buf(),
        };
        // The pod's /dev/shm: one tmpfs all its containers share (POSIX shared memory).
        if !o.host_ipc {
            let shm = dir.join("shm");
            std::fs::create_dir_all(&shm)?;
            rustix::mount::mount(
                "shm",
                &shm,
                "tmpfs",
                rustix::mount::MountFlags::NOSUID
                    | rustix::mount::MountFlags::NODEV
                    | rustix::mount::MountFlags::NOEXEC,
                Some(c"mode=1777,size=65536k"),
            )
            .ctx("mounting the pod's /dev/shm")?;
        }
        if o.share_pid {
            // A PID namespace dies with its init: a pause process holds it, as in Kubernetes.
            let out = std::process::Command::new(exe)
                .arg("__pause")
                .arg(dir)
                .output()
                .ctx("starting the pause process")?;
            if !out.status.success() {
                let _ = sb.remove();
                fail!(
                    "starting the pod's pause process: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        if kinds.is_empty() {
            return Ok(sb);
        }
        let (dir_ns, hostname, kinds_owned) = (
            ns.clone(),
            o.hostname.clone(),
            kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        );
        // Network, IPC and UTS namespaces belong to threads: a short-lived thread unshares them
        // and pins them, with no helper process to start.
        let pinned = std::thread::spawn(move || pin_namespaces(&dir_ns, &hostname, &kinds_owned))
            .join()
            .unwrap_or_else(|_| Err(NodeError::failed("the namespace thread panicked")));
        if let Err(e) = pinned {
            let _ = sb.remove();
            fail!("creating the pod sandbox: {e:#}");
        }
        Ok(sb)
    }

    pub fn open(dir: &Path) -> Sandbox {
        Sandbox {
            dir: dir.to_path_buf(),
        }
    }

    /// The pod's pause process (only with a shared PID namespace).
    fn pause_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("pause.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .contains("__pause")
            .then_some(pid)
    }

    /// The namespaces for a container's runtime spec: pinned ones to join; the host's are
    /// simply not listed.
    pub fn namespaces(&self) -> Vec<(String, Option<String>)> {
        let pid = self
            .pause_pid()
            .map(|p| ("pid".to_string(), Some(format!("/proc/{p}/ns/pid"))));
        KINDS
            .iter()
            .filter_map(|(file, kind, _)| {
                let p = self.dir.join("ns").join(file);
                is_pinned(&p).then(|| (kind.to_string(), Some(p.to_string_lossy().into_owned())))
            })
            .chain(pid)
            .collect()
    }

    /// The pod's shared /dev/shm (the host's with `hostIPC`).
    pub fn shm(&self) -> PathBuf {
        let p = self.dir.join("shm");
        if p.exists() {
            p
        } else {
            PathBuf::from("/dev/shm")
        }
    }

    /// Unpins the namespaces (they vanish with their last user) and removes the directory.
    pub fn remove(&self) -> Result<()> {
        if let Some(p) = self.pause_pid().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        let shm = self.dir.join("shm");
        if is_pinned(&shm) {
            rustix::mount::unmount(&shm, rustix::mount::UnmountFlags::DETACH)
                .ctx("unmounting the pod's /dev/shm")?;
        }
        for (file, _, _) in KINDS {
            let p = self.dir.join("ns").join(file);
            if is_pinned(&p) {
                rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH)
                    .with_ctx(|| format!("unmounting {}", p.display()))?;
            }
        }
        crate::node::safefs::remove_tree(&self.dir).ctx("removing the sandbox directory")
    }
}

/// Whether `p` is a bind-mounted namespace file.
fn is_pinned(p: &Path) -> bool {
    let Ok(md) = std::fs::metadata(p) else {
        return false;
    };
    let Ok(parent) = std::fs::metadata(p.parent().unwrap_or(Path::new("/"))) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    md.dev() != parent.dev()
}

/// Runs in a thread of its own, which it moves into new namespaces (never the caller's).
fn pin_namespaces(dir: &Path, hostname: &str, kinds: &[String]) -> Result<()> {
    let mut flags = 0;
    for k in kinds {
        let (_, _, f) = KINDS
            .iter()
            .find(|(file, _, _)| file == k)
            .with_ctx(|| format!("unknown namespace {k}"))?;
        flags |= f;
    }
    // SAFETY: unshare takes integer flags only.
    if unsafe { libc::unshare(flags) } != 0 {
        fail!("unshare: {}", std::io::Error::last_os_error());
    }
    if flags & libc::CLONE_NEWUTS != 0 {
        rustix::system::sethostname(hostname.as_bytes())
            .with_ctx(|| format!("sethostname {hostname:?}"))?;
    }
    if flags & libc::CLONE_NEWNET != 0 {
        oci::runtime::init::loopback_up().map_err(|e| NodeError::failed(e.0))?;
    }
    for k in kinds {
        let target = dir.join(k);
        std::fs::File::create(&target).with_ctx(|| format!("creating {}", target.display()))?;
        rustix::mount::mount_bind(format!("/proc/thread-self/ns/{k}").as_str(), &target)
            .with_ctx(|| format!("pinning the {k} namespace at {}", target.display()))?;
    }
    Ok(())
}

/// The pause process (`knode __pause DIR`): creates a PID namespace, forks its init, records
/// the init's PID in `DIR/pause.pid` and returns. The init reaps orphans until SIGTERM/SIGKILL.
pub fn pause_main(dir: &Path) -> Result<()> {
    // SAFETY: unshare with integer flags; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        fail!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error());
    }
    // SAFETY: fork in a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => fail!("fork: {}", std::io::Error::last_os_error()),
        0 => pause_init(),
        pid => {
            oci::fsutil::replace(&dir.join("pause.pid"), pid.to_string().as_bytes())?;
            Ok(())
        }
    }
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

extern "C" fn on_child(_: libc::c_int) {}

fn pause_init() -> ! {
    // SAFETY: plain libc calls in a fresh single-threaded process; the handlers only call
    // async-signal-safe functions.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGCHLD, on_child as *const () as libc::sighandler_t);
        loop {
            let mut st = 0;
            while libc::waitpid(-1, &mut st, libc::WNOHANG) > 0 {}
            libc::pause();
        }
    }
}
