//! Pull + unpack benchmark (run as root: `cargo bench --bench pull`).
//!
//! A realistic Debian image (debootstrap minbase + a layer with redis-server and python3, built
//! by `bench/prepare-debian-layers.sh` and cached) is served by a local `docker-registry`.
//! Cold pulls are timed for:
//! - `knode image pull` (fresh store each run);
//! - `skopeo copy docker://... oci:...` followed by `umoci raw unpack` (the peer);
//! - the inflate bound: both layer blobs gunzipped in parallel to /dev/null (`zcat`).
//!
//! Then a second image sharing the base layer is pulled into a warm store to show that only
//! its new layer is transferred and applied. Figures and ratios are printed; nothing is
//! asserted (speed is a measurement, not a test).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use knode::cli::demo::registry::LocalRegistry;
use oci::build::ImageBuilder;
use oci::reference::Reference;
use oci::registry::{ClientOptions, RegistryClient};
use oci::spec::{Compression, RunConfig};

const CACHE: &str = "/var/cache/knode-bench";

fn runs() -> usize {
    std::env::var("KNODE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn sh(cmd: &mut Command) {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    if !out.status.success() {
        panic!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn time(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn drop_dir(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

/// Flushes what earlier runs wrote (and the discards of what they deleted), so that one
/// measurement does not pay for another's writeback.
fn settle() {
    sh(&mut Command::new("sync"));
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: stay out of test runs.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pull benchmark: run it with `cargo bench --bench pull` (as root)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    sh(Command::new(repo.join("bench/prepare-debian-layers.sh")).arg(CACHE));
    let knode = env!("CARGO_BIN_EXE_knode");

    println!("building the image (gzip -6, as registries serve it)...");
    let tars: Vec<Vec<u8>> = ["layer1.tar", "layer2.tar"]
        .iter()
        .map(|n| std::fs::read(Path::new(CACHE).join(n)).expect("read layer tar"))
        .collect();
    let blobs: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = tars
            .iter()
            .map(|t| s.spawn(move || oci::build::compress(t, Compression::Gzip)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let run = RunConfig {
        cmd: Some(vec!["redis-server".into()]),
        ..Default::default()
    };
    let mut b = ImageBuilder::new();
    for (t, blob) in tars.iter().zip(&blobs) {
        b = b.raw_layer(blob.clone(), Compression::Gzip, oci::digest::Digest::of(t));
    }
    let image = b.run_config(run.clone()).build();
    let extra = oci::build::TarBuilder::new()
        .dir("app", 0o755)
        .file("app/run.sh", 0o755, b"#!/bin/sh\nexec redis-server\n")
        .finish();
    let second = ImageBuilder::new()
        .raw_layer(
            blobs[0].clone(),
            Compression::Gzip,
            oci::digest::Digest::of(&tars[0]),
        )
        .layer(&extra, Compression::Gzip)
        .run_config(run)
        .build();
    let unpacked: usize = tars.iter().map(Vec::len).sum();
    let packed: usize = blobs.iter().map(Vec::len).sum();
    drop(tars);

    let reg = LocalRegistry::start().expect("registry");
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let full: Reference = format!("{}/bench/debian:full", reg.host()).parse().unwrap();
    let small: Reference = format!("{}/bench/debian:app", reg.host()).parse().unwrap();
    image.push(&client, &full).expect("push");
    second.push(&client, &small).expect("push");
    println!(
        "image: 2 layers, {:.1} MB gzip, {:.1} MB of tar; registry {}",
        packed as f64 / 1e6,
        unpacked as f64 / 1e6,
        reg.host()
    );

    // Where the stores and unpacked trees go. By default a fresh tmpfs: on this project's VMs
    // an aged ext4 spends seconds of kernel time per large extraction (GNU tar too), which
    // would measure the disk rather than the unpackers. KNODE_BENCH_DIR measures on a disk path.
    let (work, tmpfs) = match std::env::var_os("KNODE_BENCH_DIR") {
        Some(d) => (PathBuf::from(d).join("knode-bench-work"), false),
        None => (PathBuf::from("/var/tmp/knode-bench-work"), true),
    };
    drop_dir(&work);
    std::fs::create_dir_all(&work).unwrap();
    if tmpfs {
        sh(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6g,mode=0700", "knode-bench"])
            .arg(&work));
    }
    println!(
        "work dir: {} ({})",
        work.display(),
        if tmpfs { "tmpfs" } else { "disk" }
    );

    // The inflate bound, from the registry's own blob files (page cache warm, as for the others).
    let blob_files: Vec<PathBuf> = image
        .layers
        .iter()
        .map(|(d, _)| {
            let h = d.digest.hex();
            reg.storage().join(format!(
                "docker/registry/v2/blobs/sha256/{}/{}/data",
                &h[..2],
                h
            ))
        })
        .collect();
    let mut bound = Vec::new();
    let mut kn = Vec::new();
    let mut peer = Vec::new();
    for i in 0..runs() {
        settle();
        bound.push(time(|| {
            let kids: Vec<_> = blob_files
                .iter()
                .map(|f| {
                    Command::new("zcat")
                        .arg(f)
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut k in kids {
                assert!(k.wait().unwrap().success());
            }
        }));
        let root = work.join(format!("knode-{i}"));
        settle();
        kn.push(time(|| {
            sh(Command::new(knode).arg("--root").arg(&root).args([
                "image",
                "pull",
                &full.to_string(),
            ]))
        }));
        drop_dir(&root);
        let layout = work.join(format!("oci-{i}"));
        let rootfs = work.join(format!("rootfs-{i}"));
        settle();
        peer.push(time(|| {
            sh(Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{full}"))
                .arg(format!("oci:{}:full", layout.display())));
            sh(Command::new("umoci")
                .args(["raw", "unpack", "--image"])
                .arg(format!("{}:full", layout.display()))
                .arg(&rootfs));
        }));
        drop_dir(&layout);
        drop_dir(&rootfs);
        println!(
            "run {}: knode {:.2}s, skopeo+umoci {:.2}s, inflate bound {:.2}s",
            i + 1,
            kn[i],
            peer[i],
            bound[i]
        );
    }
    let (k, p, z) = (median(kn), median(peer), median(bound));
    println!();
    println!("cold pull + unpack, median of {} runs", runs());
    println!("  knode image pull            {k:>7.2} s");
    println!(
        "  skopeo copy + umoci unpack  {p:>7.2} s   knode is {:.2}x faster (goal >= 2.5x)",
        p / k
    );
    println!(
        "  inflate bound (zcat x2)     {z:>7.2} s   knode / bound = {:.2} (goal <= 1.3)",
        k / z
    );

    // Shared base layer: only the new layer moves.
    let root = work.join("shared");
    sh(Command::new(knode)
        .arg("--root")
        .arg(&root)
        .args(["image", "pull", &full.to_string()]));
    let out = Command::new(knode)
        .arg("--root")
        .arg(&root)
        .args(["image", "pull", &small.to_string()])
        .output()
        .unwrap();
    let t = Instant::now();
    let out2 = Command::new(knode)
        .arg("--root")
        .arg(&root)
        .args(["image", "pull", &small.to_string()])
        .output()
        .unwrap();
    let again = t.elapsed().as_secs_f64();
    println!();
    println!(
        "second image sharing the base layer: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    println!(
        "pulling it again (everything present): {:.3}s: {}",
        again,
        String::from_utf8_lossy(&out2.stdout).trim()
    );
    if tmpfs {
        sh(Command::new("umount").arg(&work));
    }
    drop_dir(&work);
}
