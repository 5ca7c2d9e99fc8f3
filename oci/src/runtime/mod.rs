//! The low-level runtime: runs a container from an OCI runtime spec on kernel primitives.
//!
//! Process design: the caller is a single-threaded process (the `knode run` CLI, later the
//! per-container supervisor). Everything the container needs (argv, env, mounts, capability
//! sets, the compiled seccomp filter, namespace files to join) is prepared first, then one
//! `clone3` creates the container process directly in its new mount, PID (it is PID 1), UTS,
//! IPC, network and cgroup namespaces. The child builds its root (`init`), drops privileges
//! and execs; if anything fails before exec it writes the reason to a close-on-exec pipe,
//! so the parent reports "exec failed: ..." instead of a bare exit code.

pub mod init;
pub mod seccomp;
pub mod spec;

use std::collections::HashSet;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use seccompiler::BpfProgram;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime spec: {0}")]
    Spec(String),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("the runtime must run in a single-threaded process")]
    Threaded,
}

fn sys(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> RuntimeError {
    move |e| RuntimeError::Sys {
        op,
        source: e.into(),
    }
}

/// One mount of the spec, with its options split into flags and data.
#[derive(Debug, Clone)]
pub(crate) struct MountPlan {
    pub dest: String,
    pub fstype: String,
    pub source: String,
    pub flags: u64,
    pub data: String,
    pub bind: bool,
    pub recursive: bool,
}

/// Everything the container process needs, computed before it exists.
pub(crate) struct Plan {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub hostname: Option<String>,
    pub join: Vec<(OwnedFd, libc::c_int)>,
    pub new_net: bool,
    pub mounts: Vec<MountPlan>,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub bounding: HashSet<caps::Capability>,
    pub effective: HashSet<caps::Capability>,
    pub permitted: HashSet<caps::Capability>,
    pub inheritable: HashSet<caps::Capability>,
    pub ambient: HashSet<caps::Capability>,
    pub no_new_privs: bool,
    pub seccomp: Vec<BpfProgram>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub path: String,
    /// `process.terminal`: standard input is a terminal (the starter's pty), which becomes
    /// the container's controlling terminal.
    pub terminal: bool,
}

fn parse_options(opts: &[String]) -> (u64, String, bool, bool) {
    let (mut flags, mut data, mut bind, mut rec) = (0u64, Vec::new(), false, false);
    for o in opts {
        let f: u64 = match o.as_str() {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "sync" => libc::MS_SYNCHRONOUS,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            "bind" => {
                bind = true;
                0
            }
            "rbind" => {
                bind = true;
                rec = true;
                0
            }
            "rw" | "suid" | "dev" | "exec" | "async" | "atime" | "diratime" | "private"
            | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => 0,
            other => {
                data.push(other.to_string());
                0
            }
        };
        flags |= f;
    }
    (flags, data.join(","), bind, rec)
}

fn cap_set(
    v: &Option<HashSet<oci_spec::runtime::Capability>>,
) -> Result<HashSet<caps::Capability>, RuntimeError> {
    v.iter()
        .flatten()
        .map(|c| {
            let name = serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            name.parse::<caps::Capability>()
                .map_err(|_| RuntimeError::Spec(format!("unknown capability {name}")))
        })
        .collect()
}

fn cstr(s: &str, what: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::Spec(format!("NUL byte in {what}")))
}

impl Plan {
    fn from_spec(spec: &Spec) -> Result<(Plan, u64), RuntimeError> {
        let bad = |m: &str| RuntimeError::Spec(m.to_string());
        let process = spec.process().as_ref().ok_or_else(|| bad("no process"))?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(bad("process.args is empty"));
        }
        let root = spec.root().as_ref().ok_or_else(|| bad("no root"))?;
        let rootfs = root.path().clone();
        if !rootfs.is_absolute() {
            return Err(bad("root.path must be absolute"));
        }
        let env = process.env().clone().unwrap_or_default();
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(spec::DEFAULT_PATH)
            .to_string();
        let mut flags = libc::CLONE_NEWNS as u64;
        let mut join = Vec::new();
        let mut new_net = false;
        let linux = spec.linux().as_ref();
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            let f = match ns.typ() {
                LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
                LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
                LinuxNamespaceType::Network => libc::CLONE_NEWNET,
                LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
                LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
                other => {
                    return Err(RuntimeError::Spec(format!(
                        "namespace {other:?} is not supported"
                    )))
                }
            };
            match ns.path() {
                Some(p) => {
                    let fd = rustix::fs::open(p, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                        .map_err(|e| RuntimeError::Sys {
                        op: "open namespace file",
                        source: e.into(),
                    })?;
                    if f == libc::CLONE_NEWPID {
                        // Joining a PID namespace applies to children: do it before clone.
                        // SAFETY: plain syscall on a valid fd; this process is single-threaded.
                        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
                            return Err(RuntimeError::Sys {
                                op: "join PID namespace",
                                source: std::io::Error::last_os_error(),
                            });
                        }
                    } else if f != libc::CLONE_NEWNS {
                        join.push((fd, f));
                    }
                }
                None => {
                    flags |= f as u64;
                    new_net |= f == libc::CLONE_NEWNET;
                }
            }
        }
        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                let (flags, data, bind, recursive) =
                    parse_options(m.options().as_deref().unwrap_or(&[]));
                let bind = bind || m.typ().as_deref() == Some("bind");
                MountPlan {
                    dest: m.destination().to_string_lossy().into_owned(),
                    fstype: m.typ().clone().unwrap_or_default(),
                    source: m
                        .source()
                        .as_ref()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    flags,
                    data,
                    bind,
                    recursive,
                }
            })
            .collect();
        let caps = process.capabilities().as_ref();
        let user = process.user();
        let seccomp = if process.no_new_privileges().unwrap_or(false)
            || caps.is_some_and(|c| {
                !c.bounding()
                    .as_ref()
                    .is_some_and(|b| b.contains(&oci_spec::runtime::Capability::SysAdmin))
            }) {
            seccomp::default_programs().map_err(|e| RuntimeError::Spec(e.to_string()))?
        } else {
            vec![] // privileged: unconfined, as Kubernetes runs privileged containers
        };
        let plan = Plan {
            rootfs,
            readonly_root: root.readonly().unwrap_or(false),
            // Only a UTS namespace of the container's own gets its hostname: never the host's
            // (hostNetwork) nor a joined pod's (already named).
            hostname: spec
                .hostname()
                .clone()
                .filter(|_| flags & libc::CLONE_NEWUTS as u64 != 0),
            join,
            new_net,
            mounts,
            masked: linux
                .and_then(|l| l.masked_paths().clone())
                .unwrap_or_default(),
            readonly: linux
                .and_then(|l| l.readonly_paths().clone())
                .unwrap_or_default(),
            cwd: process.cwd().to_string_lossy().into_owned(),
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
            bounding: cap_set(caps.map(|c| c.bounding()).unwrap_or(&None))?,
            effective: cap_set(caps.map(|c| c.effective()).unwrap_or(&None))?,
            permitted: cap_set(caps.map(|c| c.permitted()).unwrap_or(&None))?,
            inheritable: cap_set(caps.map(|c| c.inheritable()).unwrap_or(&None))?,
            ambient: cap_set(caps.map(|c| c.ambient()).unwrap_or(&None))?,
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            seccomp,
            argv: args
                .iter()
                .map(|a| cstr(a, "args"))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|a| cstr(a, "env"))
                .collect::<Result<_, _>>()?,
            path,
            terminal: process.terminal().unwrap_or(false),
        };
        Ok((plan, flags))
    }
}

fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .map(|l| l.split_whitespace().nth(1) == Some("1"))
        })
        .unwrap_or(false)
}

/// A started container: its PID (in the caller's namespace).
pub struct Started {
    pub pid: i32,
}

/// clone3's flag for starting the child in the cgroup given by `clone_args.cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The cgroup2 mount point, from /proc/self/mountinfo (the first cgroup2 filesystem).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next() == Some("cgroup2"))
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The spec's `linux.cgroupsPath` (relative to the cgroup2 mount, as the runtime spec says),
/// opened for `CLONE_INTO_CGROUP`: the child starts in that cgroup, before it runs any code.
fn open_cgroup(spec: &Spec) -> Result<Option<OwnedFd>, RuntimeError> {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(None);
    };
    let mount = cgroup2_mount().ok_or_else(|| {
        RuntimeError::Spec("linux.cgroupsPath is set but no cgroup2 filesystem is mounted".into())
    })?;
    let full = mount.join(path.strip_prefix("/").unwrap_or(&path));
    rustix::fs::open(
        &full,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(Some)
    .map_err(|e| RuntimeError::Sys {
        op: "open the container's cgroup",
        source: std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("{}: {e}", full.display()),
        ),
    })
}

/// The caller's PID namespace, joined back (for its later children) when dropped.
struct OwnPidNamespace(OwnedFd);

impl OwnPidNamespace {
    fn open() -> Result<OwnPidNamespace, RuntimeError> {
        rustix::fs::open(
            "/proc/self/ns/pid",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(OwnPidNamespace)
        .map_err(|e| RuntimeError::Sys {
            op: "open our PID namespace",
            source: e.into(),
        })
    }
}

impl Drop for OwnPidNamespace {
    fn drop(&mut self) {
        // SAFETY: setns on a valid descriptor of our own active PID namespace, which a
        // process may always join back (it only sets where later children go).
        unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWPID) };
    }
}

/// Creates the container process and returns once it has exec'd its command (or failed).
pub fn start(spec: &Spec) -> Result<Started, RuntimeError> {
    if !single_threaded() {
        return Err(RuntimeError::Threaded);
    }
    // Joining a PID namespace changes where our children go: our own is restored when this
    // returns, as a process whose children go elsewhere cannot start threads (clone with
    // CLONE_THREAD fails with EINVAL), and the caller may want to.
    let _restore = OwnPidNamespace::open()?;
    let (plan, flags) = Plan::from_spec(spec)?;
    let cgroup = open_cgroup(spec)?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: clone_args is a plain C struct; all-zero is its documented "no options" value.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.exit_signal = libc::SIGCHLD as u64;
    if let Some(cg) = &cgroup {
        // With a new cgroup namespace too, the namespace's root is this cgroup.
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of this
    // (single-threaded, checked above) process, so it may run ordinary Rust code; the pointer
    // and size describe a valid clone_args.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid < 0 {
        return Err(RuntimeError::Sys {
            op: "clone3",
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        drop(r);
        let msg = init::run(&plan);
        let mut w = std::fs::File::from(w);
        let _ = std::io::Write::write_all(&mut w, msg.as_bytes());
        // SAFETY: terminating the child without running the parent's destructors or atexit
        // handlers, which belong to the parent.
        unsafe { libc::_exit(127) };
    }
    drop(w);
    drop(plan);
    let mut msg = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut msg);
    let pid = pid as i32;
    if !msg.is_empty() {
        let _ = wait(pid);
        return Err(RuntimeError::Setup(msg));
    }
    Ok(Started { pid })
}

/// Waits for a process and returns its exit code (128 + signal when killed).
pub fn wait(pid: i32) -> Result<i32, RuntimeError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid c_int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(RuntimeError::Sys {
                op: "waitpid",
                source: e,
            });
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    })
}

/// Runs a container to completion and returns its exit code.
pub fn run(spec: &Spec) -> Result<i32, RuntimeError> {
    let s = start(spec)?;
    wait(s.pid)
}

/// Reads a small file inside `root`, resolving the path as if `root` were `/`.
pub fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let f = std::fs::File::from(fd);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(1 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// A new pseudo-terminal: its near (master) and far (slave) sides, close-on-exec (the far
/// side becomes a process's standard streams by dup2, which clears the flag).
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    let (mut near, mut far) = (-1, -1);
    // SAFETY: openpty writes two descriptors into valid c_ints; the other arguments are NULL
    // (no name wanted, default settings and size).
    if unsafe {
        libc::openpty(
            &mut near,
            &mut far,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    } != 0
    {
        return Err(RuntimeError::Sys {
            op: "openpty",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: openpty just returned these descriptors to us, and nothing else owns them.
    let (near, far) = unsafe { (OwnedFd::from_raw_fd(near), OwnedFd::from_raw_fd(far)) };
    for fd in [&near, &far] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).map_err(sys("fcntl"))?;
    }
    Ok((near, far))
}

/// Options of an exec into a running container.
pub struct ExecOptions {
    pub argv: Vec<String>,
    /// Allocate a pseudo-terminal (the caller relays it).
    pub tty: bool,
}

/// Starts `argv` inside the running container `pid`, confined like the container itself
/// (`spec` is the container's own runtime spec: user, capabilities, seccomp, env, cwd).
/// Returns the new process's PID and, with `tty`, the pty master.
pub fn exec(
    pid: i32,
    spec: &Spec,
    o: &ExecOptions,
) -> Result<(i32, Option<OwnedFd>), RuntimeError> {
    if !single_threaded() {
        return Err(RuntimeError::Threaded);
    }
    if o.argv.is_empty() {
        return Err(RuntimeError::Spec("no command to exec".into()));
    }
    let mut spec = spec.clone();
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_args(Some(o.argv.clone()));
    }
    // The target's namespaces, opened before anything changes. Mount comes last: joining it
    // moves us into the container's root.
    let open = |ns: &str| {
        rustix::fs::open(
            format!("/proc/{pid}/ns/{ns}").as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RuntimeError::Sys {
            op: "open the container's namespaces",
            source: e.into(),
        })
    };
    let pidns = open("pid")?;
    let mut join = Vec::new();
    for (ns, flag) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        join.push((open(ns)?, flag));
    }
    // Strip the spec down to what an exec needs: no namespaces to create, no mounts.
    if let Some(l) = spec.linux_mut().as_mut() {
        l.set_namespaces(None);
    }
    spec.set_mounts(None);
    let (mut plan, _) = Plan::from_spec(&spec)?;
    plan.join = join;
    // SAFETY: setns on a valid descriptor; this process is single-threaded; it applies to the
    // child created below.
    if unsafe { libc::setns(pidns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(RuntimeError::Sys {
            op: "join the PID namespace",
            source: std::io::Error::last_os_error(),
        });
    }
    let pty = if o.tty { Some(open_pty()?) } else { None };
    let cgroup = open_cgroup(&spec)?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: as in `start`: zeroed clone_args, single-threaded parent, fork-like clone3.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.exit_signal = libc::SIGCHLD as u64;
    if let Some(cg) = &cgroup {
        // The command joins the container's cgroup, so its limits cover it too.
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: see `start`.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if child < 0 {
        return Err(RuntimeError::Sys {
            op: "clone3",
            source: std::io::Error::last_os_error(),
        });
    }
    if child == 0 {
        drop(r);
        let msg = init::exec_child(&plan, pty.as_ref().map(|(_, s)| s));
        let mut w = std::fs::File::from(w);
        let _ = std::io::Write::write_all(&mut w, msg.as_bytes());
        // SAFETY: see `start`.
        unsafe { libc::_exit(127) };
    }
    drop(w);
    let master = pty.map(|(m, _slave)| m);
    let mut msg = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut msg);
    if !msg.is_empty() {
        let _ = wait(child as i32);
        return Err(RuntimeError::Setup(msg));
    }
    Ok((child as i32, master))
}
