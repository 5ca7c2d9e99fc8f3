//! The container process between `clone3` and `exec`: joins namespaces, builds the root
//! filesystem, confines itself and execs. It runs in the child of a single-threaded parent,
//! so ordinary Rust code is safe here; every error becomes a message for the parent.
//!
//! Mount targets come from specs built from images and manifests, so they are resolved inside
//! the root with `openat2(RESOLVE_IN_ROOT)` and mounted through `/proc/self/fd/N`: a symlink
//! in an image can never redirect a mount outside the container's root.
//!
//! Masked and read-only paths are mounted without resolving a path a container could change
//! (the class of runc's CVE-2025-31133 and CVE-2025-52565, where a container that shares an
//! emptyDir mounted at another container's `/dev` swaps `/dev/null` for a symlink to a
//! sysctl while it starts): the masks are detached clones of the host's `/dev/null`, made
//! before `pivot_root` and checked to be that device; their targets are opened beneath the
//! container's `/proc` and `/sys`, which must be procfs and sysfs, without following
//! anything and without crossing a mount; and every mount is attached with `move_mount`
//! between descriptors. A volume mounted over `/proc` is refused.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::Plan;

type R<T> = Result<T, InitError>;

/// Why the container's init could not set it up (reported to the runtime through its
/// pipe before exec).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InitError(pub String);

impl From<String> for InitError {
    fn from(s: String) -> InitError {
        InitError(s)
    }
}

impl From<&str> for InitError {
    fn from(s: &str) -> InitError {
        InitError(s.to_string())
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn check(r: libc::c_int, what: impl FnOnce() -> String) -> R<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(InitError(format!(
            "{}: {}",
            what(),
            std::io::Error::last_os_error()
        )))
    }
}

fn mount(src: &str, target: &str, fstype: &str, flags: u64, data: &str) -> R<()> {
    let (s, t, f, d) = (c(src), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings (or NULL) for the call's duration.
    let r = unsafe {
        libc::mount(
            if src.is_empty() {
                std::ptr::null()
            } else {
                s.as_ptr()
            },
            t.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                f.as_ptr()
            },
            flags as libc::c_ulong,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    check(r, || format!("mount {fstype:?} {src:?} on {target:?}"))
}

/// Resolves `dest` inside the root, creating missing directories (or, for `file`, the final
/// file), and returns an O_PATH descriptor of it. A symlink on the way (an image's `proc ->
/// /elsewhere`) is followed inside the root, as runc does: what it names is created there.
fn target_in_root(root: &OwnedFd, dest: &str, file: bool) -> R<OwnedFd> {
    target_in_root_depth(root, dest, file, 0)
}

fn target_in_root_depth(root: &OwnedFd, dest: &str, file: bool, depth: u32) -> R<OwnedFd> {
    if depth > 40 {
        return Err(InitError(format!(
            "mount destination {dest:?}: too many levels of symbolic links"
        )));
    }
    let flags = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = |p: &str| {
        rfs::openat2(
            root,
            if p.is_empty() { "." } else { p },
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            flags,
        )
    };
    let parts: Vec<&[u8]> = crate::apply::clean(dest.as_bytes());
    let parts: Vec<String> = parts
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let rel = parts.join("/");
    if let Ok(fd) = open(&rel) {
        return Ok(fd);
    }
    let mut cur = String::new();
    for (i, p) in parts.iter().enumerate() {
        let next = if cur.is_empty() {
            p.clone()
        } else {
            format!("{cur}/{p}")
        };
        match open(&next) {
            Ok(_) => {}
            Err(Errno::NOENT) => {
                let parent = open(&cur)
                    .map_err(|e| InitError(format!("mount destination {dest:?}: {e}")))?;
                if let Ok(link) = rfs::readlinkat(&parent, p.as_str(), Vec::new()) {
                    // A dangling symlink: continue from where it points, inside the root.
                    let link = link.to_string_lossy().into_owned();
                    let base = if link.starts_with('/') {
                        link
                    } else {
                        format!("{cur}/{link}")
                    };
                    let rest = parts[i + 1..].join("/");
                    return target_in_root_depth(root, &format!("{base}/{rest}"), file, depth + 1);
                }
                let last = i == parts.len() - 1;
                let made = if last && file {
                    rfs::openat(
                        &parent,
                        p.as_str(),
                        OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .map(drop)
                } else {
                    rfs::mkdirat(&parent, p.as_str(), Mode::from_raw_mode(0o755))
                };
                match made {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(InitError(format!(
                            "creating mount destination {dest:?}: {e}"
                        )))
                    }
                }
            }
            Err(e) => return Err(InitError(format!("mount destination {dest:?}: {e}"))),
        }
        cur = next;
    }
    open(&rel).map_err(|e| InitError(format!("mount destination {dest:?}: {e}")))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn setup_mounts(p: &Plan, root: &OwnedFd) -> R<()> {
    for m in &p.mounts {
        // As runc: nothing is bound over /proc (or the root itself), where the runtime's own
        // masks must find procfs.
        let clean: Vec<&[u8]> = crate::apply::clean(m.dest.as_bytes());
        if m.bind && (clean.is_empty() || clean[0] == b"proc") {
            return Err(InitError(format!(
                "mount destination {:?}: a volume may not be mounted over / or /proc",
                m.dest
            )));
        }
        if !m.bind && (m.fstype == "proc" || m.fstype == "sysfs") {
            // As runc (CVE-2023-28642): procfs and sysfs never go through an image's symlink,
            // and the masks below must find them where they belong.
            let rel = String::from_utf8_lossy(&clean.join(&b'/')).into_owned();
            if let Err(Errno::LOOP) = rfs::openat2(
                root,
                rel.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS,
            ) {
                return Err(InitError(format!(
                    "{} is a symlink in the image: {} is not mounted through one",
                    m.dest, m.fstype
                )));
            }
        }
        let src_is_file = m.bind && std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
        let target = target_in_root(root, &m.dest, src_is_file)?;
        let t = fd_path(&target);
        if m.bind {
            let rec = if m.recursive { libc::MS_REC } else { 0 };
            mount(&m.source, &t, "", libc::MS_BIND | rec, "")?;
            let extra =
                m.flags & (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
            if extra != 0 {
                // The old descriptor names the directory under the new mount: reopen the
                // target to reach the bind mount itself.
                let mounted = target_in_root(root, &m.dest, src_is_file)?;
                mount(
                    "",
                    &fd_path(&mounted),
                    "",
                    libc::MS_BIND | libc::MS_REMOUNT | extra,
                    "",
                )?;
            }
        } else {
            mount(&m.source, &t, &m.fstype, m.flags, &m.data)?;
        }
    }
    Ok(())
}

/// Standard device nodes on the container's /dev tmpfs (OCI "default devices").
fn setup_dev(root: &OwnedFd) -> R<()> {
    let Ok(dev) = rfs::openat2(
        root,
        "dev",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    ) else {
        return Ok(());
    };
    // The /dev tmpfs is nodev (a container with CAP_MKNOD must not make usable device
    // nodes): the standard devices are bind mounts of the host's own nodes.
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        match rfs::openat(
            &dev,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(_) | Err(Errno::EXIST) => {}
            Err(e) => return Err(InitError(format!("creating /dev/{name}: {e}"))),
        }
        let target = rfs::openat(
            &dev,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| InitError(format!("/dev/{name}: {e}")))?;
        // What was opened must be the file made above, not a symlink put there meanwhile (a
        // volume mounted at /dev is shared with the pod's other containers).
        let st = rfs::fstat(&target).map_err(|e| InitError(format!("/dev/{name}: {e}")))?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Err(InitError(format!(
                "/dev/{name}: not a regular file to mount the device on"
            )));
        }
        mount(
            &format!("/dev/{name}"),
            &fd_path(&target),
            "",
            libc::MS_BIND,
            "",
        )?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match rfs::symlinkat(target, &dev, name) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(InitError(format!("symlink /dev/{name}: {e}"))),
        }
    }
    Ok(())
}

fn pivot(root: &OwnedFd) -> R<()> {
    rustix::process::fchdir(root).map_err(|e| InitError(format!("chdir to rootfs: {e}")))?;
    // pivot_root(".", "."): the old root ends up on top of the new one; detach it.
    let dot = c(".");
    // SAFETY: valid NUL-terminated paths.
    let r =
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int;
    check(r, || "pivot_root".to_string())?;
    check(
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) },
        || "detach the old root".to_string(),
    )?;
    rustix::process::chdir("/").map_err(|e| InitError(format!("chdir /: {e}")))
}

const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const SYSFS_MAGIC: u64 = 0x6265_6572;

/// Detached bind mounts of the host's `/dev/null`, one per masked path, made before
/// `pivot_root` while the host's /dev is still reachable (and checked to be the null device:
/// character device 1:3).
fn null_mounts(n: usize) -> R<Vec<OwnedFd>> {
    if n == 0 {
        return Ok(vec![]);
    }
    let null = rfs::open("/dev/null", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| InitError(format!("open /dev/null: {e}")))?;
    let st = rfs::fstat(&null).map_err(|e| InitError(format!("/dev/null: {e}")))?;
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::CharacterDevice
        || rfs::major(st.st_rdev) != 1
        || rfs::minor(st.st_rdev) != 3
    {
        return Err("/dev/null is not the null device".into());
    }
    use rustix::mount::OpenTreeFlags as T;
    (0..n)
        .map(|_| {
            rustix::mount::open_tree(
                &null,
                "",
                T::OPEN_TREE_CLONE | T::OPEN_TREE_CLOEXEC | T::AT_EMPTY_PATH,
            )
            .map_err(|e| InitError(format!("clone /dev/null: {e}")))
        })
        .collect()
}

/// A masked or read-only path, opened beneath the container's procfs or sysfs without
/// following a symlink or crossing a mount; none if it does not exist.
fn pseudo_target(path: &str) -> R<Option<OwnedFd>> {
    let (base, magic, rel) = if let Some(r) = path.strip_prefix("/proc/") {
        ("proc", PROC_SUPER_MAGIC, r)
    } else if let Some(r) = path.strip_prefix("/sys/") {
        ("sys", SYSFS_MAGIC, r)
    } else {
        return Err(InitError(format!(
            "masked path {path:?} is not under /proc or /sys"
        )));
    };
    let strict = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let dir = match rfs::openat2(
        rfs::CWD,
        base,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        strict,
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(InitError(format!("/{base}: {e}"))),
    };
    let on = |fd: &OwnedFd, what: &str| -> R<()> {
        let fs = rfs::fstatfs(fd).map_err(|e| InitError(format!("{what}: {e}")))?;
        if fs.f_type as u64 != magic {
            return Err(InitError(format!(
                "{what} is not on {}: refusing to start (is a volume mounted over it?)",
                if magic == PROC_SUPER_MAGIC {
                    "procfs"
                } else {
                    "sysfs"
                }
            )));
        }
        Ok(())
    };
    on(&dir, &format!("/{base}"))?;
    match rfs::openat2(
        &dir,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        strict | ResolveFlags::NO_XDEV,
    ) {
        Ok(t) => {
            on(&t, path)?;
            Ok(Some(t))
        }
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(InitError(format!("{path}: {e}"))),
    }
}

fn attach(tree: &OwnedFd, target: &OwnedFd, path: &str) -> R<()> {
    use rustix::mount::MoveMountFlags as M;
    rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        M::MOVE_MOUNT_F_EMPTY_PATH | M::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| InitError(format!("mount over {path}: {e}")))
}

/// Hides a path: the null device over a file, an empty read-only tmpfs over a directory.
fn mask(path: &str, nulls: &mut Vec<OwnedFd>) -> R<()> {
    let Some(t) = pseudo_target(path)? else {
        return Ok(());
    };
    let st = rfs::fstat(&t).map_err(|e| InitError(format!("{path}: {e}")))?;
    if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory {
        use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
        let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)
            .and_then(|fs| {
                rustix::mount::fsconfig_set_string(&fs, "size", "0")?;
                rustix::mount::fsconfig_create(&fs)?;
                Ok(fs)
            })
            .map_err(|e| InitError(format!("tmpfs for {path}: {e}")))?;
        let m = rustix::mount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY,
        )
        .map_err(|e| InitError(format!("tmpfs for {path}: {e}")))?;
        attach(&m, &t, path)
    } else {
        let null = nulls
            .pop()
            .ok_or_else(|| InitError(format!("no /dev/null left to mask {path}")))?;
        attach(&null, &t, path)
    }
}

/// `mount_setattr(2)` (rustix has no wrapper): sets attributes on a whole mount tree.
fn set_attr(tree: &OwnedFd, attr: u64, path: &str) -> R<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let a = MountAttr {
        attr_set: attr,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid mount descriptor, an empty NUL-terminated path, and a mount_attr
    // structure of the size passed, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r as libc::c_int, || format!("read-only {path}"))
}

/// Makes a path read-only (and nosuid, nodev, noexec): a read-only clone of it, over it.
fn readonly(path: &str) -> R<()> {
    let Some(t) = pseudo_target(path)? else {
        return Ok(());
    };
    use rustix::mount::OpenTreeFlags as T;
    let tree = rustix::mount::open_tree(
        &t,
        "",
        T::OPEN_TREE_CLONE | T::OPEN_TREE_CLOEXEC | T::AT_EMPTY_PATH | T::AT_RECURSIVE,
    )
    .map_err(|e| InitError(format!("clone {path}: {e}")))?;
    const RDONLY: u64 = 0x1;
    const NOSUID: u64 = 0x2;
    const NODEV: u64 = 0x4;
    const NOEXEC: u64 = 0x8;
    set_attr(&tree, RDONLY | NOSUID | NODEV | NOEXEC, path)?;
    attach(&tree, &t, path)
}

/// Brings the loopback interface of a new network namespace up.
pub fn loopback_up() -> R<()> {
    // SAFETY: socket() has no memory arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(InitError(format!(
            "socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: ifreq is a plain C struct; zeroed is a valid value, and the name fits.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass; s is a valid socket.
    let r = unsafe {
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: s is a descriptor we own.
    unsafe { libc::close(s) };
    if r != 0 {
        return Err(InitError(format!("bringing lo up: {err}")));
    }
    Ok(())
}

fn drop_privileges(p: &Plan) -> R<()> {
    use caps::CapSet;
    // A container cannot get capabilities the runtime itself lacks (some hosts drop e.g.
    // CAP_SYS_RESOURCE from every bounding set): grant what is requested and available.
    let have = caps::read(None, CapSet::Permitted)
        .map_err(|e| InitError(format!("read capabilities: {e}")))?;
    let only = |s: &std::collections::HashSet<caps::Capability>| -> std::collections::HashSet<caps::Capability> { s.intersection(&have).copied().collect() };
    let (effective, permitted, inheritable) =
        (only(&p.effective), only(&p.permitted), only(&p.inheritable));
    for cap in caps::all() {
        if !p.bounding.contains(&cap) {
            // Capabilities the kernel does not know are reported as absent: skip them.
            if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| InitError(format!("drop {cap} from the bounding set: {e}")))?;
            }
        }
    }
    if p.uid != 0 {
        check(
            // Keep the permitted set across setuid; it is set explicitly below.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) },
            || "PR_SET_KEEPCAPS".into(),
        )?;
    }
    let groups: Vec<libc::gid_t> = p.groups.clone();
    check(
        // SAFETY: the pointer and length describe a valid gid_t array.
        unsafe { libc::setgroups(groups.len(), groups.as_ptr()) },
        || "setgroups".into(),
    )?;
    check(
        // SAFETY: integer arguments only; this process is single-threaded, so the raw per-thread
        // syscalls cover the whole process.
        unsafe { libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) } as i32,
        || format!("setgid {}", p.gid),
    )?;
    check(
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) } as i32,
        || format!("setuid {}", p.uid),
    )?;
    caps::set(None, CapSet::Effective, &effective)
        .map_err(|e| InitError(format!("set effective capabilities: {e}")))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| InitError(format!("set permitted capabilities: {e}")))?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(|e| InitError(format!("set inheritable capabilities: {e}")))?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| InitError(format!("clear ambient capabilities: {e}")))?;
    for cap in p.ambient.intersection(&inheritable) {
        caps::raise(None, CapSet::Ambient, *cap)
            .map_err(|e| InitError(format!("raise ambient {cap}: {e}")))?;
    }
    Ok(())
}

fn find_executable(p: &Plan) -> R<CString> {
    let arg0 = p.argv[0].to_str().unwrap_or("");
    if arg0.contains('/') {
        return Ok(p.argv[0].clone());
    }
    for dir in p.path.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{dir}/{arg0}");
        if let Ok(md) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(c(&cand));
            }
        }
    }
    Err(InitError(format!(
        "exec {arg0:?}: executable file not found in $PATH"
    )))
}

fn setup(p: &Plan) -> R<Infallible> {
    rustix::process::umask(Mode::empty());
    for (fd, ns) in &p.join {
        // SAFETY: a valid namespace descriptor; this process is single-threaded.
        check(unsafe { libc::setns(fd.as_raw_fd(), *ns) }, || {
            format!("join namespace {ns:#x}")
        })?;
    }
    if p.new_net {
        loopback_up()?;
    }
    if let Some(h) = &p.hostname {
        rustix::system::sethostname(h.as_bytes())
            .map_err(|e| InitError(format!("sethostname {h:?}: {e}")))?;
    }
    // A session of its own: the container never shares the caller's controlling terminal
    // (TIOCSTI could type into it otherwise).
    // SAFETY: setsid has no arguments.
    unsafe { libc::setsid() };
    // With a terminal, the starter gave us the pty's far side as standard input: it becomes
    // the controlling terminal of the new session, as runc's console does.
    // SAFETY: TIOCSCTTY on our own standard input, with no pointer argument.
    if p.terminal && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(InitError(format!(
            "making the terminal the controlling one (TIOCSCTTY): {}",
            std::io::Error::last_os_error()
        )));
    }
    // Nothing done here may propagate back to the host.
    mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    let rootfs = p.rootfs.to_string_lossy().into_owned();
    mount(&rootfs, &rootfs, "", libc::MS_BIND | libc::MS_REC, "")?;
    let root = rfs::open(
        &p.rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| InitError(format!("open rootfs: {e}")))?;
    setup_mounts(p, &root)?;
    setup_dev(&root)?;
    let mut nulls = null_mounts(p.masked.len())?;
    pivot(&root)?;
    drop(root);
    for m in &p.masked {
        mask(m, &mut nulls)?;
    }
    for r in &p.readonly {
        readonly(r)?;
    }
    if p.readonly_root {
        mount(
            "",
            "/",
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            "",
        )?;
    }
    if !p.readonly_root {
        let _ = std::fs::create_dir_all(&p.cwd);
    }
    rustix::process::chdir(p.cwd.as_str())
        .map_err(|e| InitError(format!("chdir {:?}: {e}", p.cwd)))?;
    confine_and_exec(p)
}

/// The common tail of a container's start and of an exec into it: close stray descriptors,
/// install seccomp, drop privileges, set no_new_privs, exec.
pub(crate) fn confine_and_exec(p: &Plan) -> R<Infallible> {
    let exe = find_executable(p)?;
    // Descriptors the caller did not mean to pass stop at exec.
    // SAFETY: close_range with integer arguments only.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        return Err(InitError(format!(
            "close_range: {}",
            std::io::Error::last_os_error()
        )));
    }
    reset_signals();
    for prog in &p.seccomp {
        seccompiler::apply_filter(prog)
            .map_err(|e| InitError(format!("install seccomp filter: {e}")))?;
    }
    drop_privileges(p)?;
    if p.no_new_privs {
        check(
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            || "PR_SET_NO_NEW_PRIVS".into(),
        )?;
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));
    let argv: Vec<*const libc::c_char> = p
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = p
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(InitError(format!(
        "exec {:?}: {}",
        OsStr::from_bytes(exe.as_bytes()),
        std::io::Error::last_os_error()
    )))
}

/// Runs the container setup; returns only with the reason it failed.
pub(super) fn run(p: &Plan) -> String {
    match setup(p) {
        Ok(never) => match never {},
        Err(e) => e.0,
    }
}

/// Default dispositions and an empty signal mask: the runtime's own (Rust ignores SIGPIPE)
/// must not leak into the container, as ignored signals survive exec.
fn reset_signals() {
    // The raw syscall: glibc refuses to touch the signals it reserves (32, 33), which the
    // caller may have ignored too.
    #[repr(C)]
    struct KSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    }; // SIG_DFL
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: rt_sigaction reads a valid kernel sigaction; the old action is not wanted.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KSigaction,
                    std::ptr::null_mut::<KSigaction>(),
                    8usize,
                )
            };
        }
    }
    // SAFETY: an empty, initialised sigset_t passed to sigprocmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The body of an exec'd process: join the container's namespaces (mount last: that makes
/// its root ours), take the pty as the controlling terminal, then confine and exec.
pub(super) fn exec_child(p: &Plan, pty: Option<&OwnedFd>) -> String {
    let run = || -> R<Infallible> {
        for (fd, ns) in &p.join {
            // SAFETY: a valid namespace descriptor; this process is single-threaded.
            check(unsafe { libc::setns(fd.as_raw_fd(), *ns) }, || {
                format!("join namespace {ns:#x}")
            })?;
        }
        // SAFETY: setsid has no arguments (see `setup`).
        unsafe { libc::setsid() };
        if let Some(slave) = pty {
            // SAFETY: setsid has no arguments; TIOCSCTTY and dup2 act on a valid terminal fd.
            unsafe {
                if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
                    return Err(InitError(format!(
                        "TIOCSCTTY: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                for fd in 0..3 {
                    libc::dup2(slave.as_raw_fd(), fd);
                }
            }
        }
        rustix::process::chdir(p.cwd.as_str())
            .map_err(|e| InitError(format!("chdir {:?}: {e}", p.cwd)))?;
        confine_and_exec(p)
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e.0,
    }
}
