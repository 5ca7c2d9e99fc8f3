//! Progress reporting for long operations, independent of how it is displayed.

use crate::digest::Digest;

/// Receives pull progress. The CLI draws bars on a terminal and prints lines otherwise.
pub trait Progress: Sync {
    /// A layer will be fetched and applied; `size` is its compressed size.
    fn layer_start(&self, layer: &Digest, size: u64);
    /// `bytes` more compressed bytes of `layer` were processed.
    fn layer_advance(&self, layer: &Digest, bytes: u64);
    /// The layer is in place (or was already: `reused`).
    fn layer_done(&self, layer: &Digest, reused: bool);
    fn layer_failed(&self, layer: &Digest, error: &str);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn layer_start(&self, _: &Digest, _: u64) {}
    fn layer_advance(&self, _: &Digest, _: u64) {}
    fn layer_done(&self, _: &Digest, _: bool) {}
    fn layer_failed(&self, _: &Digest, _: &str) {}
}

/// Counts bytes read through it into a `Progress`.
pub struct ProgressReader<'a, R> {
    pub inner: R,
    pub layer: &'a Digest,
    pub progress: &'a dyn Progress,
    pending: u64,
}

impl<'a, R> ProgressReader<'a, R> {
    pub fn new(inner: R, layer: &'a Digest, progress: &'a dyn Progress) -> Self {
        ProgressReader {
            inner,
            layer,
            progress,
            pending: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending += n as u64;
        if self.pending >= 256 * 1024 || (n == 0 && self.pending > 0) {
            self.progress.layer_advance(self.layer, self.pending);
            self.pending = 0;
        }
        Ok(n)
    }
}
