//! The second adversarial pass over the hardened node (as root): hostile pods and node
//! users, with cases of the reviewer's own. Each failed when it was written and names the
//! fix it checks: masks mounted from descriptors (a `/dev/null` swap race cannot redirect
//! them), removal of 100,000-deep trees without recursion, bounded `$(VAR)` expansion,
//! YAML nesting and size checked before parsing, configMap items bounded, logs of old runs
//! pruned; and it records what held (alias bombs, the seccomp and device probe, setuid
//! binaries through /proc/<pid>/root). Helper programs are small static C programs built
//! with `gcc -static` into an extra image layer (`test/adv:1` = busybox + /adv/*).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oci::build::{ImageBuilder, TarBuilder, TarEntry};
use oci::image::PullOptions;
use oci::spec::Compression;
use support::node::*;
use support::*;

const RACER_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/fs.h>
/* Flips /shared/null between a regular file and a symlink to a sysctl, forever. */
int main(int argc, char **argv) {
    const char *target = argc > 1 ? argv[1] : "/proc/sys/kernel/domainname";
    if (chdir("/shared")) { perror("chdir"); return 1; }
    int fd = open("null", O_CREAT | O_WRONLY, 0666); if (fd >= 0) close(fd);
    unlink("sym"); if (symlink(target, "sym")) { perror("symlink"); return 1; }
    fprintf(stderr, "racing\n");
    for (;;) syscall(SYS_renameat2, AT_FDCWD, "null", AT_FDCWD, "sym", RENAME_EXCHANGE);
}
"#;

const DEEP_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
/* Makes a directory chain N levels deep under the current directory. */
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    for (long i = 0; i < n; i++) {
        if (mkdir("d", 0755) && i == 0) perror("mkdir");
        if (chdir("d")) { perror("chdir"); return 1; }
    }
    printf("deep %ld\n", n); fflush(stdout);
    return 0;
}
"#;

const WHOAMI_C: &str = r#"
#include <dirent.h>
#include <stdio.h>
#include <unistd.h>
/* Prints its ids and whether it can open a directory given as argv[1]. */
int main(int argc, char **argv) {
    printf("uid=%d euid=%d\n", getuid(), geteuid());
    if (argc > 1) { DIR *d = opendir(argv[1]); printf("opendir %s: %s\n", argv[1], d ? "OK" : "denied"); }
    return 0;
}
"#;

const SYSPROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>
/* Tries system calls; prints name=0 or name=ERRNO. ONLY RUN IN A CONTAINER. */
static void r(const char *n, long v) { printf("%s=%s\n", n, v < 0 ? strerrorname_np(errno) : "0"); }
int main(void) {
    char c = 'x';
    r("sethostname", sethostname("adv", 3));
    r("setdomainname", setdomainname("adv", 3));
    r("vhangup", vhangup());
    r("tiocsti", ioctl(0, TIOCSTI, &c));
    r("fanotify_init", syscall(SYS_fanotify_init, 0, 0));
    r("pidfd_getfd", syscall(438, -1, 0, 0));
    r("process_madvise", syscall(440, -1, 0, 0, 0, 0));
    r("quotactl_fd", syscall(443, -1, 0, 0, 0));
    r("memfd_secret", syscall(447, 0));
    r("set_mempolicy_home_node", syscall(450, 0, 0, 0, 0));
    r("statmount", syscall(457, 0, 0, 0, 0));
    r("listmount", syscall(458, 0, 0, 0, 0));
    r("open_tree_attr", syscall(467, -100, "/", 0, 0, 0));
    r("add_key", syscall(SYS_add_key, "user", "x", "y", 1, -2));
    r("request_key", syscall(SYS_request_key, "user", "x", 0, 0));
    r("keyctl", syscall(SYS_keyctl, 0, -2, 0));
    r("unshare_user", unshare(CLONE_NEWUSER));
    r("socket_vsock", syscall(SYS_socket, 40, 1, 0));
    r("mknod_mem", mknod("/tmp/mem", S_IFCHR | 0600, makedev(1, 1)));
    r("open_mem", open("/tmp/mem", O_RDONLY));
    r("clock_adjtime", syscall(SYS_clock_adjtime, 0, 0));
    r("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    r("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, 0, 0));
    r("kcmp", syscall(SYS_kcmp, 1, 1, 0, 0, 0));
    r("chroot", chroot("/tmp"));
    return 0;
}
"#;

/// Compiles a static C program.
fn cc(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&c)
        .status()
        .unwrap();
    assert!(st.success(), "gcc {name}");
    std::fs::read(out).unwrap()
}

/// A stopped node whose store also has `test/adv:1`: busybox plus /adv/{racer,deep,whoami,
/// sysprobe} and /adv/suid (whoami, setuid root).
fn adv_node() -> Node {
    let n = Node::stopped();
    let t = tempfile::tempdir().unwrap();
    let mut tar = TarBuilder::new();
    tar.dir("adv", 0o755);
    for (name, src) in [
        ("racer", RACER_C),
        ("deep", DEEP_C),
        ("whoami", WHOAMI_C),
        ("sysprobe", SYSPROBE_C),
    ] {
        tar.file(&format!("adv/{name}"), 0o755, &cc(t.path(), name, src));
    }
    let mut suid = TarEntry::new("adv/suid", oci::tar::EntryKind::File);
    suid.mode = 0o4755;
    suid.data = cc(t.path(), "whoami", WHOAMI_C);
    tar.entry(&suid);
    let img = ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Gzip)
        .layer(&tar.finish(), Compression::Gzip)
        .run_config(knode::cli::demo::demo_run_config())
        .build();
    let lay = tempfile::tempdir().unwrap();
    img.write_oci_layout(lay.path(), "1").unwrap();
    n.s.store
        .import(
            lay.path(),
            Some("test/adv"),
            &PullOptions::default(),
            &oci::progress::NoProgress,
        )
        .unwrap();
    n
}

/// The agent's peak resident memory (VmHWM) in KiB.
fn agent_hwm_kib(n: &Node) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", n.agent_pid())).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn agent_alive(n: &mut Node) -> bool {
    n.agent
        .as_mut()
        .is_some_and(|a| a.try_wait().unwrap().is_none())
}

// ---------------------------------------------------------------------------------------
// Masked paths: the masks are applied after pivot_root by path, with the container's own
// "/dev/null" as the source. A container sharing an emptyDir mounted at another container's
// /dev swaps /dev/null for a symlink to a sysctl between setup_dev and mask(): the masked
// /proc/keys (or /proc/timer_list) becomes a writable bind of /proc/sys/... (runc CVE-2025-31133 class). Here the
// sysctl is the pod's own domainname (UTS-namespaced, harmless); the same works for
// /proc/sys/kernel/core_pattern, i.e. code execution as root on the host.
// ---------------------------------------------------------------------------------------

#[test]
fn masked_paths_cannot_be_redirected_by_a_dev_null_swap() {
    let mut n = adv_node();
    n.start_agent();
    let victims = 24;
    let mut ctrs = String::from(
        "  - name: racer\n    image: test/adv:1\n    command: [/adv/racer]\n    volumeMounts: [{name: shared, mountPath: /shared}]\n",
    );
    for i in 0..victims {
        ctrs += &format!(
            "  - name: v{i}\n    image: test/adv:1\n    command: [sh, -c, 'for f in /proc/keys /proc/timer_list; do echo pwned >$f; done 2>&1; if grep -q pwned /proc/sys/kernel/domainname; then echo ESCAPED; grep -e keys -e timer_list /proc/self/mountinfo; else echo held; fi; sleep 600']\n    volumeMounts: [{{name: shared, mountPath: /dev}}]\n"
        );
    }
    n.write(
        "race.yaml",
        &pod_yaml("race", "  volumes: [{name: shared, emptyDir: {}}]\n", &ctrs),
    );
    // Every victim either ran its probe (it prints "held" or "ESCAPED") or was refused at
    // start (the racer swapped a device node it was about to mount on).
    n.until("every victim has started or been refused", |n| {
        let p = n.pod("race").unwrap_or_default();
        (0..victims).all(|i| {
            let st = state_of(&p, "containerStatuses", &format!("v{i}"));
            logs(n, &["race", "-c", &format!("v{i}")]).contains("held")
                || logs(n, &["race", "-c", &format!("v{i}")]).contains("ESCAPED")
                || st["restartCount"].as_i64() > Some(0)
                || st["state"]["waiting"]["reason"] == "CreateContainerError"
        })
    });
    let mut escaped = vec![];
    for i in 0..victims {
        let l = logs(&n, &["race", "-c", &format!("v{i}")]);
        if l.contains("ESCAPED") {
            escaped.push(format!("v{i}: {l}"));
        }
    }
    for i in 0..3 {
        eprintln!("v{i}: {}", logs(&n, &["race", "-c", &format!("v{i}")]));
    }
    eprintln!("racer: {}", logs(&n, &["race", "-c", "racer"]));
    eprintln!(
        "{}",
        String::from_utf8_lossy(&n.knode(&["describe", "pod", "race"]).stdout)
    );
    n.remove("race.yaml");
    n.until("the pod is gone", |n| n.pod("race").is_none());
    assert!(agent_alive(&mut n));
    assert!(
        escaped.is_empty(),
        "a container wrote /proc/sys through a masked path: {escaped:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Node users and /proc/<pid>/root: a container running as uid 65534 can be entered through
// /proc/<pid>/root by the node's `nobody` (same uid, no user namespace): it reads the pod's
// Secret and writes into its emptyDir. (A setuid-root file of the image does NOT run as root
// that way: the kernel honours setuid only on mounts of the caller's mount namespace.)
// ---------------------------------------------------------------------------------------

#[test]
fn node_user_cannot_reach_a_containers_files_through_proc_root() {
    // What holds without user namespaces (see the README's security section): a node user
    // whose UID differs from the container's cannot enter /proc/<pid>/root; one who shares
    // it can (as in Kubernetes), but the image's setuid-root files do not run as root that
    // way (the kernel honours setuid only on mounts of the caller's own mount namespace).
    let mut n = adv_node();
    n.start_agent();
    n.write(
        "s.yaml",
        "kind: Secret\nmetadata: {name: s}\nstringData: {token: hunter2}\n",
    );
    for (name, uid) in [("same", 65534), ("other", 1000)] {
        n.write(
            &format!("{name}.yaml"),
            &pod_yaml(
                name,
                &format!("  securityContext: {{runAsUser: {uid}, runAsGroup: {uid}}}\n  volumes: [{{name: s, secret: {{secretName: s}}}}]\n"),
                "  - name: c\n    image: test/adv:1\n    command: [sleep, '600']\n    volumeMounts: [{name: s, mountPath: /secret}]\n",
            ),
        );
    }
    n.until("running", |n| n.running("same") && n.running("other"));
    let pid_of = |pod: &str| -> i32 {
        let d = n
            .run_dir()
            .join("pods")
            .join(uid_of(&n, pod))
            .join("containers/c/0/state/pid");
        std::fs::read_to_string(d).unwrap().trim().parse().unwrap()
    };
    let (same, other) = (pid_of("same"), pid_of("other"));
    let out = as_nobody(&[&format!("/proc/{same}/root/adv/suid")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("euid=65534"),
        "nobody ran a setuid-root file of the container as root on the host: {text}"
    );
    let secret = as_nobody(&["cat", &format!("/proc/{other}/root/secret/token")]);
    assert!(
        !String::from_utf8_lossy(&secret.stdout).contains("hunter2"),
        "a node user read the Secret of a container with another UID"
    );
}

// ---------------------------------------------------------------------------------------
// Teardown of a deep tree: safefs::remove_entry recurses once per directory level and keeps
// every level's descriptor open, in a worker thread with the default 2 MiB stack.
// ---------------------------------------------------------------------------------------

/// Makes a `depth`-deep tree in an emptyDir, deletes the pod; returns whether the agent
/// survived the teardown, whether the volume went, and (if it died) whether an agent
/// restarted on the same state dies again (the orphan teardown meets the same tree).
fn deep_tree_teardown(depth: u32) -> (bool, bool, bool) {
    let mut n = adv_node();
    n.start_agent();
    n.write(
        "deep.yaml",
        &pod_yaml(
            "deep",
            "  volumes: [{name: scratch, emptyDir: {}}]\n",
            &format!("  - name: c\n    image: test/adv:1\n    command: [sh, -c, 'cd /scratch && /adv/deep {depth}; sleep 600']\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n"),
        ),
    );
    n.until("the tree is made", |n| {
        logs(n, &["deep", "-c", "c"]).contains(&format!("deep {depth}"))
    });
    let uid = uid_of(&n, "deep");
    let vol = n.s.root().join("pods").join(&uid).join("volumes/scratch");
    n.remove("deep.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut alive = true;
    while Instant::now() < deadline {
        if !agent_alive(&mut n) {
            alive = false;
            break;
        }
        if n.pod("deep").is_none() && !vol.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let removed = !vol.exists();
    let mut dies_again = false;
    if !alive {
        // A restarted agent tears the orphan down in the background: does it die again?
        n.agent = None;
        n.spawn_agent();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && vol.exists() {
            if !agent_alive(&mut n) {
                dies_again = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Clean up with a remover that handles deep trees, then let an agent finish the pod.
    let rm = Command::new("rm").arg("-rf").arg(&vol).output().unwrap();
    eprintln!(
        "rm: {:?} {} exists after: {}",
        rm.status,
        String::from_utf8_lossy(&rm.stderr),
        vol.exists()
    );
    if !agent_alive(&mut n) {
        n.agent = None;
        n.start_agent();
    }
    n.until_no_pod_dirs();
    (alive, removed, dies_again)
}

#[test]
fn a_deep_tree_in_an_empty_dir_does_not_kill_the_agent() {
    let (alive, removed, dies_again) = deep_tree_teardown(10_000);
    assert!(
        alive,
        "the agent died (stack overflow) tearing down a 10,000-deep emptyDir tree; \
         a restarted agent died again: {dies_again}"
    );
    assert!(removed, "the emptyDir was not removed");
}

#[test]
fn a_very_deep_tree_in_an_empty_dir_is_removed() {
    // Deeper than the open-files limit (the hard limit here is 20,000).
    let (alive, removed, dies_again) = deep_tree_teardown(60_000);
    assert!(
        alive,
        "the agent died tearing down a 60,000-deep emptyDir tree; restarted, died again: {dies_again}"
    );
    assert!(removed, "the 60,000-deep emptyDir was left behind");
}

// ---------------------------------------------------------------------------------------
// Amplification: small manifests that make the agent allocate a lot.
// ---------------------------------------------------------------------------------------

#[test]
fn env_expansion_does_not_amplify_agent_memory() {
    let mut n = Node::new();
    let before = agent_hwm_kib(&n);
    // E0 is 1 KiB; each Ek is $(Ek-1) twice: E16 is 64 MiB from a manifest under 1 KiB.
    let mut env = format!("    - {{name: E0, value: '{}'}}\n", "x".repeat(1024));
    for k in 1..=16 {
        env += &format!(
            "    - {{name: E{k}, value: '$(E{})$(E{})'}}\n",
            k - 1,
            k - 1
        );
    }
    let yaml = pod_yaml(
        "amp",
        "  restartPolicy: Never\n",
        &format!("  - name: c\n    image: test/busybox:1\n    command: ['true']\n    env:\n{env}"),
    );
    assert!(yaml.len() < 3000);
    n.write("amp.yaml", &yaml);
    n.until("the container was tried", |n| {
        let p = n.pod("amp").unwrap_or_default();
        let s = state_of(&p, "containerStatuses", "c");
        !s["state"]["terminated"].is_null()
            || s["state"]["waiting"]["reason"]
                .as_str()
                .is_some_and(|r| r != "ContainerCreating" && !r.is_empty())
    });
    let after = agent_hwm_kib(&n);
    assert!(agent_alive(&mut n));
    n.remove("amp.yaml");
    n.until("the pod is gone", |n| n.pod("amp").is_none());
    assert!(
        after < before + 100 * 1024,
        "a {}-byte manifest grew the agent's peak memory from {before} KiB to {after} KiB",
        yaml.len()
    );
}

#[test]
fn config_map_items_do_not_amplify_tmpfs_memory() {
    let n = Node::new();
    // One 1,000,000-byte key (under the 1 MiB object limit), projected 64 times.
    n.write(
        "cm.yaml",
        &format!(
            "kind: ConfigMap\nmetadata: {{name: big}}\ndata: {{k: '{}'}}\n",
            "x".repeat(1_000_000)
        ),
    );
    let items: String = (0..64)
        .map(|i| format!("{{key: k, path: p{i}}},"))
        .collect();
    n.write(
        "cmp.yaml",
        &pod_yaml(
            "cmp",
            &format!("  volumes: [{{name: cfg, configMap: {{name: big, items: [{items}]}}}}]\n"),
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n    volumeMounts: [{name: cfg, mountPath: /cfg}]\n",
        ),
    );
    n.until("the volume is refused", |n| {
        n.pod("cmp").is_some_and(|p| {
            p["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(
                    "volume \"cfg\": its items hold more than the 2097152 bytes a volume may hold",
                )
        })
    });
    let uid = uid_of(&n, "cmp");
    let vol = n.run_dir().join("pods").join(&uid).join("volumes/cfg");
    assert!(
        !knode::node::safefs::is_mount_point(&vol),
        "a tmpfs was made for the refused volume"
    );
    assert!(!n.running("cmp"));
}

fn manifest_peak_kib(file: &str, text: &str) -> (u64, u64) {
    let mut n = Node::new();
    let before = agent_hwm_kib(&n);
    n.write(file, text);
    n.until("the file is reported", |n| {
        n.manifest_errors().contains(file)
    });
    let after = agent_hwm_kib(&n);
    assert!(agent_alive(&mut n));
    (before, after)
}

#[test]
fn a_yaml_alias_bomb_is_refused_cheaply() {
    // Nine levels of ten aliases: 10^9 strings if expanded.
    let mut bomb = String::from("kind: ConfigMap\nmetadata: {name: bomb}\nl0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..9 {
        let p = format!("*l{}", i - 1);
        bomb += &format!("l{i}: &l{i} [{}]\n", [p.as_str(); 10].join(","));
    }
    let (before, after) = manifest_peak_kib("bomb.yaml", &bomb);
    assert!(
        after < before + 100 * 1024,
        "peak memory {before} -> {after} KiB"
    );
}

#[test]
fn deeply_nested_yaml_is_refused_cheaply() {
    // 5 MB of '[' (the manifest limit is 10 MiB).
    let (before, after) = manifest_peak_kib("nest.yaml", &"[".repeat(5_000_000));
    assert!(
        after < before + 100 * 1024,
        "a 5 MB manifest of '[' took the agent's peak memory from {before} to {after} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// Logs: every restart gets a new `<restart>.log` and none is ever removed while the pod
// lives (the kubelet keeps the current and the previous container's logs).
// ---------------------------------------------------------------------------------------

#[test]
fn restart_logs_are_bounded() {
    let n = Node::new();
    n.write(
        "crash.yaml",
        &pod_yaml(
            "crash",
            "",
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'echo hi; exit 1']\n",
        ),
    );
    n.until_within("three restarts", Duration::from_secs(120), |n| {
        let p = n.pod("crash").unwrap_or_default();
        state_of(&p, "containerStatuses", "c")["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    });
    let uid = uid_of(&n, "crash");
    let dir =
        n.s.root()
            .join("logs")
            .join(knode::node::logs::pod_dir_name("default", "crash", &uid))
            .join("c");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    n.remove("crash.yaml");
    n.until("the pod is gone", |n| n.pod("crash").is_none());
    assert!(
        files.len() <= 2,
        "log files of every restart are kept: {files:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Seccomp and devices: what a default container can still call (documentation: the test
// passes unless a call that must fail succeeds).
// ---------------------------------------------------------------------------------------

#[test]
fn seccomp_and_device_probe() {
    let mut n = adv_node();
    n.start_agent();
    n.write(
        "probe.yaml",
        &pod_yaml(
            "probe",
            "  restartPolicy: Never\n",
            "  - name: c\n    image: test/adv:1\n    command: [/adv/sysprobe]\n",
        ),
    );
    n.until("the probe ran", |n| {
        logs(n, &["probe", "-c", "c"]).contains("chroot=")
    });
    let out = logs(&n, &["probe", "-c", "c"]);
    eprintln!("{out}");
    n.remove("probe.yaml");
    n.until("the pod is gone", |n| n.pod("probe").is_none());
    assert!(agent_alive(&mut n));
    for must_fail in [
        "sethostname",
        "setdomainname",
        "vhangup",
        "tiocsti",
        "add_key",
        "request_key",
        "keyctl",
        "unshare_user",
        "socket_vsock",
        "open_mem",
        "clock_adjtime",
        "perf_event_open",
        "open_by_handle_at",
        "kcmp",
    ] {
        assert!(
            !out.contains(&format!("{must_fail}=0")),
            "{must_fail} succeeded in a default container:\n{out}"
        );
    }
}
