//! State paths built from pod input, resolved beneath their root.
//!
//! Threat model: pod manifests (and, later, API requests) name namespaces, pods, containers
//! and volumes, and those names become directories under the node's state roots (`--root`,
//! `--run-dir`, `--log-dir`). Validation (`crate::api::validation`) refuses bad names before
//! anything is built from them; this module is the second line, so that a check missed there
//! still cannot reach outside a root:
//!
//! - a path is built only from plain components (`Beneath::join`): no `/`, `.`, `..`, NUL or
//!   empty name, at most 255 bytes (NAME_MAX), so a name can never climb out or be absolute;
//! - directories are made and files written through `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` from the root's descriptor: a symlink planted anywhere on the way
//!   (by a container writing into a volume or its writable layer) is refused, not followed;
//! - removal (`remove_all`) walks descriptors, never follows a symlink, and never descends
//!   through a mount point: a mount left under a pod directory (a volume, a staged subPath, a
//!   hostPath bind) is detached first (`MNT_DETACH | UMOUNT_NOFOLLOW`), so deleting a pod can
//!   never delete what a mount exposes (`std::fs::remove_dir_all` crosses mounts). It does
//!   not recurse either: a tree 100,000 directories deep (a container can make one in an
//!   emptyDir) costs two descriptors and no stack.
//!
//! Why not a crate: cap-std and libpathrs resolve beneath a root as well, but neither refuses
//! to cross mount points while removing, which is the property a kubelet's teardown needs;
//! rustix's `openat2` gives the rest in a few lines.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error("{name:?} cannot be used as a file name: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> SafeFsError {
    SafeFsError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Checks that `name` is one plain path component.
pub fn check_name(name: &str) -> Result<(), SafeFsError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it is a relative directory reference"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.len() > 255 {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(SafeFsError::BadName {
        name: name.to_string(),
        why,
    })
}

/// A state root (trusted: it comes from the node's flags) and the paths beneath it.
#[derive(Debug)]
pub struct Beneath {
    root: PathBuf,
    fd: OwnedFd,
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

impl Beneath {
    /// Opens `root`, which must be a directory (made with `mode` if missing).
    pub fn open(root: &Path, mode: u32) -> Result<Beneath, SafeFsError> {
        if !root.exists() {
            std::fs::create_dir_all(root).map_err(|e| io("creating", root, e))?;
            set_mode(root, mode)?;
        }
        Beneath::open_existing(root)
    }

    /// Opens `root`, which must exist.
    pub fn open_existing(root: &Path) -> Result<Beneath, SafeFsError> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("opening", root, e))?;
        Ok(Beneath {
            root: root.to_path_buf(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The path of `parts` beneath the root; every part must be a plain name.
    pub fn join(&self, parts: &[&str]) -> Result<PathBuf, SafeFsError> {
        let mut p = self.root.clone();
        for part in parts {
            check_name(part)?;
            p.push(part);
        }
        Ok(p)
    }

    fn rel(parts: &[&str]) -> Result<String, SafeFsError> {
        for part in parts {
            check_name(part)?;
        }
        Ok(if parts.is_empty() {
            ".".into()
        } else {
            parts.join("/")
        })
    }

    /// Opens the directory `parts` beneath the root (never through a symlink).
    fn open_dir(&self, parts: &[&str]) -> Result<OwnedFd, SafeFsError> {
        let rel = Self::rel(parts)?;
        rustix::fs::openat2(
            &self.fd,
            rel.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
        .map_err(|e| io("opening", &self.root.join(&rel), e))
    }

    /// Makes the directories `parts` (each missing one with `mode`) and returns the path.
    pub fn create_dir_all(&self, parts: &[&str], mode: u32) -> Result<PathBuf, SafeFsError> {
        let path = self.join(parts)?;
        let mut dir = self.open_dir(&[])?;
        for (i, part) in parts.iter().enumerate() {
            let sub = self.root.join(parts[..=i].join("/"));
            match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(mode)) {
                Ok(()) => {
                    // mkdir's mode is masked by the umask: set it exactly.
                    let fd = open_child(&dir, part).map_err(|e| io("opening", &sub, e))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                        .map_err(|e| io("chmod", &sub, e))?;
                    dir = fd;
                }
                Err(Errno::EXIST) => {
                    dir = open_child(&dir, part).map_err(|e| io("opening", &sub, e))?;
                }
                Err(e) => return Err(io("creating", &sub, e)),
            }
        }
        Ok(path)
    }

    /// Writes `data` to the file `parts` atomically (temporary file, rename) with `mode`.
    pub fn write(&self, parts: &[&str], data: &[u8], mode: u32) -> Result<PathBuf, SafeFsError> {
        let (name, dirs) = parts.split_last().ok_or(SafeFsError::BadName {
            name: String::new(),
            why: "it is empty",
        })?;
        let path = self.join(parts)?;
        let dir = self.open_dir(dirs)?;
        write_at(&dir, name, data, mode).map_err(|e| io("writing", &path, e))?;
        Ok(path)
    }

    /// `remove_all` for an absolute path, which must lie beneath the root.
    pub fn remove_path(&self, p: &Path) -> Result<(), SafeFsError> {
        let rel = p
            .strip_prefix(&self.root)
            .map_err(|_| SafeFsError::BadName {
                name: p.display().to_string(),
                why: "it is not beneath its root",
            })?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| match c {
                std::path::Component::Normal(n) => n.to_str().unwrap_or("/"),
                _ => "/",
            })
            .collect();
        self.remove_all(&parts)
    }

    /// Removes `parts` and everything below it, without following symlinks and without
    /// descending through mount points (they are detached first). Missing is not an error.
    pub fn remove_all(&self, parts: &[&str]) -> Result<(), SafeFsError> {
        let Some((name, dirs)) = parts.split_last() else {
            return Err(SafeFsError::BadName {
                name: String::new(),
                why: "it is empty",
            });
        };
        let path = self.join(parts)?;
        let parent = match self.open_dir(dirs) {
            Ok(d) => d,
            Err(SafeFsError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let name = CString::new(*name).expect("checked: no NUL");
        remove_entry(&parent, &name, &path)
    }
}

/// Removes the tree at `p` (an absolute path whose parent is trusted: a state root's
/// subdirectory) as `Beneath::remove_all` does: no symlink followed, no mount crossed, no
/// recursion.
pub fn remove_tree(p: &Path) -> Result<(), SafeFsError> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(SafeFsError::BadName {
            name: p.display().to_string(),
            why: "it has no parent",
        });
    };
    let name = name.to_str().ok_or(SafeFsError::BadName {
        name: p.display().to_string(),
        why: "it is not UTF-8",
    })?;
    match Beneath::open_existing(parent) {
        Ok(b) => b.remove_all(&[name]),
        Err(SafeFsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether `p` is the root of a mount (its device differs from its parent's; bind mounts of
/// the same filesystem are found by `remove_all`, which asks the kernel).
pub fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Sets a path's permission bits (for roots the node owns).
pub fn set_mode(p: &Path, mode: u32) -> Result<(), SafeFsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", p, e))
}

fn open_child(dir: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve(),
    )
}

/// At most `max` bytes of the regular file at `p`, never following a symlink there (a
/// FIFO or a device gets an error, not a read that blocks or never ends).
pub fn read_limited(p: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            p.display()
        )));
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), max),
        &mut buf,
    )?;
    Ok(buf)
}

/// Writes a file in `dir` atomically, never following a symlink at `name`.
pub fn write_at(dir: &impl AsFd, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
    check_name(name).map_err(std::io::Error::other)?;
    let tmp = format!(".tmp-{}-{}", std::process::id(), unique());
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let done = (|| -> std::io::Result<()> {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, data)?;
        // rename replaces a symlink at `name` itself, never its target.
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
        Ok(())
    })();
    if done.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    done
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Removes `name` in `parent` (see `Beneath::remove_all`).
///
/// Depth costs neither stack nor descriptors: a tree a container made (in an emptyDir or its
/// writable layer) may be 100,000 directories deep. The directory being removed (`top`) is
/// emptied level by level: the subdirectories of each of its subdirectories are first moved
/// up into `top` (a rename inside one filesystem; mount points met on the way are detached
/// first), so at most two directories are open at any time, and nothing recurses.
fn remove_entry(parent: &OwnedFd, name: &CStr, path: &Path) -> Result<(), SafeFsError> {
    match kind(parent, name, path)? {
        None => return Ok(()),
        Some(false) => return unlink_file(parent, name, path),
        Some(true) => {}
    }
    let top = open_dir(parent, name, path)?;
    loop {
        let entries = list(&top, path)?;
        if entries.is_empty() {
            break;
        }
        let mut progress = false;
        for e in &entries {
            match kind(&top, e, path)? {
                None => progress = true,
                Some(false) => {
                    unlink_file(&top, e, path)?;
                    progress = true;
                }
                Some(true) => {
                    let sub = open_dir(&top, e, path)?;
                    for c in list(&sub, path)? {
                        match kind(&sub, &c, path)? {
                            None => {}
                            Some(false) => unlink_file(&sub, &c, path)?,
                            Some(true) => lift(&sub, &c, &top, path)?,
                        }
                        progress = true;
                    }
                    drop(sub);
                    match rustix::fs::unlinkat(&top, e.as_c_str(), AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => progress = true,
                        // Something appeared in it meanwhile: the next round takes it.
                        Err(Errno::NOTEMPTY) => {}
                        Err(err) => return Err(io("removing", path, err)),
                    }
                }
            }
        }
        if !progress {
            return Err(io(
                "removing",
                path,
                std::io::Error::other("entries that cannot be removed are left"),
            ));
        }
    }
    drop(top);
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io("removing", path, e)),
    }
}

/// Whether `name` in `dir` is a directory (never following a symlink); none if it is gone.
fn kind(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<Option<bool>, SafeFsError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(
            FileType::from_raw_mode(st.st_mode) == FileType::Directory,
        )),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io("stat", path, e)),
    }
}

/// Removes a non-directory (a file mount point, such as a bind-mounted /etc/hosts or a
/// staged subPath file, is detached first).
fn unlink_file(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<(), SafeFsError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::BUSY) => {
            detach(dir, name, path)?;
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(io("removing", path, e)),
            }
        }
        Err(e) => Err(io("removing", path, e)),
    }
}

/// Opens the directory `name` in `dir` without following a symlink or crossing into a mount:
/// a mount point is detached, and the directory beneath it is opened.
fn open_dir(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<OwnedFd, SafeFsError> {
    let open = || {
        rustix::fs::openat2(
            dir,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            resolve() | ResolveFlags::NO_XDEV,
        )
    };
    match open() {
        Ok(d) => Ok(d),
        Err(Errno::XDEV) => {
            detach(dir, name, path)?;
            open().map_err(|e| io("opening", path, e))
        }
        Err(e) => Err(io("opening", path, e)),
    }
}

/// The names in a directory, without `.` and `..`.
fn list(dir: &OwnedFd, path: &Path) -> Result<Vec<CString>, SafeFsError> {
    let d = rustix::fs::Dir::read_from(dir).map_err(|e| io("reading", path, e))?;
    let mut v = Vec::new();
    for e in d {
        let e = e.map_err(|e| io("reading", path, e))?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            v.push(n.to_owned());
        }
    }
    Ok(v)
}

/// Moves the directory `name` of `from` up into `top` under a fresh name.
fn lift(from: &OwnedFd, name: &CStr, top: &OwnedFd, path: &Path) -> Result<(), SafeFsError> {
    let fresh = format!(".rm-{}-{}", std::process::id(), unique());
    match rustix::fs::renameat(from, name, top, fresh.as_str()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // A mount point: detach it, then move what is beneath.
        Err(Errno::BUSY) => {
            detach(from, name, path)?;
            rustix::fs::renameat(from, name, top, fresh.as_str()).map_err(|e| io("moving", path, e))
        }
        Err(e) => Err(io("moving", path, e)),
    }
}

/// Detaches the mount at `name` in `parent`, through the parent's descriptor (the path is
/// never re-resolved from the root) and without following a symlink at `name`.
fn detach(parent: &OwnedFd, name: &CStr, path: &Path) -> Result<(), SafeFsError> {
    let mut target = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    target.extend_from_slice(name.to_bytes());
    let target =
        CString::new(target).map_err(|e| io("unmounting", path, std::io::Error::other(e)))?;
    tracing::debug!(path = %path.display(), "detaching a mount left under a directory being removed");
    rustix::mount::unmount(
        target.as_c_str(),
        rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
    )
    .map_err(|e| io("unmounting", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain_components() {
        for bad in ["", ".", "..", "a/b", "/tmp", "a\0b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "..a", "a..", "default_web_1234", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        let d = tempfile::tempdir().unwrap();
        let b = Beneath::open(d.path(), 0o700).unwrap();
        assert!(b.join(&["pods", "../../etc"]).is_err());
        assert!(b.join(&["/tmp/x"]).is_err());
        assert_eq!(b.join(&["pods", "u"]).unwrap(), d.path().join("pods/u"));
    }

    #[test]
    fn symlinks_on_the_way_are_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let b = Beneath::open(&d.path().join("root"), 0o700).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("root/link")).unwrap();
        assert!(b.create_dir_all(&["link", "sub"], 0o700).is_err());
        assert!(b.write(&["link", "f"], b"data", 0o644).is_err());
        assert!(!outside.path().join("sub").exists() && !outside.path().join("f").exists());
        // Removing through the link removes the link, never what it points to.
        b.remove_all(&["link"]).unwrap();
        assert!(outside.path().join("keep").exists());
        assert!(!d.path().join("root/link").exists());
        // A file replaced by a symlink is replaced, the target untouched.
        std::os::unix::fs::symlink(outside.path().join("keep"), d.path().join("root/f")).unwrap();
        b.write(&["f"], b"new", 0o640).unwrap();
        assert_eq!(std::fs::read(outside.path().join("keep")).unwrap(), b"x");
        assert_eq!(std::fs::read(d.path().join("root/f")).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("root/f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
    }

    #[test]
    fn directories_get_the_mode_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let b = Beneath::open(d.path(), 0o700).unwrap();
        let p = b.create_dir_all(&["a", "b"], 0o750).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for q in [d.path().join("a"), p] {
            assert_eq!(
                std::fs::metadata(q).unwrap().permissions().mode() & 0o7777,
                0o750
            );
        }
    }

    #[test]
    fn removal_of_a_very_deep_tree_needs_neither_stack_nor_descriptors() {
        let d = tempfile::tempdir().unwrap();
        let b = Beneath::open(d.path(), 0o700).unwrap();
        std::fs::create_dir(d.path().join("deep")).unwrap();
        let dir = |at: &dyn AsFd, name: &str| {
            rustix::fs::openat(
                at,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        };
        let mut fd = dir(
            &rustix::fs::CWD,
            &d.path().join("deep").display().to_string(),
        );
        // Deeper than a thread's stack allows a recursive walk, and than the open files limit.
        for _ in 0..30_000 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            rustix::fs::openat(
                &fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            fd = dir(&fd, "d");
        }
        drop(fd);
        // On a thread with a small stack, as the agent's pod workers have.
        let t = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || b.remove_all(&["deep"]).map_err(|e| e.to_string()))
            .unwrap();
        t.join().unwrap().unwrap();
        assert!(!d.path().join("deep").exists());
    }

    #[test]
    fn removal_handles_deep_trees_odd_names_and_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        let b = Beneath::open(d.path(), 0o700).unwrap();
        let mut p = d.path().join("t");
        for i in 0..50 {
            p.push(i.to_string());
        }
        std::fs::create_dir_all(&p).unwrap();
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe");
        std::fs::create_dir(d.path().join("t").join(odd)).unwrap();
        std::fs::write(d.path().join("t").join(odd).join("f"), b"x").unwrap();
        b.remove_all(&["t"]).unwrap();
        assert!(!d.path().join("t").exists());
        b.remove_all(&["never", "was"]).unwrap();
    }
}
