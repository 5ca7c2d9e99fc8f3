//! The main job on embedded defaults: start a registry (unless one is given), build the
//! bootcamp's images from the host's static busybox and push them there, send the tutorial's
//! registries to it with a `registries.yaml` mirror, pull `gcr.io/google-samples/
//! kubernetes-bootcamp:v1` with knode and show it; then bring a cluster up with `knode up` (in
//! a network namespace of its own, so the host's network is left alone), walk the bootcamp
//! tutorial with its own commands and names, and `knode down`.

pub mod bootcamp;
pub mod guestbook;
pub mod mysql;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use oci::build::{TarBuilder, TarEntry};
use oci::image::PullOptions;
use oci::reference::Reference;
use oci::registry::{ClientOptions, RegistryClient};
use oci::spec::RunConfig;
use oci::tar::EntryKind;

use crate::cli::image::{self, CliProgress};
use registry::LocalRegistry;

pub const BUSYBOX: &str = "/bin/busybox";

/// The demo image's single layer: static busybox with its applets, a passwd file and a web
/// page served by `httpd` (the default command).
pub fn busybox_layer() -> Result<Vec<u8>> {
    let bin = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (install busybox-static)"))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list failed");
    }
    let mut t = TarBuilder::new();
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("www", 0o755),
        ("var", 0o755),
    ] {
        t.dir(d, mode);
    }
    t.file("bin/busybox", 0o755, &bin);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            t.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    t.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    t.file(
        "www/index.html",
        0o644,
        b"<h1>Hello from a knode pod</h1>\n",
    );
    let mut e = TarEntry::new("etc/hostname", EntryKind::File);
    e.data = b"knode-demo\n".to_vec();
    t.entry(&e);
    Ok(t.finish())
}

/// The libraries `binary` loads, as the host's `ldd` resolves them (with redis-tools' own
/// libraries first), and its program interpreter.
fn libraries(binary: &Path, extra: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .env("LD_LIBRARY_PATH", extra)
        .output()
        .context("running ldd (libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: a library is missing: {line}", binary.display());
        }
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Adds every library `binaries` load (as the host's `ldd` resolves them, with `own`, the
/// unpacked packages' library directory, first) under the paths the loader looks in.
pub fn add_libraries(t: &mut TarBuilder, binaries: &[&Path], own: &Path) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for bin in binaries {
        for lib in libraries(bin, own)? {
            // Where the loader looks for it: its own directory for the interpreter
            // (/lib64/ld-linux-x86-64.so.2), lib/<multiarch>/<name> for the others.
            let name = lib
                .file_name()
                .context("a library path")?
                .to_string_lossy()
                .into_owned();
            let dir = lib
                .parent()
                .and_then(|p| p.file_name())
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            let at = if dir == "lib64" {
                format!("lib64/{name}")
            } else {
                format!("lib/{dir}/{name}")
            };
            if !seen.insert(at.clone()) {
                continue;
            }
            if !at.starts_with("lib64/") && seen.insert(format!("lib/{dir}")) {
                t.dir(&format!("lib/{dir}"), 0o755);
            }
            let bytes =
                std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
            t.file(&at, 0o755, &bytes);
        }
    }
    Ok(())
}

pub fn demo_run_config() -> RunConfig {
    run_config(
        &["httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
        8080,
        &[],
    )
}

/// An image's configuration: `cmd`, one exposed TCP port, the usual PATH and `env`.
pub fn run_config(cmd: &[&str], port: u16, env: &[&str]) -> RunConfig {
    let mut vars =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    vars.extend(env.iter().map(|e| e.to_string()));
    RunConfig {
        env: Some(vars),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        exposed_ports: Some(
            [(format!("{port}/tcp"), serde_json::json!({}))]
                .into_iter()
                .collect(),
        ),
        working_dir: Some("/".into()),
        ..Default::default()
    }
}

/// Which walk-throughs, and at whose pace.
#[derive(Clone, Copy, Debug)]
pub struct Walk {
    pub bootcamp: bool,
    pub guestbook: bool,
    /// `mysql:5.7` with a hostPath, a ConfigMap and a Secret (not in the demo).
    pub mysql: bool,
    /// A learner's pace (`knode tutorial`): each step explained, run when they press Enter.
    pub paced: bool,
}

impl Walk {
    /// The demo: both tutorials, straight through.
    pub const DEMO: Walk = Walk {
        bootcamp: true,
        guestbook: true,
        mysql: false,
        paced: false,
    };
}

pub fn run(
    root: &Path,
    run_dir: &Path,
    client: ClientOptions,
    kubectl: Option<&Path>,
    walk: Walk,
) -> Result<()> {
    // One demo at a time: the namespace's name is fixed, and a second demo removing it (as
    // the leftover of a crash) under a first one would put both clusters in one namespace.
    let lock_path = Path::new("/run/knode-demo.lock");
    let _lock = match oci::fsutil::Lock::try_exclusive(lock_path)? {
        Some(l) => l,
        None => {
            println!("==> waiting for another knode demo or tutorial to finish");
            oci::fsutil::Lock::exclusive(lock_path)?
        }
    };
    // The whole demo (its registry, its cluster, the requests) lives in a network namespace
    // of its own, so it never changes the host's network; entered before any thread starts,
    // so every thread and child is in it.
    let _ = ip_netns(&["del", DEMO_NETNS]);
    ip_netns(&["add", DEMO_NETNS])?;
    ip_netns(&["exec", DEMO_NETNS, "ip", "link", "set", "lo", "up"])?;
    let ns = std::fs::File::open(format!("/var/run/netns/{DEMO_NETNS}"))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("entering the demo's network namespace")?;
    println!("==> the demo runs in network namespace {DEMO_NETNS} (removed at the end)");
    let r = run_in_netns(root, run_dir, client, kubectl, walk);
    let _ = ip_netns(&["del", DEMO_NETNS]);
    r
}

fn run_in_netns(
    root: &Path,
    run_dir: &Path,
    client: ClientOptions,
    kubectl: Option<&Path>,
    walk: Walk,
) -> Result<()> {
    let local = LocalRegistry::start()?;
    println!("==> started a local registry on {}", local.host());
    let registry = local.host();
    // The tutorials' images, built here and pushed under the paths the mirrors serve.
    let push = RegistryClient::new(ClientOptions::default())?;
    for t in tutorial_images(walk.guestbook, walk.mysql)? {
        t.push(&push, &registry)?;
    }
    // No gcr.io or Docker Hub here: a registries.yaml sends the tutorial's names to the
    // local registry (knode reads /etc/knode/registries.yaml the same way).
    let file = run_dir.join("demo-registries.yaml");
    let yaml = bootcamp::mirrors_yaml(&registry);
    std::fs::create_dir_all(run_dir)?;
    std::fs::write(&file, &yaml)?;
    println!("==> cat {}", file.display());
    print!("{yaml}");
    let client = ClientOptions {
        mirrors: crate::config::registries::parse(&yaml, &file)?,
        ..client
    };
    let store = crate::node::images::store_at(root)?;
    println!("==> knode image pull {}", bootcamp::V1);
    let t = std::time::Instant::now();
    let rep = store.pull(
        bootcamp::V1,
        client.clone(),
        &PullOptions::default(),
        &CliProgress::new(),
    )?;
    println!(
        "pulled {} in {:.0} ms ({} layer(s) fetched, {} reused), through the mirror",
        rep.image.name,
        t.elapsed().as_secs_f64() * 1000.0,
        rep.layers_fetched,
        rep.layers_reused
    );
    println!("==> knode image ls");
    image::print_list(&store.list()?);

    // Show the image the way a container will see it: an overlay of its snapshots.
    let work = run_dir.join("demo");
    let _ = std::fs::remove_dir_all(&work);
    let (rootfs, upper, wdir) = (work.join("rootfs"), work.join("upper"), work.join("work"));
    for d in [&rootfs, &upper, &wdir] {
        std::fs::create_dir_all(d)?;
    }
    store.mount(&rep.image, &rootfs, &upper, &wdir)?;
    let shown = (|| -> Result<()> {
        println!(
            "==> the image mounted as an overlay at {}",
            rootfs.display()
        );
        let mut names: Vec<String> = std::fs::read_dir(&rootfs)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        println!("/: {}", names.join(" "));
        let applets = std::fs::read_dir(rootfs.join("bin"))?.count();
        println!("/bin: {applets} entries (busybox and its applets)");
        let cfg = store.config(&rep.image)?.config.unwrap_or_default();
        println!("default command: {}", cfg.cmd.unwrap_or_default().join(" "));
        print!("{}", std::fs::read_to_string(rootfs.join("bootcamp.sh"))?);
        Ok(())
    })();
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::empty())
        .context("unmounting the demo rootfs")?;
    std::fs::remove_dir_all(&work)?;
    shown?;
    let kubectl = kubectl
        .map(Path::to_path_buf)
        .or_else(find_kubectl)
        .context("no kubectl: install it (scripts/deps.sh does) or pass --kubectl")?;
    run_cluster(root, run_dir, &file, &kubectl, walk)
}

/// One of the tutorials' images: its name in the tutorial, where a mirror of its registry
/// serves it, what it is built from, and the image.
pub struct TutorialImage {
    pub name: String,
    pub mirrored: String,
    pub from: &'static str,
    pub image: oci::build::BuiltImage,
}

impl TutorialImage {
    fn new(
        name: &str,
        mirrored: &str,
        from: &'static str,
        image: oci::build::BuiltImage,
    ) -> Result<Self> {
        let r: Reference = name.parse()?;
        Ok(TutorialImage {
            name: r.to_string(),
            mirrored: mirrored.to_string(),
            from,
            image,
        })
    }

    /// Pushes it to `registry` (host:port) under its mirrored path.
    pub fn push(&self, client: &RegistryClient, registry: &str) -> Result<()> {
        let r: Reference = format!("{registry}/{}", self.mirrored).parse()?;
        self.image
            .push(client, &r)
            .with_context(|| format!("pushing {r}"))?;
        println!(
            "==> built {} from {}, pushed it as {r}",
            self.name, self.from
        );
        Ok(())
    }
}

/// The tutorials' images: the bootcamp's, and the guestbook's and `mysql:5.7` if asked for.
pub fn tutorial_images(guestbook: bool, mysql: bool) -> Result<Vec<TutorialImage>> {
    let mut out = vec![
        TutorialImage::new(
            bootcamp::V1,
            bootcamp::V1_MIRRORED,
            BUSYBOX,
            bootcamp::image(1)?,
        )?,
        TutorialImage::new(
            bootcamp::V2,
            bootcamp::V2_MIRRORED,
            BUSYBOX,
            bootcamp::image(2)?,
        )?,
    ];
    if guestbook {
        for (name, img) in guestbook::images()? {
            let tagged = format!("{name}:latest");
            out.push(TutorialImage::new(
                &tagged,
                &tagged,
                "Debian's redis-tools and busybox",
                img,
            )?);
        }
    }
    if mysql {
        out.push(TutorialImage::new(
            mysql::IMAGE,
            &format!("library/{}", mysql::IMAGE),
            "Debian's MariaDB and busybox",
            mysql::image()?,
        )?);
    }
    Ok(out)
}

/// `knode tutorial images`: builds all the tutorials' images and writes them as one OCI
/// archive (for `<root>/images/` or `knode image import`), pushes them to a registry under
/// the paths [`bootcamp::mirrors_yaml`] sends the tutorials' names to, or both.
pub fn images(output: Option<&Path>, push: Option<(&str, ClientOptions)>) -> Result<()> {
    if output.is_none() && push.is_none() {
        bail!("knode tutorial images needs --output FILE, --push REGISTRY, or both");
    }
    let t = std::time::Instant::now();
    let all = tutorial_images(true, true)?;
    println!(
        "==> built {} images in {:.1} s",
        all.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some(path) = output {
        let named: Vec<(&str, &oci::build::BuiltImage)> =
            all.iter().map(|i| (i.name.as_str(), &i.image)).collect();
        let bytes = oci::build::oci_archive(&named);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("writing into {}", dir.display()))?;
        std::io::Write::write_all(&mut tmp, &bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "==> wrote {} ({:.1} MiB, an OCI archive): {}",
            path.display(),
            bytes.len() as f64 / (1024.0 * 1024.0),
            all.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "    copy it into <root>/images/ (/var/lib/knode/images) before the node starts, or: knode image import {}",
            path.display()
        );
    }
    if let Some((registry, client)) = push {
        let client = RegistryClient::new(client)?;
        for i in &all {
            i.push(&client, registry)?;
        }
        println!("==> a registries.yaml sending the tutorials' names there (/etc/knode/registries.yaml):");
        print!("{}", bootcamp::mirrors_yaml(registry));
    }
    Ok(())
}

/// kubectl on the PATH, or the one scripts/deps.sh installs.
fn find_kubectl() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .chain([std::path::PathBuf::from("/opt/knode-clients/bin/kubectl")])
        .find(|p| p.is_file())
}

/// The demo node's network namespace: the demo's node (its bridge, pods and nftables table)
/// lives there, so the demo never changes the host's own network.
const DEMO_NETNS: &str = "knode-demo";

fn ip_netns(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .arg("netns")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip netns {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Brings up a cluster with `knode up` (its node pulling through the mirrors of
/// `registries`) and walks the bootcamp and the guestbook with kubectl; then `knode down`.
fn run_cluster(
    root: &Path,
    run_dir: &Path,
    registries: &Path,
    kubectl: &Path,
    walk: Walk,
) -> Result<()> {
    // The demo cluster's state is its own (a scratch root under the run dir), so it leaves
    // nothing in the API of a cluster the user may run later.
    let demo = Demo {
        root: run_dir.join("demo-cluster"),
        kubectl: kubectl.to_path_buf(),
        registries: registries.to_path_buf(),
        paced: walk.paced,
        step: std::cell::Cell::new(0),
    };
    // The mysql tutorial's hostPath is the host's /home/mysql/data: refused if it holds
    // anything already (the server would take it), removed at the end.
    let home = Path::new(mysql::HOST_HOME);
    let home_made = walk.mysql && !home.exists();
    if walk.mysql {
        let data = Path::new(mysql::HOST_DATA);
        if std::fs::read_dir(data).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{} is not empty: the tutorial's hostPath would give it to its server; move it away first",
                data.display()
            );
        }
    }
    let r = demo
        .up()
        .and_then(|()| {
            if walk.bootcamp {
                demo.run_bootcamp()
            } else {
                Ok(())
            }
        })
        .and_then(|()| {
            if walk.guestbook {
                demo.run_guestbook()
            } else {
                Ok(())
            }
        })
        .and_then(|()| if walk.mysql { demo.run_mysql() } else { Ok(()) });
    let down = demo.knode(&[
        "down",
        "--log-dir",
        &demo.root.join("logs").display().to_string(),
    ]);
    let _ = std::fs::remove_dir_all(&demo.root);
    if walk.mysql {
        let _ = std::fs::remove_dir_all(if home_made {
            home
        } else {
            Path::new(mysql::HOST_DATA)
        });
    }
    r?;
    down?;
    let _ = root;
    println!("==> done");
    Ok(())
}

/// The demo cluster: its root, kubectl, and the node's network namespace.
struct Demo {
    root: std::path::PathBuf,
    kubectl: std::path::PathBuf,
    registries: std::path::PathBuf,
    /// Explain each step and wait for Enter (`knode tutorial`).
    paced: bool,
    step: std::cell::Cell<u32>,
}

impl Demo {
    /// At a learner's pace: the next step's title and what it shows, then Enter to run it
    /// (an input that has ended runs the rest straight through). In the demo: nothing.
    fn say(&self, title: &str, text: &str) -> Result<()> {
        if !self.paced {
            return Ok(());
        }
        let n = self.step.get() + 1;
        self.step.set(n);
        println!("\n--- Step {n}: {title} ---");
        println!("{}", text.trim());
        print!("[Enter: run it] ");
        use std::io::Write;
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        println!();
        Ok(())
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.root.join("kubeconfig")
    }

    /// `knode ARGS` on the demo cluster, printing its output.
    fn knode(&self, args: &[&str]) -> Result<()> {
        println!("==> knode {}", args.join(" "));
        let status = Command::new(std::fs::read_link("/proc/self/exe")?)
            .arg("--registry-config")
            .arg(&self.registries)
            .arg("--root")
            .arg(&self.root)
            .arg("--run-dir")
            .arg(self.root.join("run"))
            .args(args)
            .status()
            .context("running knode")?;
        if !status.success() {
            bail!("knode {} failed", args.join(" "));
        }
        Ok(())
    }

    /// `kubectl ARGS`, printed as a user would type it; returns its output.
    fn kubectl(&self, args: &[&str], show: bool) -> Result<String> {
        if show {
            println!("==> kubectl {}", args.join(" "));
        }
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if show {
            print!("{text}");
        }
        Ok(text)
    }

    fn rollout_status(&self) -> Result<String> {
        self.kubectl(
            &[
                "rollout",
                "status",
                "deployments/kubernetes-bootcamp",
                "--timeout=60s",
            ],
            true,
        )
    }

    /// `curl NODE:NODE_PORT`, `n` times (busybox's wget, from the node's namespace): the
    /// answers, printed.
    fn curl(&self, url: &str, n: usize) -> Result<Vec<String>> {
        if n == 1 {
            println!("==> wget -qO- '{url}'   (the tutorial's curl)");
        } else {
            println!("==> for n in `seq {n}`; do wget -qO- {url}; done   (the tutorial's curl)");
        }
        let mut answers = Vec::new();
        for _ in 0..n {
            let out = Command::new(BUSYBOX).args(["wget", "-qO-", url]).output()?;
            if !out.status.success() {
                bail!(
                    "the service did not answer: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let a = String::from_utf8_lossy(&out.stdout).into_owned();
            print!("{a}");
            answers.push(a);
        }
        Ok(answers)
    }

    fn up(&self) -> Result<()> {
        self.knode(&[
            "up",
            "--listen",
            "127.0.0.1:6443",
            "--write-kubeconfig",
            &self.kubeconfig().display().to_string(),
            "--log-dir",
            &self.root.join("logs").display().to_string(),
            "--node-name",
            "knode-demo",
        ])
    }

    /// The bootcamp, with the tutorial's own commands and image names.
    fn run_bootcamp(&self) -> Result<()> {
        self.say(
            "The cluster",
            "`knode up` started an API server, the controllers, a scheduler and this node, all
in one process. kubectl talks to the API server only; `get nodes` lists the machines that
run pods (here one, Ready).",
        )?;
        self.kubectl(&["version"], true)?;
        self.kubectl(&["get", "nodes"], true)?;
        self.say(
            "Deploy an app",
            "A Deployment says which image to run and how many copies. The Deployment
controller makes a ReplicaSet, the ReplicaSet makes a Pod, the scheduler binds it to the
node, and the node pulls the image (here through a registries.yaml mirror, as gcr.io is out
of reach) and starts it.",
        )?;
        let t = std::time::Instant::now();
        self.kubectl(
            &[
                "create",
                "deployment",
                "kubernetes-bootcamp",
                &format!("--image={}", bootcamp::V1),
            ],
            true,
        )?;
        self.rollout_status()?;
        println!(
            "(the pod was available {:.0} ms after kubectl create)",
            t.elapsed().as_secs_f64() * 1000.0
        );
        self.kubectl(&["get", "pods"], true)?;
        self.say(
            "Expose it",
            "Pods are reachable only inside the cluster. A Service of type NodePort gives
them one stable address and opens a port on every node; the node's service proxy
(nftables rules) sends each connection to one of the Service's ready pods.",
        )?;
        self.kubectl(
            &[
                "expose",
                "deployment/kubernetes-bootcamp",
                "--type=NodePort",
                "--port",
                "8080",
            ],
            true,
        )?;
        self.kubectl(&["get", "services"], true)?;
        let port = self.kubectl(
            &[
                "get",
                "services/kubernetes-bootcamp",
                "-o",
                "go-template={{(index .spec.ports 0).nodePort}}",
            ],
            false,
        )?;
        // The node's address on the pod bridge (the namespace has no other).
        let url = format!("http://10.244.0.1:{}/", port.trim());
        self.curl(&url, 1)?;
        self.say(
            "Scale it",
            "Three replicas instead of one: the ReplicaSet makes two more pods, the Service's
endpoints follow as they become ready, and requests are spread over all three. Then
`knode explain svc/kubernetes-bootcamp` shows the path each connection took through the
node's nftables, and the counters of the requests just sent.",
        )?;
        self.kubectl(&["get", "deployments"], true)?;
        self.kubectl(
            &["scale", "deployments/kubernetes-bootcamp", "--replicas=3"],
            true,
        )?;
        self.rollout_status()?;
        self.kubectl(&["get", "deployments"], true)?;
        self.kubectl(&["get", "pods"], true)?;
        let answers = self.curl(&url, 10)?;
        let pods: std::collections::BTreeSet<&str> = answers
            .iter()
            .filter_map(|a| a.split(" | ").nth(1))
            .collect();
        println!("({} pods answered ten requests)", pods.len());
        // The path those requests took through the node's nftables, with the counters.
        self.knode(&["explain", "svc/kubernetes-bootcamp"])?;
        self.say(
            "Scale down",
            "Two replicas: the ReplicaSet deletes one pod; the node stops its containers
within the grace period, and the Service stops sending it traffic first.",
        )?;
        self.kubectl(
            &["scale", "deployments/kubernetes-bootcamp", "--replicas=2"],
            true,
        )?;
        self.rollout_status()?;
        self.kubectl(&["get", "deployments"], true)?;
        self.say(
            "A rolling update",
            "A new image makes a new ReplicaSet. The Deployment scales it up and the old one
down a pod at a time (maxSurge, maxUnavailable), so the app answers throughout; the
answers now say v=2.",
        )?;
        self.kubectl(
            &[
                "set",
                "image",
                "deployments/kubernetes-bootcamp",
                &format!("kubernetes-bootcamp={}", bootcamp::V2),
            ],
            true,
        )?;
        self.rollout_status()?;
        self.kubectl(&["get", "pods"], true)?;
        self.curl(&url, 3)?;
        self.say(
            "Roll back",
            "`rollout undo` puts the previous template back: the old ReplicaSet is scaled up
again (with a new revision number) and the answers say v=1 again.",
        )?;
        self.kubectl(
            &["rollout", "undo", "deployments/kubernetes-bootcamp"],
            true,
        )?;
        self.rollout_status()?;
        self.curl(&url, 3)?;
        let pod = self.kubectl(
            &[
                "get",
                "pods",
                "-o",
                "go-template",
                "--template",
                "{{range .items}}{{.metadata.name}}{{\"\\n\"}}{{end}}",
            ],
            false,
        )?;
        let pod = pod.lines().next().unwrap_or_default().to_string();
        self.say(
            "Look inside a pod",
            "`kubectl logs` reads what the container wrote (the node keeps it in a file);
`kubectl exec` runs a command inside it: the API server passes the stream to the node.
Then `knode explain` shows what the pod is to the kernel: namespaces, a veth pair, a
cgroup, an overlay of the image's layers, processes.",
        )?;
        println!("==> export POD_NAME={pod}");
        self.kubectl(&["logs", &pod], true)?;
        self.kubectl(&["exec", &pod, "--", "env"], true)?;
        // What that pod is to the kernel, on its node.
        self.knode(&["explain", &format!("pod/{pod}")])?;
        self.kubectl(
            &["delete", "service,deployment", "kubernetes-bootcamp"],
            true,
        )?;
        Ok(())
    }

    /// Writes a tutorial's files into their own directory under the demo's root, and says
    /// where (the walk-through's `cd`).
    fn files(&self, tutorial: &str, files: &[(&str, &str)]) -> Result<std::path::PathBuf> {
        let dir = self.root.join(tutorial);
        std::fs::create_dir_all(&dir)?;
        for (name, yaml) in files {
            std::fs::write(dir.join(name), yaml)?;
        }
        println!(
            "==> cd {}   (the tutorial's {} files)",
            dir.display(),
            files.len()
        );
        Ok(dir)
    }

    /// The guestbook, with the tutorial's files and commands: Redis master and slaves,
    /// the frontend on NodePort 30001; an entry written through the master is read back
    /// from the slaves.
    fn run_guestbook(&self) -> Result<()> {
        let dir = self.files("guestbook", guestbook::FILES)?;
        self.say(
            "The guestbook's Redis master",
            "A ReplicationController (the Deployment's ancestor) keeps one redis-master pod
running, made from its template and found again by its labels (name=redis-master).",
        )?;
        let create = |name: &str| -> Result<String> {
            println!("==> kubectl create -f {name}");
            let out = self.kubectl(
                &["create", "-f", &dir.join(name).display().to_string()],
                false,
            )?;
            print!("{out}");
            Ok(out)
        };
        create("redis-master-controller.yaml")?;
        self.wait_rc("redis-master", 1)?;
        self.kubectl(&["get", "rc"], true)?;
        self.kubectl(&["get", "pods"], true)?;
        self.say(
            "A Service for the master",
            "The slaves and the frontend find the master through a Service. Pods created
after it get its address in environment variables (REDIS_MASTER_SERVICE_HOST), which is
how these images look it up (GET_HOSTS_FROM=env).",
        )?;
        create("redis-master-service.yaml")?;
        self.kubectl(&["get", "services"], true)?;
        self.say(
            "Slaves and the frontend",
            "Two Redis slaves replicate from the master; three frontends serve the page on
port 80, writing to the master and reading from the slaves. The frontend's Service is a
NodePort on 30001.",
        )?;
        create("redis-slave-controller.yaml")?;
        create("redis-slave-service.yaml")?;
        create("frontend-controller.yaml")?;
        create("frontend-service.yaml")?;
        self.wait_rc("redis-slave", 2)?;
        self.wait_rc("frontend", 3)?;
        self.kubectl(&["get", "rc"], true)?;
        self.kubectl(&["get", "pods"], true)?;
        self.kubectl(&["get", "services"], true)?;
        self.kubectl(&["get", "endpoints"], true)?;
        self.say(
            "Use it",
            "A message written through the frontend (NodePort 30001) goes to the master and
comes back from a slave once replicated.",
        )?;
        let base = "http://10.244.0.1:30001";
        println!("==> wget -qO- {base}/   (the guestbook's page)");
        let page = Command::new(BUSYBOX)
            .args(["wget", "-qO-", &format!("{base}/")])
            .output()?;
        let page = String::from_utf8_lossy(&page.stdout);
        match page.lines().find(|l| l.contains("<title>")) {
            Some(title) => println!("{} ({} bytes)", title.trim(), page.len()),
            None => bail!("the frontend did not serve the guestbook page"),
        }
        self.curl(
            &format!("{base}/guestbook.php?cmd=set&key=messages&value=Hello%20from%20knode"),
            1,
        )?;
        // The slaves have the entry once they have replicated it (milliseconds).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let url = format!("{base}/guestbook.php?cmd=get&key=messages");
        loop {
            let out = Command::new(BUSYBOX)
                .args(["wget", "-qO-", &url])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("Hello from knode") {
                println!("==> wget -qO- '{url}'   (read back from the slaves)");
                print!("{text}");
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("the slaves did not return the entry: {text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.say(
            "Scale the slaves",
            "`kubectl scale rc` changes the ReplicationController's replicas; a third slave
starts and replicates.",
        )?;
        self.kubectl(&["scale", "rc", "redis-slave", "--replicas=3"], true)?;
        self.wait_rc("redis-slave", 3)?;
        self.kubectl(&["get", "rc", "redis-slave"], true)?;
        self.kubectl(&["get", "namespace"], true)?;
        self.kubectl(
            &[
                "delete",
                "rc,service",
                "redis-master",
                "redis-slave",
                "frontend",
            ],
            true,
        )?;
        Ok(())
    }

    /// The ConfigMap, Secret and hostPath tutorial, with its own files: `mysql:5.7` keeping
    /// its data on the node, then configured from a ConfigMap, then with its password from a
    /// Secret; the data outlives each pod.
    fn run_mysql(&self) -> Result<()> {
        let dir = self.files("mysql", mysql::FILES)?;
        let file = |name: &str| dir.join(name).display().to_string();
        self.say(
            "A database keeping its data on the node",
            "mysql-pod.yaml runs mysql:5.7 with MYSQL_ROOT_PASSWORD in its environment and
/var/lib/mysql on a hostPath volume: the node's /home/mysql/data (made if missing, as
type: DirectoryOrCreate says). The first start initialises the database there.",
        )?;
        self.kubectl(&["apply", "-f", &file("mysql-pod.yaml")], true)?;
        self.wait_pod("mysql-pod")?;
        self.mysql("CREATE DATABASE tutorial; SHOW DATABASES")?;
        println!("==> ls {}   (on the node)", mysql::HOST_DATA);
        let mut names: Vec<String> = std::fs::read_dir(mysql::HOST_DATA)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        println!("{}", names.join("  "));
        self.say(
            "Configuration from a ConfigMap",
            "mysql-configmap.yaml adds a ConfigMap whose mysql.cnf the pod sees in
/etc/mysql/conf.d (read-only), where the server reads its configuration. The pod is made
anew: its data is still on the node, so the database made before is still there.",
        )?;
        self.kubectl(&["delete", "pod", "mysql-pod"], true)?;
        self.kubectl(&["apply", "-f", &file("mysql-configmap.yaml")], true)?;
        self.wait_pod("mysql-pod")?;
        self.kubectl(&["get", "configmap", "mysql-config"], true)?;
        self.kubectl(
            &[
                "exec",
                "mysql-pod",
                "--",
                "cat",
                "/etc/mysql/conf.d/mysql.cnf",
            ],
            true,
        )?;
        self.mysql("SHOW VARIABLES LIKE 'character_set_server'; SHOW DATABASES LIKE 'tutorial'")?;
        self.say(
            "A password from a Secret",
            "mysql-secret.yaml keeps the password in a Secret (base64 in `data`) and gives
it to the container as MYSQL_ROOT_PASSWORD with secretKeyRef. A Secret read into the
environment is read when the container starts: change it, and the pod must be made again.
(The database was initialised by the first pod, so its password stays the one set then.)",
        )?;
        self.kubectl(&["delete", "pod", "mysql-pod"], true)?;
        self.kubectl(&["apply", "-f", &file("mysql-secret.yaml")], true)?;
        self.wait_pod("mysql-pod")?;
        self.kubectl(&["get", "secret", "mysql-password"], true)?;
        let b64 = self.kubectl(
            &[
                "get",
                "secret",
                "mysql-password",
                "-o",
                "jsonpath={.data.PASSWORD}",
            ],
            true,
        )?;
        println!("\n==> echo {b64} | base64 -d");
        use base64::Engine;
        let pw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("the Secret's PASSWORD is not base64")?;
        print!("{}", String::from_utf8_lossy(&pw));
        self.mysql("SELECT CURRENT_USER(); SHOW DATABASES LIKE 'tutorial'")?;
        self.kubectl(&["delete", "-f", &file("mysql-secret.yaml")], true)?;
        Ok(())
    }

    /// Waits (kubectl's watch) until pod `name` is Ready.
    fn wait_pod(&self, name: &str) -> Result<()> {
        self.kubectl(
            &[
                "wait",
                "--for=condition=Ready",
                &format!("pod/{name}"),
                "--timeout=120s",
            ],
            true,
        )
        .map(|_| ())
    }

    /// `kubectl exec mysql-pod -- mysql -uroot -p123456 -e SQL`, once the server answers (a
    /// first start initialises the database before it listens; the pod has no readiness
    /// probe to say so).
    fn mysql(&self, sql: &str) -> Result<String> {
        let args = [
            "exec",
            "mysql-pod",
            "--",
            "mysql",
            "-uroot",
            "-p123456",
            "-e",
            sql,
        ];
        println!("==> kubectl exec mysql-pod -- mysql -uroot -p123456 -e \"{sql}\"");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match self.kubectl(&args, false) {
                Ok(out) => {
                    print!("{out}");
                    return Ok(out);
                }
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(e) if format!("{e:#}").contains("Access denied") => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        }
    }

    /// Waits (kubectl's watch) until the RC `name` has `n` ready replicas.
    fn wait_rc(&self, name: &str, n: u32) -> Result<()> {
        self.kubectl(
            &[
                "wait",
                &format!("rc/{name}"),
                &format!("--for=jsonpath={{.status.readyReplicas}}={n}"),
                "--timeout=120s",
            ],
            false,
        )
        .map(|_| ())
    }
}
