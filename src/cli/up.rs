//! `knode up` and `knode down`: a one-node cluster in one process (the API server on its
//! embedded store, the scheduler, the controllers, and an agent for this node with the pod
//! network), and its removal.
//!
//! `knode up` starts that process in the background (its own session, its output in
//! `<root>/knode.log`), waits until the API server listens and the node is Ready, merges a
//! `knode` context into the kubeconfig (as minikube and kind do), and returns. As in k3s the
//! agent reaches its server through the same client a remote agent uses (over HTTPS, with the
//! admin's credentials, which also let it read its pods' Secrets). `knode down` stops the
//! process and tears everything it made down: pods, mounts, veths and addresses (through the
//! agent's own teardown), the node's cgroups, the `knode0` bridge and knode's nftables tables.
//! The API's objects stay in `<root>`: the next `knode up` finds them again, like a reboot.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{CgroupConfig, NodeConfig};

#[derive(clap::Args)]
pub struct UpCmd {
    /// Where the API server listens (HTTPS).
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// Write the admin kubeconfig to this file instead of merging a `knode` context into
    /// $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    pub write_kubeconfig: Option<PathBuf>,
    /// The node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Another address the serving certificate must cover (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<std::net::IpAddr>,
    /// Where container logs go (CRI layout).
    #[arg(long, default_value = "/var/log/pods")]
    pub log_dir: PathBuf,
    /// How long to wait for the node to be Ready, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// The resolver configuration the node's pods start from (the kubelet's --resolv-conf):
    /// its nameservers are where cluster DNS forwards other names, and pods with dnsPolicy
    /// Default (or no cluster DNS) get its nameservers and search path.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Run in the foreground (what `knode up` starts in the background).
    #[arg(long, hide = true)]
    pub foreground: bool,
    /// A descriptor to write one byte to once the API server listens.
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
}

const SERVICE_CIDR: &str = "10.96.0.0/12";

fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("up.pid")
}

fn log_file(root: &Path) -> PathBuf {
    root.join("knode.log")
}

fn node_name(a: &UpCmd) -> String {
    a.node_name.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
}

/// The pid of a running `knode up` of this run dir.
fn running(run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(run_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.contains(&&b"--foreground"[..]).then_some(pid)
}

pub fn up(
    a: UpCmd,
    root: &Path,
    run_dir: &Path,
    client: oci::registry::ClientOptions,
) -> Result<()> {
    if a.foreground {
        return foreground(a, root, run_dir, client);
    }
    let started = Instant::now();
    let name = node_name(&a);
    let mut child = None;
    match running(run_dir) {
        Some(pid) => println!("knode is already up (pid {pid})"),
        None => {
            std::fs::create_dir_all(root)
                .with_context(|| format!("creating {}", root.display()))?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode_0600()
                .open(log_file(root))
                .with_context(|| format!("opening {}", log_file(root).display()))?;
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .context("making a pipe")?;
            let mut cmd = std::process::Command::new(
                std::fs::read_link("/proc/self/exe").context("finding the knode binary")?,
            );
            cmd.args(std::env::args_os().skip(1))
                .args(["--foreground", "--ready-fd", "3"])
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let wfd = w.as_raw_fd();
            // SAFETY: between fork and exec only async-signal-safe calls: setsid, and dup2 of
            // a descriptor this process owns onto 3 (dup2 clears close-on-exec on the copy).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setsid() < 0 || libc::dup2(wfd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let c = cmd.spawn().context("starting knode in the background")?;
            drop(w);
            println!(
                "Starting knode (pid {}): API server, controllers, scheduler and node {name}; log: {}",
                c.id(),
                log_file(root).display()
            );
            // One byte when the server listens; nothing (end of file) if it failed.
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 1];
            if !matches!(f.read(&mut b), Ok(1)) {
                bail!(
                    "knode stopped before its API server listened:\n{}",
                    tail(&log_file(root))
                );
            }
            child = Some(c);
        }
    }
    let admin = root.join("server/admin.kubeconfig");
    let ready = wait_ready(&admin, &name, Duration::from_secs(a.timeout));
    if let Err(e) = ready {
        if let Some(mut c) = child {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("knode stopped ({status}):\n{}", tail(&log_file(root)));
            }
        }
        return Err(e.context(format!("see {}", log_file(root).display())));
    }
    let target = kubeconfig_target(a.write_kubeconfig.as_deref())?;
    if a.write_kubeconfig.is_some() {
        let text = std::fs::read_to_string(&admin)?;
        write_private(&target, &text)?;
    } else {
        merge_kubeconfig(&admin, &target)?;
    }
    println!(
        "Node {name} is Ready ({:.2} s). kubectl context \"knode\" is in {}.\nTry: kubectl get nodes",
        started.elapsed().as_secs_f64(),
        target.display()
    );
    Ok(())
}

/// The last lines of a log.
fn tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits (a watch) until the Node is Ready.
fn wait_ready(kubeconfig: &Path, name: &str, timeout: Duration) -> Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = crate::client::from_kubeconfig(kubeconfig).await?;
        let nodes: kube::Api<Node> = kube::Api::all(client);
        let ready = |n: Option<&Node>| {
            n.and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        tokio::time::timeout(
            timeout,
            kube::runtime::wait::await_condition(nodes, name, ready),
        )
        .await
        .with_context(|| format!("node {name} was not Ready within {} s", timeout.as_secs()))?
        .context("watching the node")?;
        Ok(())
    })
}

fn kubeconfig_target(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").context("neither KUBECONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

/// Writes `text` to `p` (mode 0600) through a temporary file and a rename.
fn write_private(p: &Path, text: &str) -> Result<()> {
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = p.with_extension("knode-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// Puts the admin kubeconfig's cluster, user and context (all named for knode) into the
/// kubeconfig at `target`, replacing earlier ones of the same names, and makes its context
/// the current one. Everything else in the file is kept.
fn merge_kubeconfig(admin: &Path, target: &Path) -> Result<()> {
    use serde_yaml::Value;
    let ours: Value = serde_yaml::from_str(&std::fs::read_to_string(admin)?)?;
    let mut doc: Value = match std::fs::read_to_string(target) {
        Ok(t) if !t.trim().is_empty() => serde_yaml::from_str(&t)
            .with_context(|| format!("{} is not a kubeconfig", target.display()))?,
        Ok(_) => Value::Null,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    merge(&mut doc, &ours)?;
    write_private(target, &serde_yaml::to_string(&doc)?)
}

fn merge(doc: &mut serde_yaml::Value, ours: &serde_yaml::Value) -> Result<()> {
    use serde_yaml::{Mapping, Value};
    if doc.is_null() {
        *doc = Value::Mapping(Mapping::from_iter([
            ("apiVersion".into(), "v1".into()),
            ("kind".into(), "Config".into()),
        ]));
    }
    let m = doc
        .as_mapping_mut()
        .context("the kubeconfig is not a mapping")?;
    for list in ["clusters", "users", "contexts"] {
        let new: Vec<Value> = ours[list].as_sequence().cloned().unwrap_or_default();
        let names: Vec<&Value> = new.iter().map(|e| &e["name"]).collect();
        let entry = m
            .entry(list.into())
            .or_insert_with(|| Value::Sequence(vec![]));
        if entry.is_null() {
            *entry = Value::Sequence(vec![]);
        }
        let seq = entry
            .as_sequence_mut()
            .with_context(|| format!("the kubeconfig's {list} is not a list"))?;
        seq.retain(|e| !names.contains(&&e["name"]));
        seq.extend(new.iter().cloned());
    }
    m.insert("current-context".into(), ours["current-context"].clone());
    Ok(())
}

/// The cluster in this process: the API server on a thread of its own, then the agent.
fn foreground(
    a: UpCmd,
    root: &Path,
    run_dir: &Path,
    client: oci::registry::ClientOptions,
) -> Result<()> {
    for d in [root, run_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_private(&pid_file(run_dir), &format!("{}\n", std::process::id()))?;
    let conf = network_conf(root)?;
    let service_cidr: ipnet::Ipv4Net = SERVICE_CIDR.parse().expect("a CIDR");
    // The node's address is the API server's too: the certificate covers it, and the
    // `kubernetes` Service leads pods to it.
    let mut tls_san = a.tls_san.clone();
    if let Ok(ip) = crate::node::kubelet::node::node_ip().parse::<std::net::IpAddr>() {
        if !ip.is_loopback() && !tls_san.contains(&ip) {
            tls_san.insert(0, ip);
        }
    }
    let cfg = super::server::config(
        super::server::ServerCmd {
            listen: a.listen,
            datastore_endpoint: vec![],
            write_kubeconfig: None,
            tls_san,
            service_cidr,
            compaction_interval: 300,
            disable_scheduler: false,
            disable_controllers: false,
            node_monitor_grace_period: std::time::Duration::from_secs(40),
        },
        root,
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            if let Err(e) = super::server::serve(cfg, true, Some(Default::default()), Some(tx)) {
                tracing::error!(error = format!("{e:#}"), "the API server stopped");
                eprintln!("knode: error: the API server stopped: {e:#}");
                std::process::exit(1);
            }
        })?;
    rx.recv().context("the API server did not start")?;
    if let Some(fd) = a.ready_fd {
        // SAFETY: the descriptor was handed to this process by its parent for this byte
        // alone; it is owned (and closed) here once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = rustix::io::write(&fd, b"1");
    }
    // Cluster DNS, served by this process on the node (NodeLocal DNSCache's way: the
    // kube-dns Service's address on a dummy link, so no DNAT and no conntrack race).
    let dns = crate::api::resolv::ClusterDns {
        nameserver: cluster_dns_ip(service_cidr).into(),
        domain: crate::dns::DOMAIN.into(),
    };
    crate::node::network::ensure_dns_link(cluster_dns_ip(service_cidr))?;
    crate::dns::server::start(
        &root.join("server/admin.kubeconfig"),
        cluster_dns_ip(service_cidr).into(),
        &a.resolv_conf,
    )?;
    let cgroups = crate::node::cgroup::probe().err().map(|e| e.to_string());
    let mut cfg = node_config(&a, root, run_dir, client, conf, cgroups, None)?;
    cfg.cluster_dns = Some(dns);
    crate::node::kubelet::run(cfg)?;
    Ok(())
}

/// The kube-dns Service's ClusterIP: the tenth address of the service CIDR (10.96.0.10), as
/// kubeadm and k3s have it.
pub fn cluster_dns_ip(service_cidr: ipnet::Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(service_cidr.network()) + 10)
}

fn node_config(
    a: &UpCmd,
    root: &Path,
    run_dir: &Path,
    client: oci::registry::ClientOptions,
    cni_conf: PathBuf,
    cgroups_off: Option<String>,
    drain: Option<u64>,
) -> Result<NodeConfig> {
    Ok(NodeConfig {
        manifests: root.join("manifests"),
        root: root.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
        log_dir: a.log_dir.clone(),
        node_name: node_name(a),
        exe: std::fs::read_link("/proc/self/exe").context("finding the knode binary")?,
        client,
        cni_conf,
        cni_bin_dir: "/usr/lib/cni".into(),
        service_cidr: SERVICE_CIDR.parse().expect("a CIDR"),
        cgroups: CgroupConfig {
            enabled: cgroups_off.is_none(),
            root: "knode".into(),
            pod_max_pids: Some(4096),
            off_reason: cgroups_off,
        },
        max_pods: 110,
        kubeconfig: Some(root.join("server/admin.kubeconfig")),
        drain,
        kubelet_port: crate::node::kubelet::server::DEFAULT_PORT,
        heartbeat: crate::node::kubelet::register::HEARTBEAT,
        cluster_dns: None,
        resolv_conf: a.resolv_conf.clone(),
    })
}

/// The pod network's configuration (knode's bridge, addresses recorded under `<root>`).
fn network_conf(root: &Path) -> Result<PathBuf> {
    let p = root.join("net.d/10-knode.conflist");
    let text = include_str!("../../cni/10-knode.conflist").replace(
        "/var/lib/knode/cni/networks",
        &root.join("cni/networks").display().to_string(),
    );
    write_private(&p, &text)?;
    Ok(p)
}

#[derive(clap::Args)]
pub struct DownCmd {
    /// Where container logs went (as given to `knode up`).
    #[arg(long, default_value = "/var/log/pods")]
    pub log_dir: PathBuf,
    /// Seconds each pod's containers get after SIGTERM before SIGKILL (at most their own
    /// grace period; `kind delete` and k3s-killall do not wait at all).
    #[arg(long, default_value_t = 2)]
    pub grace_period: u64,
}

/// Stops `knode up` and removes what it made.
pub fn down(
    a: DownCmd,
    root: &Path,
    run_dir: &Path,
    client: oci::registry::ClientOptions,
) -> Result<()> {
    if let Some(pid) = running(run_dir) {
        stop(pid)?;
        println!("Stopped knode (pid {pid})");
    }
    let _ = std::fs::remove_file(pid_file(run_dir));
    let pods = std::fs::read_dir(run_dir.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0);
    let conf = root.join("net.d/10-knode.conflist");
    let up = UpCmd {
        listen: "127.0.0.1:6443".parse().expect("an address"),
        write_kubeconfig: None,
        node_name: None,
        tls_san: vec![],
        log_dir: a.log_dir,
        timeout: 0,
        foreground: false,
        resolv_conf: "/etc/resolv.conf".into(),
        ready_fd: None,
    };
    if run_dir.exists() {
        let cgroups = crate::node::cgroup::probe().err().map(|e| e.to_string());
        crate::node::kubelet::run(node_config(
            &up,
            root,
            run_dir,
            client,
            conf,
            cgroups,
            Some(a.grace_period),
        )?)?;
    }
    // The pod network's bridge and the nftables tables of the masquerade and the proxy.
    crate::node::network::remove_bridge("knode0")?;
    crate::node::network::remove_bridge(crate::node::network::DNS_LINK)?;
    crate::node::proxy::remove_tables(&["knode", crate::node::proxy::nft::DEFAULT_TABLE])?;
    println!(
        "Removed {pods} pods, the knode0 bridge, the {} link and knode's nftables tables",
        crate::node::network::DNS_LINK
    );
    Ok(())
}

/// SIGTERM, then SIGKILL after 30 s; returns once the process is gone (its pidfd says so).
fn stop(pid: i32) -> Result<()> {
    use rustix::process::{pidfd_open, Pid, PidfdFlags, Signal};
    let p = Pid::from_raw(pid).context("a pid")?;
    let fd = pidfd_open(p, PidfdFlags::empty()).context("opening the process")?;
    let wait = |secs: i64| {
        let mut polls = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(
            &mut polls,
            Some(&rustix::event::Timespec {
                tv_sec: secs,
                tv_nsec: 0,
            }),
        )
        .unwrap_or(0)
            > 0
    };
    rustix::process::pidfd_send_signal(&fd, Signal::TERM).context("stopping knode")?;
    if !wait(30) {
        rustix::process::pidfd_send_signal(&fd, Signal::KILL).context("killing knode")?;
        wait(30);
    }
    Ok(())
}

/// `OpenOptions` with mode 0600 for new files.
trait Private {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Private for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: knode\n  cluster: {server: 'https://127.0.0.1:6443'}\nusers:\n- name: knode-admin\n  user: {token: t}\ncontexts:\n- name: knode\n  context: {cluster: knode, user: knode-admin}\ncurrent-context: knode\n";

    #[test]
    fn merging_keeps_other_contexts_and_replaces_an_older_knode() {
        let ours: serde_yaml::Value = serde_yaml::from_str(ADMIN).unwrap();
        let mut doc: serde_yaml::Value = serde_yaml::from_str(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: 'https://x'}\n- name: knode\n  cluster: {server: 'https://old'}\nusers: []\ncontexts:\n- name: other\n  context: {cluster: other, user: u}\ncurrent-context: other\n",
        )
        .unwrap();
        merge(&mut doc, &ours).unwrap();
        let names = |l: &str| -> Vec<String> {
            doc[l]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names("clusters"), ["other", "knode"]);
        assert_eq!(names("contexts"), ["other", "knode"]);
        assert_eq!(names("users"), ["knode-admin"]);
        assert_eq!(
            doc["clusters"][1]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(doc["current-context"], "knode");
    }

    #[test]
    fn merging_into_nothing_makes_a_kubeconfig() {
        let ours: serde_yaml::Value = serde_yaml::from_str(ADMIN).unwrap();
        let mut doc = serde_yaml::Value::Null;
        merge(&mut doc, &ours).unwrap();
        assert_eq!(doc["kind"], "Config");
        assert_eq!(doc["current-context"], "knode");
        assert_eq!(doc["users"][0]["name"], "knode-admin");
    }

    #[test]
    fn a_kubeconfig_that_is_not_a_mapping_is_refused() {
        let ours: serde_yaml::Value = serde_yaml::from_str(ADMIN).unwrap();
        let mut doc: serde_yaml::Value = serde_yaml::from_str("[1, 2]").unwrap();
        assert!(merge(&mut doc, &ours).is_err());
    }
}
