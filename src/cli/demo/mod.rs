//! The main job on embedded defaults: start a registry (unless one is given), build the demo
//! image from the host's static busybox, push it, pull it with knode and show it.

pub mod registry;

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use oci::build::{ImageBuilder, TarBuilder, TarEntry};
use oci::image::PullOptions;
use oci::reference::Reference;
use oci::registry::{ClientOptions, RegistryClient};
use oci::spec::{Compression, RunConfig};
use oci::tar::EntryKind;

use crate::cli::image::{self, CliProgress};
use registry::LocalRegistry;

pub const BUSYBOX: &str = "/bin/busybox";
pub const DEMO_REPO: &str = "knode/demo";

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

pub fn demo_run_config() -> RunConfig {
    RunConfig {
        env: Some(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ]),
        cmd: Some(vec![
            "httpd".into(),
            "-f".into(),
            "-v".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/www".into(),
        ]),
        exposed_ports: Some(
            [("8080/tcp".to_string(), serde_json::json!({}))]
                .into_iter()
                .collect(),
        ),
        working_dir: Some("/".into()),
        ..Default::default()
    }
}

/// Builds the demo image and pushes it to `registry` as `knode/demo:latest`.
pub fn push_demo_image(registry: &str) -> Result<Reference> {
    let r: Reference = format!("{registry}/{DEMO_REPO}:latest").parse()?;
    let img = ImageBuilder::new()
        .layer(&busybox_layer()?, Compression::Gzip)
        .run_config(demo_run_config())
        .build();
    let client = RegistryClient::new(ClientOptions::default())?;
    img.push(&client, &r)
        .with_context(|| format!("pushing the demo image to {registry}"))?;
    Ok(r)
}

pub fn run(
    root: &Path,
    run_dir: &Path,
    registry: Option<&str>,
    client: ClientOptions,
) -> Result<()> {
    let local;
    let registry = match registry {
        Some(r) => r.to_string(),
        None => {
            local = LocalRegistry::start()?;
            println!("==> started a local registry on {}", local.host());
            local.host()
        }
    };
    let r = push_demo_image(&registry)?;
    println!("==> built the demo image from {BUSYBOX} and pushed it as {r}");
    let store = crate::node::images::store_at(root)?;
    println!("==> knode image pull {r}");
    let t = std::time::Instant::now();
    let rep = store.pull(
        &r.to_string(),
        client,
        &PullOptions::default(),
        &CliProgress::new(),
    )?;
    println!(
        "pulled {} in {:.0} ms ({} layer(s) fetched, {} reused)",
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
        print!(
            "/www/index.html: {}",
            std::fs::read_to_string(rootfs.join("www/index.html"))?
        );
        let cfg = store.config(&rep.image)?.config.unwrap_or_default();
        println!("default command: {}", cfg.cmd.unwrap_or_default().join(" "));
        Ok(())
    })();
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::empty())
        .context("unmounting the demo rootfs")?;
    std::fs::remove_dir_all(&work)?;
    shown?;
    run_pod(root, run_dir, &r.to_string())
}

const DEMO_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: server
    image: IMAGE
    imagePullPolicy: IfNotPresent
  - name: client
    image: IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#;

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

/// Brings up a node agent in a network namespace of its own, runs the demo pod on the pod
/// network and shows it answering.
fn run_pod(root: &Path, run_dir: &Path, image: &str) -> Result<()> {
    let _ = ip_netns(&["del", DEMO_NETNS]);
    ip_netns(&["add", DEMO_NETNS])?;
    let r = run_pod_in_netns(root, run_dir, image);
    let _ = ip_netns(&["del", DEMO_NETNS]);
    r
}

fn run_pod_in_netns(root: &Path, run_dir: &Path, image: &str) -> Result<()> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let manifests = run_dir.join("demo-manifests");
    let _ = std::fs::remove_dir_all(&manifests);
    std::fs::create_dir_all(&manifests)?;
    let log_dir = run_dir.join("demo-logs");
    let ipam = run_dir.join("demo-ipam");
    let _ = std::fs::remove_dir_all(&ipam);
    let conf = run_dir.join("demo-net.conflist");
    let conf_text = include_str!("../../../cni/10-knode.conflist")
        .replace("/var/lib/knode/cni/networks", &ipam.display().to_string());
    oci::fsutil::write_atomic(&conf, conf_text.as_bytes())?;
    println!(
        "==> knode agent --manifests {} --cni-conf {} (in network namespace {DEMO_NETNS})",
        manifests.display(),
        conf.display()
    );
    // Resource limits where the host has cgroup v2; said plainly where it has not.
    let cgroups = match crate::node::cgroup::probe() {
        Ok(m) => {
            println!(
                "==> resource limits: cgroup v2 at {} (pods under knode-demo/)",
                m.display()
            );
            vec!["--cgroup-root", "knode-demo"]
        }
        Err(e) => {
            println!("==> resource limits off (--cgroups=disabled): {e}");
            vec!["--cgroups=disabled"]
        }
    };
    let netns_arg = format!("--net=/var/run/netns/{DEMO_NETNS}");
    let mut agent = Command::new("nsenter")
        .arg(&netns_arg)
        .arg(&exe)
        .arg("--root")
        .arg(root)
        .arg("--run-dir")
        .arg(run_dir)
        .args(["agent", "--manifests"])
        .arg(&manifests)
        .arg("--log-dir")
        .arg(&log_dir)
        .arg("--cni-conf")
        .arg(&conf)
        .args(&cgroups)
        .spawn()
        .context("starting the agent (nsenter is in util-linux)")?;
    let result = (|| -> Result<()> {
        std::fs::write(manifests.join("web.yaml"), DEMO_POD.replace("IMAGE", image))?;
        println!("==> a pod manifest in the manifests directory: web (server: busybox httpd on :8080, client)");
        let sock = crate::node::kubelet::socket(run_dir);
        let t = std::time::Instant::now();
        let deadline = t + std::time::Duration::from_secs(60);
        loop {
            if let Ok((200, body)) = crate::node::kubelet::api::get(&sock, "/pods/default/web") {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let statuses = v["pod"]["status"]["containerStatuses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if statuses.len() == 2 && statuses.iter().all(|c| c["ready"] == true) {
                    break;
                }
            }
            if std::time::Instant::now() > deadline {
                bail!("the demo pod did not start within 60 s (see `knode describe pod web`)");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!(
            "pod running {:.0} ms after its manifest appeared",
            t.elapsed().as_secs_f64() * 1000.0
        );
        println!("==> knode get pods -o wide");
        crate::cli::get::get_pods(&sock, Some("default"), Some("wide"))?;
        let ip = match crate::node::kubelet::api::get(&sock, "/pods/default/web") {
            Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["pod"]["status"]["podIP"].as_str().map(str::to_string)),
            _ => None,
        }
        .context("the demo pod has no IP")?;
        let url = format!("http://{ip}:8080/");
        println!("==> knode exec web -c client -- wget -qO- {url}   (the pod's own IP)");
        let out = Command::new(&exe)
            .arg("--run-dir")
            .arg(run_dir)
            .args(["exec", "web", "-c", "client", "--", "wget", "-qO-", &url])
            .output()?;
        if !out.status.success() {
            bail!(
                "the server did not answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
        println!("==> wget -qO- {url}   (from the node, over the knode0 bridge)");
        let out = Command::new("nsenter")
            .arg(&netns_arg)
            .args([BUSYBOX, "wget", "-qO-", &url])
            .output()?;
        if !out.status.success() {
            bail!(
                "the pod did not answer the node: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
        println!("==> knode logs web -c server");
        crate::cli::logs::logs(
            &sock,
            &crate::cli::logs::LogArgs {
                namespace: "default",
                pod: "web",
                container: Some("server"),
                follow: false,
                tail: None,
                previous: false,
            },
        )?;
        std::fs::remove_file(manifests.join("web.yaml"))?;
        println!("==> manifest removed: the pod is stopped and cleaned up");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::fs::read_dir(run_dir.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0)
            > 0
        {
            if std::time::Instant::now() > deadline {
                bail!("the demo pod was not cleaned up within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    })();
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&manifests);
    let _ = std::fs::remove_dir_all(&log_dir);
    let _ = std::fs::remove_dir_all(&ipam);
    let _ = std::fs::remove_file(&conf);
    // The demo's (now empty) QoS and root cgroups.
    if let Some(m) = oci::runtime::cgroup2_mount().filter(|_| cgroups.len() == 2) {
        for d in [
            "knode-demo/burstable",
            "knode-demo/besteffort",
            "knode-demo",
        ] {
            let _ = std::fs::remove_dir(m.join(d));
        }
    }
    result?;
    println!("==> done");
    Ok(())
}
