//! Unpacking image archives for `import` (an OCI archive or a `docker save` tar). An archive
//! may be hostile, and unlike a layer it is only a container for blobs, so only regular files
//! and directories reach the disk: owned by root, private modes, in a private directory.
//! Symlinks and hardlinks (old `docker save` links duplicate layers) are resolved lexically
//! inside the archive and become hardlinks to regular files; devices and the rest are skipped.

use std::fs;
use std::io::{self, Read, Write};

/// An image archive (or a file in one) that cannot be read as one, with why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArchiveError(pub String);

impl From<String> for ArchiveError {
    fn from(s: String) -> ArchiveError {
        ArchiveError(s)
    }
}

impl From<&str> for ArchiveError {
    fn from(s: &str) -> ArchiveError {
        ArchiveError(s.to_string())
    }
}
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::apply::clean;
use crate::tar::{EntryKind, TarReader};

fn rel(parts: &[&[u8]]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    parts
        .iter()
        .map(|p| std::ffi::OsStr::from_bytes(p))
        .collect()
}

fn mkdirs(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

/// Extracts `r` (an uncompressed tar) into `dest`, an existing private (0700) directory.
pub fn extract<R: Read>(r: R, dest: &Path) -> Result<(), ArchiveError> {
    let mut tr = TarReader::new(r);
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(e) = tr.next_entry().map_err(|e| e.to_string())? {
        let parts = clean(&e.path);
        if parts.is_empty() {
            continue; // the archive's root directory
        }
        let path = dest.join(rel(&parts));
        let parent = path.parent().expect("below dest").to_path_buf();
        match e.kind {
            EntryKind::Dir => mkdirs(&path).map_err(|er| format!("{}: {er}", e.path_lossy()))?,
            EntryKind::File => {
                mkdirs(&parent).map_err(|er| format!("{}: {er}", e.path_lossy()))?;
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&path).map_err(|er| er.to_string())?;
                }
                let _ = fs::remove_file(&path);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|er| format!("{}: {er}", e.path_lossy()))?;
                loop {
                    let n = tr.read_data(&mut buf).map_err(|er| er.to_string())?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n]).map_err(|er| er.to_string())?;
                }
            }
            EntryKind::Symlink => {
                // Relative to the link's directory, then cleaned: never above the archive.
                let mut target = e.path.clone();
                while target.last().is_some_and(|&b| b != b'/') {
                    target.pop();
                }
                if e.link.starts_with(b"/") {
                    target.clear();
                }
                target.extend_from_slice(&e.link);
                links.push((path, dest.join(rel(&clean(&target)))));
            }
            EntryKind::Hardlink => links.push((path, dest.join(rel(&clean(&e.link))))),
            _ => {}
        }
    }
    // Links to links resolve over a few passes; what never resolves to a file is dropped.
    for _ in 0..8 {
        let before = links.len();
        links.retain(|(link, target)| {
            if !fs::symlink_metadata(target).is_ok_and(|m| m.is_file()) {
                return true;
            }
            let _ = link.parent().map(mkdirs);
            let _ = fs::remove_file(link);
            fs::hard_link(target, link).is_err()
        });
        if links.len() == before {
            break;
        }
    }
    Ok(())
}

/// Reads a regular file (never a symlink, device or FIFO) of at most `limit` bytes.
pub fn read_regular(p: &Path, limit: u64) -> Result<Vec<u8>, ArchiveError> {
    let f = open_regular(p)?;
    let mut v = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut v)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if v.len() as u64 > limit {
        return Err(ArchiveError(format!(
            "{} is larger than the {limit}-byte limit",
            p.display()
        )));
    }
    Ok(v)
}

/// Opens a regular file without following a final symlink.
pub fn open_regular(p: &Path) -> Result<fs::File, ArchiveError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let md = f.metadata().map_err(|e| format!("{}: {e}", p.display()))?;
    if !md.is_file() {
        return Err(ArchiveError(format!(
            "{} is not a regular file",
            p.display()
        )));
    }
    Ok(f)
}
