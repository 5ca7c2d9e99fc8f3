//! The node's image store: `<root>/images`, kept by the oci crate (pull, import, snapshots,
//! leases, garbage collection). Every part of the node opens it here.

use std::path::Path;

use oci::image::{ImageError, ImageStore};

/// Opens (or makes, root's only) the image store under the state root.
pub fn store_at(root: &Path) -> Result<ImageStore, ImageError> {
    ImageStore::open(&root.join("images"))
}

/// The archive names preloading takes: `docker save` and OCI archives, plain or compressed.
const ARCHIVES: &[&str] = &[".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".oci"];

/// The record of archives already imported (name -> size and mtime), so a restart does not
/// import them again; beside them in the store's directory.
const RECORD: &str = ".preloaded.json";

/// What one preload did.
#[derive(Debug, Default)]
pub struct Preloaded {
    /// Archives imported now, with the image names they carried.
    pub imported: Vec<(String, Vec<String>)>,
    /// Archives refused, with the reason.
    pub refused: Vec<(String, String)>,
    /// Archives imported before and unchanged.
    pub unchanged: usize,
}

/// Imports the image archives dropped in `<root>/images/` (as k3s's airgap images): new or
/// changed ones only. An archive that cannot be imported is reported and left; the others
/// still go in.
pub fn preload(store: &ImageStore, root: &Path) -> Preloaded {
    let dir = root.join("images");
    let mut out = Preloaded::default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let record_path = dir.join(RECORD);
    let mut record: std::collections::BTreeMap<String, String> = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut names: Vec<(String, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (!name.starts_with('.') && ARCHIVES.iter().any(|s| name.ends_with(s)))
                .then(|| (name, e.path()))
        })
        .collect();
    names.sort();
    let mut changed = false;
    for (name, path) in names {
        let Ok(md) = std::fs::metadata(&path) else {
            continue;
        };
        if !md.is_file() {
            continue;
        }
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let stamp = format!("{}:{mtime}", md.len());
        if record.get(&name) == Some(&stamp) {
            out.unchanged += 1;
            continue;
        }
        let started = std::time::Instant::now();
        match store.import(
            &path,
            None,
            &oci::image::PullOptions::default(),
            &oci::progress::NoProgress,
        ) {
            Ok(images) => {
                let tags: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
                tracing::info!(archive = %path.display(), images = ?tags, ms = started.elapsed().as_millis() as u64, "preloaded");
                out.imported.push((name.clone(), tags));
                record.insert(name, stamp);
                changed = true;
            }
            Err(e) => {
                tracing::warn!(archive = %path.display(), error = %e, "image archive refused: the node starts without it");
                out.refused.push((name, e.to_string()));
            }
        }
    }
    if changed {
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        if let Err(e) = oci::fsutil::write_atomic(&record_path, &bytes) {
            tracing::warn!(file = %record_path.display(), error = %e, "cannot record the preloaded archives: they are imported again at the next start");
        }
    }
    out
}
