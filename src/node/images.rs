//! The node's image store: `<root>/images`, kept by the oci crate (pull, import, snapshots,
//! leases, garbage collection). Every part of the node opens it here.

use std::path::Path;

use oci::image::{ImageError, ImageStore};

/// Opens (or makes, root's only) the image store under the state root.
pub fn store_at(root: &Path) -> Result<ImageStore, ImageError> {
    ImageStore::open(&root.join("images"))
}
