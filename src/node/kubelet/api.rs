//! The agent's local API on `<run-dir>/knode.sock` (mode 0600: root only), modelled on the
//! kubelet's own: `GET /pods` (a PodList of real Kubernetes Pod objects with status),
//! `GET /pods/{namespace}/{name}`, `GET /containerLogs/{namespace}/{pod}/{container}` with
//! `tailLines`, `previous` and `follow`, and `GET /healthz`. A small client for the CLI too.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::node::error::{fail, Ctx, NodeError};

type Result<T, E = NodeError> = std::result::Result<T, E>;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::pod::{CState, PodView};
use super::NodeState;

fn time(t: chrono::DateTime<chrono::Utc>) -> Time {
    crate::api::time::time(t)
}

fn cstate(s: &CState) -> core::ContainerState {
    match s {
        CState::Waiting { reason, message } => core::ContainerState {
            waiting: Some(core::ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        CState::Running { started_at } => core::ContainerState {
            running: Some(core::ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        CState::Terminated {
            exit_code,
            reason,
            started_at,
            finished_at,
            message,
        } => core::ContainerState {
            terminated: Some(core::ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.to_string()),
                message: message.clone(),
                started_at: started_at.map(time),
                finished_at: Some(time(*finished_at)),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The pod as a Kubernetes object, status included.
pub fn to_pod(v: &PodView) -> core::Pod {
    let mut pod = v.manifest.pod.clone();
    pod.metadata.namespace = Some(v.manifest.namespace.clone());
    pod.metadata.uid = Some(v.manifest.uid.clone());
    pod.metadata.creation_timestamp = Some(time(v.created));
    let mut ann = pod.metadata.annotations.take().unwrap_or_default();
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert(
        "kubernetes.io/config.file".into(),
        v.manifest.file.display().to_string(),
    );
    pod.metadata.annotations = Some(ann);
    if let Some(s) = pod.spec.as_mut() {
        s.node_name = Some(v.node_name.clone());
    }
    let status = |c: &super::pod::ContainerView| core::ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count as i32,
        state: Some(cstate(&c.state)),
        last_state: c.last_state.as_ref().map(cstate),
        ..Default::default()
    };
    let qos = crate::node::cgroup::resources::pod(&v.manifest.pod)
        .ok()
        .map(|rs| {
            crate::node::cgroup::resources::qos(&rs.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
        });
    pod.status = Some(core::PodStatus {
        conditions: Some(conditions(v)),
        qos_class: qos.map(|q| q.as_str().to_string()),
        phase: Some(v.phase.to_string()),
        reason: v.reason.clone(),
        message: v.message.clone(),
        start_time: v.started.map(time),
        pod_ip: v.pod_ip.clone(),
        pod_ips: v.pod_ip.clone().map(|ip| vec![core::PodIP { ip }]),
        init_container_statuses: Some(v.containers.iter().filter(|c| c.init).map(status).collect()),
        // App containers by name, init containers in their order, as the kubelet lists them.
        container_statuses: Some({
            let mut s: Vec<core::ContainerStatus> = v
                .containers
                .iter()
                .filter(|c| !c.init)
                .map(status)
                .collect();
            s.sort_by(|a, b| a.name.cmp(&b.name));
            s
        }),
        ..Default::default()
    });
    if v.deleting {
        pod.metadata.deletion_timestamp = Some(time(chrono::Utc::now()));
    }
    pod
}

/// The pod's conditions, as the kubelet sets them. Transition times come from the
/// containers' own times, so the same state always gives the same conditions.
fn conditions(v: &PodView) -> Vec<core::PodCondition> {
    let ready = v.ready();
    let init_done = v.containers.iter().filter(|c| c.init).all(|c| {
        matches!(c.state, CState::Terminated { exit_code: 0, .. })
            || matches!(c.last_state, Some(CState::Terminated { exit_code: 0, .. }))
    }) || v.phase != crate::api::pod::PodPhase::Pending;
    let apps = || v.containers.iter().filter(|c| !c.init);
    let since = if ready {
        apps()
            .filter_map(|c| match c.state {
                CState::Running { started_at } => Some(started_at),
                _ => None,
            })
            .max()
    } else {
        apps()
            .filter_map(|c| match &c.state {
                CState::Terminated { finished_at, .. } => Some(*finished_at),
                _ => None,
            })
            .max()
    }
    .unwrap_or(v.created);
    let not_ready: Vec<&str> = apps()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let cond = |type_: &str, ok: bool, at: chrono::DateTime<chrono::Utc>, reason: Option<&str>| {
        core::PodCondition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            last_transition_time: Some(time(at)),
            reason: reason.filter(|_| !ok).map(str::to_string),
            message: (!ok && !not_ready.is_empty() && reason == Some("ContainersNotReady"))
                .then(|| format!("containers with unready status: [{}]", not_ready.join(" "))),
            ..Default::default()
        }
    };
    vec![
        cond(
            "Initialized",
            init_done,
            v.created,
            Some("ContainersNotInitialized"),
        ),
        cond("Ready", ready, since, Some("ContainersNotReady")),
        cond("ContainersReady", ready, since, Some("ContainersNotReady")),
        cond("PodScheduled", true, v.created, None),
    ]
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(v).unwrap_or_default(),
        )))
        .expect("valid response")
}

fn text(status: StatusCode, t: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(t)))
        .expect("valid response")
}

pub(crate) fn find(state: &NodeState, ns: &str, name: &str) -> Option<PodView> {
    // Only the matching views are copied.
    let by_name = |name: &str, static_only: bool| {
        state
            .pods
            .values()
            .filter_map(|v| {
                let v = v.lock().expect("view");
                let m = &v.manifest;
                (m.namespace == ns
                    && m.name == name
                    && (!static_only || !super::source::from_api(m)))
                .then(|| v.clone())
            })
            .min_by_key(|v| v.deleting)
    };
    // A static pod is `<name>-<node>` in the API (its mirror pod's name), as upstream.
    by_name(name, false).or_else(|| {
        let base = name.strip_suffix(&format!("-{}", state.node.name))?;
        by_name(base, true)
    })
}

/// Decodes `%XX` escapes and `+` (a space) of a query value.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(b' ');
        } else if b[i] == b'%'
            && i + 2 < b.len()
            && u8::from_str_radix(&s[i + 1..i + 3], 16).is_ok()
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("checked"));
            i += 2;
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a pod's container cannot be found (a 404).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotFound {
    #[error("pod {0}/{1} not found")]
    Pod(String, String),
    #[error("container {0} is not valid for pod {1}")]
    Container(String, String),
}

/// A pod's container, or why there is none.
pub(crate) fn find_container(
    st: &NodeState,
    ns: &str,
    name: &str,
    container: &str,
) -> Result<(PodView, super::pod::ContainerView), NotFound> {
    let v = find(st, ns, name).ok_or_else(|| NotFound::Pod(ns.into(), name.into()))?;
    let c = v
        .containers
        .iter()
        .find(|c| c.name == container)
        .cloned()
        .ok_or_else(|| NotFound::Container(container.into(), name.into()))?;
    Ok((v, c))
}

/// `<log-dir>/<ns>_<pod>_<uid>/<container>`.
pub(crate) fn container_log_dir(
    st: &NodeState,
    v: &PodView,
    container: &str,
) -> std::path::PathBuf {
    st.log_dir
        .join(crate::node::logs::pod_dir_name(
            &v.manifest.namespace,
            &v.manifest.name,
            &v.manifest.uid,
        ))
        .join(container)
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}

async fn handle(
    state: Arc<RwLock<NodeState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    // kubelet's /run: a command in a container, its output as the answer.
    if let ["run", ns, name, container] = p.as_slice() {
        let cmd = query(&req, "cmd")
            .map(|c| percent_decode(&c))
            .unwrap_or_default();
        let (exe, run_dir) = {
            let st = state.read().expect("state");
            (st.exe.clone(), st.run_dir.clone())
        };
        let (ns, name, container) = (ns.to_string(), name.to_string(), container.to_string());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(exe)
                .arg("--run-dir")
                .arg(run_dir)
                .args(["exec", "-n", &ns, &name, "-c", &container, "--"])
                .args(cmd.split_whitespace())
                .output()
        })
        .await;
        return Ok(match out {
            Ok(Ok(o)) if o.status.success() => text(
                StatusCode::OK,
                String::from_utf8_lossy(&o.stdout).into_owned(),
            ),
            Ok(Ok(o)) => text(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            _ => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not run the command".into(),
            ),
        });
    }
    let st = state.read().expect("state");
    let resp = match p.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok".into()),
        ["node"] => json(StatusCode::OK, &super::node::node(&st.node)),
        ["stats", "summary"] => {
            let views: Vec<PodView> = st
                .pods
                .values()
                .map(|v| v.lock().expect("view").clone())
                .collect();
            json(StatusCode::OK, &super::node::summary(&st.node, &views))
        }
        ["services"] => json(
            StatusCode::OK,
            &serde_json::json!({"items": st.services, "manifestErrors": st.manifest_errors}),
        ),
        ["pods"] => {
            let items: Vec<core::Pod> = st
                .pods
                .values()
                .map(|v| to_pod(&v.lock().expect("view")))
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"apiVersion": "v1", "kind": "PodList", "items": items, "manifestErrors": st.manifest_errors}),
            )
        }
        ["pods", ns, name] => match find(&st, ns, name) {
            Some(v) => json(
                StatusCode::OK,
                &serde_json::json!({"pod": to_pod(&v), "events": v.events, "warnings": v.manifest.warnings}),
            ),
            None => text(StatusCode::NOT_FOUND, format!("pod {ns}/{name} not found")),
        },
        ["containerLogs", ns, name, container] => {
            match find_container(&st, ns, name, container) {
                Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
                Ok((v, c)) => {
                    let previous = query(&req, "previous").is_some_and(|x| x == "true");
                    let n = if previous {
                        c.restart_count.checked_sub(1)
                    } else {
                        Some(c.restart_count)
                    };
                    let dir = container_log_dir(&st, &v, container);
                    match n.map(|n| dir.join(format!("{n}.log"))).filter(|p| p.exists()) {
                    None if previous => text(StatusCode::BAD_REQUEST, format!("previous terminated container {container:?} in pod {name:?} not found")),
                    None => text(StatusCode::OK, String::new()),
                    Some(f) => {
                        let tail = query(&req, "tailLines").and_then(|t| t.parse().ok());
                        match crate::node::logs::read(&f, tail) {
                            Ok(lines) => text(StatusCode::OK, lines.iter().map(|l| format!("{l}\n")).collect()),
                            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                        }
                    }
                }
                }
            }
        }
        ["execInfo", ns, name, container] => match find_container(&st, ns, name, container) {
            Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
            Ok((_, c)) => match &c.running {
                None => text(
                    StatusCode::BAD_REQUEST,
                    format!("container {container} is not running"),
                ),
                Some((pid, state)) => json(
                    StatusCode::OK,
                    &serde_json::json!({"pid": pid, "state": state}),
                ),
            },
        },
        ["logPath", ns, name, container] => match find_container(&st, ns, name, container) {
            Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
            Ok((v, c)) => {
                let path =
                    container_log_dir(&st, &v, container).join(format!("{}.log", c.restart_count));
                let running = matches!(c.state, CState::Running { .. });
                json(
                    StatusCode::OK,
                    &serde_json::json!({"path": path, "running": running}),
                )
            }
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route for {}", req.uri().path()),
        ),
    };
    Ok(resp)
}

/// Starts the API server on the process's runtime.
pub fn serve(sock: PathBuf, state: Arc<RwLock<NodeState>>) -> Result<()> {
    let _ = std::fs::remove_file(&sock);
    let rt = crate::node::rt::handle()?;
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(&sock).with_ctx(|| format!("binding {}", sock.display()))?
    };
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    rt.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: wait a little rather than
                    // spin, and never give up serving.
                    tracing::warn!(error = %e, "accepting an API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

/// GET `path` from the agent at `sock`: the status and body.
pub fn get(sock: &Path, path: &str) -> Result<(u16, Vec<u8>)> {
    crate::node::rt::client()?.block_on(async {
        let stream = tokio::net::UnixStream::connect(sock).await.with_ctx(|| {
            format!(
                "connecting to the agent at {} (is `knode agent` running?)",
                sock.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "knode")
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        conn.abort();
        if status >= 500 {
            fail!("agent error: {}", String::from_utf8_lossy(&body));
        }
        Ok((status, body))
    })
}
