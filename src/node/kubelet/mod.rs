//! The node agent (kubelet's static-pod mode): keeps the node's pods equal to the manifests
//! directory and serves the local API the CLI uses.
//!
//! The reconciler reloads the directory whenever inotify reports a change (and every few
//! seconds as a safety net), starts a worker thread for each new pod UID and stops the
//! workers of pods whose manifests went away or changed. Containers outlive the agent: on
//! SIGTERM or a crash it just exits, and the next agent adopts what is running.
//!
//! Hardening (see the README's security section): an invalid pod gets no worker and nothing
//! is built from its names; at most `--max-pods` pods run (the kubelet's admission, 110 by
//! default), the others fail with `OutOfpods`; the state roots are root's only; after a
//! crash the agent publishes what it adopts at once and tears the pods whose manifests are
//! gone down in the background, in parallel, within each one's recorded grace period;
//! running out of descriptors or threads delays a pod, never ends the agent.

pub mod api;
pub mod cri;
pub mod manifests;
pub mod node;
pub mod pod;
pub mod portforward;
pub mod probe;
pub mod register;
pub mod remote;
pub mod server;
pub mod source;
pub mod spdy;
pub mod volumes;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::node::error::{Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;

use crate::config::{CgroupConfig, NodeConfig};
use crate::node::safefs::Beneath;
use pod::{NodeContext, PodView, Worker};

/// Sets up the cgroup manager, or explains why the agent cannot start.
fn cgroups(
    c: &CgroupConfig,
    quiet: bool,
) -> Result<(Option<Arc<crate::node::cgroup::Cgroups>>, String)> {
    if !c.enabled {
        let note = format!(
            "{}: pods run without resource limits",
            c.off_reason
                .as_deref()
                .unwrap_or("started with --cgroups=disabled")
        );
        if !quiet {
            tracing::warn!("{note}");
        }
        return Ok((None, note));
    }
    let mount = crate::node::cgroup::probe().map_err(|e| {
        NodeError::failed(format!("{e}.\nTo fix it: {}.", crate::node::cgroup::FIX))
    })?;
    let cgs = crate::node::cgroup::Cgroups::setup(
        Box::new(crate::node::cgroup::fs::RealFs {
            mount: mount.clone(),
        }),
        &c.root,
        c.pod_max_pids,
    )
    .with_ctx(|| format!("setting up the cgroups under {}", mount.display()))?;
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
    pub services: Vec<crate::api::service::ListedService>,
    /// The node: name, start, resource limits (for /node and /stats/summary).
    pub node: node::NodeInfo,
    /// The sync loop has taken in the manifests directory (the static pods are known).
    pub loaded: bool,
}

/// A pod the agent knows: with a worker thread, or (invalid or not admitted) only a status.
struct Running {
    worker: Option<(Sender<()>, OwnedFd, std::thread::JoinHandle<()>)>,
    view: Arc<Mutex<PodView>>,
}

impl Running {
    fn finished(&self) -> bool {
        self.worker.as_ref().is_none_or(|(_, _, t)| t.is_finished())
    }
}

/// Removes the local-path directories (`pvc-<uid>_<namespace>_<name>`) in `dir` whose volume
/// (`pvc-<uid>`) no longer exists: it was deleted (reclaim policy Delete). Directories of
/// another shape are never touched.
fn remove_released_volumes(dir: &std::path::Path, volumes: &std::collections::BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(volume) = local_path_volume(&name) else {
            continue;
        };
        if volumes.contains(volume) {
            continue;
        }
        let p = dir.join(&name);
        match crate::node::safefs::Beneath::open_existing(dir).and_then(|b| b.remove_all(&[&name]))
        {
            Ok(()) => {
                tracing::info!(path = %p.display(), "removed the directory of a deleted volume")
            }
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "removing a deleted volume's directory")
            }
        }
    }
}

/// The volume a local-path directory belongs to: `pvc-<uid>` of `pvc-<uid>_<ns>_<name>`, if
/// the name has that shape (a UUID, then two DNS names).
fn local_path_volume(dir: &str) -> Option<&str> {
    let (volume, rest) = dir.split_once('_')?;
    let uid = volume.strip_prefix("pvc-")?;
    let (ns, name) = rest.split_once('_')?;
    let uuid = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    (uuid
        && crate::api::validation::is_dns_label(ns)
        && crate::api::validation::is_dns_subdomain(name))
    .then_some(volume)
}

/// Raises the soft limit on open files to the hard one (a node runs many pods, each with
/// descriptors for its containers); the hard limit is left alone.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "raising the open files limit");
        }
    }
}

/// Gives freed memory back to the system (glibc keeps it otherwise: a large ConfigMap that
/// went away would stay in the agent's RSS).
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes an integer and only touches the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn new_view(ctx: &NodeContext, pm: Arc<manifests::PodManifest>) -> PodView {
    PodView {
        manifest: pm,
        phase: crate::api::pod::PodPhase::Pending,
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
        event_seq: 0,
    }
}

/// A pod that never runs: failed with `reason` and `message`, and an event saying why.
fn failed_view(
    ctx: &NodeContext,
    pm: Arc<manifests::PodManifest>,
    reason: &str,
    event: &str,
    message: String,
    event_message: String,
) -> Running {
    let mut v = new_view(ctx, pm);
    v.phase = crate::api::pod::PodPhase::Failed;
    v.reason = Some(reason.into());
    v.message = Some(message);
    v.published = true;
    v.event("Warning", event, event_message);
    Running {
        worker: None,
        view: Arc::new(Mutex::new(v)),
    }
}

/// Starts a pod's worker thread.
fn spawn_worker(ctx: &Arc<NodeContext>, view: Arc<Mutex<PodView>>) -> Result<Running> {
    let name = view.lock().expect("view").manifest.name.clone();
    let (tx, rx) = channel();
    let (wr, ww) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let worker = Worker::new(ctx.clone(), view.clone())?;
    let thread = std::thread::Builder::new()
        .name(format!("pod-{}", name.chars().take(11).collect::<String>()))
        .spawn(move || worker.run(rx, wr))?;
    Ok(Running {
        worker: Some((tx, ww, thread)),
        view,
    })
}

fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, b"x");
}

pub fn run(cfg: NodeConfig) -> Result<()> {
    raise_nofile();
    // One tokio runtime for the agent: its API, and the pod network's netlink calls.
    cni::bridge::use_runtime(crate::node::rt::handle()?);
    let network = if cfg.cni_conf.exists() {
        let n = crate::node::network::Network::load(
            &cfg.cni_conf,
            &cfg.cni_bin_dir,
            Some(cfg.service_cidr),
        )?;
        for p in n.missing_plugins() {
            tracing::warn!(plugin = %p, conf = %cfg.cni_conf.display(), "CNI plugin not installed: pods cannot get a network until it is");
        }
        Some(n)
    } else {
        tracing::warn!(conf = %cfg.cni_conf.display(), "no CNI configuration: pods get a loopback-only network");
        None
    };
    // The state roots are the node's own: root's only, even if an older knode made them
    // world-readable. The log directory may be shared (/var/log/pods): made 0750 if missing,
    // its pod directories are 0750 and its files 0640 either way.
    for d in [&cfg.root, &cfg.run_dir] {
        std::fs::create_dir_all(d).with_ctx(|| format!("creating {}", d.display()))?;
        crate::node::safefs::set_mode(d, 0o700)?;
    }
    if !cfg.log_dir.exists() {
        std::fs::create_dir_all(&cfg.log_dir)
            .with_ctx(|| format!("creating {}", cfg.log_dir.display()))?;
        crate::node::safefs::set_mode(&cfg.log_dir, 0o750)?;
    }
    let run_root = Beneath::open(&cfg.run_dir, 0o700)?;
    run_root.create_dir_all(&["pods"], 0o700)?;
    let _lock =
        oci::fsutil::Lock::try_exclusive(&cfg.run_dir.join("agent.lock"))?.with_ctx(|| {
            format!(
                "another agent is running with --run-dir {}",
                cfg.run_dir.display()
            )
        })?;
    let (cgroups, cgroup_note) = cgroups(&cfg.cgroups, cfg.drain.is_some())?;
    let cluster_cidr = network.as_ref().and_then(|n| n.cluster_cidr());
    let mut services =
        crate::node::proxy::sync::Services::new(&cfg.root, cfg.service_cidr, cluster_cidr)?;
    if cfg.cluster_dns.is_some() {
        // This node answers the kube-dns Service's address itself.
        services.leave_out(crate::node::proxy::sync::KUBE_DNS);
    }
    // Workers tell the loop when a pod's address or readiness changes (endpoints follow).
    let (changed_r, changed_w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let store = Arc::new(crate::node::images::store_at(&cfg.root)?);
    // Image archives dropped in <root>/images/ go in before any pod needs them (airgap).
    let pre = crate::node::images::preload(&store, &cfg.root);
    if !pre.imported.is_empty() || !pre.refused.is_empty() {
        tracing::info!(
            imported = pre.imported.len(),
            refused = pre.refused.len(),
            unchanged = pre.unchanged,
            "image archives preloaded"
        );
    }
    let ctx = Arc::new(NodeContext {
        changed: changed_w,
        images: Arc::new(cri::NodeImages {
            store: store.clone(),
            client: cfg.client.clone(),
        }),
        runtime: Arc::new(cri::NodeRuntime {
            exe: cfg.exe.clone(),
            store,
            cluster_dns: cfg.cluster_dns.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
        }),
        clock: Arc::new(cri::SystemClock),
        run: run_root,
        state: Beneath::open(&cfg.root, 0o700)?,
        logs: Beneath::open(&cfg.log_dir, 0o750)?,
        root: cfg.root.clone(),
        run_dir: cfg.run_dir.clone(),
        log_dir: cfg.log_dir.clone(),
        node_name: cfg.node_name.clone(),
        objects: Default::default(),
        network: network.map(|n| Arc::new(cri::CniNetwork(n)) as Arc<dyn cri::PodNetwork>),
        cgroups: cgroups.clone(),
        prober: Arc::new(cri::NodeProber(probe::ExecVia {
            exe: cfg.exe.clone(),
            run_dir: cfg.run_dir.clone(),
        })),
    });
    let state = Arc::new(RwLock::new(NodeState {
        log_dir: cfg.log_dir.clone(),
        exe: cfg.exe.clone(),
        run_dir: cfg.run_dir.clone(),
        node: node::NodeInfo {
            max_pods: cfg.max_pods as u64,
            storage_dir: Some(cfg.root.join("storage")),
            ..node::NodeInfo::new(&cfg.node_name, cgroups, cgroup_note)
        },
        ..Default::default()
    }));
    if let Err(e) = crate::node::shim::Launcher::install(&cfg.exe) {
        tracing::warn!(error = %e, "no shim launcher: containers start through exec");
    }
    let sock = cfg.run_dir.join("knode.sock");
    api::serve(sock.clone(), state.clone())?;
    // On an API server: the node registers, its pods come from the API and their statuses
    // go back to it.
    let published = Arc::new(tokio::sync::Notify::new());
    let api: Option<Arc<source::ApiSource>> = match cfg.kubeconfig.clone() {
        _ if cfg.drain.is_some() => None,
        None => None,
        Some(kc) => {
            let rt = crate::node::rt::handle()?;
            let client = rt
                .block_on(crate::client::from_kubeconfig(&kc))
                .map_err(|e| NodeError::failed(format!("cannot reach the API server: {e}")))?;
            // The kubelet API, for logs and exec through the API server.
            match source::cluster_ca(&kc)
                .and_then(|ca| server::serve(cfg.kubelet_port, &cfg.node_name, &ca, state.clone()))
            {
                Ok(port) => state.write().expect("state").node.kubelet_port = Some(port),
                Err(e) => {
                    tracing::error!(error = %e, "no kubelet API: kubectl logs and exec cannot reach this node's pods")
                }
            }
            let (st, name) = (state.clone(), cfg.node_name.clone());
            rt.spawn(register::heartbeat(client.clone(), st, name, cfg.heartbeat));
            let wake = changed_w_api(&ctx)?;
            let src =
                Arc::new(rt.block_on(source::ApiSource::start(&client, &cfg.node_name, wake)));
            rt.spawn(source::publish(
                client,
                src.clone(),
                state.clone(),
                cfg.run_dir.clone(),
                published.clone(),
            ));
            Some(src)
        }
    };
    tracing::info!(socket = %sock.display(), manifests = %cfg.manifests.display(), "agent started");

    let inotify = rustix::fs::inotify::init(
        rustix::fs::inotify::CreateFlags::CLOEXEC | rustix::fs::inotify::CreateFlags::NONBLOCK,
    )?;
    std::fs::create_dir_all(&cfg.manifests)
        .with_ctx(|| format!("creating {}", cfg.manifests.display()))?;
    use rustix::fs::inotify::WatchFlags as W;
    rustix::fs::inotify::add_watch(
        &inotify,
        &cfg.manifests,
        // Finished writes and renames, and new symlinks (a symlink is made whole, a file is
        // not: a file being written is not yet a manifest).
        W::CLOSE_WRITE | W::DELETE | W::MOVED_FROM | W::MOVED_TO | W::DELETE_SELF | W::CREATE,
    )
    .with_ctx(|| format!("watching {}", cfg.manifests.display()))?;

    let mut workers: BTreeMap<String, Running> = BTreeMap::new();
    let mut stopping: Vec<Running> = Vec::new();
    // Pods a previous agent left without a manifest, being torn down in the background.
    let mut orphans: Vec<(String, std::thread::JoinHandle<()>)> = Vec::new();
    // When a pod directory whose teardown failed may be tried again.
    let mut orphan_retry: BTreeMap<String, std::time::Instant> = BTreeMap::new();
    let mut first = true;
    let mut loader = manifests::Loader::default();
    let started = std::time::Instant::now();
    let mut last_sample = started;
    loop {
        // Something to try again soon (a worker that could not start for lack of resources).
        let mut retry = false;
        let mut m = if cfg.drain.is_some() {
            manifests::Manifests::default()
        } else {
            loader.load(&cfg.manifests)
        };
        let mut api_deleting = BTreeMap::new();
        // Whether the API's pods are known, read before the snapshot: a snapshot taken just
        // before the first list came in must not count as complete (its pods' directories
        // would look like orphans and be torn down).
        let mut known = true;
        if let Some(src) = &api {
            known = src.synced();
            let (from_api, deleting) = src.snapshot();
            m.extend(from_api);
            api_deleting = deleting;
        }
        for e in &m.errors {
            if !state.read().expect("state").manifest_errors.contains(e) {
                tracing::warn!(error = %e, "manifest");
            }
        }
        // Services first: containers started below see the service environment variables.
        let pods: Vec<crate::api::service::endpoints::PodInfo> = workers
            .values()
            .filter(|w| w.worker.is_some())
            .map(|w| {
                let v = w.view.lock().expect("view");
                crate::api::service::endpoints::PodInfo::new(
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
        let (states, views, service_errors) =
            services.sync(&m.services, &pods, &m.endpoints, settled);
        for e in &service_errors {
            if !state.read().expect("state").manifest_errors.contains(e) {
                tracing::warn!(error = %e, "service");
            }
        }
        m.errors.extend(service_errors);
        let listed = states
            .into_iter()
            .map(|s| crate::api::service::ListedService {
                created: services.created(&s.service.namespace, &s.service.name),
                state: s,
            })
            .collect();
        state.write().expect("state").services = listed;
        *ctx.objects.write().expect("objects") = Arc::new(volumes::Objects {
            config_maps: std::mem::take(&mut m.config_maps),
            secrets: std::mem::take(&mut m.secrets),
            services: views,
            tokens: m.tokens.take(),
            claims: std::mem::take(&mut m.claims),
            storage_dir: Some(cfg.root.join("storage")),
        });
        if let Some(names) = m.volume_names.take() {
            remove_released_volumes(&cfg.root.join("storage"), &names);
        }
        let wanted: BTreeMap<String, Arc<manifests::PodManifest>> = std::mem::take(&mut m.pods)
            .into_iter()
            .map(|p| (p.uid.clone(), Arc::new(p)))
            .collect();
        // Until the API's pods are known, a pod directory may be one of theirs: none is
        // removed and no address released yet.
        // (`known`: read with the snapshot, above.)
        // UIDs whose directories are in use by a stopping worker.
        let stopping_uids: std::collections::BTreeSet<String> = stopping
            .iter()
            .map(|w| w.view.lock().expect("view").manifest.uid.clone())
            .collect();
        // Pod directories no pod owns: a previous agent's whose manifests are gone (at
        // start), or a teardown cut short (out of descriptors, say). They are torn down in
        // the background, all at once, each within what is left of its grace period, while
        // this agent serves the pods it adopts.
        for e in std::fs::read_dir(cfg.run_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|_| known)
        {
            let uid = e.file_name().to_string_lossy().into_owned();
            if wanted.contains_key(&uid)
                || workers.contains_key(&uid)
                || stopping_uids.contains(&uid)
                || orphans.iter().any(|(u, _)| *u == uid)
                || orphan_retry
                    .get(&uid)
                    .is_some_and(|t| *t > std::time::Instant::now())
                || crate::node::safefs::check_name(&uid).is_err()
            {
                continue;
            }
            tracing::info!(uid, "removing a pod whose manifest is gone");
            orphan_retry.insert(
                uid.clone(),
                std::time::Instant::now() + Duration::from_secs(5),
            );
            let (c, u, cap) = (ctx.clone(), uid.clone(), cfg.drain);
            match std::thread::Builder::new()
                .name("orphan".into())
                .spawn(move || orphan_teardown(&c, &u, cap))
            {
                Ok(t) => orphans.push((uid, t)),
                Err(e) => {
                    tracing::warn!(uid, error = %e, "no thread to remove a pod: trying again soon");
                    retry = true;
                }
            }
        }
        orphan_retry.retain(|u, _| cfg.run_dir.join("pods").join(u).exists());
        if first && known {
            // Pod cgroups with neither a pod nor a pod directory (a crash mid-teardown).
            if let Some(cgs) = &ctx.cgroups {
                let keep: Vec<String> = wanted
                    .keys()
                    .chain(orphans.iter().map(|(u, _)| u))
                    .cloned()
                    .collect();
                for uid in cgs.orphans(&keep) {
                    tracing::info!(uid, "removing the cgroup of a pod that is gone");
                    if let Err(e) = cgs.remove_pod(&uid) {
                        tracing::warn!(uid, error = %e, "removing the pod's cgroup");
                    }
                }
            }
            // Addresses held for pods that no longer exist go back to the pool (orphans
            // release theirs as they go).
            if let Some(n) = &ctx.network {
                let valid: Vec<String> = wanted
                    .keys()
                    .chain(orphans.iter().map(|(u, _)| u))
                    .cloned()
                    .collect();
                if let Err(e) = n.gc(&valid) {
                    tracing::warn!(error = %e, "CNI GC");
                }
            }
            first = false;
        }
        for uid in workers.keys().cloned().collect::<Vec<_>>() {
            if !wanted.contains_key(&uid) && !m.finished.contains(&uid) {
                let w = workers.remove(&uid).expect("present");
                // Deleted through the API: the worker stops within the deletion's grace.
                if let Some(pm) = api_deleting.get(&uid) {
                    w.view.lock().expect("view").manifest = pm.clone();
                }
                if let Some((stop, wake_fd, _)) = &w.worker {
                    let _ = stop.send(());
                    wake(wake_fd);
                    stopping.push(w);
                }
            }
        }
        orphans.retain(|(_, t)| !t.is_finished());
        let mut admitted = workers.values().filter(|w| w.worker.is_some()).count();
        for (uid, pm) in &wanted {
            // Not while the same UID is still being torn down: its directories are in use.
            if workers.contains_key(uid)
                || stopping_uids.contains(uid)
                || orphans.iter().any(|(u, _)| u == uid)
            {
                continue;
            }
            if let Some(why) = &pm.invalid {
                // Nothing is built from an invalid pod: no worker, no directory, no path.
                workers.insert(
                    uid.clone(),
                    failed_view(
                        &ctx,
                        pm.clone(),
                        "InvalidPod",
                        "FailedValidation",
                        why.clone(),
                        why.clone(),
                    ),
                );
                continue;
            }
            if admitted >= cfg.max_pods {
                // The kubelet's admission: the pod is rejected for good (until its manifest
                // changes), not queued.
                let msg = format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {admitted}, capacity: {}",
                    cfg.max_pods
                );
                workers.insert(
                    uid.clone(),
                    failed_view(
                        &ctx,
                        pm.clone(),
                        "OutOfpods",
                        "OutOfpods",
                        format!("Pod was rejected: {msg}"),
                        msg,
                    ),
                );
                continue;
            }
            let view = Arc::new(Mutex::new(new_view(&ctx, pm.clone())));
            match spawn_worker(&ctx, view) {
                Ok(r) => {
                    workers.insert(uid.clone(), r);
                    admitted += 1;
                }
                Err(e) => {
                    // Out of descriptors or threads: the pod waits, the agent goes on.
                    tracing::warn!(pod = %pm.name, error = %e, "starting a pod worker");
                    retry = true;
                }
            }
        }
        stopping.retain(|w| !w.finished());
        {
            let mut s = state.write().expect("state");
            s.manifest_errors = m.errors;
            s.loaded = true;
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
        if loader.changed() {
            release_memory();
        }
        published.notify_one();
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
        if cfg.drain.is_some()
            && workers.is_empty()
            && stopping.is_empty()
            && orphans.is_empty()
            && !retry
            && std::fs::read_dir(cfg.run_dir.join("pods"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true)
        {
            if let Some(cgs) = &ctx.cgroups {
                cgs.remove(cgs.root())
                    .with_ctx(|| format!("removing the cgroup {}", cgs.root()))?;
            }
            return Ok(());
        }
        if cfg.drain.is_some() && started.elapsed() > Duration::from_secs(180) {
            return Err(NodeError::failed(format!(
                "pods still not torn down after 3 minutes: {}",
                cfg.run_dir.join("pods").display()
            )));
        }
        // Wait for a change in the directory (or a worker to finish stopping).
        let t = if retry || !stopping.is_empty() || !orphans.is_empty() || !orphan_retry.is_empty()
        {
            1
        } else {
            5
        };
        wait_for_change(&inotify, &cfg.manifests, &changed_r, t);
    }
}

/// Sleeps until the manifests directory changes in a way that matters, a worker reports, or
/// `secs` pass. A new regular file alone does not count (it is still being written; its
/// CLOSE_WRITE will); a new symlink does.
fn wait_for_change(inotify: &OwnedFd, dir: &Path, changed: &OwnedFd, secs: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs as u64);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = [
            rustix::event::PollFd::new(inotify, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(changed, rustix::event::PollFlags::IN),
        ];
        let n = rustix::event::poll(
            &mut p,
            Some(&rustix::event::Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            }),
        )
        .unwrap_or(0);
        let mut junk = [0u8; 256];
        let mut relevant = false;
        while matches!(rustix::io::read(changed, &mut junk), Ok(n) if n > 0) {
            relevant = true;
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut r = rustix::fs::inotify::Reader::new(inotify, &mut buf);
        while let Ok(e) = r.next() {
            use rustix::fs::inotify::ReadFlags as R;
            let created_file = e.events().contains(R::CREATE)
                && e.file_name().is_some_and(|n| {
                    std::fs::symlink_metadata(dir.join(n.to_string_lossy().as_ref()))
                        .is_ok_and(|m| !m.file_type().is_symlink())
                });
            relevant |= !created_file;
        }
        if relevant || n == 0 || left.is_zero() {
            return;
        }
    }
}

/// Tears down a pod directory no manifest wants any more (left by an earlier agent), with
/// the grace period its pod had (what is left of it, if its deletion had begun).
fn orphan_teardown(ctx: &NodeContext, uid: &str, grace_cap: Option<u64>) {
    let Ok(dir) = ctx.run.join(&["pods", uid]) else {
        return;
    };
    let meta = pod::PodMeta::load(&dir).unwrap_or_else(|| pod::PodMeta {
        namespace: String::new(),
        name: String::new(),
        uid: uid.to_string(),
        created: chrono::Utc::now(),
        grace_seconds: 30,
        deleting_since: None,
        started: None,
    });
    let mut meta = meta;
    if let Some(cap) = grace_cap {
        meta.grace_seconds = meta.grace_seconds.min(cap);
    }
    // Its log directory: by name, or (recorded by an older agent) by the UID it ends with.
    let log_name = if meta.name.is_empty() {
        std::fs::read_dir(&ctx.log_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(&format!("_{uid}")))
    } else {
        Some(crate::node::logs::pod_dir_name(
            &meta.namespace,
            &meta.name,
            uid,
        ))
    };
    let log_name = log_name.unwrap_or_else(|| format!("_{uid}"));
    pod::teardown_pod(ctx, uid, &log_name, &meta, vec![]);
}

/// Another writer of the loop's wake pipe (for the API source).
fn changed_w_api(ctx: &NodeContext) -> Result<OwnedFd> {
    Ok(ctx.changed.try_clone()?)
}

/// The socket path for a run dir.
pub fn socket(run_dir: &Path) -> PathBuf {
    run_dir.join("knode.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_the_local_path_shape_belong_to_a_volume() {
        assert_eq!(
            local_path_volume("pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0_default_www-web-0"),
            Some("pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0")
        );
        for other in [
            "pvc-x_default_data",
            "pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0",
            "pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0_Default_data",
            "data",
            "pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0_default_",
        ] {
            assert_eq!(local_path_volume(other), None, "{other}");
        }
        // A directory whose volume exists stays; one whose volume is gone goes; others stay.
        let d = tempfile::tempdir().unwrap();
        let keep = "pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0_default_a";
        let gone = "pvc-d31f0474-956a-45f6-a1ea-3ad28a37ddf0_default_b";
        for n in [keep, gone, "mine"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("f"), "x").unwrap();
        }
        let volumes = ["pvc-c31f0474-956a-45f6-a1ea-3ad28a37ddf0".to_string()].into();
        remove_released_volumes(d.path(), &volumes);
        assert!(d.path().join(keep).join("f").exists());
        assert!(!d.path().join(gone).exists());
        assert!(d.path().join("mine").join("f").exists());
    }
}
