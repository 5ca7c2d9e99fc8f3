//! The layer applier: writes one layer tar into its own directory in overlayfs "upper dir"
//! form (whiteouts as 0/0 character devices, opaque directories as
//! `trusted.overlay.opaque=y`).
//!
//! Confinement: every parent directory is resolved with `openat2(RESOLVE_IN_ROOT)` from the
//! layer root, so `..` and symlinks (absolute or relative, chained, dangling) are evaluated as
//! if the layer root were `/`: the kernel, not string handling, keeps every operation inside.
//! The final component is always handled with `*at` calls that do not follow symlinks.
//!
//! Each layer is applied into an empty directory of its own (the snapshot for its ChainID), so
//! the layers of an image can be applied concurrently. Paths therefore resolve within the layer
//! being applied, as in containerd's overlay applier which writes the upper dir directly.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use rustix::io::Errno;

use crate::tar::{Entry, EntryKind, TarError, TarReader};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// aufs bookkeeping (`.wh..wh.plnk/`, `.wh..wh.aufs`, `.wh..wh.orph/`) found in old images.
const AUFS_META: &[u8] = b".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Tar(#[from] TarError),
    #[error("entry {path:?}: {reason}")]
    Rejected { path: String, reason: String },
    #[error("entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
}

/// What an applied layer contained.
#[derive(Debug, Default, Clone)]
pub struct ApplyStats {
    pub entries: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
    /// Directories the layer needed but did not contain (created 0755 root:root); the image
    /// store gives them the attributes of the same directory in lower layers.
    pub implied_dirs: Vec<Vec<u8>>,
}

/// A cleaned entry path: components relative to the layer root, no `.`, `..` or empty parts.
/// `..` never climbs above the root (as if the path were resolved from `/`).
pub(crate) fn clean(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(p);
    }
    v
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

struct Applier {
    root: OwnedFd,
    /// The last resolved parent directory (entries come grouped by directory).
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directory mtimes, set once every entry is in place.
    dir_times: Vec<(Vec<u8>, i64, u32)>,
    buf: Vec<u8>,
    stats: ApplyStats,
    implied: std::collections::BTreeSet<Vec<u8>>,
}

impl Applier {
    fn resolve_flags() -> ResolveFlags {
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
    }

    /// Opens a directory inside the root (an empty path is the root itself).
    fn open_dir(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        let p: &[u8] = if rel.is_empty() { b"." } else { rel };
        rfs::openat2(
            &self.root,
            os(p),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            Self::resolve_flags(),
        )
    }

    /// Resolves (creating if missing, as 0755 root:root) the directory `parts` inside the root.
    fn ensure_dir(&mut self, parts: &[&[u8]], entry: &str) -> Result<OwnedFd, ApplyError> {
        let rel = join(parts);
        match self.open_dir(&rel) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) if !parts.is_empty() => {
                let parent = self.ensure_dir(&parts[..parts.len() - 1], entry)?;
                let name = parts[parts.len() - 1];
                match rfs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        self.implied.insert(rel.clone());
                    }
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(entry, "create parent directory", e)),
                }
                self.open_dir(&rel).map_err(|e| match e {
                    Errno::NOENT | Errno::NOTDIR | Errno::LOOP => ApplyError::Rejected {
                        path: entry.to_string(),
                        reason: format!(
                            "parent {:?} is a symlink that does not lead to a directory in the layer",
                            String::from_utf8_lossy(&rel)
                        ),
                    },
                    e => io_err(entry, "open parent directory", e),
                })
            }
            Err(Errno::NOTDIR) => Err(ApplyError::Rejected {
                path: entry.to_string(),
                reason: "a parent path component is not a directory".into(),
            }),
            Err(e) => Err(io_err(entry, "open parent directory", e)),
        }
    }

    fn parent_fd(&mut self, parts: &[&[u8]], entry: &str) -> Result<BorrowedFd<'_>, ApplyError> {
        let key = join(parts);
        let hit = matches!(&self.cache, Some((k, _)) if *k == key);
        if !hit {
            let fd = self.ensure_dir(parts, entry)?;
            self.cache = Some((key, fd));
        }
        Ok(self
            .cache
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("cache just filled"))
    }

    fn apply_entry<R: io::Read>(
        &mut self,
        e: &Entry,
        tar: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        let name = e.path_lossy();
        let parts = clean(&e.path);
        let Some((&base, parent)) = parts.split_last() else {
            // The entry names the layer root itself ("./", "/", "..", a symlink named ".").
            if e.kind == EntryKind::Dir {
                let root = rfs::openat(
                    &self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|er| io_err(&name, "open root", er))?;
                set_owner_mode(&root, e, &name)?;
                set_xattrs_fd(&root, e, &name)?;
                self.dir_times.push((Vec::new(), e.mtime, e.mtime_nsec));
                return Ok(());
            }
            return Err(ApplyError::Rejected {
                path: name,
                reason: "a non-directory entry resolves to the layer root".into(),
            });
        };

        // aufs metadata is skipped, as Docker and containerd do.
        if parent.iter().any(|c| c.starts_with(AUFS_META))
            || (base.starts_with(AUFS_META) && base != OPAQUE)
        {
            return Ok(());
        }
        // A directory named `.wh.x/` is an ordinary path; only other entries are whiteouts.
        if base.starts_with(WHITEOUT_PREFIX) && e.kind != EntryKind::Dir {
            return self.whiteout(base, parent, &name);
        }

        let parent_fd = self
            .parent_fd(parent, &name)?
            .try_clone_to_owned()
            .map_err(|er| ApplyError::Io {
                path: name.clone(),
                op: "dup",
                source: er,
            })?;
        let pfd = parent_fd.as_fd();

        // Replace what is there: a directory over a directory is kept (attributes updated);
        // anything else is removed first. A directory that replaces a whiteout of its own layer
        // must hide the lower one, so it becomes opaque.
        let mut make_opaque = false;
        if let Ok(st) = rfs::statat(pfd, os(base), AtFlags::SYMLINK_NOFOLLOW) {
            let ft = FileType::from_raw_mode(st.st_mode);
            let whiteout = ft == FileType::CharacterDevice && st.st_rdev == 0;
            if ft == FileType::Directory && e.kind == EntryKind::Dir {
                let d = rfs::openat(
                    pfd,
                    os(base),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|er| io_err(&name, "open directory", er))?;
                set_owner_mode(&d, e, &name)?;
                set_xattrs_fd(&d, e, &name)?;
                self.implied.remove(&join(&parts));
                self.dir_times.push((join(&parts), e.mtime, e.mtime_nsec));
                return Ok(());
            }
            if e.kind == EntryKind::Hardlink && same_target(&self.root, e, &st) {
                return Ok(());
            }
            make_opaque = whiteout && e.kind == EntryKind::Dir;
            remove(pfd, base, ft == FileType::Directory, &name)?;
            self.cache = None;
        }

        let b = os(base);
        match e.kind {
            EntryKind::Dir => {
                rfs::mkdirat(pfd, b, Mode::from_raw_mode(0o700))
                    .map_err(|er| io_err(&name, "mkdir", er))?;
                let d = rfs::openat(
                    pfd,
                    b,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|er| io_err(&name, "open directory", er))?;
                set_owner_mode(&d, e, &name)?;
                set_xattrs_fd(&d, e, &name)?;
                if make_opaque {
                    rfs::fsetxattr(&d, OPAQUE_XATTR, b"y", rfs::XattrFlags::empty())
                        .map_err(|er| io_err(&name, "set opaque xattr", er))?;
                }
                self.implied.remove(&join(&parts));
                self.dir_times.push((join(&parts), e.mtime, e.mtime_nsec));
            }
            EntryKind::File => {
                let fd = rfs::openat(
                    pfd,
                    b,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|er| io_err(&name, "create file", er))?;
                let mut f = File::from(fd);
                loop {
                    let n = tar.read_data(&mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n]).map_err(|er| ApplyError::Io {
                        path: name.clone(),
                        op: "write",
                        source: er,
                    })?;
                    self.stats.bytes += n as u64;
                }
                set_owner_mode(&f, e, &name)?;
                set_xattrs_fd(&f, e, &name)?;
                let t = ts(e.mtime, e.mtime_nsec);
                rfs::futimens(
                    &f,
                    &Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                )
                .map_err(|er| io_err(&name, "set times", er))?;
            }
            EntryKind::Symlink => {
                rfs::symlinkat(os(&e.link), pfd, b).map_err(|er| io_err(&name, "symlink", er))?;
                self.cache = None;
                finish_at(pfd, b, e, &name, false)?;
            }
            EntryKind::Hardlink => {
                let target = clean(&e.link);
                let Some((&tbase, tparent)) = target.split_last() else {
                    return Err(ApplyError::Rejected {
                        path: name,
                        reason: "hardlink target resolves to the layer root".into(),
                    });
                };
                if tbase.starts_with(WHITEOUT_PREFIX) {
                    return Err(ApplyError::Rejected {
                        path: name,
                        reason: "hardlink to a whiteout".into(),
                    });
                }
                let tdir = self
                    .open_dir(&join(tparent))
                    .map_err(|er| ApplyError::Rejected {
                        path: name.clone(),
                        reason: format!(
                            "hardlink target {:?} not found in this layer: {er}",
                            String::from_utf8_lossy(&e.link)
                        ),
                    })?;
                // No AT_SYMLINK_FOLLOW: a hardlink to a symlink links the symlink itself.
                rfs::linkat(&tdir, os(tbase), pfd, b, AtFlags::empty()).map_err(|er| {
                    ApplyError::Rejected {
                        path: name.clone(),
                        reason: format!(
                            "hardlink to {:?} failed: {er}",
                            String::from_utf8_lossy(&e.link)
                        ),
                    }
                })?;
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let ft = match e.kind {
                    EntryKind::Char => FileType::CharacterDevice,
                    EntryKind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rfs::makedev(e.dev_major, e.dev_minor);
                rfs::mknodat(pfd, b, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|er| io_err(&name, "mknod", er))?;
                finish_at(pfd, b, e, &name, true)?;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, base: &[u8], parent: &[&[u8]], name: &str) -> Result<(), ApplyError> {
        if base == OPAQUE {
            let d = self.ensure_dir(parent, name)?;
            // O_PATH fds cannot carry xattrs: reopen the directory for real.
            let d = rfs::openat(
                &d,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|er| io_err(name, "open directory", er))?;
            return rfs::fsetxattr(&d, OPAQUE_XATTR, b"y", rfs::XattrFlags::empty())
                .map_err(|er| io_err(name, "set opaque xattr", er));
        }
        let target = &base[WHITEOUT_PREFIX.len()..];
        if target.is_empty()
            || target == b"."
            || target == b".."
            || target.starts_with(WHITEOUT_PREFIX)
        {
            return Err(ApplyError::Rejected {
                path: name.to_string(),
                reason: "invalid whiteout name".into(),
            });
        }
        // A whiteout whose parent cannot be a directory in this layer (a dangling or
        // non-directory symlink) has nothing below it to hide: a no-op, never an escape.
        let pfd = match self.parent_fd(parent, name) {
            Ok(fd) => fd,
            Err(ApplyError::Rejected { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        // An entry of this same layer is never removed by a whiteout.
        if rfs::statat(pfd, os(target), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Ok(());
        }
        rfs::mknodat(
            pfd,
            os(target),
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        )
        .map_err(|er| io_err(name, "create whiteout", er))
    }

    fn finish(&mut self) -> Result<(), ApplyError> {
        let times = std::mem::take(&mut self.dir_times);
        // In archive order, so the last of duplicate directory entries wins. Setting a
        // directory's times never changes its parent's, so the order is otherwise free.
        for (path, sec, nsec) in times.iter() {
            let parts = clean(path);
            let t = ts(*sec, *nsec);
            let stamps = Timestamps {
                last_access: t,
                last_modification: t,
            };
            let name = String::from_utf8_lossy(path);
            let r = match parts.split_last() {
                None => rfs::utimensat(&self.root, ".", &stamps, AtFlags::empty()),
                Some((&base, parent)) => match self.open_dir(&join(parent)) {
                    Ok(p) => match rfs::statat(&p, os(base), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                            rfs::utimensat(&p, os(base), &stamps, AtFlags::SYMLINK_NOFOLLOW)
                        }
                        _ => Ok(()), // replaced by a non-directory later on
                    },
                    Err(_) => Ok(()),
                },
            };
            r.map_err(|er| io_err(&name, "set directory times", er))?;
        }
        Ok(())
    }
}

fn same_target(root: &OwnedFd, e: &Entry, st: &rfs::Stat) -> bool {
    // Re-linking a name to the inode it already is: keep it (duplicate hardlink entries).
    let target = clean(&e.link);
    rfs::openat2(
        root,
        os(&join(&target)),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        Applier::resolve_flags(),
    )
    .and_then(|fd| rfs::fstat(&fd))
    .is_ok_and(|t| t.st_ino == st.st_ino && t.st_dev == st.st_dev)
}

fn io_err(path: &str, op: &'static str, e: Errno) -> ApplyError {
    ApplyError::Io {
        path: path.to_string(),
        op,
        source: e.into(),
    }
}

/// Owner first, then mode: chown clears setuid/setgid, so the order keeps them.
fn set_owner_mode<F: AsFd>(fd: F, e: &Entry, name: &str) -> Result<(), ApplyError> {
    let (uid, gid) = ids(e, name)?;
    rfs::fchown(&fd, Some(uid), Some(gid)).map_err(|er| io_err(name, "chown", er))?;
    rfs::fchmod(&fd, Mode::from_raw_mode(e.mode)).map_err(|er| io_err(name, "chmod", er))
}

fn ids(e: &Entry, name: &str) -> Result<(rfs::Uid, rfs::Gid), ApplyError> {
    let bad = || ApplyError::Rejected {
        path: name.to_string(),
        reason: format!("uid/gid {}:{} out of range", e.uid, e.gid),
    };
    let uid = u32::try_from(e.uid)
        .ok()
        .filter(|&u| u != u32::MAX)
        .ok_or_else(bad)?;
    let gid = u32::try_from(e.gid)
        .ok()
        .filter(|&g| g != u32::MAX)
        .ok_or_else(bad)?;
    Ok((rfs::Uid::from_raw(uid), rfs::Gid::from_raw(gid)))
}

/// Extended attributes from the tar, except overlayfs' own (a layer must not forge opaque
/// directories or redirects through xattrs).
fn xattrs(e: &Entry) -> impl Iterator<Item = &(String, Vec<u8>)> {
    e.xattrs
        .iter()
        .filter(|(k, _)| !k.starts_with("trusted.overlay."))
}

fn set_xattrs_fd<F: AsFd>(fd: F, e: &Entry, name: &str) -> Result<(), ApplyError> {
    for (k, v) in xattrs(e) {
        rfs::fsetxattr(&fd, k.as_str(), v, rfs::XattrFlags::empty())
            .map_err(|er| io_err(name, "set xattr", er))?;
    }
    Ok(())
}

/// Ownership, mode, xattrs and times for a node that cannot be opened (symlinks, devices).
fn finish_at(
    pfd: BorrowedFd<'_>,
    base: &OsStr,
    e: &Entry,
    name: &str,
    chmod: bool,
) -> Result<(), ApplyError> {
    let (uid, gid) = ids(e, name)?;
    rfs::chownat(pfd, base, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|er| io_err(name, "chown", er))?;
    if chmod {
        // The node was just created by us with mknodat and is not a symlink.
        rfs::chmodat(pfd, base, Mode::from_raw_mode(e.mode), AtFlags::empty())
            .map_err(|er| io_err(name, "chmod", er))?;
    }
    let mut it = xattrs(e).peekable();
    if it.peek().is_some() {
        let mut p = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
        p.extend_from_slice(base.as_bytes());
        let path = CString::new(p).map_err(|_| ApplyError::Rejected {
            path: name.into(),
            reason: "NUL in name".into(),
        })?;
        for (k, v) in it {
            rfs::lsetxattr(path.as_c_str(), k.as_str(), v, rfs::XattrFlags::empty())
                .map_err(|er| io_err(name, "set xattr", er))?;
        }
    }
    let t = ts(e.mtime, e.mtime_nsec);
    rfs::utimensat(
        pfd,
        base,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|er| io_err(name, "set times", er))
}

fn remove(pfd: BorrowedFd<'_>, base: &[u8], is_dir: bool, name: &str) -> Result<(), ApplyError> {
    if is_dir {
        // std's remove_dir_all never follows symlinks inside the tree it removes.
        let mut p = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
        p.extend_from_slice(base);
        std::fs::remove_dir_all(os(&p)).map_err(|er| ApplyError::Io {
            path: name.to_string(),
            op: "remove directory",
            source: er,
        })
    } else {
        rfs::unlinkat(pfd, os(base), AtFlags::empty()).map_err(|er| io_err(name, "remove", er))
    }
}

/// Applies a layer's (uncompressed) tar stream into `root`, an existing, empty directory.
/// Returns the tar reader so the caller can drain and hash the rest of the stream.
pub fn apply_layer<R: io::Read>(root: &Path, tar: R) -> Result<(ApplyStats, R), ApplyError> {
    let root_fd = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ApplyError::Io {
        path: root.display().to_string(),
        op: "open layer root",
        source: e.into(),
    })?;
    let mut a = Applier {
        root: root_fd,
        cache: None,
        dir_times: Vec::new(),
        buf: vec![0u8; 256 * 1024],
        stats: ApplyStats::default(),
        implied: Default::default(),
    };
    let mut tr = TarReader::new(tar);
    while let Some(entry) = tr.next_entry()? {
        a.stats.entries += 1;
        a.apply_entry(&entry, &mut tr)?;
    }
    a.finish()?;
    a.stats.implied_dirs = std::mem::take(&mut a.implied).into_iter().collect();
    Ok((a.stats, tr.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_never_climbs_above_the_root() {
        let c = |p: &str| String::from_utf8(join(&clean(p.as_bytes()))).unwrap();
        assert_eq!(c("../../etc/passwd"), "etc/passwd");
        assert_eq!(c("/abs/./x/../y"), "abs/y");
        assert_eq!(c("./"), "");
        assert_eq!(c("a/b/../../.."), "");
    }
}
