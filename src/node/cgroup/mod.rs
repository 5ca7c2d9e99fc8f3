//! cgroup v2 resource management, as the kubelet's cgroupfs driver does it.
//!
//! Layout under the cgroup2 mount (`<root>` is `--cgroup-root`, `knode` by default):
//!
//! ```text
//! <root>/                      every pod; cpu, memory, pids (and hugetlb) enabled below
//! <root>/pod<uid>/             a Guaranteed pod (next to the other classes, as the kubelet)
//! <root>/burstable/pod<uid>/   a Burstable pod; burstable's cpu.weight follows the requests
//! <root>/besteffort/pod<uid>/  a BestEffort pod; besteffort's cpu.weight is the minimum, 1
//! <pod>/<container>-<attempt>/ one run of a container: the runtime clones it straight in
//! ```
//!
//! Values as the kubelet writes them: cpu requests -> cpu.weight (through cpu.shares), cpu
//! limits -> cpu.max with a 100 ms period, memory limits -> memory.max with memory.swap.max 0
//! and memory.oom.group 1 (an OOM kill takes the whole container), a node-wide pids.max per
//! pod. A pod's limits are the sum of its containers' (when every container has one).
//! Teardown writes cgroup.kill and waits for `populated 0` before removing directories.
//!
//! Everything goes through [`fs::CgroupFs`], so the manager is tested against a fake.

pub mod fs;
pub mod resources;
pub mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fs::CgroupFs;
use resources::{ContainerResources, QosClass};

/// The controllers knode needs.
pub const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v2 is not usable: {0}")]
    Unavailable(String),
    #[error("cgroup {cg}: {source}")]
    Io { cg: String, source: std::io::Error },
}

fn io(cg: &str) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        cg: if cg.is_empty() {
            "/".into()
        } else {
            cg.to_string()
        },
        source,
    }
}

/// The oldest kernel with everything knode uses: cgroup.kill (5.14), CLONE_INTO_CGROUP (5.7).
const MIN_KERNEL: (u32, u32) = (5, 14);

fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// How to fix a missing cgroup v2 setup, appended to start-up errors.
pub const FIX: &str = "boot the host with the unified hierarchy (kernel command line \
systemd.unified_cgroup_hierarchy=1, the default on Debian 12), or start the agent with \
--cgroups=disabled to run pods without resource limits";

/// Finds the cgroup2 mount (in /proc/self/mountinfo) and checks the kernel and the
/// controllers it offers. The error says what is missing.
pub fn probe() -> Result<PathBuf, CgroupError> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    if kernel_version(&release).is_some_and(|v| v < MIN_KERNEL) {
        return Err(CgroupError::Unavailable(format!(
            "kernel {release} is too old: knode's limits need {}.{} or newer (cgroup.kill, CLONE_INTO_CGROUP)",
            MIN_KERNEL.0, MIN_KERNEL.1
        )));
    }
    let mount = oci::runtime::cgroup2_mount().ok_or_else(|| {
            let v1: Vec<&str> = REQUIRED
                .iter()
                .copied()
                .filter(|c| Path::new("/sys/fs/cgroup").join(c).is_dir())
                .collect();
            CgroupError::Unavailable(if v1.is_empty() {
                "no cgroup2 filesystem is mounted".into()
            } else {
                format!(
                    "no cgroup2 filesystem is mounted; this host runs cgroup v1 (the {} controllers are bound to /sys/fs/cgroup/{{{}}})",
                    v1.join(", "),
                    v1.join(",")
                )
            })
        })?;
    check(
        &fs::RealFs {
            mount: mount.clone(),
        },
        &mount.display().to_string(),
    )?;
    Ok(mount)
}

/// Checks the controllers available at the cgroup2 root.
pub fn check(fs: &dyn CgroupFs, at: &str) -> Result<(), CgroupError> {
    let have = fs.read("", "cgroup.controllers").map_err(io(""))?;
    let have: Vec<&str> = have.split_whitespace().collect();
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|c| !have.contains(c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CgroupError::Unavailable(format!(
        "the cgroup2 hierarchy at {at} lacks the {} controller{} (available: {}); they are probably bound to cgroup v1 hierarchies",
        missing.join(", "),
        if missing.len() > 1 { "s" } else { "" },
        if have.is_empty() { "none".to_string() } else { have.join(" ") }
    )))
}

/// The node's cgroup manager.
pub struct Cgroups {
    fs: Box<dyn CgroupFs>,
    root: String,
    pod_max_pids: Option<u64>,
    controllers: Vec<&'static str>,
    /// The host's huge page sizes (`2MB`, `1GB`): a size a pod does not ask for gets 0.
    hugepage_sizes: Vec<String>,
    /// Burstable pods' cpu requests (millicores), for the burstable class's weight.
    burstable: Mutex<BTreeMap<String, u64>>,
}

/// Huge page sizes the kernel offers, as cgroup v2 names them.
fn hugepage_sizes() -> Vec<String> {
    std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let kb: u64 = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(match kb {
                k if k >= 1 << 20 => format!("{}GB", k >> 20),
                k if k >= 1 << 10 => format!("{}MB", k >> 10),
                k => format!("{k}KB"),
            })
        })
        .collect()
}

impl Cgroups {
    /// Creates the root and QoS cgroups and enables the controllers along the way.
    pub fn setup(
        fs: Box<dyn CgroupFs>,
        root: &str,
        pod_max_pids: Option<u64>,
    ) -> Result<Cgroups, CgroupError> {
        let available = fs.read("", "cgroup.controllers").map_err(io(""))?;
        let mut controllers: Vec<&'static str> = REQUIRED.to_vec();
        if available.split_whitespace().any(|c| c == "hugetlb") {
            controllers.push("hugetlb");
        }
        let root = root.trim_matches('/').to_string();
        if root.is_empty()
            || root
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(CgroupError::Unavailable(format!(
                "--cgroup-root {root:?} must be a relative path below the cgroup2 mount"
            )));
        }
        let cg = Cgroups {
            fs,
            root,
            pod_max_pids,
            hugepage_sizes: if controllers.contains(&"hugetlb") {
                hugepage_sizes()
            } else {
                vec![]
            },
            controllers,
            burstable: Mutex::new(BTreeMap::new()),
        };
        // Every ancestor delegates the controllers to the next level.
        let mut at = String::new();
        for part in cg.root.clone().split('/') {
            if let Err(e) = cg.enable(&at) {
                let busy = matches!(&e, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY));
                if busy {
                    // cgroup v2's no-internal-process rule: a cgroup with processes (other than
                    // the real root) cannot hand controllers down. In a container with its own
                    // cgroup namespace, the agent itself sits in that root.
                    return Err(CgroupError::Unavailable(format!(
                        "cannot enable the controllers below cgroup {:?}: it holds processes (cgroup v2's no-internal-process rule); move them into a child cgroup first, as kind does (mkdir <mount>/init and write each PID of cgroup.procs into init/cgroup.procs)",
                        if at.is_empty() { "/" } else { at.as_str() }
                    )));
                }
                return Err(e);
            }
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            cg.fs.mkdir(&at).map_err(io(&at))?;
        }
        cg.enable(&cg.root)?;
        for class in ["burstable", "besteffort"] {
            let p = format!("{}/{class}", cg.root);
            cg.fs.mkdir(&p).map_err(io(&p))?;
            cg.enable(&p)?;
        }
        let be = format!("{}/besteffort", cg.root);
        cg.fs
            .write(
                &be,
                "cpu.weight",
                &resources::cpu_weight(resources::cpu_shares(None)).to_string(),
            )
            .map_err(io(&be))?;
        cg.set_burstable_weight()?;
        Ok(cg)
    }

    fn enable(&self, cg: &str) -> Result<(), CgroupError> {
        let on = self
            .fs
            .read(cg, "cgroup.subtree_control")
            .unwrap_or_default();
        for c in &self.controllers {
            if !on.split_whitespace().any(|x| x == *c) {
                self.fs
                    .write(cg, "cgroup.subtree_control", &format!("+{c}"))
                    .map_err(io(cg))?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The pod's cgroup for its QoS class.
    pub fn pod_path(&self, uid: &str, qos: QosClass) -> String {
        match qos {
            QosClass::Guaranteed => format!("{}/pod{uid}", self.root),
            QosClass::Burstable => format!("{}/burstable/pod{uid}", self.root),
            QosClass::BestEffort => format!("{}/besteffort/pod{uid}", self.root),
        }
    }

    fn set_burstable_weight(&self) -> Result<(), CgroupError> {
        // Held across the write, so concurrent pod workers cannot leave an older sum behind.
        let map = self.burstable.lock().expect("burstable");
        let sum = map.values().fold(0u64, |a, v| a.saturating_add(*v));
        let p = format!("{}/burstable", self.root);
        let shares = resources::cpu_shares(Some(sum));
        self.fs
            .write(&p, "cpu.weight", &resources::cpu_weight(shares).to_string())
            .map_err(io(&p))
    }

    /// Creates (or, for an adopted pod, updates) a pod's cgroup with the pod-level values.
    pub fn create_pod(
        &self,
        uid: &str,
        qos: QosClass,
        total: &ContainerResources,
    ) -> Result<String, CgroupError> {
        let p = self.pod_path(uid, qos);
        self.fs.mkdir(&p).map_err(io(&p))?;
        let result = (|| {
            self.write_limits(&p, total)?;
            self.fs
                .write(&p, "pids.max", &resources::or_max(self.pod_max_pids))
                .map_err(io(&p))?;
            self.enable(&p)
        })();
        if let Err(e) = result {
            let _ = self.fs.rmdir(&p);
            return Err(e);
        }
        if qos == QosClass::Burstable {
            self.burstable
                .lock()
                .expect("burstable")
                .insert(uid.to_string(), total.cpu_request_milli.unwrap_or(0));
            self.set_burstable_weight()?;
        }
        Ok(p)
    }

    fn write_limits(&self, cg: &str, r: &ContainerResources) -> Result<(), CgroupError> {
        let weight = resources::cpu_weight(resources::cpu_shares(r.cpu_request_milli));
        let writes = [
            ("cpu.weight", weight.to_string()),
            ("cpu.max", resources::cpu_max(r.cpu_limit_milli)),
            ("memory.max", resources::or_max(r.memory_limit)),
        ];
        for (file, v) in writes {
            self.fs.write(cg, file, &v).map_err(io(cg))?;
        }
        // As the kubelet: every size the pod did not ask for is 0.
        for size in &self.hugepage_sizes {
            let bytes = r.hugepages.get(size).copied().unwrap_or(0);
            self.fs
                .write(cg, &format!("hugetlb.{size}.max"), &bytes.to_string())
                .map_err(io(cg))?;
        }
        Ok(())
    }

    /// Creates the cgroup of one run of a container in its pod's cgroup.
    pub fn create_container(
        &self,
        pod: &str,
        name: &str,
        attempt: u32,
        r: &ContainerResources,
    ) -> Result<String, CgroupError> {
        let p = container_path(pod, name, attempt);
        if self.fs.exists(&p) {
            // A leftover of an earlier agent: start clean.
            self.remove(&p)?;
        }
        self.fs.mkdir(&p).map_err(io(&p))?;
        let result = (|| {
            self.write_limits(&p, r)?;
            // No swap for containers; the file exists only with swap accounting.
            if let Err(e) = self.fs.write(&p, "memory.swap.max", "0") {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io(&p)(e));
                }
            }
            self.fs.write(&p, "memory.oom.group", "1").map_err(io(&p))
        })();
        if let Err(e) = result {
            let _ = self.fs.rmdir(&p);
            return Err(e);
        }
        Ok(p)
    }

    /// Kills everything in a cgroup (cgroup.kill), waits until it is empty and removes it
    /// with its descendants. A missing cgroup is fine.
    pub fn remove(&self, cg: &str) -> Result<(), CgroupError> {
        if !self.fs.exists(cg) {
            return Ok(());
        }
        if let Err(e) = self.fs.write(cg, "cgroup.kill", "1") {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io(cg)(e));
            }
        }
        self.fs
            .wait_unpopulated(cg, Duration::from_secs(10))
            .map_err(io(cg))?;
        self.remove_tree(cg)
    }

    fn remove_tree(&self, cg: &str) -> Result<(), CgroupError> {
        for child in self.fs.children(cg).map_err(io(cg))? {
            self.remove_tree(&format!("{cg}/{child}"))?;
        }
        self.fs.rmdir(cg).map_err(io(cg))
    }

    /// Removes a pod's cgroup, whatever its class.
    pub fn remove_pod(&self, uid: &str) -> Result<(), CgroupError> {
        let mut result = Ok(());
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            if let Err(e) = self.remove(&self.pod_path(uid, qos)) {
                result = result.and(Err(e));
            }
        }
        // The pod no longer weighs on its class even if a cgroup could not be removed (the
        // next start-up sweeps it).
        let had = self
            .burstable
            .lock()
            .expect("burstable")
            .remove(uid)
            .is_some();
        if had {
            result = result.and(self.set_burstable_weight());
        }
        result
    }

    /// Pod cgroups whose pods are not in `keep` (left by an earlier agent).
    pub fn orphans(&self, keep: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for class in ["", "/burstable", "/besteffort"] {
            let dir = format!("{}{class}", self.root);
            for c in self.fs.children(&dir).unwrap_or_default() {
                if let Some(uid) = c.strip_prefix("pod") {
                    if !keep.iter().any(|k| k == uid) {
                        out.push(uid.to_string());
                    }
                }
            }
        }
        out
    }

    /// Whether the kernel's OOM killer has killed a process of this cgroup.
    pub fn oom_killed(&self, cg: &str) -> bool {
        oom_killed(self.fs.as_ref(), cg)
    }

    pub fn fs(&self) -> &dyn CgroupFs {
        self.fs.as_ref()
    }
}

/// A container run's cgroup inside its pod's.
pub fn container_path(pod: &str, name: &str, attempt: u32) -> String {
    format!("{pod}/{name}-{attempt}")
}

/// `oom_kill` in memory.events (hierarchical: a kill because of the pod's limit counts too).
pub fn oom_killed(fs: &dyn CgroupFs, cg: &str) -> bool {
    fs.read(cg, "memory.events")
        .ok()
        .and_then(|e| fs::keyed(&e, "oom_kill"))
        .is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::fs::fake::FakeFs;
    use super::*;
    use std::sync::Arc;

    struct Shared(Arc<FakeFs>);
    impl CgroupFs for Shared {
        fn mkdir(&self, cg: &str) -> std::io::Result<()> {
            self.0.mkdir(cg)
        }
        fn rmdir(&self, cg: &str) -> std::io::Result<()> {
            self.0.rmdir(cg)
        }
        fn write(&self, cg: &str, f: &str, v: &str) -> std::io::Result<()> {
            self.0.write(cg, f, v)
        }
        fn read(&self, cg: &str, f: &str) -> std::io::Result<String> {
            self.0.read(cg, f)
        }
        fn exists(&self, cg: &str) -> bool {
            self.0.exists(cg)
        }
        fn children(&self, cg: &str) -> std::io::Result<Vec<String>> {
            self.0.children(cg)
        }
        fn wait_unpopulated(&self, cg: &str, t: Duration) -> std::io::Result<()> {
            self.0.wait_unpopulated(cg, t)
        }
    }

    fn manager(controllers: &str) -> (Arc<FakeFs>, Cgroups) {
        let fake = Arc::new(FakeFs::new(controllers));
        let cg = Cgroups::setup(Box::new(Shared(fake.clone())), "knode", Some(1024)).unwrap();
        (fake, cg)
    }

    fn res(cpu_req: Option<u64>, cpu_lim: Option<u64>, mem: Option<u64>) -> ContainerResources {
        ContainerResources {
            cpu_request_milli: cpu_req,
            cpu_limit_milli: cpu_lim,
            memory_request: mem,
            memory_limit: mem,
            hugepages: Default::default(),
        }
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert!(kernel_version("5.10.0").unwrap() < MIN_KERNEL);
        assert!(kernel_version("5.14.21").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn the_check_names_missing_controllers() {
        let f = FakeFs::new("cpuset io memory");
        let e = check(&f, "/sys/fs/cgroup").unwrap_err().to_string();
        assert!(e.contains("lacks the cpu, pids controllers"), "{e}");
        assert!(e.contains("available: cpuset io memory"), "{e}");
        assert!(check(&FakeFs::new("cpuset cpu io memory pids"), "x").is_ok());
        let e = check(&FakeFs::new(""), "x").unwrap_err().to_string();
        assert!(
            e.contains("cpu, memory, pids controllers (available: none)"),
            "{e}"
        );
    }

    #[test]
    fn setup_enables_controllers_and_makes_the_qos_classes() {
        let (f, _cg) = manager("cpuset cpu io memory hugetlb pids");
        // The fake keeps the last write per file; each controller is enabled in turn.
        assert_eq!(
            f.get("", "cgroup.subtree_control").as_deref(),
            Some("+hugetlb")
        );
        for d in ["knode", "knode/burstable", "knode/besteffort"] {
            assert!(f.exists(d), "{d}");
        }
        assert_eq!(
            f.get("knode/besteffort", "cpu.weight").as_deref(),
            Some("1")
        );
        assert_eq!(f.get("knode/burstable", "cpu.weight").as_deref(), Some("1"));
        let bad = Cgroups::setup(Box::new(FakeFs::new("cpu memory pids")), "../x", None);
        assert!(bad.is_err());
    }

    #[test]
    fn pods_and_containers_get_the_kubelets_values() {
        let (f, cg) = manager("cpu memory pids");
        let g = res(Some(500), Some(500), Some(64 << 20));
        let p = cg.create_pod("u1", QosClass::Guaranteed, &g).unwrap();
        assert_eq!(p, "knode/podu1");
        assert_eq!(f.get(&p, "cpu.weight").as_deref(), Some("20"));
        assert_eq!(f.get(&p, "cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(f.get(&p, "memory.max").as_deref(), Some("67108864"));
        assert_eq!(f.get(&p, "pids.max").as_deref(), Some("1024"));
        let c = cg.create_container(&p, "web", 3, &g).unwrap();
        assert_eq!(c, "knode/podu1/web-3");
        assert_eq!(f.get(&c, "memory.oom.group").as_deref(), Some("1"));
        assert_eq!(f.get(&c, "memory.swap.max").as_deref(), Some("0"));

        let be = cg
            .create_pod("u2", QosClass::BestEffort, &res(None, None, None))
            .unwrap();
        assert_eq!(be, "knode/besteffort/podu2");
        assert_eq!(f.get(&be, "cpu.weight").as_deref(), Some("1"));
        assert_eq!(f.get(&be, "cpu.max").as_deref(), Some("max 100000"));
        assert_eq!(f.get(&be, "memory.max").as_deref(), Some("max"));

        // The burstable class weighs what its pods request.
        cg.create_pod("u3", QosClass::Burstable, &res(Some(1000), None, None))
            .unwrap();
        cg.create_pod("u4", QosClass::Burstable, &res(Some(1000), None, None))
            .unwrap();
        assert_eq!(
            f.get("knode/burstable", "cpu.weight").as_deref(),
            Some(resources::cpu_weight(2048).to_string().as_str())
        );
        cg.remove_pod("u4").unwrap();
        assert_eq!(
            f.get("knode/burstable", "cpu.weight").as_deref(),
            Some("39")
        );

        // Removal kills first, takes the containers along, and leaves the class alone.
        cg.remove_pod("u1").unwrap();
        assert!(!f.exists("knode/podu1") && !f.exists(&c));
        assert!(f.exists("knode/burstable"));
        assert_eq!(cg.orphans(&["u3".into()]), vec!["u2".to_string()]);
    }

    #[test]
    fn a_refused_value_leaves_no_cgroup_behind() {
        let (f, cg) = manager("cpu memory pids");
        f.refuse.lock().unwrap().push("memory.max".into());
        let e = cg
            .create_pod("u1", QosClass::Guaranteed, &res(Some(1), Some(1), Some(1)))
            .unwrap_err();
        assert!(e.to_string().contains("knode/podu1"), "{e}");
        assert!(!f.exists("knode/podu1"));
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let (f, cg) = manager("cpu memory pids");
        let p = cg
            .create_pod("u", QosClass::BestEffort, &res(None, None, None))
            .unwrap();
        f.set(
            &p,
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n",
        );
        assert!(!cg.oom_killed(&p));
        f.set(
            &p,
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        assert!(cg.oom_killed(&p));
    }
}
