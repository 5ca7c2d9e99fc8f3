//! Images for knode: references, registry client, content store, layer applier and snapshots.
//!
//! The pieces compose the way containerd's do: the registry client fetches, the content store
//! keeps verified manifests and configs, the applier turns a layer stream into a snapshot
//! directory, and the snapshot store mounts a stack of them as an overlay. `image` ties them
//! together (pull, import, list, remove, garbage collection).

pub mod apply;
pub mod archive;
pub mod build;
pub mod compress;
pub mod content;
pub mod digest;
pub mod fsutil;
pub mod image;
pub mod mirrors;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod snapshot;
pub mod spec;
pub mod tar;
pub use oci_spec;
