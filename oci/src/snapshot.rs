//! Snapshots: one directory per layer, keyed by ChainID, holding that layer in overlayfs
//! upper-dir form. Images that share a stack of layers share these directories.
//!
//! Layout: `<snapshots>/<chainid-hex>/fs` (the layer) and `.../layer.json` (its metadata).
//! A snapshot is built in `<snapshots>/.tmp-*` and renamed into place only once its digests are
//! verified, so a crash never leaves a half-applied snapshot under a trusted name.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{mount, MountFlags};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fsutil;

/// Overlay mount options must fit in one page.
const MAX_MOUNT_DATA: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {what}: {op}: {source}")]
    Io {
        what: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("snapshot {0} is missing (run `knode image pull` again)")]
    Missing(Digest),
    #[error("too many layers ({0}) for one overlay mount")]
    TooManyLayers(usize),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub chain_id: Digest,
    pub diff_id: Digest,
    /// Bytes of file data in the layer.
    pub size: u64,
    pub entries: u64,
}

pub struct SnapshotStore {
    root: PathBuf,
}

/// A snapshot being built; removed on drop unless committed.
pub struct PendingSnapshot {
    dir: Option<PathBuf>,
}

impl PendingSnapshot {
    /// The directory the layer is applied into.
    pub fn fs(&self) -> PathBuf {
        self.dir.as_ref().expect("pending snapshot").join("fs")
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn io_err(what: impl ToString, op: &'static str) -> impl FnOnce(io::Error) -> SnapshotError {
    let what = what.to_string();
    move |source| SnapshotError::Io { what, op, source }
}

impl SnapshotStore {
    pub fn open(root: &Path) -> io::Result<SnapshotStore> {
        Ok(SnapshotStore {
            root: fsutil::ensure_dir(root.to_path_buf())?,
        })
    }

    fn dir(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    /// The directory holding the layer's files.
    pub fn fs_dir(&self, chain: &Digest) -> PathBuf {
        self.dir(chain).join("fs")
    }

    pub fn exists(&self, chain: &Digest) -> bool {
        self.dir(chain).join("layer.json").is_file()
    }

    pub fn info(&self, chain: &Digest) -> Result<SnapshotInfo, SnapshotError> {
        let p = self.dir(chain).join("layer.json");
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SnapshotError::Missing(chain.clone()),
            _ => SnapshotError::Io {
                what: chain.to_string(),
                op: "read layer.json",
                source: e,
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Io {
            what: chain.to_string(),
            op: "parse layer.json",
            source: e.into(),
        })
    }

    pub fn prepare(&self) -> Result<PendingSnapshot, SnapshotError> {
        let dir = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.root)
            .map_err(io_err("new", "create temp dir"))?
            .keep();
        let p = PendingSnapshot { dir: Some(dir) };
        fs::create_dir(p.fs()).map_err(io_err("new", "create fs dir"))?;
        // The layer root's own attributes: 0755 unless the layer sets them.
        fs::set_permissions(p.fs(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err("new", "chmod"))?;
        Ok(p)
    }

    /// Publishes a verified snapshot under its ChainID. If another pull committed the same
    /// ChainID first, ours is discarded (the content is identical by construction).
    pub fn commit(&self, mut p: PendingSnapshot, info: &SnapshotInfo) -> Result<(), SnapshotError> {
        let tmp = p.dir.clone().expect("pending snapshot");
        let meta = serde_json::to_vec_pretty(info).expect("serialisable");
        fsutil::write_atomic(&tmp.join("layer.json"), &meta)
            .map_err(io_err(&info.chain_id, "write layer.json"))?;
        let dest = self.dir(&info.chain_id);
        match fs::rename(&tmp, &dest) {
            Ok(()) => {
                p.dir = None;
                fsutil::sync_dir(&self.root).map_err(io_err(&info.chain_id, "sync"))
            }
            Err(_) if self.exists(&info.chain_id) => Ok(()),
            Err(e) => Err(io_err(&info.chain_id, "rename into place")(e)),
        }
    }

    /// Flushes the store's filesystem (all pending snapshots' data) to disk.
    pub fn sync(&self) -> io::Result<()> {
        let d = fs::File::open(&self.root)?;
        rustix::fs::syncfs(&d)?;
        Ok(())
    }

    /// Gives each of `implied` (directories a layer needed but did not contain) in `p` the
    /// owner, mode and mtime of the same directory in the nearest lower layer of `lower`
    /// (bottom first) that has it, as Docker's applier does when it creates missing parents
    /// in the merged tree. A whiteout or non-directory below stops the search. Lookups never
    /// follow symlinks.
    pub fn inherit_dir_attrs(
        &self,
        p: &PendingSnapshot,
        lower: &[Digest],
        implied: &[Vec<u8>],
    ) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let in_root = rustix::fs::ResolveFlags::IN_ROOT
            | rustix::fs::ResolveFlags::NO_SYMLINKS
            | rustix::fs::ResolveFlags::NO_MAGICLINKS;
        let open_root = |dir: &Path| {
            rustix::fs::open(
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let lowers: Vec<OwnedFd> = lower
            .iter()
            .rev()
            .map(|c| open_root(&self.fs_dir(c)))
            .collect::<Result<_, _>>()?;
        let top = open_root(&p.fs())?;
        for path in implied {
            let name = std::ffi::OsStr::from_bytes(path);
            let mut found = None;
            for l in &lowers {
                match rustix::fs::openat2(
                    l,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    in_root,
                ) {
                    Ok(fd) => {
                        let st = rustix::fs::fstat(&fd)?;
                        if rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Directory
                        {
                            found = Some(st);
                        }
                        break; // a directory, a whiteout or a file: the search ends here
                    }
                    Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
                    Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::XDEV) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(st) = found else { continue };
            let d = rustix::fs::openat2(
                &top,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                in_root,
            )?;
            rustix::fs::fchown(
                &d,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
            )?;
            rustix::fs::fchmod(&d, Mode::from_raw_mode(st.st_mode & 0o7777))?;
            let t = rustix::fs::Timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec as _,
            };
            rustix::fs::futimens(
                &d,
                &rustix::fs::Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )?;
        }
        Ok(())
    }

    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn remove(&self, chain: &Digest) -> Result<(), SnapshotError> {
        // Make it untrusted first, then delete: a crash in between leaves only garbage.
        let dir = self.dir(chain);
        let doomed = self.root.join(format!(".tmp-rm-{}", chain.hex()));
        match fs::rename(&dir, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed).map_err(io_err(chain, "remove")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(chain, "remove")(e)),
        }
    }

    /// Removes leftovers of interrupted pulls and removals. Only call while no pull runs.
    pub fn clean_temp(&self) -> io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                fs::remove_dir_all(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Mounts the layer stack `chains` (bottom first) at `target` as an overlay with a fresh
    /// writable `upper`/`work` pair (both must be empty directories on one filesystem), or
    /// read-only when `upper` is `None`.
    ///
    /// Lower directories are passed as `/proc/self/fd/N` of O_PATH descriptors: about 17 bytes
    /// a layer whatever the store's path, so even 200-layer images fit the one-page limit on
    /// mount options without changing the process's working directory.
    pub fn mount(
        &self,
        chains: &[Digest],
        target: &Path,
        upper: Option<(&Path, &Path)>,
    ) -> Result<(), SnapshotError> {
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(chains.len());
        for c in chains.iter().rev() {
            if !self.exists(c) {
                return Err(SnapshotError::Missing(c.clone()));
            }
            let fd = rustix::fs::open(
                self.fs_dir(c),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(c, "open layer")(e.into()))?;
            fds.push(fd);
        }
        let lowers: Vec<String> = fds
            .iter()
            .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()))
            .collect();
        let (data, flags) = match (upper, lowers.len()) {
            (None, 0) => return Err(SnapshotError::TooManyLayers(0)),
            (None, 1) => {
                // A single read-only layer: a read-only bind mount of it.
                mount(&lowers[0], target, "", MountFlags::BIND, None)
                    .map_err(|e| io_err(target.display(), "bind mount")(e.into()))?;
                return rustix::mount::mount_remount(
                    target,
                    MountFlags::BIND | MountFlags::RDONLY | MountFlags::NODEV,
                    "",
                )
                .map_err(|e| io_err(target.display(), "remount read-only")(e.into()));
            }
            (None, _) => (
                format!("lowerdir={}", lowers.join(":")),
                MountFlags::RDONLY | MountFlags::NODEV,
            ),
            (Some((u, w)), _) => (
                format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lowers.join(":"),
                    u.display(),
                    w.display()
                ),
                // Device nodes from images or made by the container are unusable (there is no
                // device cgroup filter yet): containers get devices as bind mounts in /dev.
                MountFlags::NODEV,
            ),
        };
        if data.len() > MAX_MOUNT_DATA {
            return Err(SnapshotError::TooManyLayers(chains.len()));
        }
        let data = std::ffi::CString::new(data)
            .map_err(|e| io_err(target.display(), "overlay options")(e.into()))?;
        mount("overlay", target, "overlay", flags, Some(data.as_c_str()))
            .map_err(|e| io_err(target.display(), "overlay mount")(e.into()))
    }
}
