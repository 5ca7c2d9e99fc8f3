//! The bridge part of knode's CNI plugin: a bridge (`knode0` by default) holding the gateway
//! address with a pinned MAC, and per pod a veth pair: the host side enslaved to the bridge
//! with hairpin mode, the pod side renamed to `CNI_IFNAME` in the pod's network namespace with
//! its address and a default route via the gateway. All through rtnetlink (no `ip` processes).

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};

/// A netlink or network-namespace operation of the bridge that failed, said in words (what
/// was being done, and the kernel's answer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BridgeError(pub String);

impl From<String> for BridgeError {
    fn from(s: String) -> BridgeError {
        BridgeError(s)
    }
}

impl From<&str> for BridgeError {
    fn from(s: &str) -> BridgeError {
        BridgeError(s.to_string())
    }
}
use rtnetlink::{
    new_connection, Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

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

/// The bridge's MAC: locally administered and derived from the gateway address (`0a:58` and
/// the four octets), set explicitly so it never changes as pods come and go (a bridge without
/// one takes the lowest MAC of its ports, and every pod's ARP cache would go stale).
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The runtime netlink calls run on: the caller's, given once with [`use_runtime`] (the
/// knode agent hands over its one runtime), else one made on first use and kept for the
/// process (the `knode-cni` binary). None is made per call.
static SHARED: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
static OWN: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

/// Runs this crate's netlink calls on `rt` (a multi-thread runtime: its workers drive the
/// sockets while the callers, plain threads, wait in `block_on`). The first call wins.
pub fn use_runtime(rt: tokio::runtime::Handle) {
    let _ = SHARED.set(rt);
}

fn block_on<F: Future>(f: F) -> Result<F::Output, BridgeError> {
    if let Some(h) = SHARED.get() {
        return Ok(h.block_on(f));
    }
    if OWN.get().is_none() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the netlink runtime: {e}"))?;
        let _ = OWN.set(rt);
    }
    // A current-thread runtime's own block_on drives its I/O (several threads may wait in
    // it at once; one drives, the others take turns).
    Ok(OWN.get().expect("set above").block_on(f))
}

/// Runs `f` with an rtnetlink handle for the calling thread's network namespace (the socket
/// is made on this thread, so in its namespace).
fn netlink<T, Fut>(f: impl FnOnce(Handle) -> Fut) -> Result<T, BridgeError>
where
    Fut: Future<Output = Result<T, BridgeError>>,
{
    block_on(async {
        let (conn, h, _) = new_connection().map_err(|e| e.to_string())?;
        // The connection task runs until it is told to stop (it outlives its handles).
        let conn = tokio::spawn(conn);
        let r = f(h).await;
        conn.abort();
        r
    })?
}

/// Runs `f` on a thread that has entered the network namespace `netns` (only that thread
/// moves; the caller stays in the node's namespace).
fn in_netns<T: Send + 'static>(
    netns: &File,
    f: impl FnOnce() -> Result<T, BridgeError> + Send + 'static,
) -> Result<T, BridgeError> {
    let fd = netns.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid network namespace descriptor; it affects only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(BridgeError(format!(
                "entering the pod network namespace: {}",
                std::io::Error::last_os_error()
            )));
        }
        f()
    })
    .join()
    .map_err(|_| "the pod-side thread panicked".to_string())?
}

/// Reads the rest of a reply whose answer is known already. The connection forwards every
/// message of a reply to its requester; one whose stream was dropped makes it log a warning
/// per message left (with a runtime per call, the connection died before it noticed).
async fn drain<S: futures::TryStream + Unpin>(mut s: S) {
    while let Ok(Some(_)) = s.try_next().await {}
}

async fn link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, BridgeError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => {
            drain(links).await;
            Ok(l)
        }
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(BridgeError(format!("looking up {name}: {e}"))),
    }
}

async fn index(h: &Handle, name: &str) -> Result<Option<u32>, BridgeError> {
    Ok(link(h, name).await?.map(|l| l.header.index))
}

fn mac_of(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

fn controller_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn kind_of(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn has_addr(h: &Handle, idx: u32, ip: Ipv4Addr) -> Result<bool, BridgeError> {
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await.map_err(|e| e.to_string())? {
        if a.attributes
            .iter()
            .any(|attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(x)) if *x == ip))
        {
            drain(addrs).await;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The bridge, created if missing, with its pinned MAC, the gateway address and netfilter
/// calls for bridged IPv4 (so a pod reaching a Service whose endpoint is on the same bridge
/// gets its replies un-NATed), up. Returns its index.
async fn ensure_bridge(h: &Handle, a: &AddArgs<'_>) -> Result<u32, BridgeError> {
    let mac = bridge_mac(a.gateway).to_vec();
    let (br, pinned) = match link(h, a.bridge).await? {
        Some(l) => {
            if kind_of(&l) != Some(&InfoKind::Bridge) {
                return Err(BridgeError(format!(
                    "{} exists and is not a bridge (the conflist's bridge field names it)",
                    a.bridge
                )));
            }
            (l.header.index, mac_of(&l) == Some(mac.as_slice()))
        }
        None => {
            // Concurrent ADDs race to create it: EEXIST means another one won.
            match h
                .link()
                .add(LinkBridge::new(a.bridge).mtu(a.mtu).build())
                .execute()
                .await
            {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                r => r.map_err(|e| format!("creating bridge {}: {e}", a.bridge))?,
            }
            (index(h, a.bridge).await?.ok_or("bridge vanished")?, false)
        }
    };
    if !pinned {
        // RTM_NEWLINK on the existing link (RTM_SETLINK ignores the bridge's info data).
        h.link()
            .set_port(
                LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
                    .index(br)
                    .address(mac)
                    .set_info_data(InfoData::Bridge(vec![InfoBridge::NfCallIpTables(1)]))
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("bridge {}: pinning its MAC: {e}", a.bridge))?;
    }
    if !has_addr(h, br, a.gateway).await? {
        match h
            .address()
            .add(br, a.gateway.into(), a.prefix)
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            r => r.map_err(|e| format!("adding {} to {}: {e}", a.gateway, a.bridge))?,
        }
    }
    h.link()
        .set(LinkUnspec::new_with_index(br).up().build())
        .execute()
        .await
        .map_err(|e| format!("bridge up: {e}"))?;
    Ok(br)
}

/// Whether bridged IPv4 traffic can pass through netfilter (the `br_netfilter` module, loaded
/// here if it is a module and not loaded yet). Without it knode falls back to masquerading
/// Service traffic that is DNATed back onto the bridge.
pub fn bridge_netfilter() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(probe_bridge_netfilter)
}

fn probe_bridge_netfilter() -> bool {
    let probe = Path::new("/proc/sys/net/bridge");
    if !probe.exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stderr(std::process::Stdio::null())
            .status();
    }
    probe.exists()
}

/// ADD in the current (node) network namespace.
pub fn add(a: &AddArgs) -> Result<(), BridgeError> {
    let netns =
        File::open(a.netns).map_err(|e| format!("network namespace {}: {e}", a.netns.display()))?;
    let ns = &netns;
    netlink(|h| async move {
        let br = ensure_bridge(&h, a).await?;
        // A leftover of an earlier attachment of this container (a repair ADD) goes first.
        if let Some(old) = index(&h, a.host_veth).await? {
            h.link()
                .del(old)
                .execute()
                .await
                .map_err(|e| format!("removing stale {}: {e}", a.host_veth))?;
        }
        // One request: the host side on the bridge and up, its peer created directly in the
        // pod's namespace under its final name (moving a device between namespaces costs an
        // RCU grace period, tens of milliseconds).
        let peer = LinkUnspec::new_with_name(a.ifname)
            .mtu(a.mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(a.host_veth.to_string())
            .mtu(a.mtu)
            .controller(br)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link().add(veth).execute().await.map_err(|e| {
            format!(
                "creating veth {} with {} in {}: {e}",
                a.host_veth,
                a.ifname,
                a.netns.display()
            )
        })?;
        if a.hairpin {
            // A pod reaching itself through a Service: the bridge may send a frame back out
            // of the port it came in on.
            let host = index(&h, a.host_veth).await?.ok_or("veth vanished")?;
            h.link()
                .set_port(
                    LinkUnspec::new_with_index(host)
                        .set_port_kind(InfoPortKind::Bridge)
                        .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                            true,
                        )]))
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| format!("hairpin mode on {}: {e}", a.host_veth))?;
        }
        Ok(())
    })?;
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    // The pod side, configured from a thread that enters the pod's network namespace.
    let (ifname, ip, prefix, gw) = (a.ifname.to_string(), a.ip, a.prefix, a.gateway);
    in_netns(&netns, move || {
        netlink(|h| async move {
            let idx = index(&h, &ifname)
                .await?
                .ok_or("veth not in the pod namespace")?;
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
}

/// CHECK: the host veth is on the bridge, and in the pod's namespace `ifname` is up with its
/// address and the default route via the gateway. The error says what is missing.
pub fn check(a: &AddArgs) -> Result<(), BridgeError> {
    let bridge = a.bridge.to_string();
    let host_veth = a.host_veth.to_string();
    netlink(|h| async move {
        let br = index(&h, &bridge)
            .await?
            .ok_or_else(|| format!("bridge {bridge} is missing"))?;
        let veth = link(&h, &host_veth)
            .await?
            .ok_or_else(|| format!("host veth {host_veth} is missing"))?;
        if controller_of(&veth) != Some(br) {
            return Err(BridgeError(format!(
                "host veth {host_veth} is not on bridge {bridge}"
            )));
        }
        Ok(())
    })?;
    let netns =
        File::open(a.netns).map_err(|e| format!("network namespace {}: {e}", a.netns.display()))?;
    let (ifname, ip, gw) = (a.ifname.to_string(), a.ip, a.gateway);
    in_netns(&netns, move || {
        netlink(|h| async move {
            let idx = index(&h, &ifname)
                .await?
                .ok_or_else(|| format!("{ifname} is missing in the pod's namespace"))?;
            if !has_addr(&h, idx, ip).await? {
                return Err(BridgeError(format!("{ifname} does not hold {ip}")));
            }
            let mut routes = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            while let Some(r) = routes.try_next().await.map_err(|e| e.to_string())? {
                let via_gw = r.attributes.iter().any(
                    |x| matches!(x, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == gw),
                );
                if r.header.destination_prefix_length == 0 && via_gw {
                    drain(routes).await;
                    return Ok(());
                }
            }
            Err(BridgeError(format!(
                "the pod has no default route via {gw}"
            )))
        })
    })
}

/// A dummy link `name` holding `addr`/32, up (made if missing): an address of the node that
/// is no interface's own, as NodeLocal DNSCache's link is (knode's cluster DNS listens there).
/// On a kernel without the dummy driver, a bridge with no ports.
pub fn ensure_dummy(name: &str, addr: Ipv4Addr) -> Result<(), BridgeError> {
    let name = name.to_string();
    netlink(|h| async move {
        let idx = match link(&h, &name).await? {
            Some(l) if matches!(kind_of(&l), Some(InfoKind::Dummy | InfoKind::Bridge)) => {
                l.header.index
            }
            Some(_) => {
                return Err(BridgeError(format!(
                    "{name} exists and is not a dummy link"
                )))
            }
            None => {
                let made = h
                    .link()
                    .add(rtnetlink::LinkDummy::new(&name).build())
                    .execute()
                    .await;
                let made = match made {
                    // A kernel without the dummy driver: a bridge with no ports holds an
                    // address just as well.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                        h.link().add(LinkBridge::new(&name).build()).execute().await
                    }
                    r => r,
                };
                match made {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    r => r.map_err(|e| format!("creating {name}: {e}"))?,
                }
                index(&h, &name).await?.ok_or("the dummy link vanished")?
            }
        };
        if !has_addr(&h, idx, addr).await? {
            match h.address().add(idx, addr.into(), 32).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                r => r.map_err(|e| format!("adding {addr} to {name}: {e}"))?,
            }
        }
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| format!("{name} up: {e}"))?;
        Ok(())
    })
}

/// DEL in the current (node) network namespace: removes the host veth (and with it the pod
/// side). Missing is fine: DEL is idempotent, and works when the pod namespace is gone.
pub fn del(host_veth: &str) -> Result<(), BridgeError> {
    netlink(|h| async move {
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

/// GC: removes the veths on `bridge` named like knode's (`veth` + 8 hex digits) that belong
/// to no attachment in `keep` (host veth names). Returns the names removed.
pub fn gc(bridge: &str, keep: &HashSet<String>) -> Result<Vec<String>, BridgeError> {
    netlink(|h| async move {
        let Some(br) = index(&h, bridge).await? else {
            return Ok(Vec::new());
        };
        let mut stale = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(|e| e.to_string())? {
            let name = name_of(&l).unwrap_or_default();
            let ours = name.len() == 12
                && name.starts_with("veth")
                && name[4..].bytes().all(|b| b.is_ascii_hexdigit());
            if ours && controller_of(&l) == Some(br) && !keep.contains(name) {
                stale.push((l.header.index, name.to_string()));
            }
        }
        let mut removed = Vec::new();
        for (i, name) in stale {
            h.link()
                .del(i)
                .execute()
                .await
                .map_err(|e| format!("removing stale {name}: {e}"))?;
            removed.push(name);
        }
        Ok(removed)
    })
}

/// The IPv4 networks on the current namespace's interfaces (name, address/prefix), for
/// checking that the pod subnet does not overlap the node's own networks.
pub fn interface_networks() -> Result<Vec<(String, ipnet::Ipv4Net)>, BridgeError> {
    netlink(|h| async move {
        let mut names = std::collections::HashMap::new();
        let mut links = h.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(|e| e.to_string())? {
            names.insert(l.header.index, name_of(&l).unwrap_or_default().to_string());
        }
        let mut out = Vec::new();
        let mut addrs = h.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(|e| e.to_string())? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    if let Ok(net) = ipnet::Ipv4Net::new(*ip, a.header.prefix_len) {
                        let name = names.get(&a.header.index).cloned().unwrap_or_default();
                        out.push((name, net));
                    }
                }
            }
        }
        Ok(out)
    })
}
