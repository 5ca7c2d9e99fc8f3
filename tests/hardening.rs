//! The node against hostile manifests and containers, case by case (as root). Each test is a
//! finding of an adversarial review: it failed before the fix it names.
//!
//! - paths built from input: volume names and namespaces that would reach host directories;
//! - modes and ids: setuid modes on volume files, runAsNonRoot, the -1 user;
//! - what node users can reach: container writable layers, emptyDirs, secrets, logs (checked
//!   as a real unprivileged user, `nobody`, through setpriv);
//! - /etc files readable by non-root containers and bounded on the node;
//! - names: hostname injection, env names, duplicate UIDs, 253-character pod names;
//! - bounded reads: FIFOs, devices, oversized files and objects, 10,000 containers;
//! - crashes: publishing first, orphans torn down in parallel within their grace, attempts
//!   cut short, pulls that never end, running out of descriptors, lost shims.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::node::*;
use support::*;

/// Mount points at or below `p`.
fn mounts_under(p: &Path) -> Vec<String> {
    let p = p.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &p || m.starts_with(&format!("{p}/")))
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn message(n: &Node, ns: &str, name: &str) -> String {
    n.pod_in(ns, name)
        .and_then(|p| p["status"]["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn waiting(n: &Node, name: &str) -> (String, String) {
    let p = n.pod(name).unwrap_or_default();
    let w = &state_of(&p, "containerStatuses", "c")["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default().to_string(),
        w["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn volume_names_cannot_reach_host_directories() {
    let n = Node::new();
    let victims: Vec<PathBuf> = ["cm", "ed", "mem"]
        .iter()
        .map(|k| n.s.root().join(format!("victim-{k}")))
        .collect();
    for v in &victims {
        std::fs::create_dir_all(v).unwrap();
        std::fs::write(v.join("keep"), "precious").unwrap();
        std::fs::set_permissions(v, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    n.write(
        "cm.yaml",
        "kind: ConfigMap\nmetadata: {name: cm}\ndata: {k: v}\n",
    );
    // Absolute names replace the state path they are joined to; relative ones climb out.
    let climb = format!(
        "{}{}",
        "../".repeat(24),
        victims[2].display().to_string().trim_start_matches('/')
    );
    n.write(
        "evil.yaml",
        &pod_yaml(
            "evil",
            &format!(
                "  volumes:\n  - {{name: '{}', configMap: {{name: cm}}}}\n  - {{name: '{}', emptyDir: {{}}}}\n  - {{name: '{climb}', emptyDir: {{medium: Memory}}}}\n",
                victims[0].display(),
                victims[1].display()
            ),
            &format!(
                "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n    volumeMounts:\n    - {{name: '{}', mountPath: /a}}\n    - {{name: '{}', mountPath: /b}}\n    - {{name: '{climb}', mountPath: /c}}\n",
                victims[0].display(),
                victims[1].display()
            ),
        ),
    );
    n.until("the pod fails validation", |n| n.phase("evil") == "Failed");
    let msg = message(&n, "default", "evil");
    for i in 0..3 {
        assert!(
            msg.contains(&format!("spec.volumes[{i}].name: Invalid value:")),
            "{msg}"
        );
    }
    assert!(
        msg.contains(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters"
        ),
        "{msg}"
    );
    let intact = |when: &str| {
        for v in &victims {
            assert_eq!(
                std::fs::read_to_string(v.join("keep")).unwrap_or_default(),
                "precious",
                "{when}: {} was emptied",
                v.display()
            );
            assert_eq!(mode(v), 0o700, "{when}: {} was chmodded", v.display());
            assert!(
                mounts_under(v).is_empty(),
                "{when}: something is mounted on {}",
                v.display()
            );
        }
    };
    intact("while the pod exists");
    n.remove("evil.yaml");
    n.until("the pod is gone", |n| n.pod("evil").is_none());
    intact("after the pod is deleted");
}

#[test]
fn an_invalid_pod_gets_no_filesystem_work() {
    let n = Node::new();
    // With `namespace: <root>/victim`, the log directory `<ns>_<name>_<uid>` is this path.
    let prefix = n.s.root().join("victim");
    let target = PathBuf::from(format!("{}_web_evil-uid", prefix.display()));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep"), "precious").unwrap();
    let ns = prefix.display().to_string();
    n.write(
        "web.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: '{ns}', uid: evil-uid}}\nspec:\n  containers: [{{name: c, image: test/busybox:1, command: [sleep, '600']}}]\n"),
    );
    n.until("the pod fails validation", |n| {
        n.pod_in(&ns, "web")
            .is_some_and(|p| p["status"]["phase"] == "Failed")
    });
    assert!(
        message(&n, &ns, "web").contains("metadata.namespace: Invalid value:"),
        "{}",
        message(&n, &ns, "web")
    );
    n.remove("web.yaml");
    n.until("the pod is gone", |n| n.pod_in(&ns, "web").is_none());
    assert_eq!(
        std::fs::read_to_string(target.join("keep")).unwrap_or_default(),
        "precious",
        "a host directory named after the invalid pod was deleted"
    );
}

#[test]
fn file_modes_above_0777_are_refused_and_modes_are_exact() {
    let n = Node::new();
    n.write(
        "cm.yaml",
        "kind: ConfigMap\nmetadata: {name: tools}\ndata: {run.sh: \"echo hi\\n\"}\nbinaryData: {sx: IyEvYmluL3NoCg==}\n",
    );
    n.write(
        "suid.yaml",
        &pod_yaml(
            "suid",
            "  volumes:\n  - name: t\n    configMap: {name: tools, defaultMode: 04755}\n  - name: u\n    configMap:\n      name: tools\n      items: [{key: sx, path: sx, mode: 06777}]\n",
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n    volumeMounts: [{name: t, mountPath: /t}, {name: u, mountPath: /u}]\n",
        ),
    );
    n.write(
        "exact.yaml",
        &pod_yaml(
            "exact",
            "  volumes:\n  - name: t\n    configMap: {name: tools, defaultMode: 0750}\n",
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'stat -c %a /t/run.sh; sleep 600']\n    volumeMounts: [{name: t, mountPath: /t}]\n",
        ),
    );
    n.until("suid fails and exact runs", |n| {
        n.phase("suid") == "Failed" && logs(n, &["exact"]).contains("750")
    });
    let msg = message(&n, "default", "suid");
    assert!(
        msg.contains("spec.volumes[0].configMap.defaultMode: Invalid value: 2541: must be a number between 0 and 0777 (octal), both inclusive"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.volumes[1].configMap.items[0].mode: Invalid value: 3583: must be a number between 0 and 0777 (octal), both inclusive"),
        "{msg}"
    );
    // Nowhere under the node's state is there a setuid or setgid volume file.
    for f in find(&n.s.root().join("run/pods"), "sx")
        .into_iter()
        .chain(find(&n.s.root().join("run/pods"), "run.sh"))
    {
        assert_eq!(mode(&f) & 0o6000, 0, "{} is setuid/setgid", f.display());
    }
}

#[test]
fn node_users_cannot_reach_what_containers_write_nor_secrets_nor_logs() {
    let mut n = Node::stopped();
    // Roots an older knode left world-readable, and a shared log directory (like
    // /var/log/pods): the agent makes its roots root's only and its pod directories 0750.
    std::fs::set_permissions(n.s.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(n.s.root().join("run")).unwrap();
    std::fs::set_permissions(
        n.s.root().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(n.s.root().join("logs")).unwrap();
    std::fs::set_permissions(
        n.s.root().join("logs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    n.start_agent();
    n.write(
        "s.yaml",
        "kind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n",
    );
    n.write(
        "suid.yaml",
        &pod_yaml(
            "suid",
            "  volumes:\n  - {name: scratch, emptyDir: {}}\n  - {name: sec, secret: {secretName: s}}\n",
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'cp /bin/busybox /tmp/sx && chmod 4755 /tmp/sx && cp /bin/busybox /scratch/sx && chmod 4755 /scratch/sx && echo planted; sleep 600']\n    volumeMounts: [{name: scratch, mountPath: /scratch}, {name: sec, mountPath: /sec}]\n",
        ),
    );
    n.until("the setuid binaries are planted", |n| {
        logs(n, &["suid"]).contains("planted")
    });
    // In the writable layer, in the container's rootfs (the overlay, mounted on the node)
    // and in the emptyDir.
    let planted = find(n.s.root(), "sx");
    assert_eq!(planted.len(), 3, "{planted:?}");
    for f in &planted {
        assert_ne!(mode(f) & 0o4000, 0, "the container made it setuid");
        let o = as_nobody(&[&f.display().to_string(), "id", "-u"]);
        assert!(
            !o.status.success(),
            "nobody ran {} (stdout {:?})",
            f.display(),
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let secret = find(&n.s.root().join("run"), "password");
    assert_eq!(secret.len(), 1, "{secret:?}");
    let o = as_nobody(&["cat", &secret[0].display().to_string()]);
    assert!(!o.status.success(), "nobody read the secret");
    let log = find(&n.s.root().join("logs"), "0.log");
    assert_eq!(log.len(), 1, "{log:?}");
    let o = as_nobody(&["cat", &log[0].display().to_string()]);
    assert!(!o.status.success(), "nobody read the container's log");
    assert_eq!(mode(log[0].parent().unwrap().parent().unwrap()), 0o750);
    assert_eq!(mode(&log[0]), 0o640);
    for d in ["", "run", "images"] {
        assert_eq!(mode(&n.s.root().join(d)), 0o700, "{d}");
    }
}

#[test]
fn run_as_non_root_is_enforced_and_the_minus_one_user_is_refused() {
    let n = Node::new();
    let ctr = |sc: &str, cmd: &str| {
        format!("  - name: c\n    image: test/busybox:1\n    command: [sh, -c, '{cmd}']\n{sc}")
    };
    n.write(
        "image.yaml",
        &pod_yaml(
            "nr-image",
            "  securityContext: {runAsNonRoot: true}\n",
            &ctr("", "sleep 600"),
        ),
    );
    n.write(
        "zero.yaml",
        &pod_yaml(
            "nr-zero",
            "",
            &ctr(
                "    securityContext: {runAsNonRoot: true, runAsUser: 0}\n",
                "sleep 600",
            ),
        ),
    );
    n.write(
        "ok.yaml",
        &pod_yaml(
            "nr-ok",
            "  securityContext: {runAsNonRoot: true, runAsUser: 1000}\n",
            &ctr("", "id -u; sleep 600"),
        ),
    );
    n.write(
        "minus.yaml",
        &pod_yaml(
            "minus-one",
            "  securityContext: {runAsUser: 4294967295}\n",
            &ctr(
                "    securityContext: {runAsGroup: 4294967295}\n",
                "id; sleep 600",
            ),
        ),
    );
    n.until("the checks are applied", |n| {
        waiting(n, "nr-image").0 == "CreateContainerConfigError"
            && waiting(n, "nr-zero").0 == "CreateContainerConfigError"
            && logs(n, &["nr-ok"]) == "1000\n"
            && n.phase("minus-one") == "Failed"
    });
    let uid = uid_of(&n, "nr-image");
    assert_eq!(
        waiting(&n, "nr-image").1,
        format!("container has runAsNonRoot and image will run as root (pod: \"nr-image_default({uid})\", container: c)")
    );
    let uid = uid_of(&n, "nr-zero");
    assert_eq!(
        waiting(&n, "nr-zero").1,
        format!("container's runAsUser breaks non-root policy (pod: \"nr-zero_default({uid})\", container: c)")
    );
    let msg = message(&n, "default", "minus-one");
    assert!(
        msg.contains("spec.securityContext.runAsUser: Invalid value: 4294967295: must be between 0 and 2147483647, inclusive")
            && msg.contains("spec.containers[0].securityContext.runAsGroup: Invalid value: 4294967295"),
        "{msg}"
    );
    let d = String::from_utf8_lossy(&n.knode(&["describe", "pod", "nr-image"]).stdout).into_owned();
    assert!(d.contains("Error: container has runAsNonRoot"), "{d}");
    // The runtime refuses the -1 user whatever asks for it (an image's USER too).
    let o = n.s.knode(&[
        "run",
        "--user",
        "4294967295",
        "test/busybox:1",
        "--",
        "id",
        "-u",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("4294967295 (-1) is not a valid user or group ID"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn etc_files_are_readable_by_any_user_and_cannot_grow_without_bound() {
    let n = Node::new();
    n.write(
        "etc.yaml",
        &pod_yaml(
            "etc",
            "",
            "  - name: reader\n    image: test/busybox:1\n    securityContext: {runAsUser: 1000}\n    command: [sh, -c, 'cat /etc/hosts /etc/hostname /etc/resolv.conf >/dev/null && echo readable; sleep 600']\n  - name: filler\n    image: test/busybox:1\n    command: [sh, -c, 'dd if=/dev/zero of=/etc/hosts bs=1M count=64 2>/dev/null; echo dd=$?; sleep 600']\n",
        ),
    );
    n.until("both containers reported", |n| {
        logs(n, &["etc", "-c", "reader"]).contains("readable")
            && logs(n, &["etc", "-c", "filler"]).contains("dd=")
    });
    assert_eq!(
        logs(&n, &["etc", "-c", "filler"]),
        "dd=1\n",
        "the write was cut short"
    );
    let uid = uid_of(&n, "etc");
    let etc = n.s.root().join("run/pods").join(uid).join("etc");
    assert!(std::fs::metadata(etc.join("hosts")).unwrap().len() < 1 << 20);
    for f in ["hostname", "resolv.conf"] {
        assert_eq!(mode(&etc.join(f)), 0o644, "{f}");
    }
}

#[test]
fn hostnames_env_names_uids_and_long_names_are_handled_as_kubernetes_does() {
    let n = Node::new();
    let c = "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'echo ok; sleep 600']\n";
    n.write(
        "host.yaml",
        &pod_yaml(
            "hostile-hostname",
            "  hostname: \"evil\\n6.6.6.6 bank.example\"\n",
            c,
        ),
    );
    n.write(
        "env.yaml",
        &pod_yaml(
            "bad-env",
            "",
            "  - name: c\n    image: test/busybox:1\n    env: [{name: 'A=B', value: x}, {name: '', value: y}]\n",
        ),
    );
    let same = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: shared-uid}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n{c}")
    };
    n.write("a-first.yaml", &same("first"));
    n.write("b-second.yaml", &same("second"));
    let long = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(long.len(), 253);
    n.write("long.yaml", &pod_yaml(&long, "", c));
    n.until("every pod settled", |n| {
        n.phase("hostile-hostname") == "Failed"
            && n.phase("bad-env") == "Failed"
            && n.running("first")
            && n.running(&long)
    });
    assert!(
        message(&n, "default", "hostile-hostname")
            .contains("spec.hostname: Invalid value: \"evil\\n6.6.6.6 bank.example\": a lowercase RFC 1123 label"),
        "{}",
        message(&n, "default", "hostile-hostname")
    );
    let env = message(&n, "default", "bad-env");
    assert!(
        env.contains("spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='")
            && env.contains("spec.containers[0].env[1].name: Required value"),
        "{env}"
    );
    assert!(
        n.pod("second").is_none(),
        "the second pod with the UID runs"
    );
    assert!(
        n.manifest_errors()
            .contains("b-second.yaml: pod default/second: metadata.uid \\\"shared-uid\\\" is already used by pod default/first"),
        "{}",
        n.manifest_errors()
    );
    assert_eq!(logs(&n, &[&long]), "ok\n");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[test]
fn fifos_and_devices_in_the_manifests_directory_do_not_block_the_agent() {
    let n = Node::new();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        n.manifests.join("pipe.yaml"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", n.manifests.join("zero.yaml")).unwrap();
    let c = "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n";
    n.write("ok.yaml", &pod_yaml("ok", "", c));
    n.until("a pod runs beside the FIFO and the device", |n| {
        n.running("ok")
    });
    let errs = n.manifest_errors();
    assert!(
        errs.contains("pipe.yaml: not a regular file")
            && errs.contains("zero.yaml: not a regular file"),
        "{errs}"
    );
    // A new symlink to a manifest is a manifest.
    let elsewhere = n.s.root().join("linked-pod.yaml");
    std::fs::write(&elsewhere, pod_yaml("linked", "", c)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, n.manifests.join("linked.yaml")).unwrap();
    n.until("the symlinked pod runs", |n| n.running("linked"));
}

#[test]
fn objects_over_the_api_limit_are_refused_and_memory_is_given_back() {
    let n = Node::new();
    let config_map = |name: &str, bytes: usize| {
        n.write(
            &format!("{name}.yaml"),
            &format!(
                "kind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: {}}}\n",
                "x".repeat(bytes)
            ),
        )
    };
    config_map("big", 50 << 20);
    n.until("the 50 MB ConfigMap is refused", |n| {
        n.manifest_errors().contains(
            "big.yaml: 52428850 bytes: larger than the 10485760-byte limit on a manifest file",
        )
    });
    config_map("big2", 2 << 20);
    n.until("the 2 MB ConfigMap is refused", |n| {
        n.manifest_errors().contains(
            "ConfigMap \\\"big2\\\" is invalid: []: Too long: may not be more than 1048576 bytes",
        )
    });
    // Large objects that come and go leave the agent's memory as it was.
    let before = rss_kb(n.agent_pid());
    for i in 0..20 {
        config_map(&format!("cm{i}"), 1_000_000);
    }
    n.write(
        "uses.yaml",
        &pod_yaml(
            "uses",
            "  volumes: [{name: v, configMap: {name: cm19}}]\n",
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'wc -c < /v/k; sleep 600']\n    volumeMounts: [{name: v, mountPath: /v}]\n",
        ),
    );
    n.until("the last ConfigMap is in use", |n| {
        logs(n, &["uses"]).contains("1000000")
    });
    let peak = rss_kb(n.agent_pid());
    for i in 0..20 {
        n.remove(&format!("cm{i}.yaml"));
    }
    n.remove("uses.yaml");
    n.until("the pod using them is gone", |n| n.pod("uses").is_none());
    let after = rss_kb(n.agent_pid());
    eprintln!(
        "agent RSS: {before} kB before, {peak} kB with 20 MB of ConfigMaps, {after} kB after"
    );
    assert!(peak > before + 10_000, "the objects were not loaded");
    assert!(
        after < before + (peak - before) / 2,
        "the agent kept the memory of objects that are gone: {before} kB -> {peak} kB -> {after} kB"
    );
}

#[test]
fn a_pod_with_ten_thousand_containers_is_refused_at_once() {
    let n = Node::new();
    let c = "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n";
    let many: String = (0..10_000)
        .map(|i| format!("  - {{name: c{i}, image: test/busybox:1, command: [sleep, '600']}}\n"))
        .collect();
    n.write("many.yaml", &pod_yaml("many", "", &many));
    n.write("after.yaml", &pod_yaml("after", "", c));
    n.until("the huge pod fails and the next one runs", |n| {
        n.phase("many") == "Failed" && n.running("after")
    });
    assert!(
        message(&n, "default", "many")
            .contains("spec.containers: Too many: 10000: must have at most 128 items"),
        "{}",
        message(&n, "default", "many")
    );
    assert!(
        !n.run_dir().join("pods").join(uid_of(&n, "many")).exists(),
        "the refused pod got a directory"
    );
}

/// The PIDs of a pod's running containers.
fn pod_pids(n: &Node, uid: &str) -> Vec<i32> {
    find(&n.run_dir().join("pods").join(uid), "pid")
        .iter()
        .filter(|p| p.parent().is_some_and(|s| s.ends_with("state")))
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .collect()
}

#[test]
fn a_restarted_agent_serves_at_once_and_tears_orphans_down_within_their_grace() {
    let mut n = Node::new();
    // Three containers that ignore SIGTERM: each needs its whole grace period and SIGKILL.
    let stubborn: String = ["a", "b", "c"]
        .iter()
        .map(|c| format!("  - name: {c}\n    image: test/busybox:1\n    command: [sh, -c, 'trap \"\" TERM; while true; do sleep 0.1; done']\n"))
        .collect();
    n.write(
        "old.yaml",
        &pod_yaml("old", "  terminationGracePeriodSeconds: 8\n", &stubborn),
    );
    n.write(
        "keep.yaml",
        &pod_yaml(
            "keep",
            "",
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n",
        ),
    );
    n.until("both pods run", |n| n.running("old") && n.running("keep"));
    let created = n.pod("keep").unwrap()["metadata"]["creationTimestamp"].clone();
    let old_uid = uid_of(&n, "old");
    let pids = pod_pids(&n, &old_uid);
    assert_eq!(pids.len(), 3);
    // The agent dies in the middle of the old pod's deletion.
    n.remove("old.yaml");
    n.until("the deletion began", |n| {
        n.pod("old")
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
    });
    n.kill_agent();
    n.write(
        "fresh.yaml",
        &pod_yaml(
            "fresh",
            "",
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n",
        ),
    );
    n.start_agent();
    n.until("the adopted and the new pod run", |n| {
        n.running("keep") && n.running("fresh")
    });
    assert!(
        pids.iter().any(|p| alive(*p)),
        "the new pod had to wait for the orphan's teardown"
    );
    assert_eq!(
        n.pod("keep").unwrap()["metadata"]["creationTimestamp"],
        created,
        "the creation time survives a restart"
    );
    // Within the 8 s grace period (what was left of it) and a margin, all three at once.
    n.until_within("the orphan is torn down", Duration::from_secs(8 + 6), |n| {
        pids.iter().all(|p| !alive(*p)) && !n.run_dir().join("pods").join(&old_uid).exists()
    });
}

#[test]
fn an_attempt_cut_short_by_a_crash_is_unmounted_and_its_lease_released() {
    let mut n = Node::new();
    n.write(
        "p.yaml",
        &pod_yaml(
            "p",
            "",
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n",
        ),
    );
    n.until("running", |n| n.running("p"));
    let uid = uid_of(&n, "p");
    let pod_dir = n.run_dir().join("pods").join(&uid);
    let pid = container_pid(&n, "c");
    n.kill_agent();
    // The container ends; its shim records it.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    n.until("the exit is recorded", |_| {
        pod_dir.join("containers/c/0/state/exit.json").exists()
    });
    // What an agent killed between the next attempt's rootfs mount and its shim's start
    // leaves: attempt 1 recorded, its rootfs mounted, its image leased, no shim.
    let attempt = pod_dir.join("containers/c/1");
    std::fs::create_dir_all(attempt.join("rootfs")).unwrap();
    std::fs::create_dir_all(attempt.join("state")).unwrap();
    rustix::mount::mount(
        "tmpfs",
        attempt.join("rootfs"),
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    let lease =
        n.s.root()
            .join("images/leases")
            .join(knode::node::container::lease_name(&attempt));
    std::fs::write(&lease, "[]").unwrap();
    let pj = pod_dir.join("pod.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&pj).unwrap()).unwrap();
    v["c"]["attempt"] = 1.into();
    std::fs::write(&pj, serde_json::to_vec(&v).unwrap()).unwrap();
    n.start_agent();
    n.until("the container runs again", |n| {
        n.running("p") && !attempt.exists()
    });
    assert!(
        mounts_under(&attempt).is_empty(),
        "the interrupted attempt is still mounted"
    );
    assert!(!lease.exists(), "its image lease is still held");
}

#[test]
fn a_pod_deleted_during_its_image_pull_goes_away_at_once() {
    let reg = registry();
    push(&reg.host(), "slow/app:1", &busybox_image());
    let (proxy, stalled, release) = support::proxy::stalling(reg.addr);
    let n = Node::new();
    n.write(
        "slow.yaml",
        &pod_yaml(
            "slow",
            "",
            &format!(
                "  - name: c\n    image: {}/slow/app:1\n    command: [sleep, '600']\n",
                proxy.host()
            ),
        ),
    );
    // The pull is stuck halfway through a layer.
    stalled
        .recv_timeout(Duration::from_secs(60))
        .expect("the agent pulls the image");
    n.until("the pod shows the pull", |n| {
        waiting(n, "slow").1.contains("pulling image")
    });
    n.remove("slow.yaml");
    n.until_within(
        "the pod is gone while its pull hangs",
        Duration::from_secs(20),
        |n| n.pod("slow").is_none(),
    );
    n.until_no_pod_dirs();
    release.send(()).unwrap();
}

#[test]
fn the_agent_raises_its_open_files_limit_to_the_hard_one() {
    let mut n = Node::stopped();
    n.wrapper = vec!["prlimit".into(), "--nofile=512:2048".into(), "--".into()];
    n.start_agent();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", n.agent_pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(nofile, ["2048", "2048"], "{limits}");
}

#[test]
fn running_out_of_descriptors_delays_pods_and_never_ends_the_agent() {
    let mut n = Node::stopped();
    n.wrapper = vec!["prlimit".into(), "--nofile=56:56".into(), "--".into()];
    n.start_agent();
    let c = "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n";
    for i in 0..4 {
        n.write(&format!("k{i}.yaml"), &pod_yaml(&format!("k{i}"), "", c));
    }
    n.until("the first pods run", |n| {
        (0..4).all(|i| n.running(&format!("k{i}")))
    });
    let kept: Vec<i32> = (0..4)
        .flat_map(|i| pod_pids(&n, &uid_of(&n, &format!("k{i}"))))
        .collect();
    assert_eq!(kept.len(), 4);
    for i in 0..30 {
        n.write(&format!("p{i}.yaml"), &pod_yaml(&format!("p{i}"), "", c));
    }
    let pid = n.agent_pid();
    n.until("the agent runs out of descriptors", |_| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) >= 54
    });
    // The containers of the pods that did start before the descriptors ran out.
    let started: Vec<i32> = find(&n.run_dir().join("pods"), "pid")
        .iter()
        .filter(|p| p.parent().is_some_and(|s| s.ends_with("state")))
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .filter(|p| !kept.contains(p))
        .collect();
    for i in 0..30 {
        n.remove(&format!("p{i}.yaml"));
    }
    n.until("only the first pods are left", |n| {
        std::fs::read_dir(n.run_dir().join("pods")).map_or(0, |d| d.count()) == 4
    });
    // A failed read of the manifests never stopped a pod, and no deleted pod's container
    // was left running because its state could not be read.
    assert!(kept.iter().all(|p| alive(*p)), "a running pod was stopped");
    assert!(
        started.iter().all(|p| !alive(*p)),
        "a deleted pod's container still runs"
    );
    for i in 0..4 {
        let p = n.pod(&format!("k{i}")).unwrap();
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
        // What could not be read for lack of descriptors was not taken for a lost shim.
        let d = n.knode(&["describe", "pod", &format!("k{i}")]);
        assert!(!String::from_utf8_lossy(&d.stdout).contains("ShimLost"));
    }
    n.write("last.yaml", &pod_yaml("last", "", c));
    n.until("a new pod runs", |n| n.running("last"));
    let mut agent = n.agent.take().unwrap();
    assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
    n.agent = Some(agent);
}

#[test]
fn a_lost_shim_is_reported_and_its_container_still_gets_its_grace_period() {
    let n = Node::new();
    let marks = n.s.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    n.write(
        "lost.yaml",
        &pod_yaml(
            "lost",
            &format!(
                "  terminationGracePeriodSeconds: 10\n  volumes: [{{name: m, hostPath: {{path: '{}'}}}}]\n",
                marks.display()
            ),
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'trap \"sleep 1; echo bye > /m/bye; exit 0\" TERM; while true; do sleep 0.1; done']\n    volumeMounts: [{name: m, mountPath: /m}]\n",
        ),
    );
    n.until("running", |n| n.running("lost"));
    let shim: i32 = find(&n.run_dir().join("pods"), "shim.pid")
        .first()
        .map(|p| std::fs::read_to_string(p).unwrap().trim().parse().unwrap())
        .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(shim).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    n.until("the lost shim is reported", |n| {
        String::from_utf8_lossy(&n.knode(&["describe", "pod", "lost"]).stdout).contains("ShimLost")
    });
    assert!(n.running("lost"), "the container itself still runs");
    n.remove("lost.yaml");
    n.until("the pod is gone", |n| n.pod("lost").is_none());
    assert_eq!(
        std::fs::read_to_string(marks.join("bye")).unwrap_or_default(),
        "bye\n",
        "the container got SIGTERM and its grace period"
    );
}

#[test]
fn pods_beyond_max_pods_are_rejected_as_the_kubelet_rejects_them() {
    let mut n = Node::stopped();
    n.args = vec!["--max-pods".into(), "2".into()];
    n.start_agent();
    let c = "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n";
    n.write("p1.yaml", &pod_yaml("p1", "", c));
    n.write("p2.yaml", &pod_yaml("p2", "", c));
    n.until("two pods run", |n| n.running("p1") && n.running("p2"));
    n.write("p3.yaml", &pod_yaml("p3", "", c));
    n.until("the third is rejected", |n| n.phase("p3") == "Failed");
    let p3 = n.pod("p3").unwrap();
    assert_eq!(p3["status"]["reason"], "OutOfpods");
    assert_eq!(
        p3["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2"
    );
    assert!(
        !n.run_dir().join("pods").join(uid_of(&n, "p3")).exists(),
        "a rejected pod gets no directory"
    );
    let node: serde_json::Value =
        serde_json::from_slice(&n.knode(&["get", "nodes", "-o", "json"]).stdout).unwrap();
    let cap = &node["status"]["capacity"]["pods"];
    assert_eq!(cap, "2", "{node}");
}
