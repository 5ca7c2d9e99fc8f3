//! Pod volumes and container environments, as the kubelet prepares them.
//!
//! - `emptyDir`: a directory under the state root (disk), or a tmpfs with `medium: Memory`;
//! - `hostPath`: the host path, checked (or created) per `type`;
//! - `persistentVolumeClaim`: the directory of the claim's bound volume (hostPath or local;
//!   a local-path volume's directory is made on this node);
//! - `configMap` / `secret`: files written from the objects in the manifests directory
//!   (`items`, `defaultMode`, per-item `mode`, `optional`), each volume on a tmpfs of its own
//!   (`nosuid,nodev`, sized to its content), never on the node's `/run`;
//! - `subPath` is resolved inside its volume without following symlinks out of it.
//!
//! Environment: `envFrom` first, then `env` (`value`, `valueFrom` configMapKeyRef,
//! secretKeyRef and fieldRef), later entries winning, with `$(VAR)` references expanded.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::node::safefs::Beneath;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIProjection, Pod, ProjectedVolumeSource, Secret,
    VolumeProjection,
};
use oci::runtime::spec::Bind;

use crate::api::error::{Classify, ErrorClass};

/// A volume, environment or mount of a container that cannot be made: why, and of which
/// class (a ConfigMap, Secret or key that does not exist is NotFound, a spec knode cannot
/// honour is Invalid, a failed mount or write Internal). The worker reports it as
/// `FailedMount` or `CreateContainerConfigError` and retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub class: ErrorClass,
    pub message: String,
}

impl ConfigError {
    pub fn not_found(message: impl Into<String>) -> ConfigError {
        ConfigError {
            class: ErrorClass::NotFound,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ConfigError {
        ConfigError {
            class: ErrorClass::Invalid,
            message: message.into(),
        }
    }

    /// The same error, its message prefixed with where it happened.
    pub fn at(self, what: &str) -> ConfigError {
        ConfigError {
            class: self.class,
            message: format!("{what}: {}", self.message),
        }
    }
}

/// Failures of the node itself (a mount, a write): Internal.
impl From<String> for ConfigError {
    fn from(message: String) -> ConfigError {
        ConfigError {
            class: ErrorClass::Internal,
            message,
        }
    }
}

impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// ConfigMaps and Secrets, by (namespace, name).
#[derive(Default, Clone)]
pub struct Objects {
    pub config_maps: BTreeMap<(String, String), Arc<ConfigMap>>,
    pub secrets: BTreeMap<(String, String), Arc<Secret>>,
    /// Services that exist now (for the service environment variables).
    pub services: Vec<crate::api::service::ServiceView>,
    /// Where ServiceAccount tokens come from (the API server; none for static pods).
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// PersistentVolumeClaims, by (namespace, name), as this node mounts them.
    pub claims: BTreeMap<(String, String), Claim>,
    /// The directory of this node's local-path volumes (made here, mode 0777, as k3s's
    /// provisioner makes them).
    pub storage_dir: Option<PathBuf>,
}

/// A claim as the node sees it: bound to a volume with a directory, or not (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The volume's directory (`hostPath` or `local`) and its hostPath type.
    Bound { path: String, kind: String },
    /// A local-path volume: the directory `dir` in this node's storage directory.
    Local { dir: String },
    /// Why it cannot be mounted yet (unbound, or bound to a volume of another type).
    Pending(String),
}

/// The hostPath a claim's volume amounts to; a local-path directory is made on the way.
fn claim_path(
    ns: &str,
    claim: &str,
    objects: &Objects,
) -> Result<k8s_openapi::api::core::v1::HostPathVolumeSource, ConfigError> {
    let (path, kind) = match objects.claims.get(&(ns.to_string(), claim.to_string())) {
        None => {
            return Err(ConfigError::not_found(format!(
                "persistentvolumeclaim {claim:?} not found"
            )))
        }
        Some(Claim::Pending(why)) => return Err(ConfigError::not_found(why.clone())),
        Some(Claim::Bound { path, kind }) => (path.clone(), kind.clone()),
        Some(Claim::Local { dir: name }) => {
            // One plain name beneath this node's storage directory, never through a symlink.
            let dir = objects
                .storage_dir
                .as_ref()
                .ok_or_else(|| ConfigError::invalid("this node has no storage directory"))?;
            let b = Beneath::open(dir, 0o700).map_err(|e| ConfigError::from(e.to_string()))?;
            let p = b
                .create_dir_all(&[name], 0o777)
                .map_err(|e| ConfigError::from(e.to_string()))?;
            return Ok(k8s_openapi::api::core::v1::HostPathVolumeSource {
                path: p.display().to_string(),
                type_: Some("Directory".into()),
            });
        }
    };
    Ok(k8s_openapi::api::core::v1::HostPathVolumeSource {
        path,
        type_: Some(kind),
    })
}

/// Issues a pod's ServiceAccount token (a TokenRequest bound to the pod). Called from the
/// pod's worker thread, which waits for it.
pub trait TokenSource: Send + Sync {
    /// The token for `pod`'s ServiceAccount for `audience` ("": the API server).
    fn token(&self, pod: &Pod, audience: &str, expiration_seconds: i64) -> Result<String, String>;
}

impl std::fmt::Debug for dyn TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// A downward API file's content (`pkg/volume/downwardapi`): labels and annotations as
/// `key="value"` lines, sorted.
fn downward_field(pod: &Pod, ns: &str, fp: &str) -> Option<String> {
    let md = &pod.metadata;
    let lines = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let one = |m: &Option<BTreeMap<String, String>>, prefix: &str| {
        fp.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| {
                m.as_ref()
                    .and_then(|m| m.get(k).cloned())
                    .unwrap_or_default()
            })
    };
    match fp {
        "metadata.name" => md.name.clone(),
        "metadata.namespace" => Some(ns.to_string()),
        "metadata.uid" => md.uid.clone(),
        "metadata.labels" => Some(lines(&md.labels)),
        "metadata.annotations" => Some(lines(&md.annotations)),
        _ if fp.starts_with("metadata.labels['") => one(&md.labels, "metadata.labels['"),
        _ if fp.starts_with("metadata.annotations['") => {
            one(&md.annotations, "metadata.annotations['")
        }
        _ => None,
    }
}

/// A container's resource as the downward API gives it (`resourceFieldRef`, upstream's
/// `ExtractContainerResourceValue`): CPU in units of the divisor (cores by default) and
/// memory or ephemeral storage in bytes over the divisor, both rounded up; a limit not set
/// is the node's allocatable, a request not set 0.
pub fn resource_value(
    pod: &Pod,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let c = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container)
        .ok_or_else(|| format!("container {container:?} not found"))?;
    let (limits, name) = match resource.split_once('.') {
        Some(("limits", n)) => (true, n),
        Some(("requests", n)) => (false, n),
        _ => return Err(format!("unsupported container resource: {resource}")),
    };
    let unit = match name {
        "cpu" => 1000,
        "memory" | "ephemeral-storage" => 1,
        _ => return Err(format!("unsupported container resource: {resource}")),
    };
    let set = c.resources.as_ref().and_then(|r| {
        if limits {
            r.limits.as_ref()
        } else {
            r.requests.as_ref()
        }
        .and_then(|m| m.get(name))
    });
    let value = match set {
        Some(q) => crate::api::quantity::parse_quantity(&q.0, unit)
            .map_err(|e| format!("{resource} {:?} {e}", q.0))?,
        None if limits => {
            let (cpus, mem) = super::node::allocatable();
            match name {
                "cpu" => cpus * 1000,
                "memory" => mem,
                _ => 0,
            }
        }
        None => 0,
    };
    let d = divisor.filter(|d| !d.is_empty()).unwrap_or("1");
    let div =
        crate::api::quantity::parse_quantity(d, unit).map_err(|e| format!("divisor {d:?} {e}"))?;
    if div == 0 {
        return Err(format!("divisor {d:?} must be greater than 0"));
    }
    Ok(value.div_ceil(div).to_string())
}

/// The files of a projected volume: its configMap, secret, downwardAPI and
/// serviceAccountToken sources.
fn projected_files(
    pod: &Pod,
    ns: &str,
    pj: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    objects: &Objects,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    let mode = pj.default_mode.unwrap_or(0o644) as u32;
    let mut files = Vec::new();
    for s in pj.sources.iter().flatten() {
        if let Some(cm) = &s.config_map {
            let optional = cm.optional == Some(true);
            let data = match objects.config_map(ns, &cm.name) {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => {
                    return Err(ConfigError::not_found(format!(
                        "configmap {:?} not found",
                        cm.name
                    )))
                }
            };
            files.extend(items(&data, cm.items.as_deref(), mode, optional)?);
        } else if let Some(sv) = &s.secret {
            let optional = sv.optional == Some(true);
            let data = match objects.secret(ns, &sv.name) {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => {
                    return Err(ConfigError::not_found(format!(
                        "secret {:?} not found",
                        sv.name
                    )))
                }
            };
            files.extend(items(&data, sv.items.as_deref(), mode, optional)?);
        } else if let Some(d) = &s.downward_api {
            for it in d.items.iter().flatten() {
                let v = if let Some(r) = &it.resource_field_ref {
                    let c = r.container_name.as_deref().unwrap_or_default();
                    resource_value(
                        pod,
                        c,
                        &r.resource,
                        r.divisor.as_ref().map(|q| q.0.as_str()),
                    )
                    .map_err(|e| {
                        ConfigError::invalid(format!("downwardAPI item {:?}: {e}", it.path))
                    })?
                } else {
                    let Some(f) = &it.field_ref else {
                        return Err(ConfigError::invalid(format!(
                            "downwardAPI item {:?}: a fieldRef or a resourceFieldRef is required",
                            it.path
                        )));
                    };
                    downward_field(pod, ns, &f.field_path).ok_or_else(|| {
                        ConfigError::invalid(format!(
                            "downwardAPI item {:?}: fieldRef {:?} is not supported",
                            it.path, f.field_path
                        ))
                    })?
                };
                files.push((
                    it.path.clone(),
                    v.into_bytes(),
                    it.mode.map(|m| m as u32).unwrap_or(mode),
                ));
            }
        } else if let Some(t) = &s.service_account_token {
            let source = objects.tokens.as_ref().ok_or_else(|| {
                ConfigError::invalid(
                    "a serviceAccountToken volume source needs the API server (knode agent --server or --kubeconfig)",
                )
            })?;
            let token = source
                .token(
                    pod,
                    t.audience.as_deref().unwrap_or(""),
                    t.expiration_seconds.unwrap_or(3600),
                )
                .map_err(ConfigError::not_found)?;
            files.push((t.path.clone(), token.into_bytes(), mode));
        } else {
            return Err(ConfigError::invalid(
                "a projected volume source must be a configMap, secret, downwardAPI or serviceAccountToken",
            ));
        }
    }
    Ok(files)
}

impl Objects {
    fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let c = self.config_maps.get(&(ns.to_string(), name.to_string()))?;
        let mut m: BTreeMap<String, Vec<u8>> = c
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        m.extend(
            c.binary_data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        Some(m)
    }
    fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secrets.get(&(ns.to_string(), name.to_string()))?;
        let mut m: BTreeMap<String, Vec<u8>> = s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        m.extend(
            s.string_data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        Some(m)
    }
}

use crate::node::safefs::is_mount_point as is_mount;

fn tmpfs(p: &Path, opts: &str) -> Result<(), ConfigError> {
    if is_mount(p) {
        return Ok(());
    }
    let data = std::ffi::CString::new(opts).map_err(|e| e.to_string())?;
    rustix::mount::mount(
        "tmpfs",
        p,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| ConfigError::from(format!("mounting a tmpfs at {}: {e}", p.display())))
}

/// Writes `files` (relative path -> content, mode) into the volume `dir`, which is new and
/// empty. Paths were validated with the pod; each component is checked again and every write
/// goes through `Beneath`, so nothing can land outside the volume.
fn write_files(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), ConfigError> {
    let root = Beneath::open(dir, 0o755).map_err(|e| e.to_string())?;
    for (rel, data, mode) in files {
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        if rel.starts_with('/') || parts.is_empty() || parts.contains(&"..") {
            return Err(ConfigError::from(format!(
                "item path {rel:?} must be relative and must not contain '..'"
            )));
        }
        let (_, parents) = parts.split_last().expect("not empty");
        root.create_dir_all(parents, 0o755)
            .map_err(|e| e.to_string())?;
        // Only permission bits: a setuid or setgid bit never reaches a volume file.
        root.write(&parts, data, mode & 0o777)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The size of a tmpfs holding `files`: every file takes whole pages, plus room for its
/// directories.
fn tmpfs_size(files: &[(String, Vec<u8>, u32)]) -> u64 {
    const PAGE: u64 = 4096;
    let data: u64 = files
        .iter()
        .map(|(_, d, _)| (d.len() as u64).div_ceil(PAGE) * PAGE)
        .sum();
    data + PAGE * (files.len() as u64 * 2 + 16)
}

/// A configMap or secret volume: a tmpfs of its own at `p` with the files.
fn object_volume(p: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), ConfigError> {
    tmpfs(p, &format!("mode=0755,size={}", tmpfs_size(files)))?;
    write_files(p, files)
}

/// What one configMap or secret volume may hold: twice the 1 MiB an object may hold, so
/// that `items` projecting one key many times cannot turn a small manifest into a large
/// tmpfs (which is memory, charged to the agent).
pub const MAX_VOLUME_BYTES: u64 = 2 << 20;
/// What a pod's configMap and secret volumes may hold together.
pub const MAX_POD_PROJECTED_BYTES: u64 = 16 << 20;

/// Adds the bytes a configMap or secret volume holds to the pod's total, and checks it (a
/// volume's own bytes were bounded by `items` as it copied them).
fn projected(files: &[(String, Vec<u8>, u32)], total: &mut u64) -> Result<(), ConfigError> {
    *total += files.iter().map(|(_, d, _)| d.len() as u64).sum::<u64>();
    if *total > MAX_POD_PROJECTED_BYTES {
        return Err(ConfigError::from(format!(
            "the pod's configMap and secret volumes would hold {total} bytes, more than the {MAX_POD_PROJECTED_BYTES} a pod may hold"
        )));
    }
    Ok(())
}

/// Creates the pod's volumes; `disk` and `mem` are the pod's directories on disk and in the
/// runtime directory (both made by the worker, root only). Returns each volume's host path.
/// Volume names were validated with the pod (DNS-1123 labels); `Beneath` refuses anything
/// else again.
pub fn prepare(
    pod: &Pod,
    ns: &str,
    disk: &Beneath,
    mem: &Beneath,
    objects: &Objects,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let name = v.name.clone();
        let err = |e: ConfigError| e.at(&format!("volume {name:?}"));
        let on_disk = disk
            .join(&["volumes", &name])
            .map_err(|e| err(ConfigError::from(e.to_string())))?;
        let in_mem = mem
            .join(&["volumes", &name])
            .map_err(|e| err(ConfigError::from(e.to_string())))?;
        let fresh = !on_disk.exists() && !in_mem.exists();
        // A claim mounts its volume's directory, as a hostPath would.
        let host_path = match &v.persistent_volume_claim {
            Some(c) => Some(claim_path(ns, &c.claim_name, objects).map_err(err)?),
            None => v.host_path.clone(),
        };
        let path = if let Some(ed) = &v.empty_dir {
            disk.create_dir_all(&["volumes"], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            // Writable by every user of the pod, as the kubelet makes it (0777); its parents
            // are root's only, so no user of the node reaches what containers put there.
            let p = disk
                .create_dir_all(&["volumes", &name], 0o777)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            if ed.medium.as_deref() == Some("Memory") {
                let size = match &ed.size_limit {
                    Some(q) => format!(
                        ",size={}",
                        crate::api::quantity::parse_quantity(&q.0, 1).map_err(|e| err(
                            ConfigError::invalid(format!("sizeLimit {:?} {e}", q.0))
                        ))?
                    ),
                    None => String::new(),
                };
                tmpfs(&p, &format!("mode=1777{size}")).map_err(err)?;
            }
            p
        } else if let Some(hp) = &host_path {
            let p = PathBuf::from(&hp.path);
            if !p.is_absolute() {
                return Err(err(ConfigError::invalid(format!(
                    "hostPath {:?} must be absolute",
                    hp.path
                ))));
            }
            let md = std::fs::metadata(&p);
            use std::os::unix::fs::FileTypeExt;
            let ok = match hp.type_.as_deref().unwrap_or("") {
                "" => true,
                "DirectoryOrCreate" => {
                    if md.is_err() {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| err(ConfigError::from(e.to_string())))?;
                        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                            .map_err(|e| err(ConfigError::from(e.to_string())))?;
                    }
                    std::fs::metadata(&p).is_ok_and(|m| m.is_dir())
                }
                "Directory" => md.as_ref().is_ok_and(|m| m.is_dir()),
                "FileOrCreate" => {
                    if md.is_err() {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&p)
                            .map_err(|e| err(ConfigError::from(e.to_string())))?;
                        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                            .map_err(|e| err(ConfigError::from(e.to_string())))?;
                    }
                    std::fs::metadata(&p).is_ok_and(|m| m.is_file())
                }
                "File" => md.as_ref().is_ok_and(|m| m.is_file()),
                "Socket" => md.as_ref().is_ok_and(|m| m.file_type().is_socket()),
                "CharDevice" => md.as_ref().is_ok_and(|m| m.file_type().is_char_device()),
                "BlockDevice" => md.as_ref().is_ok_and(|m| m.file_type().is_block_device()),
                t => {
                    return Err(err(ConfigError::invalid(format!(
                        "unknown hostPath type {t:?}"
                    ))))
                }
            };
            if !ok {
                return Err(err(ConfigError::not_found(format!(
                    "hostPath {:?} is not a {}",
                    hp.path,
                    hp.type_.clone().unwrap_or_default()
                ))));
            }
            p
        } else if let Some(cm) = &v.config_map {
            mem.create_dir_all(&["volumes"], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            let p = mem
                .create_dir_all(&["volumes", &name], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            let data = match objects.config_map(ns, &cm.name) {
                Some(d) => d,
                None if cm.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(err(ConfigError::not_found(format!(
                        "configmap {:?} not found",
                        cm.name
                    ))))
                }
            };
            let mode = cm.default_mode.unwrap_or(0o644) as u32;
            let files =
                items(&data, cm.items.as_deref(), mode, cm.optional == Some(true)).map_err(err)?;
            projected(&files, &mut total).map_err(err)?;
            // Written once, when its tmpfs is made (an adopted pod keeps what it has).
            if !is_mount(&p) {
                object_volume(&p, &files).map_err(err)?;
            }
            p
        } else if let Some(sv) = &v.secret {
            mem.create_dir_all(&["volumes"], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            let p = mem
                .create_dir_all(&["volumes", &name], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            let sname = sv.secret_name.clone().unwrap_or_default();
            let data = match objects.secret(ns, &sname) {
                Some(d) => d,
                None if sv.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(err(ConfigError::not_found(format!(
                        "secret {sname:?} not found"
                    ))))
                }
            };
            let mode = sv.default_mode.unwrap_or(0o644) as u32;
            let files =
                items(&data, sv.items.as_deref(), mode, sv.optional == Some(true)).map_err(err)?;
            projected(&files, &mut total).map_err(err)?;
            // Written once, when its tmpfs is made (an adopted pod keeps what it has).
            if !is_mount(&p) {
                object_volume(&p, &files).map_err(err)?;
            }
            p
        } else if let Some(pj) = v.projected.clone().or_else(|| {
            // A downwardAPI volume is a projected volume of one downwardAPI source.
            v.downward_api.as_ref().map(|d| ProjectedVolumeSource {
                default_mode: d.default_mode,
                sources: Some(vec![VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: d.items.clone(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            })
        }) {
            let pj = &pj;
            mem.create_dir_all(&["volumes"], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            let p = mem
                .create_dir_all(&["volumes", &name], 0o700)
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
            // Written once, when its tmpfs is made (an adopted pod keeps what it has).
            if !is_mount(&p) {
                let files = projected_files(pod, ns, pj, objects).map_err(err)?;
                projected(&files, &mut total).map_err(err)?;
                object_volume(&p, &files).map_err(err)?;
            }
            p
        } else {
            return Err(err(ConfigError::invalid(
                "only emptyDir, hostPath, persistentVolumeClaim, configMap, secret, downwardAPI and projected volumes are supported",
            )));
        };
        // fsGroup: the pod's volumes belong to that group, setgid so new files do too.
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|c| c.fs_group);
        // Only a volume made just now: never walk a tree a running container controls.
        if let (Some(g), true) = (fs_group, host_path.is_none() && fresh) {
            chown_group(&path, g as u32, v.empty_dir.is_some())
                .map_err(|e| err(ConfigError::from(e.to_string())))?;
        }
        out.insert(name, path);
    }
    Ok(out)
}

/// Gives a volume's tree to group `gid`: directories setgid (and group-writable for writable
/// volumes), files group-readable, never following symlinks.
fn chown_group(root: &Path, gid: u32, writable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if md.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::lchown(&p, None, Some(gid))?;
        let mode = md.mode() & 0o7777;
        let new = if md.is_dir() {
            mode | 0o2000 | 0o050 | if writable { 0o020 } else { 0 }
        } else {
            mode | 0o040 | if writable { 0o020 } else { 0 }
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(new))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

fn items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    mode: u32,
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), mode))
            .collect()),
        Some(list) => {
            let mut out = vec![];
            let mut bytes = 0u64;
            for it in list {
                match data.get(&it.key) {
                    Some(v) => {
                        // Checked before each copy: a key projected thousands of times
                        // must not be copied thousands of times first.
                        bytes += v.len() as u64;
                        if bytes > MAX_VOLUME_BYTES {
                            return Err(ConfigError::from(format!(
                                "its items hold more than the {MAX_VOLUME_BYTES} bytes a volume may hold"
                            )));
                        }
                        out.push((
                            it.path.clone(),
                            v.clone(),
                            it.mode.map(|m| m as u32).unwrap_or(mode),
                        ))
                    }
                    None if optional => {}
                    None => return Err(ConfigError::from(format!("key {:?} not found", it.key))),
                }
            }
            Ok(out)
        }
    }
}

/// Unmounts the staged subPath mounts of a container attempt.
pub fn unmount_staged(staging: &Path) {
    for e in std::fs::read_dir(staging).into_iter().flatten().flatten() {
        let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// The bind mounts for a container's volumeMounts. A `subPath` is resolved inside its
/// volume (RESOLVE_IN_ROOT): symlinks in the volume cannot point it elsewhere.
/// `staging` is a directory of the container's own where subPaths are bind-mounted first (see
/// below); `unmount_staged` removes those mounts.
pub fn binds(
    c: &Container,
    pod: &Pod,
    volumes: &BTreeMap<String, PathBuf>,
    staging: &Path,
) -> Result<Vec<Bind>, ConfigError> {
    let ro_kinds: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.read_only == Some(true))
        })
        .map(|v| v.name.clone())
        .collect();
    let mut out = vec![];
    for (idx, m) in c.volume_mounts.iter().flatten().enumerate() {
        let src = volumes
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {:?} refers to an unknown volume", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => src.clone(),
            Some(sp) => {
                if sp.starts_with('/') || sp.split('/').any(|c| c == "..") {
                    return Err(ConfigError::from(format!(
                        "subPath {sp:?} must be a relative path without '..'"
                    )));
                }
                let root = rustix::fs::open(
                    src,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| format!("volume {:?}: {e}", m.name))?;
                let flags = rustix::fs::ResolveFlags::IN_ROOT
                    | rustix::fs::ResolveFlags::NO_MAGICLINKS
                    | rustix::fs::ResolveFlags::NO_XDEV;
                let fd = match rustix::fs::openat2(
                    &root,
                    sp,
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                    flags,
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => {
                        // Kubernetes creates a missing subPath directory: inside the volume,
                        // one component at a time, never through a symlink.
                        mkdir_in_root(&root, sp, flags)
                            .map_err(|e| format!("subPath {sp:?}: {e}"))?
                    }
                    Err(e) => return Err(ConfigError::from(format!("subPath {sp:?}: {e}"))),
                };
                let real = std::fs::read_link(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&fd)
                ))
                .map_err(|e| e.to_string())?;
                let canon = std::fs::canonicalize(src).map_err(|e| e.to_string())?;
                if !real.starts_with(&canon) {
                    return Err(ConfigError::from(format!(
                        "subPath {sp:?} resolves outside its volume"
                    )));
                }
                // Mount what was resolved, not a path that could be re-resolved later: bind the
                // descriptor onto a staging point no container can change (the kubelet's fix
                // for CVE-2021-25741); the container's mount uses the staging point.
                std::fs::create_dir_all(staging).map_err(|e| e.to_string())?;
                let stage = staging.join(idx.to_string());
                let is_dir = rustix::fs::fstat(&fd)
                    .map(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Directory
                    })
                    .unwrap_or(false);
                let made = if is_dir {
                    std::fs::create_dir(&stage)
                } else {
                    std::fs::File::create(&stage).map(drop)
                };
                made.map_err(|e| format!("subPath {sp:?}: staging: {e}"))?;
                rustix::mount::mount_bind(
                    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)).as_str(),
                    &stage,
                )
                .map_err(|e| format!("subPath {sp:?}: {e}"))?;
                stage
            }
        };
        out.push(Bind {
            source: source.to_string_lossy().into_owned(),
            destination: m.mount_path.clone(),
            // configMap and secret volumes are always read-only, as in Kubernetes.
            readonly: m.read_only.unwrap_or(false) || ro_kinds.contains(&m.name),
        });
    }
    Ok(out)
}

fn mkdir_in_root(
    root: &std::os::fd::OwnedFd,
    rel: &str,
    flags: rustix::fs::ResolveFlags,
) -> Result<std::os::fd::OwnedFd, rustix::io::Errno> {
    use rustix::fs::{Mode, OFlags};
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut cur = String::from(".");
    for p in parts {
        let parent = rustix::fs::openat2(
            root,
            cur.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            flags,
        )?;
        match rustix::fs::mkdirat(&parent, p, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        cur = format!("{cur}/{p}");
    }
    rustix::fs::openat2(
        root,
        cur.as_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        flags,
    )
}

/// The longest environment string or argument the kernel takes (MAX_ARG_STRLEN).
pub const MAX_ARG: usize = 128 << 10;
/// The most a container's environment and arguments may hold together (knode's bound; the
/// kernel's ARG_MAX is usually 2 MiB and the exec would fail beyond it).
pub const MAX_ARGS_TOTAL: usize = 1 << 20;

/// Expands `$(VAR)` with earlier variables; `$$(VAR)` escapes. Unknown references stay.
/// None if the result would be longer than `MAX_ARG` (references doubling at every variable
/// would otherwise cost the agent memory without bound).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some((name, after)) = tail
            .strip_prefix("$(")
            .and_then(|t| t.split_once(')'))
            .filter(|(name, _)| vars.contains_key(*name))
        {
            out.push_str(&vars[name]);
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
        if out.len() > MAX_ARG {
            return None;
        }
    }
    out.push_str(rest);
    (out.len() <= MAX_ARG).then_some(out)
}

/// Variables in order of definition; setting one again keeps its place.
#[derive(Default)]
struct EnvVars {
    order: Vec<String>,
    map: BTreeMap<String, String>,
}

impl EnvVars {
    fn set(&mut self, k: String, v: String) {
        if !self.map.contains_key(&k) {
            self.order.push(k.clone());
        }
        self.map.insert(k, v);
    }
}

/// The container's environment, per Kubernetes rules.
pub fn env(
    c: &Container,
    pod: &Pod,
    ns: &str,
    uid: &str,
    node: &str,
    pod_ip: Option<&str>,
    objects: &Objects,
) -> Result<Vec<(String, String)>, ConfigError> {
    // The kubelet's service links first (unless disabled); the container's own env wins.
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut vars = EnvVars::default();
    if links {
        for (k, v) in crate::api::service::endpoints::env_vars(&objects.services, ns) {
            vars.set(k, v);
        }
    }
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &f.config_map_ref {
            (
                objects.config_map(ns, &r.name),
                r.optional == Some(true),
                format!("configmap {:?}", r.name),
            )
        } else if let Some(r) = &f.secret_ref {
            (
                objects.secret(ns, &r.name),
                r.optional == Some(true),
                format!("secret {:?}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    vars.set(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(ConfigError::from(format!("{what} not found"))),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars.map).ok_or_else(|| {
                format!(
                    "env {}: its value expands to more than {MAX_ARG} bytes (the kernel's limit on one environment string)",
                    e.name
                )
            })?
        } else if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                match objects
                    .config_map(ns, &r.name)
                    .and_then(|d| d.get(&r.key).cloned())
                {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(ConfigError::from(format!(
                            "couldn't find key {} in configmap {:?} (env {})",
                            r.key, r.name, e.name
                        )))
                    }
                }
            } else if let Some(r) = &vf.secret_key_ref {
                match objects
                    .secret(ns, &r.name)
                    .and_then(|d| d.get(&r.key).cloned())
                {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(ConfigError::from(format!(
                            "couldn't find key {} in secret {:?} (env {})",
                            r.key, r.name, e.name
                        )))
                    }
                }
            } else if let Some(r) = &vf.resource_field_ref {
                let target = r.container_name.as_deref().filter(|n| !n.is_empty());
                resource_value(
                    pod,
                    target.unwrap_or(&c.name),
                    &r.resource,
                    r.divisor.as_ref().map(|q| q.0.as_str()),
                )
                .map_err(|why| ConfigError::invalid(format!("env {}: {why}", e.name)))?
            } else if let Some(f) = &vf.field_ref {
                let md = &pod.metadata;
                let fp = f.field_path.as_str();
                let label = |m: &Option<BTreeMap<String, String>>, prefix: &str| {
                    fp.strip_prefix(prefix)
                        .and_then(|r| r.strip_suffix("']"))
                        .and_then(|k| m.as_ref().and_then(|m| m.get(k).cloned()))
                };
                match fp {
                    "metadata.name" => md.name.clone().unwrap_or_default(),
                    "metadata.namespace" => ns.to_string(),
                    "metadata.uid" => uid.to_string(),
                    "spec.nodeName" => node.to_string(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into()),
                    "status.podIP" | "status.podIPs" => pod_ip.unwrap_or_default().to_string(),
                    "status.hostIP" | "status.hostIPs" => super::node::node_ip(),
                    _ if fp.starts_with("metadata.labels['") => {
                        label(&md.labels, "metadata.labels['").unwrap_or_default()
                    }
                    _ if fp.starts_with("metadata.annotations['") => {
                        label(&md.annotations, "metadata.annotations['").unwrap_or_default()
                    }
                    _ => {
                        return Err(ConfigError::from(format!(
                            "env {}: fieldRef {fp:?} is not supported",
                            e.name
                        )))
                    }
                }
            } else {
                return Err(ConfigError::from(format!(
                    "env {}: valueFrom kind is not supported",
                    e.name
                )));
            }
        } else {
            String::new()
        };
        vars.set(e.name.clone(), value);
    }
    // The total with the arguments is checked where both are known (the pod worker).
    let mut map = vars.map;
    Ok(vars
        .order
        .into_iter()
        .map(|k| {
            let v = map.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// resourceFieldRef as upstream computes it: rounded up in units of the divisor; an
    /// unset limit is the node's allocatable, an unset request 0.
    #[test]
    fn resource_values_round_up_in_divisor_units() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "c", "image": "x", "resources": {
                    "limits": {"cpu": "500m", "memory": "64Mi"},
                    "requests": {"cpu": "250m", "memory": "1000"}}},
                {"name": "bare", "image": "x"},
            ]},
        }))
        .unwrap();
        let v = |c: &str, r: &str, d: Option<&str>| resource_value(&pod, c, r, d);
        assert_eq!(v("c", "limits.cpu", None).unwrap(), "1");
        assert_eq!(v("c", "limits.cpu", Some("1m")).unwrap(), "500");
        assert_eq!(v("c", "requests.cpu", Some("100m")).unwrap(), "3");
        assert_eq!(v("c", "limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(v("c", "requests.memory", Some("1Ki")).unwrap(), "1");
        let (cpus, mem) = super::super::node::allocatable();
        assert_eq!(v("bare", "limits.cpu", None).unwrap(), cpus.to_string());
        assert_eq!(v("bare", "limits.memory", None).unwrap(), mem.to_string());
        assert_eq!(v("bare", "requests.cpu", None).unwrap(), "0");
        assert_eq!(
            v("c", "limits.gpu", None).unwrap_err(),
            "unsupported container resource: limits.gpu"
        );
        assert_eq!(
            v("nosuch", "limits.cpu", None).unwrap_err(),
            "container \"nosuch\" not found"
        );
        assert!(v("c", "limits.cpu", Some("0")).is_err());
    }

    #[test]
    fn expansion_is_bounded() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(expand("x$(A)y$(B)$$(A)", &vars).unwrap(), "x1y$(B)$(A)");
        assert_eq!(expand("é$(A)ü$", &vars).unwrap(), "é1ü$");
        // References that double at every variable stop at the kernel's limit.
        let mut vars = BTreeMap::new();
        vars.insert("E0".to_string(), "x".repeat(1024));
        for k in 1..=16 {
            match expand(&format!("$(E{})$(E{})", k - 1, k - 1), &vars) {
                Some(v) => {
                    vars.insert(format!("E{k}"), v);
                }
                None => {
                    assert_eq!(k, 8, "1 KiB doubled 7 times is 128 KiB");
                    return;
                }
            }
        }
        panic!("no limit");
    }
}
