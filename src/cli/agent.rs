//! `knode agent --manifests DIR`: the node agent, from flags to a resolved [`NodeConfig`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{CgroupConfig, NodeConfig};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CgroupsMode {
    Enabled,
    Disabled,
}

#[derive(clap::Args)]
pub struct AgentCmd {
    /// Directory of Pod, Service, ConfigMap and Secret manifests (YAML or JSON) [default
    /// with --kubeconfig: <root>/manifests].
    #[arg(long, required_unless_present_any = ["kubeconfig", "server"])]
    pub manifests: Option<PathBuf>,
    /// Where container logs go (CRI layout).
    #[arg(long, default_value = "/var/log/pods")]
    pub log_dir: PathBuf,
    /// The node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// The pod network's CNI configuration list (without it pods get loopback only).
    #[arg(long, default_value = "/etc/knode/net.d/10-knode.conflist")]
    pub cni_conf: PathBuf,
    /// Where CNI plugins other than knode's own are found.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// The Service CIDR (ClusterIPs); the pod network must not overlap it.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: ipnet::Ipv4Net,
    /// Resource limits through cgroup v2 (`disabled`: run pods without limits; the agent
    /// refuses to start without cgroup v2 otherwise).
    #[arg(long, value_enum, default_value = "enabled")]
    pub cgroups: CgroupsMode,
    /// The knode cgroup, below the cgroup2 mount.
    #[arg(long, default_value = "knode")]
    pub cgroup_root: String,
    /// pids.max of every pod (-1: unlimited).
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true)]
    pub pod_max_pids: i64,
    /// Pods run at once (the kubelet's maxPods); more are rejected with OutOfpods.
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_pods: u16,
    /// Join the API server of this kubeconfig (the admin's, or one with the server's node
    /// join token): the Node and its Lease are kept fresh every 10 s, the pods bound to it
    /// run here and their status goes back to the API.
    #[arg(long, conflicts_with = "server")]
    pub kubeconfig: Option<PathBuf>,
    /// Join the API server at this URL (`https://host:6443`) with --token: the CA comes from
    /// the server's cluster-info, trusted once the token's signature on it checks out
    /// (kubeadm's token discovery); the kubeconfig made goes to <root>/kubelet.kubeconfig.
    #[arg(long, requires = "token")]
    pub server: Option<String>,
    /// The node join token (`knode token` on the server prints it), with --server.
    #[arg(long, requires = "server", env = "KNODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The kubelet API's port (logs and exec for the API server; HTTPS, the API server's
    /// client certificate only), with --kubeconfig; 0: any free port.
    #[arg(long, default_value_t = crate::node::kubelet::server::DEFAULT_PORT)]
    pub kubelet_port: u16,
    /// How often the Node's status is posted and its Lease renewed (the kubelet's
    /// nodeStatusUpdateFrequency): `10s`.
    #[arg(long, default_value = "10s", value_parser = super::server::parse_seconds)]
    pub node_status_update_frequency: std::time::Duration,
    /// On an API server (--kubeconfig or --server): the cluster DNS address this node serves
    /// and writes into its pods' resolv.conf (the kubelet's --cluster-dns) [default: the
    /// tenth address of --service-cidr, the kube-dns Service's]; `none`: no cluster DNS, pods
    /// get the node's resolvers.
    #[arg(long, value_parser = parse_cluster_dns)]
    pub cluster_dns: Option<ClusterDnsArg>,
    /// The resolver configuration the node's pods start from (the kubelet's --resolv-conf):
    /// its nameservers are where cluster DNS forwards other names, and pods with dnsPolicy
    /// Default (or no cluster DNS) get its nameservers and search path.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
}

/// `--cluster-dns`: an address, or none.
#[derive(Clone, Copy, Debug)]
pub enum ClusterDnsArg {
    At(std::net::Ipv4Addr),
    None,
}

fn parse_cluster_dns(s: &str) -> Result<ClusterDnsArg, String> {
    if s == "none" {
        return Ok(ClusterDnsArg::None);
    }
    s.parse()
        .map(ClusterDnsArg::At)
        .map_err(|_| format!("{s:?} is not an IPv4 address or `none`"))
}

pub fn run(
    a: AgentCmd,
    root: &Path,
    run_dir: &Path,
    client: oci::registry::ClientOptions,
) -> Result<()> {
    let node_name = a.node_name.unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let kubeconfig = match (&a.server, &a.token) {
        (Some(server), Some(token)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime to join")?;
            let kc = rt.block_on(crate::client::join::kubeconfig(server, token))?;
            let path = root.join("kubelet.kubeconfig");
            std::fs::create_dir_all(root)
                .with_context(|| format!("creating {}", root.display()))?;
            crate::apiserver::pki::write_secret_file(&path, &kc)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        _ => a.kubeconfig,
    };
    let pod_max_pids = match a.pod_max_pids {
        -1 => None,
        n if n >= 1 => Some(n as u64),
        n => anyhow::bail!("invalid --pod-max-pids {n}: must be -1 (unlimited) or at least 1"),
    };
    // Cluster DNS on every node of a cluster, as the kube-dns Service's address on this
    // node (see `knode up`).
    let dns_ip = match (a.cluster_dns, &kubeconfig) {
        (_, None) | (Some(ClusterDnsArg::None), _) => None,
        (Some(ClusterDnsArg::At(ip)), Some(_)) => Some(ip),
        (None, Some(_)) => Some(super::up::cluster_dns_ip(a.service_cidr)),
    };
    if let (Some(ip), Some(kc)) = (dns_ip, &kubeconfig) {
        crate::node::network::ensure_dns_link(ip)?;
        crate::dns::server::start(kc, ip.into(), &a.resolv_conf)?;
    }
    crate::node::kubelet::run(NodeConfig {
        manifests: a.manifests.unwrap_or_else(|| root.join("manifests")),
        root: root.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
        log_dir: a.log_dir,
        node_name,
        exe: std::fs::read_link("/proc/self/exe").context("finding the knode binary")?,
        client,
        cni_conf: a.cni_conf,
        cni_bin_dir: a.cni_bin_dir,
        service_cidr: a.service_cidr,
        cgroups: CgroupConfig {
            enabled: matches!(a.cgroups, CgroupsMode::Enabled),
            root: a.cgroup_root,
            pod_max_pids,
            off_reason: None,
        },
        max_pods: a.max_pods as usize,
        kubeconfig,
        drain: None,
        kubelet_port: a.kubelet_port,
        heartbeat: a.node_status_update_frequency,
        cluster_dns: dns_ip.map(|ip| crate::api::resolv::ClusterDns {
            nameserver: ip.into(),
            domain: crate::dns::DOMAIN.into(),
        }),
        resolv_conf: a.resolv_conf,
    })?;
    Ok(())
}
