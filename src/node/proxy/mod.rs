//! The service proxy: turns the node's [`ServiceState`](crate::api::service::ServiceState)s into
//! packet-filter rules that send traffic for a ClusterIP or a NodePort to the service's ready
//! endpoints.
//!
//! The rules follow kube-proxy's nftables mode (KEP-3866): one nftables table of our own, in
//! which verdict maps keyed by address, protocol and port jump to one chain per service port,
//! which picks one endpoint chain at random, which DNATs. [`nft`] renders those rules as `nft -f`
//! scripts, either the whole table at once or only what changed between two states.

pub mod alloc;
pub mod netlink;
pub mod nft;
pub mod sync;

pub use nft::{render_diff, render_full, Config};

/// Removes knode's nftables tables of family `ip` with these names (`knode down`); missing
/// ones are fine.
pub fn remove_tables(names: &[&str]) -> Result<(), netlink::NetlinkError> {
    let mut socket = netlink::Socket::open()?;
    for t in names {
        let cfg = Config {
            table: t.to_string(),
            ..Default::default()
        };
        // Adding an existing table is a no-op: the pair never fails on a missing one.
        socket.apply(&[nft::Op::AddTable, nft::Op::DeleteTable], &cfg)?;
    }
    Ok(())
}
