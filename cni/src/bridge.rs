//! The bridge part of knode's CNI plugin: a bridge (`knode0` by default) holding the gateway
//! address, and per pod a veth pair: the host side enslaved to the bridge with hairpin mode,
//! the pod side renamed to `CNI_IFNAME` in the pod's network namespace with its address and a
//! default route via the gateway. All through rtnetlink (no `ip` processes).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::{new_connection, Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

pub struct AddArgs<'a> {
    pub bridge: &'a str,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub ip: Ipv4Addr,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub host_veth: &'a str,
    pub mtu: u32,
    pub hairpin: bool,
}

/// The host-side veth name for a container interface: `veth` + 8 hex digits, as the reference
/// plugin names them, but derived from the container so DEL finds it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (container_id, ifname).hash(&mut h);
    format!("veth{:08x}", h.finish() as u32)
}

fn rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

async fn index(h: &Handle, name: &str) -> Result<Option<u32>, String> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("looking up {name}: {e}")),
    }
}

async fn has_addr(h: &Handle, idx: u32, ip: Ipv4Addr) -> Result<bool, String> {
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await.map_err(|e| e.to_string())? {
        for attr in a.attributes {
            if let rtnetlink::packet_route::address::AddressAttribute::Address(
                std::net::IpAddr::V4(x),
            ) = attr
            {
                if x == ip {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// ADD in the current (node) network namespace. Returns the bridge's index.
pub fn add(a: &AddArgs) -> Result<(), String> {
    let netns = std::fs::File::open(a.netns)
        .map_err(|e| format!("network namespace {}: {e}", a.netns.display()))?;
    let peer = format!("tmp{}", &a.host_veth[4..]);
    rt()?.block_on(async {
        let (conn, h, _) = new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        // The bridge, with the gateway address, up.
        let br = match index(&h, a.bridge).await? {
            Some(i) => i,
            None => {
                h.link()
                    .add(LinkBridge::new(a.bridge).mtu(a.mtu).build())
                    .execute()
                    .await
                    .map_err(|e| format!("creating bridge {}: {e}", a.bridge))?;
                index(&h, a.bridge).await?.ok_or("bridge vanished")?
            }
        };
        if !has_addr(&h, br, a.gateway).await? {
            h.address()
                .add(br, a.gateway.into(), a.prefix)
                .execute()
                .await
                .map_err(|e| format!("adding {} to {}: {e}", a.gateway, a.bridge))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(br).up().build())
            .execute()
            .await
            .map_err(|e| format!("bridge up: {e}"))?;
        // The veth pair: host side on the bridge, pod side into the pod's namespace.
        if let Some(old) = index(&h, a.host_veth).await? {
            h.link()
                .del(old)
                .execute()
                .await
                .map_err(|e| format!("removing stale {}: {e}", a.host_veth))?;
        }
        h.link()
            .add(LinkVeth::new(a.host_veth, &peer).mtu(a.mtu).build())
            .execute()
            .await
            .map_err(|e| format!("creating veth {}: {e}", a.host_veth))?;
        let host = index(&h, a.host_veth).await?.ok_or("veth vanished")?;
        let pod = index(&h, &peer).await?.ok_or("veth peer vanished")?;
        h.link()
            .set(LinkUnspec::new_with_index(host).controller(br).up().build())
            .execute()
            .await
            .map_err(|e| format!("attaching {} to {}: {e}", a.host_veth, a.bridge))?;
        h.link()
            .set(
                LinkUnspec::new_with_index(pod)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("moving the veth into {}: {e}", a.netns.display()))?;
        Ok::<(), String>(())
    })?;
    if a.hairpin {
        let p = format!("/sys/class/net/{}/brport/hairpin_mode", a.host_veth);
        std::fs::write(&p, "1").map_err(|e| format!("{p}: {e}"))?;
    }
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    // The pod side, configured from a thread that enters the pod's network namespace.
    let (peer2, ifname, ip, prefix, gw) = (
        peer.clone(),
        a.ifname.to_string(),
        a.ip,
        a.prefix,
        a.gateway,
    );
    std::thread::spawn(move || -> Result<(), String> {
        // SAFETY: setns on a valid namespace descriptor, affecting only this thread.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "entering the pod network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        rt()?.block_on(async {
            let (conn, h, _) = new_connection().map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let idx = index(&h, &peer2)
                .await?
                .ok_or("veth not in the pod namespace")?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).name(ifname.clone()).build())
                .execute()
                .await
                .map_err(|e| format!("renaming to {ifname}: {e}"))?;
            h.address()
                .add(idx, ip.into(), prefix)
                .execute()
                .await
                .map_err(|e| format!("adding {ip}/{prefix}: {e}"))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(|e| format!("{ifname} up: {e}"))?;
            if let Some(lo) = index(&h, "lo").await? {
                let _ = h
                    .link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(gw)
                .build();
            h.route()
                .add(route)
                .execute()
                .await
                .map_err(|e| format!("default route via {gw}: {e}"))?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| "the pod-side thread panicked".to_string())?
}

/// DEL in the current (node) network namespace: removes the host veth (and with it the pod
/// side). Missing is fine: DEL is idempotent, and works when the pod namespace is gone.
pub fn del(host_veth: &str) -> Result<(), String> {
    rt()?.block_on(async {
        let (conn, h, _) = new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        if let Some(i) = index(&h, host_veth).await? {
            h.link()
                .del(i)
                .execute()
                .await
                .map_err(|e| format!("removing {host_veth}: {e}"))?;
        }
        Ok(())
    })
}

/// Whether the host veth exists in the current (node) network namespace.
pub fn exists(host_veth: &str) -> Result<bool, String> {
    rt()?.block_on(async {
        let (conn, h, _) = new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(index(&h, host_veth).await?.is_some())
    })
}
