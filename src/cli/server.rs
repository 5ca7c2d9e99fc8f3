//! `knode server` (the API server) and `knode kubeconfig` (its admin kubeconfig).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::ServerConfig;

#[derive(clap::Args)]
pub struct ServerCmd {
    /// Where the API server listens (HTTPS).
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// etcd endpoints (http://HOST:2379, comma-separated) instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    pub datastore_endpoint: Vec<String>,
    /// Also write the admin kubeconfig here (it is always in <root>/server/admin.kubeconfig).
    #[arg(long)]
    pub write_kubeconfig: Option<PathBuf>,
    /// Another address the serving certificate must cover (repeatable; 127.0.0.1, the listen
    /// address and the kubernetes Service's IP always are).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<IpAddr>,
    /// The Service CIDR (its first address is the kubernetes Service's).
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: ipnet::Ipv4Net,
    /// How often to compact the store's history, in seconds (kube-apiserver's
    /// --etcd-compaction-interval; watches can resume within about this long); 0: never.
    #[arg(long = "etcd-compaction-interval", default_value_t = 300)]
    pub compaction_interval: u64,
    /// Do not run the scheduler (pods stay unbound unless something else binds them).
    #[arg(long)]
    pub disable_scheduler: bool,
    /// Do not run the controllers (ReplicaSets and ReplicationControllers make no pods).
    #[arg(long)]
    pub disable_controllers: bool,
    /// How long a node's agent may stay quiet before the node is marked Unknown and tainted
    /// unreachable (kube-controller-manager's flag): `40s`, `2m`.
    #[arg(long, default_value = "40s", value_parser = parse_seconds)]
    pub node_monitor_grace_period: std::time::Duration,
}

/// `40s`, `2m` or `40` (seconds).
pub(crate) fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    match n.parse::<u64>() {
        Ok(n) if n > 0 => Ok(std::time::Duration::from_secs(n * unit)),
        _ => Err(format!(
            "invalid duration {s:?}: expected seconds like 40s or minutes like 2m"
        )),
    }
}

pub fn run(a: ServerCmd, root: &Path) -> Result<()> {
    let (scheduler, controllers) = (!a.disable_scheduler, !a.disable_controllers);
    let opts = crate::controllers::Options {
        node_monitor_grace: a.node_monitor_grace_period,
        root_ca: None,
    };
    serve(
        config(a, root)?,
        scheduler,
        controllers.then_some(opts),
        None,
    )
}

/// The server's configuration from its flags.
pub(crate) fn config(a: ServerCmd, root: &Path) -> Result<ServerConfig> {
    let mut addresses = a.tls_san;
    if !a.listen.ip().is_unspecified() {
        addresses.push(a.listen.ip());
    }
    let service_ip = a
        .service_cidr
        .hosts()
        .next()
        .context("the service CIDR has no address")?;
    Ok(ServerConfig {
        listen: a.listen,
        root: root.to_path_buf(),
        datastore: a.datastore_endpoint,
        write_kubeconfig: a.write_kubeconfig,
        addresses,
        service_ip,
        service_cidr: a.service_cidr,
        compaction_interval: std::time::Duration::from_secs(a.compaction_interval),
    })
}

/// Runs the API server, with the scheduler and controllers unless they are off, on a
/// runtime of its own until it fails; `ready` hears when it listens.
pub(crate) fn serve(
    cfg: ServerConfig,
    scheduler: bool,
    controllers: Option<crate::controllers::Options>,
    ready: Option<std::sync::mpsc::Sender<()>>,
) -> Result<()> {
    // The server's one runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Store reads run on blocking threads; a few suffice, and each thread costs memory.
        .max_blocking_threads(16)
        .thread_name("knode-server")
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    let kubeconfig = cfg.root.join("server/admin.kubeconfig");
    let ca_path = cfg.root.join("server/tls/ca.crt");
    rt.block_on(async move {
        let (tx, listening) = tokio::sync::oneshot::channel();
        // The control loops reach the server as any client does, once it listens.
        tokio::spawn(async move {
            if listening.await.is_err() {
                return;
            }
            if let Some(r) = ready {
                let _ = r.send(());
            }
            if !scheduler && controllers.is_none() {
                return;
            }
            match crate::client::from_kubeconfig(&kubeconfig).await {
                Ok(client) => {
                    // One watch and one copy of each kind for all the loops.
                    let client = crate::client::Informers::new(client);
                    if scheduler {
                        tokio::spawn(crate::scheduler::run(client.clone()));
                    }
                    if let Some(mut opts) = controllers {
                        if opts.root_ca.is_none() {
                            opts.root_ca = std::fs::read_to_string(ca_path).ok();
                        }
                        tokio::spawn(crate::controllers::run(client, opts));
                    }
                }
                Err(e) => tracing::error!(error = %e, "the control loops cannot reach the server"),
            }
        });
        crate::apiserver::serve(cfg, Some(tx)).await
    })?;
    Ok(())
}

/// Prints the node join token.
pub fn token(root: &Path) -> Result<()> {
    let dir = root.join("server");
    let t = crate::apiserver::auth::node_token(&dir).with_context(|| {
        format!(
            "no node token in {} (has `knode server` run with this --root?)",
            dir.display()
        )
    })?;
    println!("{t}");
    Ok(())
}

/// Prints the admin kubeconfig.
pub fn kubeconfig(root: &Path) -> Result<()> {
    let p = root.join("server/admin.kubeconfig");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} (has `knode server` run with this --root?)",
            p.display()
        )
    })?;
    print!("{text}");
    Ok(())
}
