//! knode: a Kubernetes node in one binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use knode::image_cli::{self, CliProgress};
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
struct RegistryArgs {
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
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CgroupsMode {
    Enabled,
    Disabled,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run a container from an image in the foreground on knode's own runtime, then remove
    /// it (like `docker run --rm`). Arguments after the image replace its Cmd.
    Run(knode::container::RunArgs),
    /// Run the node agent: keep the pods of a manifests directory running (kubelet's static
    /// pods) and serve the local API on <run-dir>/knode.sock.
    Agent {
        /// Directory of Pod, Service, ConfigMap and Secret manifests (YAML or JSON).
        #[arg(long)]
        manifests: PathBuf,
        /// Where container logs go (CRI layout).
        #[arg(long, default_value = "/var/log/pods")]
        log_dir: PathBuf,
        /// The node's name [default: the hostname].
        #[arg(long)]
        node_name: Option<String>,
        /// The pod network's CNI configuration list (without it pods get loopback only).
        #[arg(long, default_value = "/etc/knode/net.d/10-knode.conflist")]
        cni_conf: PathBuf,
        /// Where CNI plugins other than knode's own are found.
        #[arg(long, default_value = "/usr/lib/cni")]
        cni_bin_dir: PathBuf,
        /// The Service CIDR (ClusterIPs); the pod network must not overlap it.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: ipnet::Ipv4Net,
        /// Resource limits through cgroup v2 (`disabled`: run pods without limits; the agent
        /// refuses to start without cgroup v2 otherwise).
        #[arg(long, value_enum, default_value = "enabled")]
        cgroups: CgroupsMode,
        /// The knode cgroup, below the cgroup2 mount.
        #[arg(long, default_value = "knode")]
        cgroup_root: String,
        /// pids.max of every pod (-1: unlimited).
        #[arg(long, default_value_t = 4096, allow_negative_numbers = true)]
        pod_max_pids: i64,
        /// Pods run at once (the kubelet's maxPods); more are rejected with OutOfpods.
        #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u16).range(1..))]
        max_pods: u16,
    },
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
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Internal: hold a pod's shared PID namespace (run by the agent).
    #[command(name = "__pause", hide = true)]
    Pause { dir: PathBuf },
    /// Internal: fork container shims on the agent's request.
    #[command(name = "__shim-launcher", hide = true)]
    ShimLauncher,
    /// Internal: supervise one container (run by the agent).
    #[command(name = "__shim", hide = true)]
    Shim { state: PathBuf, report_fd: i32 },
    /// Run the demo: start a local registry (unless --registry), push the demo image built
    /// from busybox, pull it with knode and show it.
    Demo {
        /// Use this registry (host:port) instead of starting one.
        #[arg(long)]
        registry: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pull an image (docker-style reference: busybox, host:port/repo:tag, repo@sha256:...).
    Pull {
        reference: String,
        /// os/arch[/variant] to select from a multi-platform image.
        #[arg(long)]
        platform: Option<String>,
        /// Print only the image ID.
        #[arg(long, short)]
        quiet: bool,
        /// Skip the syncfs before publishing layers (faster; a power loss may then damage
        /// a stored layer).
        #[arg(long)]
        no_sync: bool,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only image IDs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show an image's record and config as JSON.
    Inspect { image: String },
    /// Remove images by name or ID, then what nothing else uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove content and snapshots no image references, and leftovers of interrupted pulls.
    Prune,
    /// Import an OCI layout directory, or an OCI/docker archive (tar, tar.gz).
    Import {
        path: PathBuf,
        /// Name for the image when the archive has none.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        platform: Option<String>,
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

fn parse_resolve(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    let bad = || {
        format!("invalid --registry-resolve {s:?}: expected HOST:PORT:ADDRESS, e.g. registry.lab:5000:192.168.56.10")
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

fn client_options(a: &RegistryArgs) -> Result<ClientOptions> {
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
    })
}

fn pull_options(platform: Option<&str>) -> Result<PullOptions> {
    let mut o = PullOptions::default();
    if let Some(p) = platform {
        o.platform = p.parse::<Platform>().map_err(anyhow::Error::msg)?;
    }
    Ok(o)
}

fn run(cli: Cli) -> Result<()> {
    let sock = knode::kubelet::socket(&cli.run_dir);
    match cli.cmd {
        Cmd::Agent {
            manifests,
            log_dir,
            node_name,
            cni_conf,
            cni_bin_dir,
            service_cidr,
            cgroups,
            cgroup_root,
            pod_max_pids,
            max_pods,
        } => {
            let network = if cni_conf.exists() {
                let n = knode::network::Network::load(&cni_conf, &cni_bin_dir, Some(service_cidr))?;
                for p in n.missing_plugins() {
                    tracing::warn!(plugin = %p, conf = %cni_conf.display(), "CNI plugin not installed: pods cannot get a network until it is");
                }
                Some(n)
            } else {
                tracing::warn!(conf = %cni_conf.display(), "no CNI configuration: pods get a loopback-only network");
                None
            };
            let node_name = node_name.unwrap_or_else(|| {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            });
            knode::kubelet::run(knode::kubelet::AgentConfig {
                max_pods: max_pods as usize,
                service_cidr,
                manifests,
                root: cli.root.clone(),
                run_dir: cli.run_dir.clone(),
                log_dir,
                node_name,
                exe: std::fs::read_link("/proc/self/exe").context("finding the knode binary")?,
                client: client_options(&cli.registry)?,
                network,
                cgroups: knode::kubelet::CgroupConfig {
                    enabled: matches!(cgroups, CgroupsMode::Enabled),
                    root: cgroup_root,
                    pod_max_pids: match pod_max_pids {
                        -1 => None,
                        n if n >= 1 => Some(n as u64),
                        n => anyhow::bail!(
                            "invalid --pod-max-pids {n}: must be -1 (unlimited) or at least 1"
                        ),
                    },
                },
            })
        }
        Cmd::Get {
            resource,
            namespace,
            all_namespaces,
            output,
        } => {
            let ns = (!all_namespaces).then_some(namespace.as_str());
            match resource.as_str() {
                "services" | "service" | "svc" => knode::pod_cli::get_services(&sock, ns),
                "endpoints" | "endpoint" | "ep" => knode::pod_cli::get_endpoints(&sock, ns),
                "nodes" | "node" | "no" => knode::node_cli::get_nodes(&sock, output.as_deref()),
                _ => {
                    pods_only(&resource, "get")?;
                    knode::pod_cli::get_pods(&sock, ns, output.as_deref())
                }
            }
        }
        Cmd::Describe {
            resource,
            name,
            namespace,
        } => {
            if ["nodes", "node", "no"].contains(&resource.as_str()) {
                return knode::node_cli::describe_node(&sock, &name);
            }
            pods_only(&resource, "describe")?;
            knode::pod_cli::describe_pod(&sock, &namespace, &name)
        }
        Cmd::Top {
            resource,
            namespace,
            all_namespaces,
            containers,
        } => match resource.as_str() {
            "node" | "nodes" | "no" => knode::node_cli::top_node(&sock),
            "pods" | "pod" | "po" => knode::node_cli::top_pods(
                &sock,
                (!all_namespaces).then_some(namespace.as_str()),
                containers,
            ),
            other => {
                anyhow::bail!("unknown resource type {other:?}: knode top supports node and pods")
            }
        },
        Cmd::Logs {
            pod,
            container,
            follow,
            tail,
            previous,
            namespace,
        } => knode::pod_cli::logs(
            &sock,
            &knode::pod_cli::LogArgs {
                namespace: &namespace,
                pod: &pod,
                container: container.as_deref(),
                follow,
                tail,
                previous,
            },
        ),
        Cmd::Exec {
            pod,
            container,
            stdin,
            tty,
            namespace,
            command,
        } => {
            let code = knode::pod_cli::exec(
                &sock,
                &knode::pod_cli::ExecArgs {
                    namespace: &namespace,
                    pod: &pod,
                    container: container.as_deref(),
                    stdin,
                    tty,
                    argv: command,
                },
            )?;
            std::process::exit(code);
        }
        Cmd::Pause { dir } => knode::sandbox::pause_main(&dir),
        Cmd::ShimLauncher => knode::shim::launcher_main(),
        Cmd::Shim { state, report_fd } => knode::shim::main(&state, report_fd),
        Cmd::Run(a) => {
            let code = knode::container::run(&cli.root, &cli.run_dir, &a)?;
            std::process::exit(code);
        }
        Cmd::Demo { registry } => {
            let opts = client_options(&cli.registry)?;
            knode::demo::run(&cli.root, &cli.run_dir, registry.as_deref(), opts)
        }
        Cmd::Image(cmd) => {
            let store = image_cli::store_at(&cli.root)?;
            match cmd {
                ImageCmd::Pull {
                    reference,
                    platform,
                    quiet,
                    no_sync,
                } => {
                    let mut opts = pull_options(platform.as_deref())?;
                    opts.sync = !no_sync;
                    let client = client_options(&cli.registry)?;
                    let t = std::time::Instant::now();
                    let rep = store.pull(&reference, client, &opts, &CliProgress::new())?;
                    if quiet {
                        println!("{}", rep.image.config);
                    } else {
                        println!(
                            "{} {} ({} layers: {} fetched, {} already present; {:.2}s)",
                            rep.image.name,
                            rep.image.id().short(),
                            rep.image.layers.len(),
                            rep.layers_fetched,
                            rep.layers_reused,
                            t.elapsed().as_secs_f64()
                        );
                    }
                }
                ImageCmd::Ls { quiet } => {
                    let list = store.list()?;
                    if quiet {
                        for i in list {
                            println!("{}", i.config);
                        }
                    } else {
                        image_cli::print_list(&list);
                    }
                }
                ImageCmd::Inspect { image } => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&image_cli::inspect_json(&store, &image)?)?
                    );
                }
                ImageCmd::Rm { images } => {
                    let mut failed = None;
                    for i in images {
                        match store.remove(&i) {
                            Ok((names, rep)) => {
                                for n in names {
                                    println!("Untagged: {n}");
                                }
                                if rep.snapshots > 0 {
                                    println!(
                                        "Deleted: {} layer snapshot(s), {}",
                                        rep.snapshots,
                                        image_cli::human(rep.bytes)
                                    );
                                }
                            }
                            Err(e) => {
                                eprintln!("error: {e}");
                                failed = Some(e);
                            }
                        }
                    }
                    if let Some(e) = failed {
                        return Err(e).context("some images were not removed");
                    }
                }
                ImageCmd::Prune => {
                    let rep = store.prune()?;
                    println!(
                        "Deleted {} blob(s), {} layer snapshot(s) ({}), {} leftover(s)",
                        rep.blobs,
                        rep.snapshots,
                        image_cli::human(rep.bytes),
                        rep.temp
                    );
                }
                ImageCmd::Import {
                    path,
                    name,
                    platform,
                } => {
                    let opts = pull_options(platform.as_deref())?;
                    for rec in store.import(&path, name.as_deref(), &opts, &CliProgress::new())? {
                        println!("Imported {} {}", rec.name, rec.id().short());
                    }
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
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
        .init();
    match run(cli) {
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
