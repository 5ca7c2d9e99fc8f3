//! The CNI protocol (spec 1.x): the command and its parameters come in environment variables
//! (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`), the
//! network configuration on stdin; a result goes to stdout as JSON, an error as the spec's
//! error JSON with a code.
//!
//! Today knode-cni answers as an IPAM plugin (the role host-local plays: ADD allocates, DEL
//! releases, CHECK verifies, GC reclaims), so any bridge plugin can delegate to it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::config::{IpamConfig, NetConfList};
use crate::ipam::Store;

/// CNI error codes (spec section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
}

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{msg}")]
pub struct Error {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

fn err(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Error {
    Error {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

/// The default store location (host-local's).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Runs one plugin invocation; `Ok(None)` means success without output (DEL, GC).
pub fn run(env: &BTreeMap<String, String>, stdin: &str) -> Result<Option<Value>, Error> {
    let var = |k: &str| env.get(k).cloned().unwrap_or_default();
    let command = var("CNI_COMMAND");
    if command == "VERSION" {
        return Ok(Some(crate::version_result()));
    }
    let conf: Value = serde_json::from_str(stdin).map_err(|e| {
        err(
            code::DECODE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let version = conf["cniVersion"].as_str().unwrap_or("").to_string();
    if !crate::SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(err(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version:?} is not supported"),
            format!("supported: {:?}", crate::SUPPORTED_VERSIONS),
        ));
    }
    let network = conf["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            err(
                code::INVALID_CONFIG,
                "the network configuration has no name",
                "",
            )
        })?
        .to_string();
    let ipam: IpamConfig = serde_json::from_value(conf["ipam"].clone()).map_err(|e| {
        err(
            code::INVALID_CONFIG,
            "invalid ipam configuration",
            e.to_string(),
        )
    })?;
    // Validate like a conflist (ranges inside the subnet, ...).
    let list = json!({"cniVersion": version, "name": network, "plugins": [{"type": conf["type"].as_str().unwrap_or("ipam"), "ipam": conf["ipam"]}]});
    crate::config::parse(&list.to_string(), "stdin")
        .map_err(|e| err(code::INVALID_CONFIG, e.to_string(), ""))?;
    let data_dir = PathBuf::from(
        ipam.data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()),
    );
    let store = Store::open(&data_dir, &network).map_err(|e| err(code::IO, e.to_string(), ""))?;
    if command == "GC" {
        // cni.dev/valid-attachments: what must be kept.
        let valid: Vec<(String, String)> = conf["cni.dev/valid-attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["containerID"].as_str().unwrap_or("").to_string(),
                    a["ifname"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        store
            .gc(|a| {
                valid
                    .iter()
                    .any(|(id, ifn)| *id == a.id && *ifn == a.ifname)
            })
            .map_err(|e| err(code::IO, e.to_string(), ""))?;
        if conf["type"] == "knode-bridge" {
            let keep = valid
                .iter()
                .map(|(id, ifn)| crate::bridge::host_veth_name(id, ifn))
                .collect();
            let bridge = conf["bridge"].as_str().unwrap_or("knode0");
            crate::bridge::gc(bridge, &keep).map_err(|e| err(code::IO, e.to_string(), ""))?;
        }
        return Ok(None);
    }
    if command == "STATUS" {
        return Ok(None);
    }
    let id = var("CNI_CONTAINERID");
    let ifname = var("CNI_IFNAME");
    if id.is_empty() {
        return Err(err(code::INVALID_ENV, "CNI_CONTAINERID is required", ""));
    }
    if ifname.is_empty() {
        return Err(err(code::INVALID_ENV, "CNI_IFNAME is required", ""));
    }
    let result = |ip: std::net::Ipv4Addr| {
        json!({
            "cniVersion": version,
            "ips": [{"address": format!("{ip}/{}", ipam.subnet.prefix_len()), "gateway": NetConfList::gateway(&ipam).to_string()}],
            "routes": [{"dst": "0.0.0.0/0", "gw": NetConfList::gateway(&ipam).to_string()}],
            "dns": {},
        })
    };
    let bridged = conf["type"] == "knode-bridge";
    let bridge = conf["bridge"].as_str().unwrap_or("knode0").to_string();
    let host_veth = crate::bridge::host_veth_name(&id, &ifname);
    match command.as_str() {
        "ADD" if bridged => {
            let netns = var("CNI_NETNS");
            if netns.is_empty() {
                return Err(err(code::INVALID_ENV, "CNI_NETNS is required", ""));
            }
            let ip = store
                .allocate(&ipam, &id, &ifname)
                .map_err(|e| err(code::TRY_AGAIN, e.to_string(), ""))?;
            let args = crate::bridge::AddArgs {
                bridge: &bridge,
                gateway: NetConfList::gateway(&ipam),
                prefix: ipam.subnet.prefix_len(),
                ip,
                netns: std::path::Path::new(&netns),
                ifname: &ifname,
                host_veth: &host_veth,
                mtu: conf["mtu"].as_u64().unwrap_or(1500) as u32,
                hairpin: conf["hairpinMode"].as_bool().unwrap_or(true),
            };
            let masq = (|| {
                let outside = match conf["ipMasq"].as_bool().unwrap_or(false) {
                    true => Some(crate::masq::cluster_cidr(
                        &ipam.subnet,
                        conf["clusterCIDR"].as_str(),
                    )?),
                    false => None,
                };
                let fallback = !crate::bridge::bridge_netfilter();
                if outside.is_none() && !fallback {
                    return Ok(());
                }
                crate::masq::ensure(&crate::masq::Rules {
                    bridge: &bridge,
                    pods: ipam.subnet,
                    masquerade_outside: outside,
                    service_fallback: fallback,
                })
            })();
            if let Err(e) = masq
                .map_err(|e| e.to_string())
                .and_then(|_| crate::bridge::add(&args).map_err(|e| e.to_string()))
            {
                // Nothing half-done stays: no veth, no address.
                let _ = crate::bridge::del(&host_veth);
                let _ = store.release(&id, &ifname);
                return Err(err(code::IO, format!("setting up {ifname}: {e}"), ""));
            }
            let mut r = result(ip);
            r["interfaces"] =
                json!([{"name": bridge}, {"name": host_veth}, {"name": ifname, "sandbox": netns}]);
            r["ips"][0]["interface"] = json!(2);
            Ok(Some(r))
        }
        "DEL" if bridged => {
            crate::bridge::del(&host_veth).map_err(|e| err(code::IO, e.to_string(), ""))?;
            store
                .release(&id, &ifname)
                .map_err(|e| err(code::IO, e.to_string(), ""))?;
            Ok(None)
        }
        "CHECK" if bridged => {
            let held = store
                .allocations()
                .map_err(|e| err(code::IO, e.to_string(), ""))?
                .into_iter()
                .find(|a| a.id == id && a.ifname == ifname)
                .ok_or_else(|| {
                    err(
                        code::UNKNOWN_CONTAINER,
                        format!("container {id} interface {ifname} holds no address in network {network}"),
                        "",
                    )
                })?;
            let netns = var("CNI_NETNS");
            let args = crate::bridge::AddArgs {
                bridge: &bridge,
                gateway: NetConfList::gateway(&ipam),
                prefix: ipam.subnet.prefix_len(),
                ip: held.ip,
                netns: std::path::Path::new(&netns),
                ifname: &ifname,
                host_veth: &host_veth,
                mtu: 0,
                hairpin: false,
            };
            crate::bridge::check(&args).map_err(|e| {
                err(
                    code::IO,
                    format!("container {id} interface {ifname}: {e}"),
                    "",
                )
            })?;
            Ok(None)
        }
        "ADD" => {
            let ip = store.allocate(&ipam, &id, &ifname).map_err(|e| match e {
                crate::ipam::IpamError::Exhausted { .. } => err(code::TRY_AGAIN, e.to_string(), ""),
                crate::ipam::IpamError::InvalidId { .. } => {
                    err(code::INVALID_ENV, e.to_string(), "")
                }
                e => err(code::IO, e.to_string(), ""),
            })?;
            Ok(Some(result(ip)))
        }
        "DEL" => {
            store
                .release(&id, &ifname)
                .map_err(|e| err(code::IO, e.to_string(), ""))?;
            Ok(None)
        }
        "CHECK" => {
            let held = store
                .allocations()
                .map_err(|e| err(code::IO, e.to_string(), ""))?
                .into_iter()
                .any(|a| a.id == id && a.ifname == ifname);
            if held {
                Ok(None)
            } else {
                Err(err(
                    code::UNKNOWN_CONTAINER,
                    format!(
                        "container {id} interface {ifname} holds no address in network {network}"
                    ),
                    "",
                ))
            }
        }
        "" => Err(err(code::INVALID_ENV, "CNI_COMMAND is required", "")),
        other => Err(err(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "",
        )),
    }
}
