//! knode's CNI plugin: the network configuration (`config`), a host-local compatible IPAM
//! store (`ipam`), the bridge and veths over rtnetlink (`bridge`), knode's nftables table
//! (`masq`) and the CNI protocol (`protocol`), used by the `knode-cni` binary and in-process by
//! the agent.

pub mod bridge;
pub mod config;
pub mod ipam;
pub mod masq;
pub mod protocol;

/// CNI spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The JSON result of `CNI_COMMAND=VERSION`.
pub fn version_result() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1],
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_lists_supported() {
        let v = super::version_result();
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 2);
    }
}
