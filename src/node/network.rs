//! Pod networking through a CNI network configuration list: each plugin of the list runs in
//! order for ADD (each getting the previous result) and in reverse for DEL, as the CNI spec
//! says. knode's own plugin (`knode-bridge`) runs in-process; any other type is executed from
//! the plugin directory with the CNI environment and stdin, so the reference plugins work too.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::node::error::{fail, Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;
use ipnet::Ipv4Net;
use serde_json::{json, Value};

pub struct Network {
    raw: Value,
    pub name: String,
    version: String,
    bin_dir: PathBuf,
}

impl Network {
    /// Loads and validates a `.conflist`: besides its own fields, the pod subnet must not
    /// overlap the Service CIDR or a network on the node's interfaces (other than the pod
    /// bridge), or pods could not reach those addresses.
    pub fn load(path: &Path, bin_dir: &Path, service_cidr: Option<Ipv4Net>) -> Result<Network> {
        let conf = cni::config::load(path)?;
        if let Some((i, ipam)) = conf
            .plugins
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.ipam.as_ref().map(|x| (i, x)))
        {
            let field = format!("plugins[{i}].ipam.subnet");
            let bridge = conf.plugins[i].bridge.clone().unwrap_or_else(|| {
                if conf.plugins[i].kind == "bridge" {
                    "cni0"
                } else {
                    "knode0"
                }
                .to_string()
            });
            let overlap = |what: String| cni::config::ConfigError {
                file: path.display().to_string(),
                field: field.clone(),
                reason: format!("{} overlaps {what}", ipam.subnet),
            };
            if let Some(svc) = service_cidr.filter(|s| cni::config::overlaps(s, &ipam.subnet)) {
                return Err(overlap(format!("the Service CIDR {svc}")).into());
            }
            let nets =
                cni::bridge::interface_networks().map_err(|e| NodeError::failed(e.to_string()))?;
            if let Some((name, net)) = nets.iter().find(|(name, net)| {
                *name != bridge
                    && !net.addr().is_loopback()
                    && cni::config::overlaps(&net.trunc(), &ipam.subnet)
            }) {
                return Err(overlap(format!("{net} on the node's interface {name}")).into());
            }
        }
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        Ok(Network {
            raw,
            name: conf.name,
            version: conf.cni_version,
            bin_dir: bin_dir.to_path_buf(),
        })
    }

    /// The cluster CIDR pod traffic stays inside of (the masquerade boundary): the list's
    /// `clusterCIDR`, or the pod subnet widened to a /16.
    pub fn cluster_cidr(&self) -> Option<Ipv4Net> {
        let p = self
            .plugins()
            .into_iter()
            .find(|p| p["ipam"]["subnet"].is_string() || p["ipam"]["ranges"].is_array())?;
        let subnet: Ipv4Net = p["ipam"]["subnet"]
            .as_str()
            .or(p["ipam"]["ranges"][0][0]["subnet"].as_str())?
            .parse()
            .ok()?;
        cni::masq::cluster_cidr(&subnet, p["clusterCIDR"].as_str()).ok()
    }

    /// Plugins of the list that are executed but not installed in the plugin directory.
    pub fn missing_plugins(&self) -> Vec<String> {
        self.plugins()
            .iter()
            .filter_map(|p| p["type"].as_str())
            .filter(|k| *k != "knode-bridge" && !self.bin_dir.join(k).exists())
            .map(|k| self.bin_dir.join(k).display().to_string())
            .collect()
    }

    fn plugins(&self) -> Vec<Value> {
        self.raw["plugins"].as_array().cloned().unwrap_or_default()
    }

    fn invoke(
        &self,
        plugin: &Value,
        command: &str,
        id: &str,
        netns: &Path,
        prev: Option<&Value>,
    ) -> Result<Option<Value>> {
        let mut conf = plugin.clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!(self.version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let kind = plugin["type"].as_str().unwrap_or("").to_string();
        let env: BTreeMap<String, String> = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", self.bin_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if kind == "knode-bridge" {
            return cni::protocol::run(&env, &conf.to_string()).map_err(|error| NodeError::Cni {
                command: command.to_string(),
                plugin: kind.clone(),
                error,
            });
        }
        if kind.is_empty() || kind.contains('/') {
            fail!("network {}: plugin type {kind:?} is not valid", self.name);
        }
        let bin = self.bin_dir.join(&kind);
        let mut child = Command::new(&bin)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_ctx(|| {
                format!(
                    "network {}: CNI plugin {} (is it installed?)",
                    self.name,
                    bin.display()
                )
            })?;
        child
            .stdin
            .take()
            .ctx("stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            fail!(
                "CNI {command} ({kind}): {} {}",
                v["msg"]
                    .as_str()
                    .unwrap_or(&String::from_utf8_lossy(&out.stderr)),
                v["details"].as_str().unwrap_or("")
            );
        }
        Ok((!v.is_null()).then_some(v))
    }

    /// ADD through every plugin; returns the pod's first IPv4 address and the final result.
    pub fn attach(&self, id: &str, netns: &Path) -> Result<Attachment> {
        let mut prev: Option<Value> = None;
        let plugins = self.plugins();
        for (i, p) in plugins.iter().enumerate() {
            match self.invoke(p, "ADD", id, netns, prev.as_ref()) {
                Ok(r) => prev = r.or(prev),
                Err(e) => {
                    // Undo what the earlier plugins did: nothing half-attached stays.
                    for q in plugins[..i].iter().rev() {
                        let _ = self.invoke(q, "DEL", id, netns, prev.as_ref());
                    }
                    return Err(e);
                }
            }
        }
        let ip = prev
            .as_ref()
            .and_then(|r| r["ips"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .next();
        Ok(Attachment {
            ip,
            result: prev.unwrap_or(Value::Null),
        })
    }

    /// CHECK through every plugin with the ADD's result, as the spec asks: whether the pod's
    /// network is still as ADD left it.
    pub fn check(&self, id: &str, netns: &Path, prev: &Value) -> Result<()> {
        for p in self.plugins() {
            self.invoke(&p, "CHECK", id, netns, Some(prev))?;
        }
        Ok(())
    }

    /// GC through every plugin: releases whatever is held for containers other than `valid`
    /// (leaks of a crash or a reboot).
    pub fn gc(&self, valid: &[String]) -> Result<()> {
        let attachments: Vec<Value> = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        // GC came with CNI 1.1: older plugins (Debian's reference plugins speak 1.0) would
        // reject it, so it is sent to them only when the list says 1.1 or later.
        let speaks_gc = !matches!(self.version.as_str(), "0.4.0" | "1.0.0");
        for p in self.plugins() {
            if p["type"] != "knode-bridge" && !speaks_gc {
                continue;
            }
            let mut p = p.clone();
            p["cni.dev/valid-attachments"] = json!(attachments);
            self.invoke(&p, "GC", "", Path::new(""), None)?;
        }
        Ok(())
    }

    /// DEL through every plugin, in reverse; works when the namespace is already gone.
    pub fn detach(&self, id: &str, netns: &Path, prev: Option<&Value>) -> Result<()> {
        let mut first_err = None;
        for p in self.plugins().iter().rev() {
            if let Err(e) = self.invoke(p, "DEL", id, netns, prev) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A pod's attachment to the network: its address and the CNI result (kept for CHECK and DEL).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub result: Value,
}

impl Attachment {
    /// Reads the attachment a pod directory records (`network.json`).
    pub fn load(pod_dir: &Path) -> Option<Attachment> {
        let b = std::fs::read(pod_dir.join("network.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn save(&self, pod_dir: &Path) -> std::io::Result<()> {
        oci::fsutil::replace(
            &pod_dir.join("network.json"),
            &serde_json::to_vec(self).unwrap_or_default(),
        )
    }
}

/// The link that holds the cluster DNS address on the node (`ip addr show knode-dns`).
pub const DNS_LINK: &str = "knode-dns";

/// Puts the cluster DNS address on the node (a dummy link, [`DNS_LINK`]).
pub fn ensure_dns_link(addr: std::net::Ipv4Addr) -> Result<()> {
    cni::bridge::use_runtime(crate::node::rt::handle()?);
    cni::bridge::ensure_dummy(DNS_LINK, addr)
        .map_err(|e| NodeError::failed(format!("the cluster DNS address {addr}: {e}")))
}

/// Removes the pod network's bridge (`knode down`, once no pod is left); missing is fine.
pub fn remove_bridge(name: &str) -> Result<()> {
    cni::bridge::use_runtime(crate::node::rt::handle()?);
    cni::bridge::del(name)
        .map_err(|e| NodeError::failed(format!("removing the bridge {name}: {e}")))
}
