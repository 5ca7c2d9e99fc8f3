//! The image store: pull, import, list, inspect, remove and garbage-collect images.
//!
//! State under the store root:
//! - `content/`   manifests, indexes and configs by digest (see `content`);
//! - `snapshots/` one directory per layer ChainID (see `snapshot`);
//! - `images.json` the name -> image index, replaced atomically;
//! - `gc.lock`    flock: shared while a pull runs, exclusive for garbage collection, so a GC
//!   never removes what an in-flight pull is about to reference;
//! - `index.lock` flock: exclusive around every read-modify-write of `images.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::apply::{self, ApplyError};
use crate::archive;
use crate::compress::Decompressor;
use crate::content::{ContentError, ContentStore};
use crate::digest::{Digest, HashingReader};
use crate::fsutil::{self, Lock};
use crate::progress::{Progress, ProgressReader};
use crate::reference::{Reference, ReferenceError};
use crate::registry::{ClientOptions, RegistryClient, RegistryError, MAX_CONFIG};
use crate::snapshot::{SnapshotError, SnapshotInfo, SnapshotStore};
use crate::spec::{self, Compression, Descriptor, ImageConfig, Index, Manifest, Platform};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{image}: {source}")]
    Registry {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error("{image}: layer {layer}: {reason}")]
    Layer {
        image: String,
        layer: Digest,
        reason: String,
    },
    #[error("{image}: {reason}")]
    Invalid { image: String, reason: String },
    /// Every mirror and the registry itself failed (each named with its error).
    #[error("{image}: every source failed: {tried}")]
    Sources { image: String, tried: String },
    #[error("image {0:?} not found in the store")]
    NotFound(String),
    #[error("{0:?} matches several images ({1}): use a longer ID or a name")]
    Ambiguous(String, String),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("image store {path}: {op}: {source}")]
    Store {
        path: String,
        op: &'static str,
        source: io::Error,
    },
}

fn store_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.display().to_string();
    move |source| ImageError::Store { path, op, source }
}

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (compressed).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

/// A named image in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Digest of the index the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// Digest of the config: the image ID.
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    pub platform: String,
    /// Unpacked size (file data bytes over all layers).
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub stored_at: String,
}

impl ImageRecord {
    pub fn id(&self) -> &Digest {
        &self.config
    }
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct IndexFile {
    images: BTreeMap<String, ImageRecord>,
}

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub platform: Platform,
    /// Layers fetched and applied at once.
    pub concurrency: usize,
    /// syncfs before publishing snapshots (a power loss then never leaves a damaged one).
    pub sync: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            concurrency: 3,
            sync: true,
        }
    }
}

/// What a pull did, for reporting.
#[derive(Clone, Debug)]
pub struct PullReport {
    pub image: ImageRecord,
    pub layers_fetched: usize,
    pub layers_reused: usize,
    pub bytes_fetched: u64,
}

/// A verified layer, applied but not yet published under its ChainID.
struct Fetched {
    pending: crate::snapshot::PendingSnapshot,
    info: SnapshotInfo,
    implied_dirs: Vec<Vec<u8>>,
}

/// What garbage collection removed.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub blobs: usize,
    pub snapshots: usize,
    pub temp: usize,
    pub bytes: u64,
}

pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    snapshots: SnapshotStore,
}

/// Why a layer's bytes could not be had (it becomes the layer's `ImageError`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
struct FetchError(String);

impl From<String> for FetchError {
    fn from(s: String) -> FetchError {
        FetchError(s)
    }
}

impl From<&str> for FetchError {
    fn from(s: &str) -> FetchError {
        FetchError(s.to_string())
    }
}

/// Where layer bytes come from: a registry or local files (import).
trait LayerSource: Sync {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, FetchError>;
}

struct RegistrySource<'a> {
    client: &'a RegistryClient,
    reference: &'a Reference,
}

impl LayerSource for RegistrySource<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, FetchError> {
        self.client
            .open_blob(self.reference, d)
            .map(|b| Box::new(b) as Box<dyn Read + Send>)
            .map_err(|e| FetchError(e.to_string()))
    }
}

struct FileSource {
    blobs: BTreeMap<Digest, PathBuf>,
}

impl LayerSource for FileSource {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, FetchError> {
        let p = self
            .blobs
            .get(&d.digest)
            .ok_or_else(|| "blob missing from the archive".to_string())?;
        let f = archive::open_regular(p).map_err(|e| e.to_string())?;
        Ok(Box::new(f.take(d.size + 1)))
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root` (e.g. `/var/lib/knode/images`).
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        fs::create_dir_all(root).map_err(store_err(root, "create"))?;
        // Root's only, as containerd keeps its snapshots: images hold setuid binaries (su,
        // mount, ...) that no user of the node may reach through the store.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(store_err(root, "chmod"))?;
        }
        Ok(ImageStore {
            content: ContentStore::open(&root.join("content"))
                .map_err(store_err(root, "open content"))?,
            snapshots: SnapshotStore::open(&root.join("snapshots"))
                .map_err(store_err(root, "open snapshots"))?,
            root: root.to_path_buf(),
        })
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Removes `.tmp-*` leftovers (interrupted imports, index writes) in the store root and
    /// its stores. Only with the GC lock held exclusively: no pull or import is running.
    fn clean_temp(&self) -> Result<usize, ImageError> {
        let mut n = self
            .snapshots
            .clean_temp()
            .map_err(store_err(&self.root, "clean"))?
            + self
                .content
                .clean_temp()
                .map_err(store_err(&self.root, "clean"))?;
        for e in fs::read_dir(&self.root).map_err(store_err(&self.root, "clean"))? {
            let e = e.map_err(store_err(&self.root, "clean"))?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let p = e.path();
                let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(store_err(&p, "clean"))?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("gc.lock")
    }

    fn index_lock(&self) -> Result<Lock, ImageError> {
        let p = self.root.join("index.lock");
        Lock::exclusive(&p).map_err(store_err(&p, "lock"))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Store {
                path: p.display().to_string(),
                op: "parse",
                source: e.into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(store_err(&p, "read")(e)),
        }
    }

    fn write_index(&self, idx: &IndexFile) -> Result<(), ImageError> {
        let p = self.index_path();
        let bytes = serde_json::to_vec_pretty(idx).expect("serialisable");
        fsutil::write_atomic(&p, &bytes).map_err(store_err(&p, "write"))
    }

    /// Takes the store lock for a pull: shared, after cleaning crash leftovers if nobody else
    /// is using the store right now.
    fn pull_lock(&self) -> Result<Lock, ImageError> {
        let lp = self.lock_path();
        match Lock::try_exclusive(&lp).map_err(store_err(&lp, "lock"))? {
            Some(l) => {
                let n = self.clean_temp()?;
                if n > 0 {
                    info!(leftovers = n, "removed leftovers of an interrupted pull");
                }
                l.downgrade().map_err(store_err(&lp, "lock"))
            }
            None => Lock::shared(&lp).map_err(store_err(&lp, "lock")),
        }
    }

    /// Pulls an image from its registry, storing manifest, config and layer snapshots.
    pub fn pull(
        &self,
        reference: &str,
        client_opts: ClientOptions,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<PullReport, ImageError> {
        let r: Reference = reference.parse()?;
        let image = r.to_string();
        // The mirrors first, then the registry; a source that fails as a registry (down,
        // refusing, not having the image) gives way to the next. The image keeps its name.
        let sources = client_opts.mirrors.sources(&r, &client_opts);
        let last = sources.len() - 1;
        let mut tried = Vec::new();
        for (i, s) in sources.into_iter().enumerate() {
            match self.pull_from(&image, &s.reference, s.options, opts, progress) {
                Err(ImageError::Registry { image, source }) if i < last || !tried.is_empty() => {
                    tracing::info!(image = %image, source = %s.label, error = %source, "a source failed");
                    tried.push(format!("{}: {source}", s.label));
                    if i == last {
                        return Err(ImageError::Sources {
                            image,
                            tried: tried.join("; "),
                        });
                    }
                }
                other => return other,
            }
        }
        unreachable!("the last source returns")
    }

    /// Pulls `image` from `r` (the image itself, or a mirror's copy of it).
    fn pull_from(
        &self,
        image: &str,
        r: &Reference,
        client_opts: ClientOptions,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<PullReport, ImageError> {
        let image = image.to_string();
        let reg_err = |source| ImageError::Registry {
            image: image.clone(),
            source,
        };
        let client = RegistryClient::new(client_opts).map_err(reg_err)?;
        let _lock = self.pull_lock()?;

        let top = client.fetch_manifest(r, &r.target()).map_err(reg_err)?;
        let (manifest_bytes, manifest_digest, index_digest) = if top.media_type == spec::OCI_INDEX
            || top.media_type == spec::DOCKER_MANIFEST_LIST
        {
            let idx: Index = parse_json(&top.bytes, &image, "index")?;
            let d = select_platform(&idx, &opts.platform).ok_or_else(|| ImageError::Invalid {
                image: image.clone(),
                reason: format!(
                    "no image for platform {} (available: {})",
                    opts.platform,
                    idx.manifests
                        .iter()
                        .filter(|m| !spec::is_attestation(m))
                        .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            let m = client
                .fetch_manifest(r, &d.digest.to_string())
                .map_err(reg_err)?;
            if m.media_type != spec::OCI_MANIFEST && m.media_type != spec::DOCKER_MANIFEST {
                return Err(ImageError::Invalid {
                    image,
                    reason: format!(
                        "index entry {} is a {}, not an image manifest",
                        d.digest, m.media_type
                    ),
                });
            }
            self.content.put(&top.digest, &top.bytes)?;
            (m.bytes, m.digest, Some(top.digest))
        } else {
            (top.bytes, top.digest, None)
        };
        let manifest: Manifest = parse_json(&manifest_bytes, &image, "manifest")?;
        check_manifest(&manifest, &image)?;
        let config_bytes = client
            .fetch_blob(r, &manifest.config, MAX_CONFIG)
            .map_err(reg_err)?;
        let source = RegistrySource {
            client: &client,
            reference: r,
        };
        let (record, fetched, reused, bytes) = self.store_image(
            &image,
            &manifest,
            &manifest_bytes,
            manifest_digest,
            index_digest,
            &config_bytes,
            &source,
            opts,
            progress,
        )?;
        Ok(PullReport {
            image: record,
            layers_fetched: fetched,
            layers_reused: reused,
            bytes_fetched: bytes,
        })
    }

    /// Verifies and stores everything an image needs, then names it.
    #[allow(clippy::too_many_arguments)]
    fn store_image(
        &self,
        image: &str,
        manifest: &Manifest,
        manifest_bytes: &[u8],
        manifest_digest: Digest,
        index_digest: Option<Digest>,
        config_bytes: &[u8],
        source: &dyn LayerSource,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<(ImageRecord, usize, usize, u64), ImageError> {
        let config: ImageConfig = parse_json(config_bytes, image, "config")?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Invalid {
                image: image.to_string(),
                reason: format!(
                    "config lists {} layer DiffIDs but the manifest has {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let chain = Digest::chain_ids(&config.rootfs.diff_ids);
        let mut todo = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            if self.snapshots.exists(&chain[i]) {
                progress.layer_done(&l.digest, true);
            } else {
                todo.push(i);
            }
        }
        let reused = manifest.layers.len() - todo.len();
        let fetched_bytes: u64 = todo.iter().map(|&i| manifest.layers[i].size).sum();
        let fetched = todo.len();

        // Layers in parallel: each one streams download -> inflate -> hash -> apply.
        let queue = Mutex::new(todo.into_iter());
        let first_error: Mutex<Option<ImageError>> = Mutex::new(None);
        let done: Mutex<BTreeMap<usize, Fetched>> = Mutex::new(BTreeMap::new());
        let workers = opts.concurrency.max(1).min(fetched.max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if first_error.lock().expect("lock").is_some() {
                        return;
                    }
                    let Some(i) = queue.lock().expect("lock").next() else {
                        return;
                    };
                    let l = &manifest.layers[i];
                    progress.layer_start(&l.digest, l.size);
                    match self.fetch_layer(
                        image,
                        l,
                        &config.rootfs.diff_ids[i],
                        &chain[i],
                        source,
                        progress,
                    ) {
                        Ok(f) => {
                            done.lock().expect("lock").insert(i, f);
                            progress.layer_done(&l.digest, false);
                        }
                        Err(e) => {
                            progress.layer_failed(&l.digest, &e.to_string());
                            first_error.lock().expect("lock").get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().expect("lock") {
            return Err(e);
        }
        // Publish bottom-up: a layer's implied directories take their attributes from the
        // layers below, which are committed by then. Data first reaches the disk (syncfs), so a
        // power loss never leaves a trusted snapshot with missing file contents.
        let mut done = done.into_inner().expect("lock");
        if opts.sync && !done.is_empty() {
            self.snapshots
                .sync()
                .map_err(|e| store_err(&self.root, "syncfs")(e))?;
        }
        for (i, f) in std::mem::take(&mut done) {
            if !f.implied_dirs.is_empty() {
                self.snapshots
                    .inherit_dir_attrs(&f.pending, &chain[..i], &f.implied_dirs)
                    .map_err(|e| ImageError::Layer {
                        image: image.to_string(),
                        layer: manifest.layers[i].digest.clone(),
                        reason: format!("setting implied directories' attributes: {e}"),
                    })?;
            }
            self.snapshots.commit(f.pending, &f.info)?;
        }

        let mut size = 0;
        let mut layers = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            size += self.snapshots.info(&chain[i])?.size;
            layers.push(LayerRecord {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id: config.rootfs.diff_ids[i].clone(),
                chain_id: chain[i].clone(),
            });
        }
        self.content.put(&manifest.config.digest, config_bytes)?;
        self.content.put(&manifest_digest, manifest_bytes)?;
        let record = ImageRecord {
            name: image.to_string(),
            digest: manifest_digest,
            index_digest,
            config: manifest.config.digest.clone(),
            layers,
            platform: Platform {
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                variant: config.variant.clone(),
                os_version: None,
            }
            .to_string(),
            size,
            created: config.created.clone(),
            stored_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let _x = self.index_lock()?;
        let mut idx = self.read_index()?;
        idx.images.insert(record.name.clone(), record.clone());
        self.write_index(&idx)?;
        info!(
            image,
            layers = record.layers.len(),
            fetched,
            reused,
            "image stored"
        );
        Ok((record, fetched, reused, fetched_bytes))
    }

    /// Fetches one layer into a new snapshot in two pipelined stages:
    /// 1. download -> blob digest -> inflate, in a thread of its own;
    /// 2. DiffID digest -> tar apply, here,
    ///
    /// joined by a bounded channel of 256 KiB chunks. Inflate and file creation overlap, which
    /// keeps a large layer near the speed of inflating it alone. Nothing is published until the
    /// size, the blob digest and the DiffID all match.
    fn fetch_layer(
        &self,
        image: &str,
        l: &Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        source: &dyn LayerSource,
        progress: &dyn Progress,
    ) -> Result<Fetched, ImageError> {
        let layer_err = |reason: String| ImageError::Layer {
            image: image.to_string(),
            layer: l.digest.clone(),
            reason,
        };
        let compression = Compression::from_media_type(&l.media_type)
            .ok_or_else(|| layer_err(format!("unsupported layer media type {:?}", l.media_type)))?;
        let pending = self.snapshots.prepare()?;
        let started = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(16);
        let (fetched, applied) = std::thread::scope(|s| {
            let fetcher = s.spawn(move || -> Result<(Digest, u64), FetchError> {
                let blob = source.open(l)?;
                let counted = ProgressReader::new(blob, &l.digest, progress);
                let compressed = HashingReader::new(counted);
                let mut dec = Decompressor::new(
                    compression,
                    BufReader::with_capacity(256 * 1024, compressed),
                )
                .map_err(|e| e.to_string())?;
                loop {
                    let mut chunk = vec![0u8; CHUNK];
                    match crate::tar::read_exact_or_eof(&mut dec, &mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            chunk.truncate(n);
                            if tx.send(Ok(chunk)).is_err() {
                                return Err("stopped: the layer was rejected".into());
                            }
                        }
                        Err(e) => {
                            let msg = format!("download or decompression failed: {e}");
                            let _ = tx.send(Err(io::Error::other(msg.clone())));
                            return Err(msg.into());
                        }
                    }
                }
                drop(tx);
                let (digest, size, _) = dec
                    .into_inner()
                    .into_inner()
                    .finish()
                    .map_err(|e| format!("download failed: {e}"))?;
                Ok((digest, size))
            });
            let diff = HashingReader::new(ChunkReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            });
            let applied = apply::apply_layer(&pending.fs(), diff)
                .map_err(|e| match e {
                    ApplyError::Tar(t) => format!("bad layer data: {t}"),
                    e => format!("rejected: {e}"),
                })
                .and_then(|(stats, diff)| {
                    let (d, _, _) = diff.finish().map_err(|e| format!("bad layer data: {e}"))?;
                    Ok((stats, d))
                });
            // `apply_layer` dropped the receiver on failure, so the fetcher cannot block.
            let fetched = fetcher
                .join()
                .unwrap_or_else(|_| Err("fetch thread panicked".into()));
            (fetched, applied)
        });
        // A download or inflate failure explains any apply failure it caused.
        let (actual, size) = fetched.map_err(|e| match &applied {
            Err(a) if e.0.starts_with("stopped") => layer_err(a.clone()),
            _ => layer_err(e.0),
        })?;
        let (stats, actual_diff) = applied.map_err(layer_err)?;
        if size != l.size {
            return Err(layer_err(format!(
                "size mismatch: expected {} bytes, got {size}",
                l.size
            )));
        }
        if actual != l.digest {
            return Err(layer_err(format!(
                "digest mismatch: blob hashes to {actual}"
            )));
        }
        if &actual_diff != diff_id {
            return Err(layer_err(format!(
                "DiffID mismatch: config says {diff_id}, uncompressed layer hashes to {actual_diff}"
            )));
        }
        debug!(layer = %l.digest, entries = stats.entries, bytes = stats.bytes, ms = started.elapsed().as_millis() as u64, "layer applied");
        Ok(Fetched {
            pending,
            info: SnapshotInfo {
                chain_id: chain_id.clone(),
                diff_id: diff_id.clone(),
                size: stats.bytes,
                entries: stats.entries,
            },
            implied_dirs: stats.implied_dirs,
        })
    }

    /// Imports images from an OCI layout directory, or an OCI or Docker (`docker save`)
    /// archive tar. `name` names the image when the layout carries no usable name.
    pub fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let _lock = self.pull_lock()?;
        let what = path.display().to_string();
        let md = fs::metadata(path).map_err(store_err(path, "open import"))?;
        let _tmp;
        let dir = if md.is_dir() {
            path.to_path_buf()
        } else {
            // Unpack the archive with the same confined applier (it may be hostile too).
            let t = tempfile::Builder::new()
                .prefix(".tmp-import-")
                .tempdir_in(&self.root)
                .map_err(store_err(&self.root, "temp dir"))?;
            let f = fs::File::open(path).map_err(store_err(path, "open import"))?;
            let mut head = BufReader::new(f);
            let c = match io::BufRead::fill_buf(&mut head).map_err(store_err(path, "read"))? {
                [0x1f, 0x8b, ..] => Compression::Gzip,
                [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
                _ => Compression::None,
            };
            let dec = Decompressor::new(c, head).map_err(store_err(path, "read"))?;
            archive::extract(dec, t.path()).map_err(|e| ImageError::Invalid {
                image: what.clone(),
                reason: format!("not a valid archive: {e}"),
            })?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        };
        if dir.join("manifest.json").is_file() && !dir.join("index.json").is_file() {
            return self.import_docker(&dir, &what, name, opts, progress);
        }
        if !dir.join("index.json").is_file() {
            return Err(ImageError::Invalid {
                image: what,
                reason: "neither an OCI layout (index.json) nor a docker archive (manifest.json)"
                    .into(),
            });
        }
        let blob = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
        let read_blob = |d: &Digest, limit: u64| -> Result<Vec<u8>, ImageError> {
            let b =
                archive::read_regular(&blob(d), limit).map_err(|reason| ImageError::Invalid {
                    image: what.clone(),
                    reason: format!("blob {d}: {reason}"),
                })?;
            if &Digest::of(&b) != d {
                return Err(ImageError::Invalid {
                    image: what.clone(),
                    reason: format!("blob {d} does not match its digest"),
                });
            }
            Ok(b)
        };
        let idx_bytes =
            archive::read_regular(&dir.join("index.json"), 4 << 20).map_err(|reason| {
                ImageError::Invalid {
                    image: what.clone(),
                    reason: reason.to_string(),
                }
            })?;
        let idx: Index = parse_json(&idx_bytes, &what, "index.json")?;
        let mut out = Vec::new();
        for (n, top) in idx.manifests.iter().enumerate() {
            let ann = |k: &str| top.annotations.get(k).cloned();
            let tagged =
                |n: &str| n.contains('@') || n.rsplit('/').next().is_some_and(|l| l.contains(':'));
            let base = name
                .map(|n| n.split('@').next().unwrap_or(n))
                .map(|n| {
                    n.rsplit_once(':')
                        .filter(|(_, t)| !t.contains('/'))
                        .map_or(n, |(b, _)| b)
                        .to_string()
                })
                .unwrap_or_else(|| format!("import/{}", file_stem(path)));
            let img_name = match (
                ann("io.containerd.image.name"),
                ann("org.opencontainers.image.ref.name"),
            ) {
                (Some(full), _) => full,
                (None, Some(tag)) if !tag.contains('/') && name.is_some_and(|n| !tagged(n)) => {
                    format!("{base}:{tag}")
                }
                (None, _) if idx.manifests.len() == 1 && name.is_some() => {
                    name.unwrap_or_default().to_string()
                }
                (None, Some(r)) if r.contains('/') && r.parse::<Reference>().is_ok() => r,
                (None, Some(tag)) => format!("{base}:{tag}"),
                (None, None) => format!("{base}:{n}"),
            };
            let r: Reference = img_name.parse()?;
            let image = r.to_string();
            let mut mdesc = top.clone();
            let mut index_digest = None;
            if top.media_type == spec::OCI_INDEX || top.media_type == spec::DOCKER_MANIFEST_LIST {
                let inner: Index = parse_json(&read_blob(&top.digest, 4 << 20)?, &image, "index")?;
                mdesc = select_platform(&inner, &opts.platform)
                    .ok_or_else(|| ImageError::Invalid {
                        image: image.clone(),
                        reason: format!("no image for platform {}", opts.platform),
                    })?
                    .clone();
                self.content
                    .put(&top.digest, &read_blob(&top.digest, 4 << 20)?)?;
                index_digest = Some(top.digest.clone());
            }
            let mbytes = read_blob(&mdesc.digest, 4 << 20)?;
            let manifest: Manifest = parse_json(&mbytes, &image, "manifest")?;
            check_manifest(&manifest, &image)?;
            let cbytes = read_blob(&manifest.config.digest, MAX_CONFIG)?;
            let source = FileSource {
                blobs: manifest
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), blob(&l.digest)))
                    .collect(),
            };
            let (rec, ..) = self.store_image(
                &image,
                &manifest,
                &mbytes,
                mdesc.digest.clone(),
                index_digest,
                &cbytes,
                &source,
                opts,
                progress,
            )?;
            out.push(rec);
        }
        Ok(out)
    }

    fn import_docker(
        &self,
        dir: &Path,
        what: &str,
        name: Option<&str>,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let bytes =
            fs::read(dir.join("manifest.json")).map_err(store_err(dir, "read manifest.json"))?;
        let entries: Vec<Entry> = parse_json(&bytes, what, "manifest.json")?;
        let inside = |rel: &str| -> Result<PathBuf, ImageError> {
            // Archive-internal names: relative, no `..`.
            if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                return Err(ImageError::Invalid {
                    image: what.to_string(),
                    reason: format!("manifest.json names a path outside the archive: {rel:?}"),
                });
            }
            Ok(dir.join(rel))
        };
        let mut out = Vec::new();
        for e in entries {
            let cpath = inside(&e.config)?;
            let cbytes = archive::read_regular(&cpath, MAX_CONFIG).map_err(|reason| {
                ImageError::Invalid {
                    image: what.to_string(),
                    reason: reason.to_string(),
                }
            })?;
            let config_digest = Digest::of(&cbytes);
            let mut layers = Vec::new();
            let mut blobs = BTreeMap::new();
            for l in &e.layers {
                let p = inside(l)?;
                let f = archive::open_regular(&p).map_err(|reason| ImageError::Invalid {
                    image: what.to_string(),
                    reason: reason.to_string(),
                })?;
                let mut head = BufReader::new(f);
                let media_type =
                    match io::BufRead::fill_buf(&mut head).map_err(store_err(&p, "read layer"))? {
                        [0x1f, 0x8b, ..] => spec::OCI_LAYER_GZIP,
                        [0x28, 0xb5, 0x2f, 0xfd, ..] => spec::OCI_LAYER_ZSTD,
                        _ => spec::OCI_LAYER_TAR,
                    };
                let (digest, size, _) = HashingReader::new(head)
                    .finish()
                    .map_err(store_err(&p, "read layer"))?;
                blobs.insert(digest.clone(), p);
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest,
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: vec![],
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(spec::OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: spec::OCI_CONFIG.into(),
                    digest: config_digest.clone(),
                    size: cbytes.len() as u64,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: vec![],
                },
                layers,
                annotations: BTreeMap::new(),
            };
            let mbytes = serde_json::to_vec(&manifest).expect("serialisable");
            let mut names: Vec<String> = e.repo_tags.unwrap_or_default();
            if let Some(n) = name {
                names = vec![n.to_string()];
            }
            if names.is_empty() {
                names.push(format!(
                    "import/{}:{}",
                    file_stem(Path::new(what)),
                    config_digest.short()
                ));
            }
            let source = FileSource { blobs };
            for n in names {
                let image = n.parse::<Reference>()?.to_string();
                let (rec, ..) = self.store_image(
                    &image,
                    &manifest,
                    &mbytes,
                    Digest::of(&mbytes),
                    None,
                    &cbytes,
                    &source,
                    opts,
                    progress,
                )?;
                out.push(rec);
            }
        }
        Ok(out)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// Finds an image by name (normalised: `busybox` finds `docker.io/library/busybox:latest`),
    /// by `name@digest`, or by an image-ID prefix.
    pub fn get(&self, what: &str) -> Result<ImageRecord, ImageError> {
        let idx = self.read_index()?;
        find(&idx, what).map(|n| idx.images[&n[0]].clone())
    }

    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfig, ImageError> {
        let b = self.content.get(&rec.config)?;
        parse_json(&b, &rec.name, "config")
    }

    pub fn manifest_bytes(&self, rec: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        Ok(self.content.get(&rec.digest)?)
    }

    /// Removes names (a name, or every name of an image ID) and collects garbage.
    pub fn remove(&self, what: &str) -> Result<(Vec<String>, PruneReport), ImageError> {
        let lp = self.lock_path();
        let _gc = Lock::exclusive(&lp).map_err(store_err(&lp, "lock"))?;
        let _x = self.index_lock()?;
        let mut idx = self.read_index()?;
        let names = find(&idx, what)?;
        for n in &names {
            idx.images.remove(n);
        }
        self.write_index(&idx)?;
        let report = self.collect(&idx)?;
        Ok((names, report))
    }

    /// Removes everything no image references, and leftovers of interrupted work.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        let lp = self.lock_path();
        let _gc = Lock::exclusive(&lp).map_err(store_err(&lp, "lock"))?;
        let _x = self.index_lock()?;
        let idx = self.read_index()?;
        self.collect(&idx)
    }

    fn collect(&self, idx: &IndexFile) -> Result<PruneReport, ImageError> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_snaps = BTreeSet::new();
        for r in idx.images.values() {
            keep_blobs.insert(r.digest.clone());
            keep_blobs.insert(r.config.clone());
            if let Some(i) = &r.index_digest {
                keep_blobs.insert(i.clone());
            }
            keep_snaps.extend(r.chain_ids());
        }
        // Snapshots under running containers stay, even if their image was removed.
        keep_snaps.extend(self.leased());
        let mut rep = PruneReport {
            temp: self.clean_temp()?,
            ..Default::default()
        };
        for d in self
            .content
            .list()
            .map_err(store_err(&self.root, "list content"))?
        {
            if !keep_blobs.contains(&d) {
                self.content
                    .remove(&d)
                    .map_err(store_err(&self.root, "remove blob"))?;
                rep.blobs += 1;
            }
        }
        for c in self
            .snapshots
            .list()
            .map_err(store_err(&self.root, "list snapshots"))?
        {
            if !keep_snaps.contains(&c) {
                rep.bytes += self.snapshots.info(&c).map(|i| i.size).unwrap_or(0);
                self.snapshots.remove(&c)?;
                rep.snapshots += 1;
            }
        }
        Ok(rep)
    }

    /// Records that `holder` (a running container) uses `rec`'s snapshots: garbage collection
    /// keeps them until `release`. `holder` must be a plain name.
    pub fn lease(&self, holder: &str, rec: &ImageRecord) -> Result<(), ImageError> {
        if holder.is_empty()
            || !holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ImageError::Invalid {
                image: rec.name.clone(),
                reason: format!("invalid lease holder {holder:?}"),
            });
        }
        let dir = self.root.join("leases");
        fs::create_dir_all(&dir).map_err(store_err(&dir, "create"))?;
        let p = dir.join(holder);
        let bytes = serde_json::to_vec(&rec.chain_ids()).expect("serialisable");
        fsutil::write_atomic(&p, &bytes).map_err(store_err(&p, "write lease"))
    }

    /// Ends a lease taken with `lease`.
    pub fn release(&self, holder: &str) {
        let _ = fs::remove_file(self.root.join("leases").join(holder));
    }

    /// Snapshots held by leases.
    fn leased(&self) -> BTreeSet<Digest> {
        let mut out = BTreeSet::new();
        for e in fs::read_dir(self.root.join("leases"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(v) = fs::read(e.path())
                .map(|b| serde_json::from_slice::<Vec<Digest>>(&b).unwrap_or_default())
            {
                out.extend(v);
            }
        }
        out
    }

    /// Mounts an image's layers at `target` with a fresh writable upper/work pair.
    pub fn mount(
        &self,
        rec: &ImageRecord,
        target: &Path,
        upper: &Path,
        work: &Path,
    ) -> Result<(), ImageError> {
        Ok(self
            .snapshots
            .mount(&rec.chain_ids(), target, Some((upper, work)))?)
    }
}

const CHUNK: usize = 256 * 1024;

/// The apply stage's view of the chunks the inflate stage sends.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the sender finished: end of stream
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn file_stem(p: &Path) -> String {
    let s: String = p
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s
        .trim_matches('-')
        .split(['-'])
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if s.is_empty() {
        "image".into()
    } else {
        s
    }
}

fn find(idx: &IndexFile, what: &str) -> Result<Vec<String>, ImageError> {
    if let Ok(r) = what.parse::<Reference>() {
        let n = r.to_string();
        if idx.images.contains_key(&n) {
            return Ok(vec![n]);
        }
        // name@digest for an image stored under a tag.
        if let Some(d) = &r.digest {
            let hits: Vec<String> = idx
                .images
                .values()
                .filter(|i| {
                    i.name
                        .parse::<Reference>()
                        .is_ok_and(|n| n.name() == r.name())
                        && (&i.digest == d || i.index_digest.as_ref() == Some(d))
                })
                .map(|i| i.name.clone())
                .collect();
            if !hits.is_empty() {
                return Ok(hits);
            }
        }
    }
    let prefix = what.strip_prefix("sha256:").unwrap_or(what);
    if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hits: Vec<&ImageRecord> = idx
            .images
            .values()
            .filter(|i| i.config.hex().starts_with(prefix))
            .collect();
        let ids: BTreeSet<&Digest> = hits.iter().map(|i| &i.config).collect();
        match ids.len() {
            0 => {}
            1 => return Ok(hits.iter().map(|i| i.name.clone()).collect()),
            _ => {
                return Err(ImageError::Ambiguous(
                    what.to_string(),
                    ids.iter()
                        .map(|d| d.short().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        }
    }
    Err(ImageError::NotFound(what.to_string()))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    b: &[u8],
    image: &str,
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(b).map_err(|e| ImageError::Invalid {
        image: image.to_string(),
        reason: format!("malformed {what}: {e}"),
    })
}

fn check_manifest(m: &Manifest, image: &str) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::Invalid {
        image: image.to_string(),
        reason,
    };
    if m.schema_version != 2 {
        return Err(bad(format!(
            "unsupported manifest schemaVersion {}",
            m.schema_version
        )));
    }
    if m.config.media_type != spec::OCI_CONFIG && m.config.media_type != spec::DOCKER_CONFIG {
        return Err(bad(format!(
            "unsupported config media type {:?} (not a container image)",
            m.config.media_type
        )));
    }
    for l in &m.layers {
        if Compression::from_media_type(&l.media_type).is_none() {
            return Err(bad(format!(
                "layer {}: unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
    }
    Ok(())
}

/// Picks the index entry for `want`, skipping attestation manifests.
pub fn select_platform<'a>(idx: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let candidates = idx.manifests.iter().filter(|m| !spec::is_attestation(m));
    let mut best: Option<&Descriptor> = None;
    for m in candidates {
        let Some(p) = &m.platform else { continue };
        if want.matches(p) {
            // Prefer an exact variant match over a variant-less one.
            if best.is_none() || p.variant == want.variant {
                best = Some(m);
            }
        }
    }
    best
}
