//! Test harness: real registries, images built with knode's own builder, and a fault proxy.
#![allow(dead_code)]

pub mod etcd;
pub mod node;
pub mod proxy;
pub mod server;

use std::path::{Path, PathBuf};

use knode::cli::demo::registry::{LocalRegistry, RegistryOptions};
use oci::build::{BuiltImage, ImageBuilder, TarBuilder};
use oci::image::{ImageStore, PullOptions, PullReport};
use oci::progress::NoProgress;
use oci::reference::Reference;
use oci::registry::{ClientOptions, Credentials, RegistryClient};
use oci::spec::Compression;

pub fn registry() -> LocalRegistry {
    LocalRegistry::start().expect("start docker-registry")
}

/// A registry with Basic auth for `user`/`password`.
pub fn registry_with_basic(user: &str, password: &str) -> LocalRegistry {
    let hash = bcrypt::hash(password, 5).unwrap();
    LocalRegistry::start_with(&RegistryOptions {
        htpasswd: Some(format!("{user}:{hash}\n")),
        ..Default::default()
    })
    .expect("start docker-registry with htpasswd")
}

pub fn client_with(creds: Option<(&str, &str, &str)>) -> ClientOptions {
    let mut c = Credentials::default();
    if let Some((host, u, p)) = creds {
        c.insert(host, u, p);
    }
    ClientOptions {
        credentials: c,
        retries: 2,
        ..Default::default()
    }
}

pub fn client() -> ClientOptions {
    client_with(None)
}

pub fn push(host: &str, name: &str, img: &BuiltImage) -> Reference {
    push_with(host, name, img, client())
}

pub fn push_with(host: &str, name: &str, img: &BuiltImage, opts: ClientOptions) -> Reference {
    let r: Reference = format!("{host}/{name}").parse().unwrap();
    img.push(&RegistryClient::new(opts).unwrap(), &r)
        .expect("push");
    r
}

/// The demo's busybox layer (static busybox + applets).
pub fn busybox_tar() -> Vec<u8> {
    knode::cli::demo::busybox_layer().expect("busybox layer")
}

pub fn busybox_image() -> BuiltImage {
    ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Gzip)
        .run_config(knode::cli::demo::demo_run_config())
        .build()
}

/// busybox with kubectl 1.37 (a static binary) in `/usr/local/bin`: an in-cluster client.
pub fn kubectl_image() -> BuiltImage {
    let bin = std::fs::read(server::KUBECTL).expect("kubectl 1.37 (scripts/deps.sh --test)");
    let layer = TarBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/local", 0o755)
        .dir("usr/local/bin", 0o755)
        .file("usr/local/bin/kubectl", 0o755, &bin)
        .finish();
    ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Gzip)
        .layer(&layer, Compression::None)
        .run_config(knode::cli::demo::demo_run_config())
        .build()
}

/// A small extra layer on top of a base.
pub fn app_tar(tag: &str) -> Vec<u8> {
    TarBuilder::new()
        .dir("app", 0o755)
        .file("app/version", 0o644, tag.as_bytes())
        .finish()
}

/// A temporary knode state root with its image store.
pub struct Store {
    pub dir: tempfile::TempDir,
    pub store: ImageStore,
}

impl Store {
    pub fn new() -> Store {
        let dir = tempfile::Builder::new()
            .prefix("knode-test-")
            .tempdir()
            .unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        Store { dir, store }
    }

    /// A store with the busybox image imported as `test/busybox:1` (no registry needed).
    pub fn with_busybox() -> Store {
        let s = Store::new();
        let t = tempfile::tempdir().unwrap();
        busybox_image().write_oci_layout(t.path(), "1").unwrap();
        s.store
            .import(
                t.path(),
                Some("test/busybox"),
                &PullOptions::default(),
                &oci::progress::NoProgress,
            )
            .unwrap();
        s
    }

    /// Imports `img` as `<name>:1`.
    pub fn import(&self, name: &str, img: &BuiltImage) {
        let t = tempfile::tempdir().unwrap();
        img.write_oci_layout(t.path(), "1").unwrap();
        self.store
            .import(
                t.path(),
                Some(name),
                &PullOptions::default(),
                &oci::progress::NoProgress,
            )
            .unwrap();
    }

    /// Runs the knode binary on this store (`--root`, and `--run-dir` below it).
    pub fn knode(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(knode_bin())
            .arg("--root")
            .arg(self.root())
            .arg("--run-dir")
            .arg(self.root().join("run"))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn pull(&self, r: &str) -> Result<PullReport, oci::image::ImageError> {
        self.pull_with(r, client())
    }

    pub fn pull_with(
        &self,
        r: &str,
        c: ClientOptions,
    ) -> Result<PullReport, oci::image::ImageError> {
        self.store.pull(r, c, &PullOptions::default(), &NoProgress)
    }

    /// Committed snapshot directories and leftovers (`.tmp-*`).
    pub fn snapshot_dirs(&self) -> (Vec<String>, Vec<String>) {
        let mut done = vec![];
        let mut tmp = vec![];
        for e in std::fs::read_dir(self.dir.path().join("images/snapshots")).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if n.starts_with(".tmp-") {
                tmp.push(n)
            } else {
                done.push(n)
            }
        }
        (done, tmp)
    }

    pub fn blobs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("images/content/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Asserts that nothing at all is stored (after a failed pull).
    pub fn assert_empty(&self) {
        assert!(
            self.store.list().unwrap().is_empty(),
            "an image was recorded"
        );
        let (done, tmp) = self.snapshot_dirs();
        assert!(done.is_empty(), "snapshots left: {done:?}");
        assert!(tmp.is_empty(), "temp dirs left: {tmp:?}");
        assert_eq!(self.blobs(), 0, "blobs left in the content store");
    }
}

/// Mounts an image read-write on a temp dir; unmounts on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(s: &Store, name: &str) -> Mounted {
        let rec = s.store.get(name).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("knode-mnt-")
            .tempdir()
            .unwrap();
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        s.store
            .mount(
                &rec,
                &dir.path().join("rootfs"),
                &dir.path().join("upper"),
                &dir.path().join("work"),
            )
            .unwrap();
        Mounted { dir }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join("rootfs").join(p)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(
            self.dir.path().join("rootfs"),
            rustix::mount::UnmountFlags::DETACH,
        );
    }
}

/// The CPUs online, as /proc/cpuinfo lists them (what a node's capacity must report).
pub fn online_cpus() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .to_string()
}

pub fn knode_bin() -> &'static str {
    env!("CARGO_BIN_EXE_knode")
}

/// Runs `c` (a `kubectl ... --watch` or `-f`) until a line of its output satisfies `done`,
/// then stops it: that line, or the lines seen before the output ended.
#[allow(dead_code)]
pub fn first_line_where(
    mut c: std::process::Command,
    done: impl Fn(&str) -> bool,
) -> Result<String, Vec<String>> {
    use std::io::BufRead;
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut found = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if done(&line) {
            found = Some(line);
            break;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    found.ok_or(seen)
}
