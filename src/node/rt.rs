//! The process's one tokio runtime, made on first use and kept for the process; nothing
//! builds a runtime per call.
//!
//! - In the agent, [`handle`]: multi-threaded; the local API and the pod network's netlink
//!   calls (handed to `cni` at agent start) run on it. Node workers stay threads and enter it
//!   with `Handle::block_on`.
//! - In a client (the CLI), [`client`]: current-thread, so it starts no thread at all (`knode
//!   exec` must stay single-threaded to enter a container's namespaces).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime's handle, made on first use (two worker threads: the API's connections and
/// netlink replies are all it serves).
pub fn handle() -> std::io::Result<Handle> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.handle().clone());
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("knode-rt")
        .enable_all()
        .build()?;
    // Two first callers at once: one runtime is kept, the other dropped unused.
    if let Err(unused) = RUNTIME.set(rt) {
        unused.shutdown_background();
    }
    Ok(RUNTIME.get().expect("set above").handle().clone())
}

static CLIENT: OnceLock<Runtime> = OnceLock::new();

/// A current-thread runtime for a client's requests: no thread of its own; the caller's
/// `block_on` drives it (several callers may wait in it at once, taking turns).
pub fn client() -> std::io::Result<&'static Runtime> {
    if let Some(rt) = CLIENT.get() {
        return Ok(rt);
    }
    let rt = Builder::new_current_thread().enable_all().build()?;
    let _ = CLIENT.set(rt);
    Ok(CLIENT.get().expect("set above"))
}
