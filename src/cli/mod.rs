//! The `knode` command line: clap and printing only, one file per verb. Only `main.rs`
//! imports it; it may import everything below it (see the README's Layout).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub mod agent;
pub mod demo;
pub mod describe;
pub mod exec;
pub mod explain;
pub mod get;
pub mod image;
pub mod local;
pub mod logs;
pub mod print;
pub mod run;
pub mod server;
pub mod top;
pub mod up;
pub mod via_api;

use image::ImageCmd;
use oci::image::PullOptions;
use oci::registry::{ClientOptions, Credentials};
use oci::spec::Platform;

#[derive(Parser)]
#[command(
    name = "knode",
    version,
    about = "A Kubernetes node in one binary, on Linux kernel primitives"
)]
struct Cli {
    /// State directory (images, snapshots).
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/knode",
        env = "KNODE_ROOT"
    )]
    root: PathBuf,
    /// Runtime directory (sockets, mounts of running things).
    #[arg(
        long,
        global = true,
        default_value = "/run/knode",
        env = "KNODE_RUN_DIR"
    )]
    run_dir: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, default_value = "warn", env = "KNODE_LOG")]
    log: String,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Registry reached over plain HTTP although it is not on loopback (repeatable).
    #[arg(long = "insecure-registry", global = true)]
    insecure: Vec<String>,
    /// Extra CA certificate (PEM) trusted for HTTPS registries (repeatable).
    #[arg(long = "registry-ca", global = true)]
    ca: Vec<PathBuf>,
    /// Resolve a registry name statically: HOST:PORT:ADDRESS (as curl --resolve; repeatable).
    #[arg(long = "registry-resolve", global = true, value_parser = parse_resolve)]
    resolve: Vec<(String, std::net::SocketAddr)>,
    /// Docker-style config.json with registry credentials [default: ~/.docker/config.json].
    #[arg(long = "auth-file", global = true, env = "REGISTRY_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Registry mirrors, rewrites, credentials and TLS settings, in k3s's registries.yaml
    /// format [default: /etc/knode/registries.yaml, when it exists].
    #[arg(long = "registry-config", global = true, env = "KNODE_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run a container from an image in the foreground on knode's own runtime, then remove
    /// it (like `docker run --rm`). Arguments after the image replace its Cmd.
    Run(run::RunCmd),
    /// Run the node agent: keep the pods of a manifests directory running (kubelet's static
    /// pods) and serve the local API on <run-dir>/knode.sock.
    Agent(agent::AgentCmd),
    /// Show CPU and memory use: knode top node | knode top pods [--containers].
    Top {
        /// node or pods.
        resource: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        #[arg(long, short = 'A')]
        all_namespaces: bool,
        /// Per container.
        #[arg(long)]
        containers: bool,
    },
    /// List resources (pods).
    Get {
        /// Resource type: pods (po), services (svc) or endpoints (ep).
        resource: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// All namespaces.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
        /// Output: wide, yaml or json.
        #[arg(long, short)]
        output: Option<String>,
    },
    /// Show a pod in detail: spec, state and events.
    Describe {
        /// Resource type: pod.
        resource: String,
        name: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Show the kernel objects behind a pod on this node: the namespaces its containers
    /// share, its veth and bridge port, its cgroup and limits, each container's overlay
    /// and layers, mounts and processes: knode explain pod/NAME [-n NS]. Or the nftables
    /// path to a service's endpoints, with live counters: knode explain svc/NAME.
    Explain {
        /// pod/NAME (its namespaces, veth, cgroup, overlay, processes) or svc/NAME (the
        /// nftables path to its endpoints, with counters)
        what: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Print a container's logs.
    Logs {
        pod: String,
        #[arg(long, short)]
        container: Option<String>,
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
        #[arg(long, short)]
        previous: bool,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        through: Through,
    },
    /// Run a command in a running container of a pod: knode exec POD [-c C] [-i] [-t] -- CMD...
    Exec {
        pod: String,
        #[arg(long, short)]
        container: Option<String>,
        /// Pass stdin to the command.
        #[arg(long, short = 'i')]
        stdin: bool,
        /// Allocate a terminal.
        #[arg(long, short)]
        tty: bool,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// Terminal sizes (`WIDTH HEIGHT` lines) to apply, read from this descriptor (the
        /// kubelet API passes a client's resizes this way).
        #[arg(long, hide = true)]
        resize_fd: Option<i32>,
        #[command(flatten)]
        through: Through,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start a one-node cluster in the background (API server, controllers, scheduler and
    /// this node with the pod network), merge a `knode` context into ~/.kube/config, and
    /// return once the node is Ready.
    Up(up::UpCmd),
    /// Stop the cluster `knode up` started and remove its pods, mounts, veths, cgroups,
    /// bridge and nftables tables (the API's objects stay in --root).
    Down(up::DownCmd),
    /// Run the Kubernetes API server (HTTPS on :6443; embedded store, or etcd with
    /// --datastore-endpoint). It writes an admin kubeconfig to <root>/server/admin.kubeconfig.
    Server(server::ServerCmd),
    /// Print the API server's admin kubeconfig.
    Kubeconfig,
    /// Print the node join token (a bootstrap token, `<id>.<secret>`) for `--token`.
    Token,
    /// Run the demo: start a local registry, push the tutorials' images
    /// built from busybox, pull one with knode through a mirror and show it; then `knode up` (in a
    /// network namespace of its own), the bootcamp tutorial's kubectl commands, and `knode down`.
    Demo {
        /// The kubectl to drive the cluster with [default: kubectl on the PATH, else
        /// /opt/knode-clients/bin/kubectl].
        #[arg(long)]
        kubectl: Option<PathBuf>,
    },
    /// Walk a tutorial at your own pace on a cluster of its own (as the demo, in a network
    /// namespace of its own): each step explained, run when you press Enter.
    Tutorial {
        /// bootcamp, guestbook or mysql (ConfigMap, Secret and hostPath); or images, to
        /// build the tutorials' images into an OCI archive (--output) or a registry (--push).
        name: String,
        /// With `images`: the OCI archive to write (for <root>/images/ or `knode image import`).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// With `images`: the registry (host:port) to push them to, under the paths the
        /// registries.yaml it prints serves the tutorials' names from.
        #[arg(long)]
        push: Option<String>,
        /// The kubectl to drive the cluster with [default: kubectl on the PATH, else
        /// /opt/knode-clients/bin/kubectl].
        #[arg(long)]
        kubectl: Option<PathBuf>,
    },
}

/// `get` and `describe` know pods only (so far).
fn pods_only(resource: &str, verb: &str) -> Result<()> {
    if ["pods", "pod", "po"].contains(&resource) {
        Ok(())
    } else {
        anyhow::bail!("unknown resource type {resource:?}: knode {verb} supports pods")
    }
}

fn parse_resolve(s: &str) -> Result<(String, std::net::SocketAddr)> {
    let bad = || {
        anyhow::anyhow!("invalid --registry-resolve {s:?}: expected HOST:PORT:ADDRESS, e.g. registry.lab:5000:192.168.56.10")
    };
    let (host, rest) = s.split_once(':').ok_or_else(bad)?;
    let (port, addr) = rest.split_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip: std::net::IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), (ip, port).into()))
}

/// How `knode logs` and `knode exec` reach the pod: through the API server (as kubectl,
/// for a pod on any node) or through this node's agent.
#[derive(clap::Args, Debug)]
struct Through {
    /// The cluster to ask (default: the one this host serves, <root>/server/admin.kubeconfig,
    /// if `knode up` or `knode server` runs here; otherwise this node's agent).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Ask this node's agent even when this host serves a cluster (the kubelet API's own
    /// use).
    #[arg(long, hide = true, conflicts_with = "kubeconfig")]
    local: bool,
}

impl Through {
    /// The kubeconfig to go through the API with, if any.
    fn kubeconfig(&self, root: &Path) -> Option<PathBuf> {
        if self.local {
            return None;
        }
        self.kubeconfig.clone().or_else(|| {
            let served = root.join("server/admin.kubeconfig");
            served.exists().then_some(served)
        })
    }
}

pub(crate) fn client_options(a: &RegistryArgs) -> Result<ClientOptions> {
    let auth = a.auth_file.clone().or_else(|| {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".docker/config.json"))
            .filter(|p| p.is_file())
    });
    let credentials = match auth {
        Some(p) => Credentials::load(&p)?,
        None => Credentials::default(),
    };
    Ok(ClientOptions {
        insecure: a.insecure.clone(),
        ca_files: a.ca.clone(),
        credentials,
        retries: 3,
        resolve: a.resolve.clone(),
        mirrors: mirrors(a.registry_config.as_deref())?,
        ..Default::default()
    })
}

/// The mirrors of `registries.yaml` (the file named, or the default one if it exists), with
/// the files it names checked now rather than at the first pull.
fn mirrors(named: Option<&Path>) -> Result<oci::mirrors::Mirrors> {
    use crate::config::registries;
    let path = match named {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(registries::DEFAULT_PATH);
            if !p.exists() {
                return Ok(Default::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the registry configuration {}", path.display()))?;
    let m = registries::parse(&text, &path)?;
    for (host, h) in &m.hosts {
        let files = h.ca_file.iter().map(|f| ("tls.ca_file", f)).chain(
            h.client_cert
                .iter()
                .flat_map(|(c, k)| [("tls.cert_file", c), ("tls.key_file", k)]),
        );
        for (field, f) in files {
            std::fs::metadata(f).with_context(|| {
                format!(
                    "{}: configs.{host}.{field}: {}",
                    path.display(),
                    f.display()
                )
            })?;
        }
    }
    Ok(m)
}

pub(crate) fn pull_options(platform: Option<&str>) -> Result<PullOptions> {
    let mut o = PullOptions::default();
    if let Some(p) = platform {
        o.platform = p.parse::<Platform>().map_err(anyhow::Error::msg)?;
    }
    Ok(o)
}

fn dispatch(cli: Cli) -> Result<()> {
    let sock = crate::node::kubelet::socket(&cli.run_dir);
    match cli.cmd {
        Cmd::Agent(a) => agent::run(a, &cli.root, &cli.run_dir, client_options(&cli.registry)?),
        Cmd::Get {
            resource,
            namespace,
            all_namespaces,
            output,
        } => {
            let ns = (!all_namespaces).then_some(namespace.as_str());
            match resource.as_str() {
                "services" | "service" | "svc" => get::get_services(&sock, ns),
                "endpoints" | "endpoint" | "ep" => get::get_endpoints(&sock, ns),
                "nodes" | "node" | "no" => get::get_nodes(&sock, output.as_deref()),
                _ => {
                    pods_only(&resource, "get")?;
                    get::get_pods(&sock, ns, output.as_deref())
                }
            }
        }
        Cmd::Describe {
            resource,
            name,
            namespace,
        } => {
            if ["nodes", "node", "no"].contains(&resource.as_str()) {
                return describe::describe_node(&sock, &name);
            }
            pods_only(&resource, "describe")?;
            describe::describe_pod(&sock, &namespace, &name)
        }
        Cmd::Top {
            resource,
            namespace,
            all_namespaces,
            containers,
        } => match resource.as_str() {
            "node" | "nodes" | "no" => top::top_node(&sock),
            "pods" | "pod" | "po" => top::top_pods(
                &sock,
                (!all_namespaces).then_some(namespace.as_str()),
                containers,
            ),
            other => {
                anyhow::bail!("unknown resource type {other:?}: knode top supports node and pods")
            }
        },
        Cmd::Explain { what, namespace } => explain::explain(&sock, &cli.root, &what, &namespace),
        Cmd::Logs {
            pod,
            container,
            follow,
            tail,
            previous,
            namespace,
            through,
        } => {
            let a = logs::LogArgs {
                namespace: &namespace,
                pod: &pod,
                container: container.as_deref(),
                follow,
                tail,
                previous,
            };
            match through.kubeconfig(&cli.root) {
                Some(k) => via_api::logs(&k, &a),
                None => logs::logs(&sock, &a),
            }
        }
        Cmd::Exec {
            pod,
            container,
            stdin,
            tty,
            namespace,
            resize_fd,
            through,
            command,
        } => {
            let a = exec::ExecArgs {
                namespace: &namespace,
                pod: &pod,
                container: container.as_deref(),
                stdin,
                tty,
                argv: command,
                resize_fd,
            };
            let code = match through.kubeconfig(&cli.root) {
                Some(k) if resize_fd.is_none() => via_api::exec(&k, &a)?,
                _ => exec::exec(&sock, &a)?,
            };
            std::process::exit(code);
        }
        Cmd::Run(a) => run::run(&cli.root, &cli.run_dir, a),
        Cmd::Server(a) => server::run(a, &cli.root),
        Cmd::Up(a) => up::up(a, &cli.root, &cli.run_dir, client_options(&cli.registry)?),
        Cmd::Down(a) => up::down(a, &cli.root, &cli.run_dir, client_options(&cli.registry)?),
        Cmd::Kubeconfig => server::kubeconfig(&cli.root),
        Cmd::Token => server::token(&cli.root),
        Cmd::Demo { kubectl } => {
            let opts = client_options(&cli.registry)?;
            demo::run(
                &cli.root,
                &cli.run_dir,
                opts,
                kubectl.as_deref(),
                demo::Walk::DEMO,
            )
        }
        Cmd::Tutorial {
            name,
            kubectl,
            output,
            push,
        } => {
            if name == "images" {
                let opts = client_options(&cli.registry)?;
                return demo::images(output.as_deref(), push.as_deref().map(|r| (r, opts)));
            }
            if output.is_some() || push.is_some() {
                anyhow::bail!("--output and --push go with `knode tutorial images`");
            }
            let walk = match name.as_str() {
                "bootcamp" => demo::Walk {
                    bootcamp: true,
                    guestbook: false,
                    mysql: false,
                    paced: true,
                },
                "guestbook" => demo::Walk {
                    bootcamp: false,
                    guestbook: true,
                    mysql: false,
                    paced: true,
                },
                "mysql" => demo::Walk {
                    bootcamp: false,
                    guestbook: false,
                    mysql: true,
                    paced: true,
                },
                other => {
                    anyhow::bail!("no tutorial {other:?}: knode tutorial bootcamp|guestbook|mysql")
                }
            };
            let opts = client_options(&cli.registry)?;
            demo::run(&cli.root, &cli.run_dir, opts, kubectl.as_deref(), walk)
        }
        Cmd::Image(cmd) => image::run(cmd, &cli.root, &cli.registry),
    }
}

/// The `knode` command line: parses, sets up logging, runs the verb, prints the error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // netlink-packet-route warns about every attribute a newer kernel sends that it does not
    // know; that is noise unless asked for.
    let directives = match cli.log.contains("netlink_packet_route") {
        true => cli.log.clone(),
        false => format!("{},netlink_packet_route=error", cli.log),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let c = c.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("knode: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
