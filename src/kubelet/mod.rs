//! The node agent (kubelet's static-pod mode): keeps the node's pods equal to the manifests
//! directory and serves the local API the CLI uses.
//!
//! The reconciler reloads the directory whenever inotify reports a change (and every few
//! seconds as a safety net), starts a worker thread for each new pod UID and stops the
//! workers of pods whose manifests went away or changed. Containers outlive the agent: on
//! SIGTERM or a crash it just exits, and the next agent adopts what is running.

pub mod api;
pub mod manifests;
pub mod node;
pub mod pod;
pub mod services;
pub mod volumes;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};

use pod::{NodeContext, PodView, Worker};

pub struct AgentConfig {
    pub manifests: PathBuf,
    pub root: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub node_name: String,
    pub exe: PathBuf,
    pub client: oci::registry::ClientOptions,
    /// The pod network (none: pods get a loopback-only network namespace).
    pub network: Option<crate::network::Network>,
    /// Where ClusterIPs are allocated.
    pub service_cidr: ipnet::Ipv4Net,
    pub cgroups: CgroupConfig,
}

/// Resource limits: on (the default, cgroup v2 required) or explicitly off.
#[derive(Clone, Debug)]
pub struct CgroupConfig {
    pub enabled: bool,
    /// The knode cgroup, relative to the cgroup2 mount.
    pub root: String,
    /// pids.max of every pod (none: unlimited).
    pub pod_max_pids: Option<u64>,
}

/// Sets up the cgroup manager, or explains why the agent cannot start.
fn cgroups(c: &CgroupConfig) -> Result<(Option<Arc<crate::cgroup::Cgroups>>, String)> {
    if !c.enabled {
        let note = "started with --cgroups=disabled: pods run without resource limits";
        tracing::warn!("{note}");
        return Ok((None, note.into()));
    }
    let mount = crate::cgroup::probe()
        .map_err(|e| anyhow::anyhow!("{e}.\nTo fix it: {}.", crate::cgroup::FIX))?;
    let cgs = crate::cgroup::Cgroups::setup(
        Box::new(crate::cgroup::fs::RealFs {
            mount: mount.clone(),
        }),
        &c.root,
        c.pod_max_pids,
    )
    .with_context(|| format!("setting up the cgroups under {}", mount.display()))?;
    let note = format!(
        "cgroup v2 at {}, pods under {}",
        mount.display(),
        mount.join(cgs.root()).display()
    );
    Ok((Some(Arc::new(cgs)), note))
}

/// What the API reads.
#[derive(Default)]
pub struct NodeState {
    pub pods: BTreeMap<String, Arc<Mutex<PodView>>>,
    pub manifest_errors: Vec<String>,
    pub log_dir: PathBuf,
    /// The knode binary and run dir, for `/run` (a command in a container).
    pub exe: PathBuf,
    pub run_dir: PathBuf,
    /// Services with their endpoints.
    pub services: Vec<crate::service::ListedService>,
    /// The node: name, start, resource limits (for /node and /stats/summary).
    pub node: node::NodeInfo,
}

struct Running {
    stop: Sender<()>,
    wake: OwnedFd,
    thread: std::thread::JoinHandle<()>,
    view: Arc<Mutex<PodView>>,
}

fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, b"x");
}

pub fn run(cfg: AgentConfig) -> Result<()> {
    for d in [
        &cfg.root,
        &cfg.run_dir,
        &cfg.log_dir,
        &cfg.run_dir.join("pods"),
    ] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock =
        oci::fsutil::Lock::try_exclusive(&cfg.run_dir.join("agent.lock"))?.with_context(|| {
            format!(
                "another agent is running with --run-dir {}",
                cfg.run_dir.display()
            )
        })?;
    let (cgroups, cgroup_note) = cgroups(&cfg.cgroups)?;
    let cluster_cidr = cfg.network.as_ref().and_then(|n| n.cluster_cidr());
    let mut services = services::Services::new(&cfg.root, cfg.service_cidr, cluster_cidr)?;
    // Workers tell the loop when a pod's address or readiness changes (endpoints follow).
    let (changed_r, changed_w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let ctx = Arc::new(NodeContext {
        changed: changed_w,
        exe: cfg.exe.clone(),
        store: crate::image_cli::store_at(&cfg.root)?,
        root: cfg.root.clone(),
        run_dir: cfg.run_dir.clone(),
        log_dir: cfg.log_dir.clone(),
        node_name: cfg.node_name.clone(),
        client: cfg.client.clone(),
        objects: Default::default(),
        network: cfg.network,
        cgroups: cgroups.clone(),
    });
    let state = Arc::new(RwLock::new(NodeState {
        log_dir: cfg.log_dir.clone(),
        exe: cfg.exe.clone(),
        run_dir: cfg.run_dir.clone(),
        node: node::NodeInfo::new(&cfg.node_name, cgroups, cgroup_note),
        ..Default::default()
    }));
    if let Err(e) = crate::shim::Launcher::install(&cfg.exe) {
        tracing::warn!(error = %e, "no shim launcher: containers start through exec");
    }
    let sock = cfg.run_dir.join("knode.sock");
    api::serve(sock.clone(), state.clone())?;
    tracing::info!(socket = %sock.display(), manifests = %cfg.manifests.display(), "agent started");

    let inotify = rustix::fs::inotify::init(
        rustix::fs::inotify::CreateFlags::CLOEXEC | rustix::fs::inotify::CreateFlags::NONBLOCK,
    )?;
    std::fs::create_dir_all(&cfg.manifests)
        .with_context(|| format!("creating {}", cfg.manifests.display()))?;
    use rustix::fs::inotify::WatchFlags as W;
    rustix::fs::inotify::add_watch(
        &inotify,
        &cfg.manifests,
        // Finished writes and renames only: a file being written is not yet a manifest.
        W::CLOSE_WRITE | W::DELETE | W::MOVED_FROM | W::MOVED_TO | W::DELETE_SELF,
    )
    .with_context(|| format!("watching {}", cfg.manifests.display()))?;

    let mut workers: BTreeMap<String, Running> = BTreeMap::new();
    let mut stopping: Vec<Running> = Vec::new();
    let mut first = true;
    let mut loader = manifests::Loader::default();
    let started = std::time::Instant::now();
    let mut last_sample = started;
    loop {
        let m = loader.load(&cfg.manifests);
        for e in &m.errors {
            if !state.read().expect("state").manifest_errors.contains(e) {
                tracing::warn!(error = %e, "manifest");
            }
        }
        // Services first: containers started below see the service environment variables.
        let pods: Vec<crate::service::endpoints::PodInfo> = workers
            .values()
            .map(|w| {
                let v = w.view.lock().expect("view");
                crate::service::endpoints::PodInfo::new(
                    &v.manifest.pod,
                    &v.manifest.namespace,
                    &v.manifest.name,
                    v.pod_ip.as_deref().and_then(|i| i.parse().ok()),
                    v.ready(),
                )
            })
            .collect();
        // Right after a start, the proxy waits (up to a few seconds) until every pod has been
        // adopted and published: a sync with half the endpoints would reject new connections
        // to services whose pods are running fine.
        let settled = started.elapsed() > Duration::from_secs(3)
            || m.pods.iter().all(|p| {
                workers
                    .get(&p.uid)
                    .is_some_and(|w| w.view.lock().expect("view").published)
            });
        let (states, views, service_errors) = services.sync(&m.services, &pods, settled);
        for e in &service_errors {
            if !state.read().expect("state").manifest_errors.contains(e) {
                tracing::warn!(error = %e, "service");
            }
        }
        let mut m = m;
        m.errors.extend(service_errors);
        let listed = states
            .into_iter()
            .map(|s| crate::service::ListedService {
                created: services.created(&s.service.namespace, &s.service.name),
                state: s,
            })
            .collect();
        state.write().expect("state").services = listed;
        *ctx.objects.write().expect("objects") = volumes::Objects {
            config_maps: m.config_maps.clone(),
            secrets: m.secrets.clone(),
            services: views,
        };
        let wanted: BTreeMap<String, manifests::PodManifest> =
            m.pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        if first {
            // Pods left by a previous agent whose manifests are gone: tear them down too.
            for e in std::fs::read_dir(cfg.run_dir.join("pods"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let uid = e.file_name().to_string_lossy().into_owned();
                if !wanted.contains_key(&uid) {
                    tracing::info!(uid, "removing a pod whose manifest is gone");
                    orphan_teardown(&ctx, &uid);
                }
            }
            // Pod cgroups with neither a pod nor a pod directory (a crash mid-teardown).
            if let Some(cgs) = &ctx.cgroups {
                let keep: Vec<String> = wanted.keys().cloned().collect();
                for uid in cgs.orphans(&keep) {
                    tracing::info!(uid, "removing the cgroup of a pod that is gone");
                    if let Err(e) = cgs.remove_pod(&uid) {
                        tracing::warn!(uid, error = %e, "removing the pod's cgroup");
                    }
                }
            }
            // Addresses held for pods that no longer exist go back to the pool.
            if let Some(n) = &ctx.network {
                let valid: Vec<String> = wanted.keys().cloned().collect();
                if let Err(e) = n.gc(&valid) {
                    tracing::warn!(error = %e, "CNI GC");
                }
            }
            first = false;
        }
        for uid in workers.keys().cloned().collect::<Vec<_>>() {
            if !wanted.contains_key(&uid) {
                let w = workers.remove(&uid).expect("present");
                let _ = w.stop.send(());
                wake(&w.wake);
                stopping.push(w);
            }
        }
        for (uid, pm) in &wanted {
            // Not while the same UID is still being torn down: its directories are in use.
            if workers.contains_key(uid)
                || stopping
                    .iter()
                    .any(|w| w.view.lock().expect("view").manifest.uid == *uid)
            {
                continue;
            }
            let view = Arc::new(Mutex::new(PodView {
                manifest: pm.clone(),
                phase: "Pending".into(),
                reason: None,
                message: None,
                containers: vec![],
                created: chrono::Utc::now(),
                started: None,
                events: vec![],
                deleting: false,
                node_name: ctx.node_name.clone(),
                pod_ip: None,
                published: false,
                cgroup: None,
            }));
            let (tx, rx) = channel();
            let (wr, ww) = rustix::pipe::pipe_with(
                rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
            )?;
            let worker = Worker::new(ctx.clone(), view.clone());
            let thread = std::thread::Builder::new()
                .name(format!("pod-{}", pm.name))
                .spawn(move || worker.run(rx, wr))?;
            workers.insert(
                uid.clone(),
                Running {
                    stop: tx,
                    wake: ww,
                    thread,
                    view,
                },
            );
        }
        stopping.retain(|w| !w.thread.is_finished());
        {
            let mut s = state.write().expect("state");
            s.manifest_errors = m.errors;
            s.pods = workers
                .values()
                .chain(stopping.iter())
                .map(|w| {
                    let v = w.view.lock().expect("view");
                    (
                        format!(
                            "{}/{}/{}",
                            v.manifest.namespace, v.manifest.name, v.manifest.uid
                        ),
                        w.view.clone(),
                    )
                })
                .collect();
        }
        // A CPU sample of the node and every pod every few seconds, so usage rates cover the
        // last few seconds whenever they are asked for (not on every pass: a burst of
        // manifest changes must not wait behind file reads for every pod).
        if last_sample.elapsed() >= Duration::from_secs(2) {
            last_sample = std::time::Instant::now();
            let st = state.read().expect("state");
            let views: Vec<PodView> = st
                .pods
                .values()
                .map(|v| v.lock().expect("view").clone())
                .collect();
            let _ = node::summary(&st.node, &views);
        }
        // Wait for a change in the directory (or a worker to finish stopping).
        let mut p = [
            rustix::event::PollFd::new(&inotify, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&changed_r, rustix::event::PollFlags::IN),
        ];
        let t = if stopping.is_empty() { 5 } else { 1 };
        let _ = rustix::event::poll(
            &mut p,
            Some(&rustix::event::Timespec {
                tv_sec: t,
                tv_nsec: 0,
            }),
        );
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut r = rustix::fs::inotify::Reader::new(&inotify, &mut buf);
        while r.next().is_ok() {}
        let mut junk = [0u8; 256];
        while matches!(rustix::io::read(&changed_r, &mut junk), Ok(n) if n > 0) {}
    }
}

/// Tears down a pod directory no manifest wants any more (left by an earlier agent).
fn orphan_teardown(ctx: &Arc<NodeContext>, uid: &str) {
    let dir = ctx.run_dir.join("pods").join(uid);
    if let Some(n) = &ctx.network {
        let prev = crate::network::Attachment::load(&dir).map(|a| a.result);
        if let Err(e) = n.detach(uid, &dir.join("sandbox/ns/net"), prev.as_ref()) {
            tracing::warn!(uid, error = %e, "CNI DEL");
        }
    }
    for c in std::fs::read_dir(dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            let state = a.path().join("state");
            ctx.store.release(&crate::container::lease_name(&a.path()));
            if let Some(pid) = crate::shim::pid(&state) {
                let pc = crate::container::PodContainer {
                    state,
                    rootfs: a.path().join("rootfs"),
                    pid,
                };
                pod::stop_container(&pc, Duration::from_secs(30));
            }
        }
    }
    if let Some(cgs) = &ctx.cgroups {
        if let Err(e) = cgs.remove_pod(uid) {
            tracing::warn!(uid, error = %e, "removing the pod's cgroup");
        }
    }
    pod::unmount_attempts(&dir);
    let disk = ctx.root.join("pods").join(uid);
    volumes::teardown(&dir);
    volumes::teardown(&disk);
    if dir.join("sandbox").exists() {
        let _ = crate::sandbox::Sandbox::open(&dir.join("sandbox")).remove();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&disk);
    for e in std::fs::read_dir(&ctx.log_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .ends_with(&format!("_{uid}"))
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The socket path for a run dir.
pub fn socket(run_dir: &Path) -> PathBuf {
    run_dir.join("knode.sock")
}
