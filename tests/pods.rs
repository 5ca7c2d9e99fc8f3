//! Pod sandboxes and shim-supervised containers, end to end (as root).

mod support;

use std::path::Path;
use std::time::Duration;

use knode::node::container::{PodContainer, PodContainerSpec};
use knode::node::sandbox::{Sandbox, SandboxOptions};
use support::*;

fn start(s: &Store, sb: &Sandbox, name: &str, script: &str) -> PodContainer {
    let dir = sb.dir.join("containers").join(name);
    PodContainer::start(
        Path::new(knode_bin()),
        &s.store,
        sb,
        "pod-a",
        &dir,
        &PodContainerSpec {
            image: "test/busybox:1".into(),
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
            args: None,
            env: vec![format!("NAME={name}")],
            log_path: s.root().join("logs").join(name).join("0.log"),
            ..Default::default()
        },
    )
    .unwrap()
}

fn log(s: &Store, name: &str) -> Vec<String> {
    knode::node::logs::read(&s.root().join("logs").join(name).join("0.log"), None).unwrap()
}

fn assert_clean(s: &Store) {
    let root = s.root().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root),
        "mounts left under {root}: {}",
        mounts
            .lines()
            .filter(|l| l.contains(&root))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn containers_of_a_pod_share_net_ipc_uts_and_shm_but_not_pids_or_mounts() {
    let s = Store::with_busybox();
    let sb = Sandbox::create(
        Path::new(knode_bin()),
        &s.root().join("pods/p1"),
        &SandboxOptions {
            hostname: "pod-a".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let a = start(
        &s,
        &sb,
        "a",
        "for n in net ipc uts pid mnt; do readlink /proc/self/ns/$n; done > /dev/shm/a-ns; touch /only-in-a; exec httpd -f -p 8080 -h /www",
    );
    let b = start(
        &s,
        &sb,
        "b",
        r#"for i in $(seq 1 250); do wget -qO- http://127.0.0.1:8080/ 2>/dev/null && break; usleep 20000; done
for n in net ipc uts pid mnt; do echo "b $n $(readlink /proc/self/ns/$n)"; done
sed 's/^/a /' /dev/shm/a-ns
echo host=$(hostname)
ls /only-in-a 2>/dev/null && echo sees-a-files || echo own-mounts
echo httpd-visible=$(cat /proc/[0-9]*/comm | grep -cx httpd)
echo env=$NAME"#,
    );
    let st = knode::node::shim::wait_exit(&b.state, Duration::from_secs(30)).unwrap();
    assert_eq!(st.code, 0);
    let out = log(&s, "b");
    assert!(
        out.iter().any(|l| l.contains("Hello from a knode pod")),
        "localhost reaches the other container: {out:?}"
    );
    let a_ns: Vec<&str> = out
        .iter()
        .filter_map(|l| l.strip_prefix("a "))
        .map(str::trim)
        .collect();
    let b_ns: Vec<&str> = out
        .iter()
        .filter_map(|l| l.strip_prefix("b "))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(a_ns.len(), 5, "{out:?}");
    for (i, n) in ["net", "ipc", "uts"].iter().enumerate() {
        assert_eq!(a_ns[i], b_ns[i], "{n} namespace shared");
    }
    for (i, n) in [(3, "pid"), (4, "mnt")] {
        assert_ne!(a_ns[i], b_ns[i], "{n} namespace private");
    }
    for want in ["host=pod-a", "own-mounts", "httpd-visible=0", "env=b"] {
        assert!(out.iter().any(|l| l == want), "{want} missing: {out:?}");
    }
    // Stop the server: SIGKILL from outside reaches PID 1 of its namespace.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(a.pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert_eq!(
        knode::node::shim::wait_exit(&a.state, Duration::from_secs(30))
            .unwrap()
            .code,
        137
    );
    for c in [&a, &b] {
        c.remove().unwrap();
    }
    sb.remove().unwrap();
    assert!(!sb.dir.exists());
    assert_clean(&s);
}

#[test]
fn exit_status_and_cri_logs() {
    let s = Store::with_busybox();
    let sb = Sandbox::create(
        Path::new(knode_bin()),
        &s.root().join("pods/p2"),
        &SandboxOptions {
            hostname: "p2".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let c = start(
        &s,
        &sb,
        "c",
        "echo out; echo err >&2; printf 'no newline'; exit 3",
    );
    let st = knode::node::shim::wait_exit(&c.state, Duration::from_secs(30)).unwrap();
    assert_eq!((st.code, st.reason.as_str()), (3, "Error"));
    let raw = std::fs::read_to_string(s.root().join("logs/c/0.log")).unwrap();
    let recs: Vec<knode::node::logs::Record> = raw
        .lines()
        .map(|l| knode::node::logs::parse_line(l).unwrap())
        .collect();
    assert!(
        recs.iter()
            .any(|r| r.stream == "stdout" && r.msg == "out" && !r.partial),
        "{raw}"
    );
    assert!(
        recs.iter().any(|r| r.stream == "stderr" && r.msg == "err"),
        "{raw}"
    );
    assert!(
        recs.iter()
            .all(|r| chrono::DateTime::parse_from_rfc3339(&r.time).is_ok()),
        "{raw}"
    );
    assert_eq!(log(&s, "c").last().map(String::as_str), Some("no newline"));
    c.remove().unwrap();
    sb.remove().unwrap();
    assert_clean(&s);
}

#[test]
fn the_shim_is_detached_from_its_starter() {
    let s = Store::with_busybox();
    let sb = Sandbox::create(
        Path::new(knode_bin()),
        &s.root().join("pods/p3"),
        &SandboxOptions {
            hostname: "p3".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let c = start(&s, &sb, "d", "exec sleep 600");
    let shim: i32 = std::fs::read_to_string(c.state.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{shim}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (i32, i32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(
        ppid,
        std::process::id() as i32,
        "the shim is not our child: it survives us"
    );
    assert_eq!(sid, shim, "the shim leads its own session");
    assert!(
        knode::node::shim::exit_status(&c.state).is_none(),
        "still running"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(c.pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert_eq!(
        knode::node::shim::wait_exit(&c.state, Duration::from_secs(30))
            .unwrap()
            .code,
        137
    );
    c.remove().unwrap();
    sb.remove().unwrap();
    assert_clean(&s);
}

#[test]
fn graceful_stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    let s = Store::with_busybox();
    let sb = Sandbox::create(
        Path::new(knode_bin()),
        &s.root().join("pods/p4"),
        &SandboxOptions {
            hostname: "p4".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let polite = start(
        &s,
        &sb,
        "polite",
        "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    );
    let stubborn = start(
        &s,
        &sb,
        "stubborn",
        "trap '' TERM; echo ready; while true; do sleep 0.1; done",
    );
    // Wait until both have installed their traps (their first line is in the log).
    for name in ["polite", "stubborn"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !log(&s, name).contains(&"ready".to_string()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    knode::node::kubelet::cri::stop_container(&polite, Duration::from_secs(30));
    assert_eq!(
        knode::node::shim::exit_status(&polite.state).unwrap().code,
        0,
        "SIGTERM was delivered and handled"
    );
    assert!(log(&s, "polite").contains(&"got TERM".to_string()));
    knode::node::kubelet::cri::stop_container(&stubborn, Duration::from_millis(300));
    assert_eq!(
        knode::node::shim::exit_status(&stubborn.state)
            .unwrap()
            .code,
        137,
        "SIGKILL after the grace period"
    );
    for c in [&polite, &stubborn] {
        c.remove().unwrap();
    }
    sb.remove().unwrap();
    assert_clean(&s);
}

#[test]
fn image_removal_keeps_snapshots_under_running_containers() {
    let s = Store::with_busybox();
    let sb = Sandbox::create(
        Path::new(knode_bin()),
        &s.root().join("pods/p5"),
        &SandboxOptions {
            hostname: "p5".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let c = start(&s, &sb, "leased", "exec sleep 600");
    let (names, gc) = s.store.remove("test/busybox:1").unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(gc.snapshots, 0, "the running container's layers stay");
    assert!(
        c.rootfs.join("bin/busybox").is_file(),
        "its rootfs still reads"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(c.pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    knode::node::shim::wait_exit(&c.state, Duration::from_secs(30)).unwrap();
    c.remove().unwrap();
    c.release(&s.store);
    assert_eq!(
        s.store.prune().unwrap().snapshots,
        1,
        "released: now collectable"
    );
    sb.remove().unwrap();
    assert_clean(&s);
}
