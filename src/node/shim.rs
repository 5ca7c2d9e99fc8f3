//! The per-container supervisor (containerd's shim idea, done lean): a small process that
//! starts one container, copies its output into the CRI log, waits for it and records how it
//! exited. It runs in a session of its own, detached from whoever started it, so containers
//! keep running and keep being logged when the agent is killed or upgraded; a restarted agent
//! finds everything in the state directory:
//!
//! - `config.json` what to run (written by the starter);
//! - `pid`         the container's PID, once it runs;
//! - `start`       the container's start time (clock ticks after boot, `/proc/PID/stat`
//!   field 22): with it, a PID is never mistaken for a later process that reuses it;
//! - `exit.json`   `{ "code", "finishedAt", "reason" }`, written atomically when it exits.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::node::error::{fail, Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;
use serde::{Deserialize, Serialize};

use crate::node::logs::{CriWriter, Stream};

#[derive(Serialize, Deserialize)]
pub struct ShimConfig {
    pub spec: oci::oci_spec::runtime::Spec,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// The container keeps a stdin open for attach sessions (`stdin: true`).
    #[serde(default)]
    pub stdin: bool,
    /// The first attach session to end its input closes the container's stdin.
    #[serde(default)]
    pub stdin_once: bool,
    /// The container runs on a terminal (`tty: true`; the spec's `process.terminal` too).
    #[serde(default)]
    pub tty: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    pub code: i32,
    pub finished_at: String,
    pub reason: String,
}

/// Starts a shim for the container described in `state/config.json`; returns the container's
/// PID once it runs, or the reason it could not start.
pub fn spawn(exe: &Path, state: &Path, cfg: &ShimConfig) -> Result<i32> {
    std::fs::create_dir_all(state)?;
    oci::fsutil::replace(&state.join("config.json"), &serde_json::to_vec(cfg)?)?;
    if let Some(l) = LAUNCHER.get() {
        match l.spawn(state) {
            Ok(pid) => return Ok(pid),
            Err(e) if e.to_string().starts_with("launcher:") => {
                tracing::warn!(error = %e, "the shim launcher failed; starting the shim directly");
            }
            Err(e) => return Err(e),
        }
    }
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let wfd = w.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("__shim")
        .arg(state)
        .arg(wfd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure only makes async-signal-safe calls (fcntl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // Let the report pipe survive exec.
            if libc::fcntl(wfd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().ctx("starting the container shim")?;
    drop(w);
    // The shim forks into the background at once; reap the foreground half.
    child.wait()?;
    let mut msg = String::new();
    std::fs::File::from(r).read_to_string(&mut msg)?;
    match msg.strip_prefix("started ") {
        Some(pid) => Ok(pid.trim().parse().ctx("the shim reported a bad PID")?),
        None if msg.is_empty() => fail!("the container shim died before reporting"),
        None => fail!("{}", msg.trim()),
    }
}

/// The exit status, once the container has exited.
pub fn exit_status(state: &Path) -> Option<ExitStatus> {
    serde_json::from_slice(&std::fs::read(state.join("exit.json")).ok()?).ok()
}

/// Waits until the container has exited and its shim has recorded it (the shim exits right
/// after writing `exit.json`), without polling: a pidfd of the shim becomes readable when it
/// exits. `timeout` bounds the wait.
pub fn wait_exit(state: &Path, timeout: std::time::Duration) -> Result<ExitStatus> {
    if let Some(s) = exit_status(state) {
        return Ok(s);
    }
    if let Some(fd) = shim_pidfd(state) {
        wait_readable(&fd, timeout);
    }
    exit_status(state).with_ctx(|| format!("the container in {} has not exited", state.display()))
}

/// Sends `sig` through a pidfd; false if the process is gone.
pub fn signal(fd: &OwnedFd, sig: rustix::process::Signal) -> bool {
    rustix::process::pidfd_send_signal(fd, sig).is_ok()
}

/// Waits up to `timeout` for a pidfd to become readable (its process exited); true if it did.
pub fn wait_readable(fd: &OwnedFd, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        match rustix::event::poll(&mut p, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            Err(_) => return false,
        }
    }
}

/// A process's start time (`/proc/PID/stat` field 22).
pub fn start_time(pid: i32) -> Option<u64> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn stat_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether a process recorded in a state directory still runs. `Unknown` when it cannot be
/// told (out of descriptors, say): never taken for `Gone`, so that a node short of
/// resources does not report, restart or kill healthy containers.
#[derive(Debug)]
pub enum Proc {
    /// It runs; the pidfd is bound to it.
    Alive(OwnedFd),
    Gone,
    Unknown(std::io::Error),
}

impl Proc {
    pub fn fd(self) -> Option<OwnedFd> {
        match self {
            Proc::Alive(fd) => Some(fd),
            _ => None,
        }
    }
    pub fn gone(&self) -> bool {
        matches!(self, Proc::Gone)
    }
}

/// Reads a small state file: none if it does not exist, an error if it cannot be read.
fn read_state(p: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A pidfd for `pid` (bound to that process, whatever reuses the number later), or why not
/// (ESRCH: the process is gone).
fn open_pidfd(pid: i32) -> Proc {
    if pid <= 0 {
        return Proc::Gone;
    }
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return Proc::Gone;
    };
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Proc::Alive(fd),
        Err(rustix::io::Errno::SRCH) => Proc::Gone,
        Err(e) => Proc::Unknown(e.into()),
    }
}

/// Reads something of `/proc/<pid>`: none if the process is gone.
fn read_proc(p: String) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The PID recorded in `file` and a pidfd of it; `Gone` or `Unknown` otherwise.
fn recorded_pidfd(file: &Path) -> Result<(i32, OwnedFd), Proc> {
    let pid = match read_state(file) {
        Ok(Some(s)) => s.trim().parse::<i32>().map_err(|_| Proc::Gone)?,
        Ok(None) => return Err(Proc::Gone),
        Err(e) => return Err(Proc::Unknown(e)),
    };
    match open_pidfd(pid) {
        Proc::Alive(fd) => Ok((pid, fd)),
        other => Err(other),
    }
}

/// The container, if it still runs and is the process the shim started (checked against the
/// start time the shim recorded, after the pidfd is open: if it matches then, the pidfd is
/// bound to the container, since a PID is reused only once its process is gone).
pub fn container(state: &Path) -> Proc {
    let (pid, fd) = match recorded_pidfd(&state.join("pid")) {
        Ok(x) => x,
        Err(p) => return p,
    };
    let recorded = match read_state(&state.join("start")) {
        Ok(s) => s.and_then(|s| s.trim().parse::<u64>().ok()),
        Err(e) => return Proc::Unknown(e),
    };
    let now = match read_proc(format!("/proc/{pid}/stat")) {
        Ok(Some(b)) => stat_start_time(&String::from_utf8_lossy(&b)),
        Ok(None) => return Proc::Gone,
        Err(e) => return Proc::Unknown(e),
    };
    match (recorded, now) {
        (Some(r), Some(n)) if r == n => Proc::Alive(fd),
        // Recorded by an older shim that wrote no start time.
        (None, Some(_)) => Proc::Alive(fd),
        _ => Proc::Gone,
    }
}

/// The container's shim, if it still runs.
pub fn shim(state: &Path) -> Proc {
    let (pid, fd) = match recorded_pidfd(&state.join("shim.pid")) {
        Ok(x) => x,
        Err(p) => return p,
    };
    // The shim is a knode process (`__shim`, or a fork of `__shim-launcher`).
    match read_proc(format!("/proc/{pid}/cmdline")) {
        Ok(Some(cmd)) if String::from_utf8_lossy(&cmd).contains("__shim") => Proc::Alive(fd),
        Ok(_) => Proc::Gone,
        Err(e) => Proc::Unknown(e),
    }
}

/// A pidfd of the container, if it surely still runs.
pub fn container_pidfd(state: &Path) -> Option<OwnedFd> {
    container(state).fd()
}

/// A pidfd of the container's shim, if it surely still runs.
pub fn shim_pidfd(state: &Path) -> Option<OwnedFd> {
    shim(state).fd()
}

pub fn pid(state: &Path) -> Option<i32> {
    std::fs::read_to_string(state.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The shim's body (`knode __shim STATE REPORT_FD`).
pub fn main(state: &Path, report_fd: i32) -> Result<()> {
    // SAFETY: the starter passed this descriptor to us for exactly this purpose.
    let report = unsafe { OwnedFd::from_raw_fd(report_fd) };
    // Detach: the foreground half exits, the background half leads a new session.
    // SAFETY: fork in a single-threaded process; the child continues normally.
    match unsafe { libc::fork() } {
        -1 => fail!("fork: {}", std::io::Error::last_os_error()),
        0 => {}
        // SAFETY: leaves without running exit handlers or flushing buffers that belong to the
        // process we were forked from (the launcher's).
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: no arguments; this process is not a group leader after fork.
    unsafe { libc::setsid() };
    oci::fsutil::replace(
        &state.join("shim.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    let mut report = std::fs::File::from(report);
    match supervise(state, &mut report) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = write!(report, "{e:#}");
            Err(e)
        }
    }
}

fn supervise(state: &Path, report: &mut std::fs::File) -> Result<()> {
    use crate::node::attach::{self, Hub};
    let cfg: ShimConfig = serde_json::from_slice(&std::fs::read(state.join("config.json"))?)?;
    let mut log = CriWriter::open(&cfg.log_path, cfg.log_max_bytes, cfg.log_max_files)
        .with_ctx(|| format!("opening {}", cfg.log_path.display()))?;
    let null = std::fs::File::open("/dev/null")?;
    // The container's standard streams (its side, fds 0-2) and ours: the output we copy into
    // the log, where attach sessions' input goes, the terminal's near side.
    let (theirs, outputs, input, terminal): ([OwnedFd; 3], Vec<(OwnedFd, Stream)>, _, _) =
        if cfg.tty {
            let (near, far) = oci::runtime::open_pty()?;
            let far = [far.try_clone()?, far.try_clone()?, far];
            let input = cfg.stdin.then(|| near.try_clone()).transpose()?;
            (
                far,
                vec![(near.try_clone()?, Stream::Stdout)],
                input,
                Some(near),
            )
        } else {
            let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let (stdin, input) = if cfg.stdin {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                (r, Some(w))
            } else {
                (OwnedFd::from(null.try_clone()?), None)
            };
            (
                [stdin, out_w, err_w],
                vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
                input,
                None,
            )
        };
    for (to, from) in theirs.iter().enumerate() {
        // SAFETY: both descriptors are valid; dup2 replaces the standard descriptor.
        if unsafe { libc::dup2(from.as_raw_fd(), to as i32) } < 0 {
            fail!("dup2: {}", std::io::Error::last_os_error());
        }
    }
    let listener = Hub::listen(state)?;
    let started = oci::runtime::start(&cfg.spec);
    // The shim keeps no copy of the container's side: the output reaches EOF (a terminal:
    // EIO) when the container's side closes.
    for fd in [0, 1, 2] {
        // SAFETY: as above, re-pointing our own standard descriptors at /dev/null.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    drop(theirs);
    let started = started?;
    if let Some(t) = start_time(started.pid) {
        oci::fsutil::replace(&state.join("start"), t.to_string().as_bytes())?;
    }
    oci::fsutil::replace(&state.join("pid"), started.pid.to_string().as_bytes())?;
    write!(report, "started {}", started.pid)?;
    drop(std::mem::replace(report, std::fs::File::open("/dev/null")?));

    let hub = Hub::new(input, terminal, cfg.stdin_once);
    copy_output(&mut log, outputs, started.pid, &hub, listener);
    hub.close();
    let _ = std::fs::remove_file(state.join(attach::SOCKET));
    let code = oci::runtime::wait(started.pid)?;
    let _ = log.flush_partial();
    let status = ExitStatus {
        code,
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        reason: if oom_killed(&cfg.spec) {
            "OOMKilled".into()
        } else if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
    };
    oci::fsutil::replace(&state.join("exit.json"), &serde_json::to_vec(&status)?)?;
    Ok(())
}

/// Whether the kernel's OOM killer killed a process of the container's cgroup (the container
/// runs with memory.oom.group, so such a kill ends it).
fn oom_killed(spec: &oci::oci_spec::runtime::Spec) -> bool {
    let cg = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    match (cg, oci::runtime::cgroup2_mount()) {
        (Some(cg), Some(mount)) => crate::node::cgroup::oom_killed(
            &crate::node::cgroup::fs::RealFs { mount },
            &cg.to_string_lossy(),
        ),
        _ => false,
    }
}

/// Copies the container's output (two pipes, or a terminal) into the log and to the attach
/// sessions while the container runs. When it has exited, what is still buffered is drained
/// and the copy ends, even if processes it left behind (with hostPID or a shared PID
/// namespace) keep the pipes open.
fn copy_output(
    log: &mut CriWriter,
    outputs: Vec<(OwnedFd, Stream)>,
    pid: i32,
    hub: &std::sync::Arc<crate::node::attach::Hub>,
    listener: std::os::unix::net::UnixListener,
) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    // The attach socket is served by threads of their own once a first session comes: a
    // container nobody attaches to costs its shim no thread.
    let mut listener = Some(listener);
    let pidfd = open_pidfd(pid).fd();
    let kinds: Vec<Stream> = outputs.iter().map(|(_, s)| *s).collect();
    let mut open: Vec<Option<OwnedFd>> = outputs.into_iter().map(|(fd, _)| Some(fd)).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut exited = false;
    while open.iter().any(Option::is_some) {
        let idx: Vec<usize> = (0..open.len()).filter(|&i| open[i].is_some()).collect();
        let mut fds: Vec<PollFd> = idx
            .iter()
            .map(|&i| {
                PollFd::new(
                    open[i].as_ref().expect("open"),
                    PollFlags::IN | PollFlags::HUP,
                )
            })
            .collect();
        let mut pid_at = None;
        if let (Some(p), false) = (&pidfd, exited) {
            pid_at = Some(fds.len());
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        let mut listener_at = None;
        if let (Some(l), false) = (&listener, exited) {
            listener_at = Some(fds.len());
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        // After the exit, only what is already buffered: do not wait for more.
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let n = match poll(&mut fds, if exited { Some(&zero) } else { None }) {
            Ok(n) => n,
            Err(_) => continue,
        };
        if exited && n == 0 {
            break;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if pid_at.is_some_and(|i| ready[i]) {
            exited = true;
        }
        if listener_at.is_some_and(|i| ready[i]) {
            if let Some(l) = listener.take() {
                hub.serve(l);
            }
        }
        for (k, &i) in idx.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            // A terminal whose far side is closed reads EIO: its end, as EOF is a pipe's.
            match rustix::io::read(open[i].as_ref().expect("open"), &mut buf) {
                Ok(0) | Err(_) => open[i] = None,
                Ok(n) => {
                    let _ = log.write(kinds[i], &buf[..n]);
                    let kind = match kinds[i] {
                        Stream::Stdout => crate::node::attach::STDOUT,
                        Stream::Stderr => crate::node::attach::STDERR,
                    };
                    hub.broadcast(kind, &buf[..n]);
                }
            }
        }
    }
}

/// A single-threaded process that forks shims on request, sparing each container start the
/// exec of a new knode binary (the agent itself is multi-threaded, so it cannot fork and go
/// on running Rust code). Shims still detach into sessions of their own: they outlive both the
/// launcher and the agent. Protocol on the launcher's stdin/stdout: a state directory per
/// line in, `started PID` or `error MESSAGE` per line out.
pub struct Launcher {
    io: std::sync::Mutex<(
        std::io::BufReader<std::os::unix::net::UnixStream>,
        std::os::unix::net::UnixStream,
    )>,
    _child: std::process::Child,
}

static LAUNCHER: std::sync::OnceLock<Launcher> = std::sync::OnceLock::new();

impl Launcher {
    /// Starts the launcher and makes `spawn` use it.
    pub fn install(exe: &Path) -> Result<()> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let child = Command::new(exe)
            .arg("__shim-launcher")
            .stdin(Stdio::from(OwnedFd::from(theirs.try_clone()?)))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .ctx("starting the shim launcher")?;
        let l = Launcher {
            io: std::sync::Mutex::new((std::io::BufReader::new(ours.try_clone()?), ours)),
            _child: child,
        };
        let _ = LAUNCHER.set(l);
        Ok(())
    }

    fn spawn(&self, state: &Path) -> Result<i32> {
        use std::io::BufRead;
        let mut io = self.io.lock().expect("launcher");
        let line = state.to_str().ctx("state path is not UTF-8")?;
        writeln!(io.1, "{line}").ctx("launcher: write")?;
        let mut reply = String::new();
        io.0.read_line(&mut reply).ctx("launcher: read")?;
        if reply.is_empty() {
            fail!("launcher: it exited");
        }
        match reply.trim_end().split_once(' ') {
            Some(("started", pid)) => Ok(pid.parse().ctx("launcher: bad PID")?),
            Some(("error", msg)) => fail!("{msg}"),
            _ => fail!("launcher: bad reply {reply:?}"),
        }
    }
}

/// The launcher's body (`knode __shim-launcher`).
pub fn launcher_main() -> Result<()> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    for line in stdin.lock().lines() {
        let state = PathBuf::from(line?);
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // SAFETY: fork in this single-threaded process; the child runs the shim and leaves
        // with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(r);
            // The shim must not keep the agent's socket: if the launcher dies, the agent has to
            // see EOF.
            if let Ok(null) = std::fs::File::open("/dev/null") {
                // SAFETY: re-pointing our standard descriptors at /dev/null.
                unsafe {
                    libc::dup2(null.as_raw_fd(), 0);
                    libc::dup2(null.as_raw_fd(), 1);
                }
            }
            let fd = std::os::fd::IntoRawFd::into_raw_fd(w);
            let code = if main(&state, fd).is_ok() { 0 } else { 1 };
            // SAFETY: see above: never return into the launcher's loop.
            unsafe { libc::_exit(code) };
        }
        drop(w);
        let mut msg = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut msg);
        if pid > 0 {
            // The foreground half exits at once (the shim lives on in its own session).
            // SAFETY: waitpid writes into a valid c_int.
            unsafe { libc::waitpid(pid, &mut 0, 0) };
        }
        let reply = match msg.strip_prefix("started ") {
            Some(p) => format!("started {}", p.trim()),
            None if msg.is_empty() => "error the container shim died before reporting".to_string(),
            None => format!("error {}", msg.replace('\n', " ")),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}
