//! What the pod benchmarks share: the busybox image, a crun bundle of it, and timing pods one
//! after another through an agent's manifests directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `p` quantile of `v` (nearest rank).
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A process's resident memory, in KiB (0 when it is gone).
#[allow(dead_code)] // the cgroups benchmark includes this file and measures no memory
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The agent's JSON answer, or null.
pub fn api(sock: &Path, path: &str) -> serde_json::Value {
    knode::node::kubelet::api::get(sock, path)
        .ok()
        .and_then(|(_, b)| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// An image store under `root` with busybox imported as `bench/busybox:1`, and the directory
/// of its one layer (a rootfs for crun).
pub fn busybox_store(root: &Path, scratch: &Path) -> (oci::image::ImageStore, PathBuf) {
    let store = oci::image::ImageStore::open(&root.join("images")).unwrap();
    let layout = scratch.join("layout");
    oci::build::ImageBuilder::new()
        .layer(
            &knode::cli::demo::busybox_layer().unwrap(),
            oci::spec::Compression::Gzip,
        )
        .build()
        .write_oci_layout(&layout, "1")
        .unwrap();
    let rec = store
        .import(
            &layout,
            Some("bench/busybox"),
            &Default::default(),
            &oci::progress::NoProgress,
        )
        .unwrap()
        .remove(0);
    let rootfs = store.snapshots().fs_dir(&rec.layers[0].chain_id);
    (store, rootfs)
}

/// `crun spec` in `bundle`, adjusted to run `sleep 3600` on `rootfs` (read-only); the caller
/// adds what else it needs and writes it.
pub fn crun_config(bundle: &Path, rootfs: &Path) -> serde_json::Value {
    std::fs::create_dir_all(bundle).unwrap();
    let st = Command::new("crun")
        .arg("spec")
        .current_dir(bundle)
        .status()
        .expect("crun (apt-get install crun)");
    assert!(st.success());
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sleep", "3600"]);
    cfg["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    cfg
}

/// Writes `n` pods (`p0`..) one after another into `manifests`, each once the previous one
/// runs; returns each one's latency (ms) from the manifest's rename to the agent's "Started"
/// event. `resources` is YAML under the container (indented by four), or empty.
pub fn start_pods(sock: &Path, manifests: &Path, n: usize, resources: &str) -> Vec<f64> {
    let mut written = vec![];
    for i in 0..n {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: bench/busybox:1\n    command: [sleep, '3600']\n{resources}"
        );
        let tmp = manifests.join(format!(".p{i}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        let t0 = chrono::Utc::now();
        std::fs::rename(&tmp, manifests.join(format!("p{i}.yaml"))).unwrap();
        written.push(t0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = api(sock, &format!("/pods/default/p{i}"));
            if v["pod"]["status"]["containerStatuses"][0]["ready"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "pod p{i} did not start: {v}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    written
        .iter()
        .enumerate()
        .map(|(i, t0)| {
            let v = api(sock, &format!("/pods/default/p{i}"));
            let started = v["events"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["reason"] == "Started")
                .and_then(|e| {
                    serde_json::from_value::<chrono::DateTime<chrono::Utc>>(e["time"].clone()).ok()
                })
                .expect("a Started event");
            (started - *t0).num_microseconds().unwrap() as f64 / 1000.0
        })
        .collect()
}
