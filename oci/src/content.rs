//! The content store: manifests, indexes and configs by digest, verified on the way in and on
//! the way out, written atomically. Layer blobs are not kept: a layer lives on as its snapshot
//! (as with containerd's "discard unpacked layers"), which halves the disk a node needs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content {digest}: {op}: {source}")]
    Io {
        digest: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("content {expected}: stored bytes hash to {actual} (corrupted store)")]
    Corrupt { expected: Digest, actual: Digest },
    #[error("content {0} not found in the store")]
    Missing(Digest),
}

pub struct ContentStore {
    blobs: PathBuf,
}

impl ContentStore {
    pub fn open(root: &Path) -> io::Result<ContentStore> {
        let blobs = fsutil::ensure_dir(root.join("blobs").join("sha256"))?;
        Ok(ContentStore { blobs })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        // Digest hex is validated on construction: a single safe path component.
        self.blobs.join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Stores bytes that must hash to `d`.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        let actual = Digest::of(bytes);
        if &actual != d {
            return Err(ContentError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        if self.has(d) {
            return Ok(());
        }
        fsutil::write_atomic(&self.path(d), bytes).map_err(|e| ContentError::Io {
            digest: d.to_string(),
            op: "write",
            source: e,
        })
    }

    /// Reads and re-verifies a blob.
    pub fn get(&self, d: &Digest) -> Result<Vec<u8>, ContentError> {
        let bytes = fs::read(self.path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::Missing(d.clone()),
            _ => ContentError::Io {
                digest: d.to_string(),
                op: "read",
                source: e,
            },
        })?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ContentError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.blobs)? {
            let e = e?;
            if let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn remove(&self, d: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes temp files left by an interrupted write.
    pub fn clean_temp(&self) -> io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.blobs)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                fs::remove_file(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }
}
