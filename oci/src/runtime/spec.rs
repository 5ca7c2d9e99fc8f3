//! OCI runtime specs for containers: containerd's secure defaults, plus the Kubernetes rules
//! for combining an image's config with a container's command, args, env and user.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::json;

use crate::spec::RunConfig;

/// containerd's default capability set (Docker's too): everything else is dropped.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows, for privileged containers.
pub fn all_caps() -> Vec<String> {
    caps::all().iter().map(|c| c.to_string()).collect()
}

pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container runs and how it is confined, before it becomes a spec.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Namespaces: type (`network`, `ipc`, `uts`, `pid`, `mount`, `cgroup`) and an optional
    /// path to join instead of creating a new one.
    pub namespaces: Vec<(String, Option<String>)>,
    /// Bind mounts (volumes, the pod's /dev/shm, /etc/hosts...); one at /dev/shm replaces the
    /// container's private one.
    pub binds: Vec<Bind>,
}

#[derive(Clone, Debug)]
pub struct Bind {
    pub source: String,
    pub destination: String,
    pub readonly: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("user {user:?}: {reason}")]
    User { user: String, reason: String },
}

/// The argv per Kubernetes: `command` replaces the image's Entrypoint (and drops its Cmd);
/// `args` replaces Cmd.
pub fn argv(
    image: &RunConfig,
    command: Option<&[String]>,
    args: Option<&[String]>,
) -> Result<Vec<String>, SpecError> {
    let entry: Vec<String> = match command {
        Some(c) => c.to_vec(),
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let rest: Vec<String> = match (args, command) {
        (Some(a), _) => a.to_vec(),
        (None, Some(_)) => vec![],
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    let v: Vec<String> = entry.into_iter().chain(rest).collect();
    if v.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(v)
}

/// The environment: the image's, then the container's (later wins), with PATH and HOSTNAME.
pub fn environment(image: &RunConfig, extra: &[String], hostname: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |kv: &str| {
        let key = kv.split('=').next().unwrap_or(kv);
        out.retain(|e| e.split('=').next() != Some(key));
        out.push(kv.to_string());
    };
    set(&format!("PATH={DEFAULT_PATH}"));
    set(&format!("HOSTNAME={hostname}"));
    for e in image.env.iter().flatten().chain(extra) {
        set(e);
    }
    out
}

/// Normalises `CHOWN`, `cap_chown` or `CAP_CHOWN` to `CAP_CHOWN`, checking it exists.
pub fn cap_name(c: &str) -> Result<String, SpecError> {
    let up = c.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if full == "CAP_ALL" {
        return Ok(full);
    }
    full.parse::<caps::Capability>()
        .map(|_| full.clone())
        .map_err(|_| SpecError::UnknownCapability(c.to_string()))
}

/// Builds the runtime spec for `rootfs` (an absolute path).
pub fn build(cfg: &ContainerConfig, rootfs: &Path) -> Result<Spec, SpecError> {
    let mut caps: Vec<String> = if cfg.privileged {
        all_caps()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    for a in &cfg.cap_add {
        let a = cap_name(a)?;
        if a == "CAP_ALL" {
            caps = all_caps();
        } else if !caps.contains(&a) {
            caps.push(a);
        }
    }
    for d in &cfg.cap_drop {
        let d = cap_name(d)?;
        if d == "CAP_ALL" {
            caps.clear();
        } else {
            caps.retain(|c| c != &d);
        }
    }
    // Non-root processes get no effective capabilities (as with runc: they are only in the
    // bounding set), unless the runtime adds them as ambient ones; Kubernetes does not.
    let eff: Vec<String> = if cfg.uid == 0 { caps.clone() } else { vec![] };
    let uniq: HashSet<&String> = caps.iter().collect();
    debug_assert_eq!(uniq.len(), caps.len());
    let namespaces: Vec<serde_json::Value> = cfg
        .namespaces
        .iter()
        .map(|(t, p)| match p {
            Some(p) => json!({"type": t, "path": p}),
            None => json!({"type": t}),
        })
        .collect();
    let (masked, readonly): (&[&str], &[&str]) = if cfg.privileged {
        (&[], &[])
    } else {
        (MASKED_PATHS, READONLY_PATHS)
    };
    let sys_opts = if cfg.privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
    ];
    if cfg.binds.iter().any(|b| b.destination == "/dev/shm") {
        mounts.retain(|m| m["destination"] != "/dev/shm");
    }
    for b in &cfg.binds {
        let mut opts = vec!["rbind", "nosuid", "nodev"];
        if b.readonly {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": opts}));
    }
    let spec = json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "user": {"uid": cfg.uid, "gid": cfg.gid, "additionalGids": cfg.additional_gids},
            "args": cfg.args,
            "env": cfg.env,
            "cwd": cfg.cwd,
            "capabilities": {"bounding": caps, "effective": eff, "permitted": eff, "inheritable": [], "ambient": []},
            "noNewPrivileges": !cfg.privileged,
        },
        "root": {"path": rootfs, "readonly": cfg.readonly_rootfs},
        "hostname": cfg.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    Ok(serde_json::from_value(spec).expect("a valid runtime spec"))
}

/// Resolves an image/pod user (`uid`, `uid:gid`, `name`, `name:group`) against the
/// container's own /etc/passwd and /etc/group (read inside `rootfs`, never outside it).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let err = |reason: &str| SpecError::User {
        user: user.to_string(),
        reason: reason.to_string(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |p: &str| crate::runtime::read_in_root(rootfs, p).unwrap_or_default();
    let passwd = read("etc/passwd");
    let group = read("etc/group");
    let field = |line: &str, i: usize| line.split(':').nth(i).map(str::to_string);
    let (uid, pw_gid) = if u.is_empty() {
        (0, Some(0))
    } else if let Ok(n) = u.parse::<u32>() {
        let gid = passwd
            .lines()
            .find(|l| field(l, 2).as_deref() == Some(u))
            .and_then(|l| field(l, 3))
            .and_then(|g| g.parse().ok());
        (n, gid)
    } else {
        let line = passwd
            .lines()
            .find(|l| field(l, 0).as_deref() == Some(u))
            .ok_or_else(|| err("no such user in the image's /etc/passwd"))?;
        let uid = field(line, 2)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| err("bad /etc/passwd entry"))?;
        (uid, field(line, 3).and_then(|x| x.parse().ok()))
    };
    let gid = match g {
        None => pw_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .find(|l| field(l, 0).as_deref() == Some(g))
                .and_then(|l| field(l, 2))
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| err("no such group in the image's /etc/group"))?,
        },
    };
    // Supplementary groups: those listing the user by name.
    let name = passwd
        .lines()
        .find(|l| field(l, 2).map(|x| x == uid.to_string()).unwrap_or(false))
        .and_then(|l| field(l, 0));
    let extra: Vec<u32> = match name {
        Some(n) => group
            .lines()
            .filter(|l| field(l, 3).is_some_and(|m| m.split(',').any(|x| x == n)))
            .filter_map(|l| field(l, 2).and_then(|x| x.parse().ok()))
            .filter(|&x| x != gid)
            .collect(),
        None => vec![],
    };
    // The kernel reads (uid_t)-1 as "leave unchanged": a container asking for 4294967295
    // would keep running as root. Refuse it, whether it came from the pod or the image.
    if uid == u32::MAX || gid == u32::MAX {
        return Err(err("4294967295 (-1) is not a valid user or group ID"));
    }
    let extra = extra.into_iter().filter(|&g| g != u32::MAX).collect();
    Ok((uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> RunConfig {
        RunConfig {
            entrypoint: ep.map(|v| v.iter().map(|s| s.to_string()).collect()),
            cmd: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kubernetes_command_and_args_rules() {
        let i = img(Some(&["/ep"]), Some(&["cmd"]));
        assert_eq!(argv(&i, None, None).unwrap(), s(&["/ep", "cmd"]));
        assert_eq!(
            argv(&i, Some(&s(&["/c"])), None).unwrap(),
            s(&["/c"]),
            "command drops the image Cmd"
        );
        assert_eq!(argv(&i, None, Some(&s(&["a"]))).unwrap(), s(&["/ep", "a"]));
        assert_eq!(
            argv(&i, Some(&s(&["/c"])), Some(&s(&["a"]))).unwrap(),
            s(&["/c", "a"])
        );
        assert!(argv(&img(None, None), None, None).is_err());
    }

    #[test]
    fn env_merging() {
        let i = RunConfig {
            env: Some(s(&["PATH=/img", "A=1"])),
            ..Default::default()
        };
        let e = environment(&i, &s(&["A=2", "B=3"]), "h");
        assert_eq!(e, s(&["HOSTNAME=h", "PATH=/img", "A=2", "B=3"]));
    }

    #[test]
    fn caps_and_privilege() {
        let mut c = ContainerConfig {
            args: s(&["x"]),
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "h".into(),
            readonly_rootfs: false,
            privileged: false,
            cap_add: s(&["NET_ADMIN"]),
            cap_drop: s(&["cap_chown"]),
            namespaces: vec![("pid".into(), None)],
            binds: vec![],
        };
        let spec = build(&c, Path::new("/r")).unwrap();
        let js = serde_json::to_value(&spec).unwrap();
        let b = js["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(b.iter().any(|x| x == "CAP_NET_ADMIN") && !b.iter().any(|x| x == "CAP_CHOWN"));
        assert_eq!(
            js["linux"]["maskedPaths"].as_array().unwrap().len(),
            MASKED_PATHS.len()
        );
        c.cap_add = s(&["BOGUS"]);
        assert!(build(&c, Path::new("/r")).is_err());
    }
}
