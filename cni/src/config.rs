//! Network configuration: a CNI network configuration list (`.conflist`) with knode's bridge
//! plugin, or the reference `bridge` + `host-local` plugins. Every problem is reported with
//! the file and the field it is in.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// IPAM settings (host-local compatible).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub subnet: Ipv4Net,
    #[serde(default)]
    pub range_start: Option<Ipv4Addr>,
    #[serde(default)]
    pub range_end: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub data_dir: Option<String>,
}

/// One plugin of the list (the bridge's settings; other plugins keep their raw JSON).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub is_gateway: Option<bool>,
    #[serde(default)]
    pub ip_masq: Option<bool>,
    #[serde(default)]
    pub hairpin_mode: Option<bool>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ipam: Option<IpamConfig>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConfList {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<PluginConfig>,
}

impl NetConfList {
    /// The first plugin with IPAM settings (the bridge).
    pub fn ipam(&self) -> Option<&IpamConfig> {
        self.plugins.iter().find_map(|p| p.ipam.as_ref())
    }

    /// The usable address range: rangeStart..=rangeEnd, by default the subnet without its
    /// network, gateway and broadcast addresses.
    pub fn range(ipam: &IpamConfig) -> (Ipv4Addr, Ipv4Addr) {
        let first = u32::from(ipam.subnet.network()) + 1;
        let last = u32::from(ipam.subnet.broadcast()).saturating_sub(1);
        (
            ipam.range_start.unwrap_or(Ipv4Addr::from(first)),
            ipam.range_end.unwrap_or(Ipv4Addr::from(last)),
        )
    }

    /// The gateway: configured, or the subnet's first address.
    pub fn gateway(ipam: &IpamConfig) -> Ipv4Addr {
        ipam.gateway
            .unwrap_or(Ipv4Addr::from(u32::from(ipam.subnet.network()) + 1))
    }
}

/// Reads and validates a `.conflist`.
pub fn load(path: &Path) -> Result<NetConfList, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        field: "(file)".into(),
        reason: e.to_string(),
    })?;
    parse(&text, &file)
}

pub fn parse(text: &str, file: &str) -> Result<NetConfList, ConfigError> {
    let err = |field: &str, reason: String| ConfigError {
        file: file.to_string(),
        field: field.to_string(),
        reason,
    };
    let mut raw: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err("(json)", e.to_string()))?;
    // host-local's `ranges` form ([[{subnet, rangeStart, ...}]]): its first range is the one
    // knode describes (the pod subnet).
    for p in raw["plugins"].as_array_mut().into_iter().flatten() {
        let ipam = &mut p["ipam"];
        if ipam.is_object() && ipam.get("subnet").is_none() {
            if let Some(first) = ipam["ranges"][0][0].as_object().cloned() {
                for (k, v) in first {
                    ipam[k] = v;
                }
            }
        }
    }
    let c: NetConfList = serde_json::from_value(raw).map_err(|e| err("(json)", e.to_string()))?;
    if c.name.is_empty()
        || !c
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(err(
            "name",
            format!("{:?} is not a valid network name", c.name),
        ));
    }
    if !crate::SUPPORTED_VERSIONS.contains(&c.cni_version.as_str())
        && !c.cni_version.starts_with("0.4")
    {
        return Err(err(
            "cniVersion",
            format!(
                "{:?} is not supported (use one of {:?})",
                c.cni_version,
                crate::SUPPORTED_VERSIONS
            ),
        ));
    }
    if c.plugins.is_empty() {
        return Err(err("plugins", "at least one plugin is required".into()));
    }
    for (i, p) in c.plugins.iter().enumerate() {
        let at = |f: &str| format!("plugins[{i}].{f}");
        if p.kind.is_empty() {
            return Err(err(&at("type"), "missing".into()));
        }
        if let Some(m) = p.mtu {
            if !(576..=65535).contains(&m) {
                return Err(err(&at("mtu"), format!("{m} is outside 576-65535")));
            }
        }
        if let Some(b) = &p.bridge {
            if b.is_empty() || b.len() > 15 || b.contains('/') || b.contains(char::is_whitespace) {
                return Err(err(
                    &at("bridge"),
                    format!("{b:?} is not a valid interface name (1-15 characters)"),
                ));
            }
        }
        if let Some(ipam) = &p.ipam {
            let (start, end) = NetConfList::range(ipam);
            if ipam.subnet.prefix_len() > 30 {
                return Err(err(
                    &at("ipam.subnet"),
                    format!("{} is too small for pods", ipam.subnet),
                ));
            }
            for (f, a) in [
                ("ipam.rangeStart", start),
                ("ipam.rangeEnd", end),
                ("ipam.gateway", NetConfList::gateway(ipam)),
            ] {
                if !ipam.subnet.contains(&a) {
                    return Err(err(&at(f), format!("{a} is not in subnet {}", ipam.subnet)));
                }
            }
            if u32::from(start) > u32::from(end) {
                return Err(err(
                    &at("ipam.rangeStart"),
                    format!("{start} is after rangeEnd {end}"),
                ));
            }
        }
    }
    Ok(c)
}

/// Whether two CIDRs overlap (pod vs service vs node networks must not).
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"knode","plugins":[{"type":"knode-bridge","bridge":"knode0","isGateway":true,"ipMasq":true,"hairpinMode":true,"mtu":1500,"ipam":{"type":"knode","subnet":"10.244.0.0/24"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn parses_and_defaults() {
        let c = parse(GOOD, "x.conflist").unwrap();
        let ipam = c.ipam().unwrap();
        assert_eq!(
            NetConfList::range(ipam),
            (
                "10.244.0.1".parse().unwrap(),
                "10.244.0.254".parse().unwrap()
            )
        );
        assert_eq!(
            NetConfList::gateway(ipam),
            "10.244.0.1".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(c.plugins[1].other["capabilities"]["portMappings"], true);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let cases = [
            (GOOD.replace("10.244.0.0/24", "10.244.0.0/33"), "(json)"),
            (GOOD.replace(r#""mtu":1500"#, r#""mtu":70000"#), "plugins[0].mtu"),
            (GOOD.replace(r#""subnet":"10.244.0.0/24""#, r#""subnet":"10.244.0.0/24","gateway":"10.0.0.1""#), "plugins[0].ipam.gateway"),
            (GOOD.replace(r#""subnet":"10.244.0.0/24""#, r#""subnet":"10.244.0.0/24","rangeStart":"10.244.0.200","rangeEnd":"10.244.0.100""#), "plugins[0].ipam.rangeStart"),
            (GOOD.replace(r#""bridge":"knode0""#, r#""bridge":"a-bridge-name-too-long""#), "plugins[0].bridge"),
            (GOOD.replace(r#""name":"knode""#, r#""name":"a b""#), "name"),
            (GOOD.replace("1.0.0", "9.9.9"), "cniVersion"),
        ];
        for (text, field) in cases {
            let e = parse(&text, "net.conflist").unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with("net.conflist: "), "{e}");
        }
    }

    #[test]
    fn host_local_ranges_form() {
        let text = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.50.0.0/24","rangeStart":"10.50.0.10"}]]}}]}"#;
        let c = parse(text, "x").unwrap();
        let ipam = c.ipam().unwrap();
        assert_eq!(ipam.subnet.to_string(), "10.50.0.0/24");
        assert_eq!(NetConfList::range(ipam).0.to_string(), "10.50.0.10");
    }

    #[test]
    fn overlap() {
        let a: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(overlaps(&a, &"10.244.3.0/24".parse().unwrap()));
        assert!(!overlaps(&a, &"10.96.0.0/12".parse().unwrap()));
    }
}
