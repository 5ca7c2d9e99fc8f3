//! Small filesystem helpers: atomic writes, directory fsync, advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync of the directory. Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Replaces `path` atomically (temp file, rename) without forcing it to disk: for runtime
/// state that must never be seen half-written after a crash of its writer, but that cannot
/// outlive a reboot anyway (the processes it describes die with the machine).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A held advisory lock (released on drop).
pub struct Lock {
    _file: File,
}

fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

impl Lock {
    pub fn exclusive(path: &Path) -> io::Result<Lock> {
        let f = open_lock(path)?;
        flock(&f, FlockOperation::LockExclusive)?;
        Ok(Lock { _file: f })
    }
    pub fn shared(path: &Path) -> io::Result<Lock> {
        let f = open_lock(path)?;
        flock(&f, FlockOperation::LockShared)?;
        Ok(Lock { _file: f })
    }
    /// Exclusive if nobody holds the lock right now, otherwise `None`.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<Lock>> {
        let f = open_lock(path)?;
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Lock { _file: f })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    /// Turns an exclusive lock into a shared one.
    pub fn downgrade(self) -> io::Result<Lock> {
        flock(&self._file, FlockOperation::LockShared)?;
        Ok(self)
    }
}

/// Creates a directory (and parents) and returns its path, for store layouts.
pub fn ensure_dir(p: PathBuf) -> io::Result<PathBuf> {
    fs::create_dir_all(&p)?;
    Ok(p)
}

/// Total bytes of regular files below `dir` (not following symlinks).
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}
