//! The node agent end to end: static pods from a manifests directory, driven through the CLI
//! and the local API (as root).

mod support;

use std::path::Path;
use std::process::Command;

use support::node::*;
use support::*;

#[test]
fn static_pods_run_restart_and_report_like_the_kubelet() {
    let n = Node::new();
    n.write(
        "web.yaml",
        &pod_yaml(
            "web",
            "  terminationGracePeriodSeconds: 1\n  initContainers:\n  - name: setup\n    image: test/busybox:1\n    command: [sh, -c, 'echo init ran']\n",
            "  - name: server\n    image: test/busybox:1\n    command: [sh, -c, 'echo serving; exec httpd -f -p 8080 -h /www']\n  - name: crasher\n    image: test/busybox:1\n    command: [sh, -c, 'echo attempt; exit 3']\n    env:\n    - name: GREETING\n      value: hello\n",
        ),
    );
    n.until("server running and crasher restarted", |n| {
        n.pod("web").is_some_and(|p| {
            state_of(&p, "containerStatuses", "server")["state"]["running"].is_object()
                && state_of(&p, "containerStatuses", "crasher")["restartCount"].as_i64() >= Some(1)
        })
    });
    let p = n.pod("web").unwrap();
    assert_eq!(p["status"]["phase"], "Running");
    assert_eq!(
        state_of(&p, "initContainerStatuses", "setup")["state"]["terminated"]["reason"],
        "Completed"
    );
    let crasher = state_of(&p, "containerStatuses", "crasher");
    assert_eq!(crasher["lastState"]["terminated"]["exitCode"], 3);
    n.until("CrashLoopBackOff", |n| {
        n.pod("web").is_some_and(|p| {
            state_of(&p, "containerStatuses", "crasher")["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
        })
    });
    let table = String::from_utf8(n.knode(&["get", "pods"]).stdout).unwrap();
    assert!(
        table.starts_with("NAME")
            && table.contains("web")
            && table.contains("1/2")
            && table.contains("CrashLoopBackOff"),
        "{table}"
    );
    let logs = |args: &[&str]| {
        String::from_utf8(n.knode(&[&["logs", "web"], args].concat()).stdout).unwrap()
    };
    assert_eq!(logs(&["-c", "setup"]), "init ran\n");
    assert_eq!(logs(&["-c", "server"]), "serving\n");
    assert!(logs(&["-c", "crasher", "--previous"]).contains("attempt"));
    let o = n.knode(&["logs", "web"]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("choose one of: [server crasher]")
    );
    let d = String::from_utf8(n.knode(&["describe", "pod", "web"]).stdout).unwrap();
    assert!(
        d.contains("Restart Count:")
            && d.contains("Started container server")
            && d.contains("back-off"),
        "{d}"
    );
}

#[test]
fn bad_manifests_are_reported_and_do_not_disturb_other_pods() {
    let n = Node::new();
    n.write(
        "good.yaml",
        &pod_yaml(
            "good",
            "",
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n",
        ),
    );
    n.write("broken.yaml", "kind: Pod\n  metadata: [unclosed");
    n.write(
        "dup.yaml",
        &pod_yaml(
            "dup",
            "",
            "  - name: c\n    image: test/busybox:1\n  - name: c\n    image: test/busybox:1\n",
        ),
    );
    n.write("odd.yaml", &pod_yaml("odd", "  affinity: {}\n", "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n    resizePolicy: [{resourceName: cpu, restartPolicy: NotRequired}]\n"));
    n.until("good and odd running", |n| {
        ["good", "odd"].iter().all(|name| {
            n.pod(name)
                .is_some_and(|p| p["status"]["phase"] == "Running")
        })
    });
    let dup = n.pod("dup").unwrap();
    assert_eq!(dup["status"]["phase"], "Failed");
    assert!(dup["status"]["message"]
        .as_str()
        .unwrap()
        .contains("Pod \"dup\" is invalid: spec.containers[1].name: Duplicate value: \"c\""));
    let o = n.knode(&["get", "pods"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("broken.yaml"),
        "the unparsable file is named: {err}"
    );
    let d = String::from_utf8(n.knode(&["describe", "pod", "odd"]).stdout).unwrap();
    assert!(
        d.contains("spec.affinity is not supported") && d.contains("resizePolicy is not supported"),
        "{d}"
    );
    assert!(n
        .knode(&["describe", "pod", "nope"])
        .stderr
        .ends_with(b"not found\n"));
}

#[test]
fn containers_survive_an_agent_kill_and_deletion_leaves_nothing() {
    let mut n = Node::new();
    n.write("keep.yaml", &pod_yaml("keep", "  terminationGracePeriodSeconds: 2\n", "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'trap \"echo bye; exit 0\" TERM; echo up; while true; do sleep 0.1; done']\n"));
    n.until("running", |n| {
        n.pod("keep")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    let pid = container_pid(&n, "c");
    n.kill_agent(); // SIGKILL
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container outlived the agent"
    );
    n.start_agent();
    n.until("adopted", |n| {
        n.pod("keep")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    assert_eq!(container_pid(&n, "c"), pid, "the same container, adopted");
    assert_eq!(
        n.pod("keep").unwrap()["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    std::fs::remove_file(n.manifests.join("keep.yaml")).unwrap();
    n.until("gone", |n| n.pod("keep").is_none());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "no process left"
    );
    let root = n.s.root().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root), "no mount left");
    assert_eq!(
        std::fs::read_dir(n.s.root().join("run/pods"))
            .unwrap()
            .count(),
        0,
        "no pod directory left"
    );
    assert_eq!(
        std::fs::read_dir(n.s.root().join("logs")).unwrap().count(),
        0,
        "no log directory left"
    );
}

#[test]
fn volumes_env_and_security_contexts() {
    let n = Node::new();
    let host_dir = n.s.root().join("host-data");
    let escape = n.s.root().join("escape-target");
    let escape_s = escape.display();
    n.write(
        "cfg.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  mode: production\n  settings.conf: |\n    level=3\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: czNjcmV0\n",
    );
    let containers = format!(
        r#"  - name: writer
    image: test/busybox:1
    command: [sh, -c, 'echo shared > /cache/x; echo from-pod > /host/from-pod; ln -s {escape_s} /cache/link; touch /cache/ready; exec sleep 600']
    volumeMounts: [{{name: cache, mountPath: /cache}}, {{name: host, mountPath: /host}}]
  - name: reader
    image: test/busybox:1
    command: [sh, -c]
    args:
    - |
      for i in $(seq 1 250); do [ -e /cache/ready ] && break; usleep 20000; done
      echo cache=$(cat /cache/x)
      echo conf=$(cat /etc/config/renamed.conf) mode=$(stat -c %a /etc/config/renamed.conf)
      echo settings=$(cat /app/settings.conf)
      echo password=$(cat /etc/secret/password)
      echo secretfs=$(grep -c ' /etc/secret tmpfs' /proc/mounts) memfs=$(grep -c ' /mem tmpfs' /proc/mounts)
      echo env MODE=$MODE PW=$PW POD=$POD_NAME NS=$POD_NAMESPACE APP_mode=$APP_mode GREETING=$GREETING
      touch /etc/config-ro/x 2>/dev/null && echo ro=no || echo ro=yes
      echo hostname=$(cat /etc/hostname) hosts=$(grep -c vol /etc/hosts)
      echo done
      exec sleep 600
    env:
    - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: app, key: mode}}}}}}
    - {{name: PW, valueFrom: {{secretKeyRef: {{name: db, key: password}}}}}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: GREETING, value: "hi $(POD_NAME)"}}
    envFrom: [{{prefix: APP_, configMapRef: {{name: app}}}}]
    volumeMounts:
    - {{name: cache, mountPath: /cache}}
    - {{name: mem, mountPath: /mem}}
    - {{name: cfg, mountPath: /etc/config}}
    - {{name: cfg, mountPath: /etc/config-ro, readOnly: true}}
    - {{name: cfg-all, mountPath: /app/settings.conf, subPath: settings.conf}}
    - {{name: sec, mountPath: /etc/secret}}
  - name: locked
    image: test/busybox:1
    command: [sh, -c, 'touch /x 2>/dev/null && echo rootfs=rw || echo rootfs=ro; id -u; grep -E "CapEff|NoNewPrivs" /proc/self/status; exec sleep 600']
    securityContext:
      runAsUser: 1000
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
  - name: escaper
    image: test/busybox:1
    command: [sh, -c, 'ls /mnt/x; exec sleep 600']
    volumeMounts: [{{name: cache, mountPath: /mnt/x, subPath: link/sub}}]
"#
    );
    let volumes = format!(
        "  volumes:\n  - {{name: cache, emptyDir: {{}}}}\n  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}\n  - {{name: host, hostPath: {{path: {}, type: DirectoryOrCreate}}}}\n  - {{name: cfg, configMap: {{name: app, defaultMode: 0400, items: [{{key: settings.conf, path: renamed.conf}}]}}}}\n  - {{name: cfg-all, configMap: {{name: app}}}}\n  - {{name: sec, secret: {{secretName: db}}}}\n",
        host_dir.display()
    );
    n.write("vol.yaml", &pod_yaml("vol", &volumes, &containers));
    n.until("reader done", |n| {
        String::from_utf8_lossy(&n.knode(&["logs", "vol", "-c", "reader"]).stdout).contains("done")
    });
    let out = String::from_utf8(n.knode(&["logs", "vol", "-c", "reader"]).stdout).unwrap();
    for want in [
        "cache=shared",
        "conf=level=3 mode=400",
        "settings=level=3",
        "password=s3cret",
        "secretfs=1 memfs=1",
        "env MODE=production PW=s3cret POD=vol NS=default APP_mode=production GREETING=hi vol",
        "ro=yes",
        "hostname=vol hosts=1",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-pod")).unwrap(),
        "from-pod\n",
        "hostPath is the host's directory"
    );
    n.until("locked logged", |n| {
        n.knode(&["logs", "vol", "-c", "locked"]).stdout.len() > 10
    });
    let locked = String::from_utf8(n.knode(&["logs", "vol", "-c", "locked"]).stdout).unwrap();
    assert!(
        locked.contains("rootfs=ro")
            && locked.contains("1000")
            && locked.contains("0000000000000000")
            && locked.contains("NoNewPrivs:\t1"),
        "{locked}"
    );
    // The subPath through a symlink to a host path never reaches the host.
    assert!(
        !escape.exists(),
        "subPath followed a symlink out of its volume"
    );
    // A pod referring to a missing configMap waits with a clear reason; others are unaffected.
    n.write("missing.yaml", &pod_yaml("missing", "", "  - name: c\n    image: test/busybox:1\n    env: [{name: X, valueFrom: {configMapKeyRef: {name: nope, key: k}}}]\n"));
    n.until("config error", |n| {
        n.pod("missing").is_some_and(|p| {
            state_of(&p, "containerStatuses", "c")["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        })
    });
    let p = n.pod("missing").unwrap();
    assert!(
        state_of(&p, "containerStatuses", "c")["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("configmap \"nope\"")
    );
    assert_eq!(n.pod("vol").unwrap()["status"]["phase"], "Running");
    // Deleting the pods removes every mount: tmpfs volumes, staged subPaths, rootfs overlays.
    for f in ["vol.yaml", "missing.yaml"] {
        std::fs::remove_file(n.manifests.join(f)).unwrap();
    }
    n.until("gone", |n| {
        n.pod("vol").is_none() && n.pod("missing").is_none()
    });
    let root = n.s.root().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root),
        "mounts left: {}",
        mounts
            .lines()
            .filter(|l| l.contains(&root))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-pod")).unwrap(),
        "from-pod\n",
        "hostPath content survives the pod"
    );
}

#[test]
fn exec_runs_inside_the_container_with_its_confinement() {
    let n = Node::new();
    n.write(
        "ex.yaml",
        &pod_yaml(
            "ex",
            "",
            "  - name: main\n    image: test/busybox:1\n    command: [sleep, '600']\n",
        ),
    );
    n.until("running", |n| {
        n.pod("ex")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    let o = n.knode(&["exec", "ex", "--", "sh", "-c", "hostname; cat /proc/1/comm; grep -E 'CapEff|Seccomp:|NoNewPrivs' /proc/self/status; ls /proc | grep -c '^[0-9]'"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.starts_with("ex\nsleep\n"),
        "the pod's hostname and the container's PID 1: {out}"
    );
    assert!(
        out.contains("CapEff:\t00000000a80425fb")
            && out.contains("Seccomp:\t2")
            && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );
    assert_eq!(
        n.knode(&["exec", "ex", "--", "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );
    let mut child = Command::new(knode_bin())
        .arg("--run-dir")
        .arg(n.s.root().join("run"))
        .args(["exec", "-i", "ex", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "through stdin\n");
    let o = n.knode(&[
        "exec",
        "ex",
        "--",
        "sh",
        "-c",
        "test -t 0 && echo tty || echo no-tty",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "no-tty\n");
    let o = n.knode(&[
        "exec",
        "-t",
        "ex",
        "--",
        "sh",
        "-c",
        "test -t 1 && echo tty || echo no-tty",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("tty")
            && !String::from_utf8_lossy(&o.stdout).contains("no-tty")
    );
    // The kubelet-style /run endpoint of the API: a command, its output.
    let (code, body) = knode::node::kubelet::api::get(
        &n.s.root().join("run/knode.sock"),
        "/run/default/ex/main?cmd=echo+hello%20from+run",
    )
    .unwrap();
    assert_eq!(
        (code, String::from_utf8_lossy(&body).into_owned()),
        (200, "hello from run\n".to_string())
    );
    let o = n.knode(&["exec", "ex", "-c", "nope", "--", "true"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not valid"));
}

#[test]
fn share_process_namespace_puts_containers_in_one_pid_namespace() {
    let n = Node::new();
    n.write(
        "shared.yaml",
        &pod_yaml(
            "shared",
            "  shareProcessNamespace: true\n",
            "  - name: a\n    image: test/busybox:1\n    command: [sh, -c, 'exec sleep 600']\n  - name: bg\n    image: test/busybox:1\n    command: [sh, -c, 'sleep 600 & echo bye; exit 3']\n  - name: b\n    image: test/busybox:1\n    command: [sh, -c, 'for i in $(seq 1 250); do grep -qx sleep /proc/[0-9]*/comm && break; usleep 20000; done; echo pid1=$(cat /proc/1/comm); cat /proc/[0-9]*/comm | sort | uniq | tr \"\\n\" \" \"; echo; echo done; exec sleep 600']\n",
        ),
    );
    n.until("b looked", |n| {
        String::from_utf8_lossy(&n.knode(&["logs", "shared", "-c", "b"]).stdout).contains("done")
    });
    let out = String::from_utf8(n.knode(&["logs", "shared", "-c", "b"]).stdout).unwrap();
    assert!(
        out.contains("pid1=knode"),
        "the pause process is PID 1: {out}"
    );
    assert!(out.contains("sleep"), "b sees a's process: {out}");
    // A container whose leftover child keeps its stdout open is still seen to exit.
    n.until("bg restarted", |n| {
        n.pod("shared").is_some_and(|p| {
            let c = state_of(&p, "containerStatuses", "bg");
            c["restartCount"].as_i64() >= Some(1) && c["lastState"]["terminated"]["exitCode"] == 3
        })
    });
    std::fs::remove_file(n.manifests.join("shared.yaml")).unwrap();
    n.until("gone", |n| n.pod("shared").is_none());
    let root = n.s.root().to_string_lossy().into_owned();
    let pauses = Command::new("pgrep")
        .args(["-f", &format!("__pause {root}")])
        .output()
        .unwrap();
    assert!(pauses.stdout.is_empty(), "the pause process is gone");
}

#[test]
fn fs_group_network_capabilities_and_log_follow() {
    let n = Node::new();
    n.write(
        "fsg.yaml",
        &pod_yaml(
            "fsg",
            "  securityContext: {fsGroup: 2000}\n  volumes: [{name: data, emptyDir: {}}]\n",
            "  - name: user\n    image: test/busybox:1\n    securityContext: {runAsUser: 1000, runAsGroup: 1000}\n    volumeMounts: [{name: data, mountPath: /data}]\n    command: [sh, -c, 'echo groups=$(id -G); echo owner=$(stat -c %g /data); touch /data/mine && echo write=ok || echo write=denied; echo done; exec sleep 600']\n  - name: root\n    image: test/busybox:1\n    command: [sh, -c, 'ip link add knodetest0 type dummy 2>/dev/null && echo link=created || echo link=denied; for i in 1 2 3; do echo tick $i; usleep 200000; done']\n",
        ),
    );
    n.until("user done", |n| {
        String::from_utf8_lossy(&n.knode(&["logs", "fsg", "-c", "user"]).stdout).contains("done")
    });
    let out = String::from_utf8(n.knode(&["logs", "fsg", "-c", "user"]).stdout).unwrap();
    assert!(
        out.contains("groups=1000 2000") && out.contains("owner=2000") && out.contains("write=ok"),
        "{out}"
    );
    // `logs -f` follows the root container until it exits (then the agent restarts it).
    let f = n.knode(&["logs", "-f", "fsg", "-c", "root"]);
    let followed = String::from_utf8(f.stdout).unwrap();
    assert!(
        followed.contains("link=denied"),
        "no CAP_NET_ADMIN by default: {followed}"
    );
    assert!(
        followed.contains("tick 3"),
        "followed to the end: {followed}"
    );
}

#[test]
fn host_network_pods_keep_the_hosts_name() {
    let n = Node::new();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    n.write("hn.yaml", &pod_yaml("hostnet-pod", "  hostNetwork: true\n", "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'echo name=$(hostname); exec sleep 600']\n"));
    n.until("logged", |n| {
        String::from_utf8_lossy(&n.knode(&["logs", "hostnet-pod"]).stdout).contains("name=")
    });
    let out = String::from_utf8(n.knode(&["logs", "hostnet-pod"]).stdout).unwrap();
    assert_eq!(
        out.trim(),
        format!("name={host}"),
        "a hostNetwork pod shares the host's UTS namespace"
    );
    assert_eq!(
        rustix::system::uname().nodename().to_string_lossy(),
        host,
        "the host was not renamed"
    );
}

#[test]
fn a_container_lost_with_its_shim_is_reported_and_restarted() {
    let n = Node::new();
    n.write(
        "lost.yaml",
        &pod_yaml(
            "lost",
            "",
            "  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n",
        ),
    );
    n.until("running", |n| {
        n.pod("lost")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    let pid = container_pid(&n, "c");
    let run = n.s.root().join("run/pods");
    let shim: i32 = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .flat_map(|u| {
            std::fs::read_dir(u.path().join("containers/c"))
                .unwrap()
                .flatten()
        })
        .find_map(|a| std::fs::read_to_string(a.path().join("state/shim.pid")).ok())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let kill = |p: i32| {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(p).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap()
    };
    kill(shim);
    kill(pid);
    n.until("restarted", |n| {
        n.pod("lost").is_some_and(|p| {
            let c = state_of(&p, "containerStatuses", "c");
            c["restartCount"] == 1
                && c["lastState"]["terminated"]["reason"] == "ContainerStatusUnknown"
                && c["state"]["running"].is_object()
        })
    });
}

#[test]
fn malformed_resources_fail_the_pod_and_name_the_field() {
    let n = Node::new();
    let ctr = |res: &str| {
        format!("  - name: c\n    image: test/busybox:1\n    command: [sleep, '600']\n    resources:\n{res}")
    };
    n.write(
        "fine.yaml",
        &pod_yaml(
            "fine",
            "",
            &ctr("      limits: {cpu: 250m, memory: 32Mi}\n"),
        ),
    );
    for (name, res, want) in [
        ("suffix", "      limits: {cpu: 12x}\n", "spec.containers[0].resources.limits.cpu: invalid value \"12x\""),
        ("negative", "      requests: {memory: -64Mi}\n", "spec.containers[0].resources.requests.memory: invalid value \"-64Mi\": must not be negative"),
        (
            "inverted",
            "      requests: {cpu: '2'}\n      limits: {cpu: '1'}\n",
            "spec.containers[0].resources.requests.cpu: invalid value \"2\": must be less than or equal to the cpu limit \"1\"",
        ),
    ] {
        n.write(&format!("{name}.yaml"), &pod_yaml(name, "", &ctr(res)));
        n.until(&format!("{name} refused"), |n| {
            n.pod(name).is_some_and(|p| p["status"]["phase"] == "Failed")
        });
        let p = n.pod(name).unwrap();
        assert_eq!(p["status"]["reason"], "InvalidPod");
        let msg = p["status"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg}");
        // Never started.
        assert!(state_of(&p, "containerStatuses", "c")["state"]["running"].is_null());
    }
    n.until("fine running", |n| {
        n.pod("fine")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    // Limits alone default the requests: Guaranteed.
    assert_eq!(n.pod("fine").unwrap()["status"]["qosClass"], "Guaranteed");
}

#[test]
fn without_cgroup_v2_the_agent_refuses_unless_told_and_says_so_in_node_status() {
    // This host binds cpu, memory and pids to cgroup v1 (see environment.md): the check fails.
    let why = knode::node::cgroup::probe()
        .expect_err("this test expects a host without cgroup v2 controllers");
    let s = Store::with_busybox();
    let o = s.knode(&["agent", "--manifests", s.root().join("m").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&why.to_string())
            && err.contains("--cgroups=disabled")
            && err.contains("unified_cgroup_hierarchy"),
        "{err}"
    );
    assert!(
        !s.root().join("run/knode.sock").exists(),
        "it did not start"
    );

    // With --cgroups=disabled: running, and the node says limits are off.
    let n = Node::new();
    let node: serde_json::Value =
        serde_json::from_slice(&n.knode(&["get", "nodes", "-o", "json"]).stdout).unwrap();
    let cond = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResourceLimits")
        .unwrap()
        .clone();
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("CgroupsDisabled"))
    );
    assert!(cond["message"]
        .as_str()
        .unwrap()
        .contains("--cgroups=disabled"));
    // Capacity is the host's, not a constant.
    let cpus = online_cpus();
    assert_eq!(node["status"]["capacity"]["cpu"], cpus.as_str());
    assert!(node["status"]["allocatable"]["memory"]
        .as_str()
        .unwrap()
        .ends_with("Ki"));
    let d = String::from_utf8_lossy(
        &n.knode(&[
            "describe",
            "node",
            node["metadata"]["name"].as_str().unwrap(),
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        d.contains("ResourceLimits") && d.contains("CgroupsDisabled"),
        "{d}"
    );
    // Pod metrics need cgroups; the node's come from /proc.
    let o = n.knode(&["top", "pods"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cgroups=disabled"));
    n.until("a node CPU rate", |n| {
        n.knode(&["top", "node"]).status.success()
    });
    let top = String::from_utf8(n.knode(&["top", "node"]).stdout).unwrap();
    assert!(top.starts_with("NAME") && top.contains("CPU%"), "{top}");
}

/// A pod's /etc/resolv.conf follows its dnsPolicy and dnsConfig: `None` takes only the
/// pod's own nameservers, searches and options; the default adds the pod's to the node's.
#[test]
fn a_pods_resolv_conf_follows_its_dns_policy_and_config() {
    let n = Node::new();
    n.write(
        "own.yaml",
        &pod_yaml(
            "own",
            "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.53]\n    searches: [lab.example]\n    options: [{name: ndots, value: '2'}, {name: edns0}]\n",
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'cat /etc/resolv.conf; echo end; sleep 600']\n",
        ),
    );
    n.write(
        "added.yaml",
        &pod_yaml(
            "added",
            "  dnsConfig:\n    nameservers: [192.0.2.54]\n",
            "  - name: c\n    image: test/busybox:1\n    command: [sh, -c, 'cat /etc/resolv.conf; echo end; sleep 600']\n",
        ),
    );
    let logs = |pod: &str| String::from_utf8_lossy(&n.knode(&["logs", pod]).stdout).into_owned();
    n.until("both pods printed their resolv.conf", |_| {
        logs("own").contains("end") && logs("added").contains("end")
    });
    assert_eq!(
        logs("own"),
        "search lab.example\nnameserver 192.0.2.53\noptions ndots:2 edns0\nend\n"
    );
    let added = logs("added");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    let first_host_ns = host
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .map(str::trim);
    let ns: Vec<&str> = added
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    // The node's own first (this node has no cluster DNS), then the pod's.
    assert_eq!(ns.last(), Some(&"192.0.2.54"), "{added}");
    if let Some(h) = first_host_ns {
        assert_eq!(ns.first(), Some(&h), "{added}");
    }
}

/// `knode tutorial images -o FILE` builds the tutorials' images into one OCI archive, the
/// same bytes every time; dropped in `<root>/images/`, it lets a node with no registry run
/// the tutorials' images under their own names: the bootcamp's app answers, and `mysql:5.7`
/// refuses to initialise without a root password, as the official image does.
#[test]
fn the_tutorials_images_archive_is_reproducible_and_preloads_a_node() {
    let mut n = Node::stopped();
    let images = n.s.root().join("images");
    let archive = images.join("tutorial-images.tar");
    let again = n.s.root().join("again.tar");
    for out in [&archive, &again] {
        let o = n.knode(&["tutorial", "images", "--output", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let bytes = std::fs::read(&archive).unwrap();
    assert!(bytes == std::fs::read(&again).unwrap(), "two builds differ");
    std::fs::remove_file(&again).unwrap();
    n.write(
        "bootcamp.yaml",
        &pod_yaml(
            "bootcamp",
            "",
            "  - name: app\n    image: gcr.io/google-samples/kubernetes-bootcamp:v1\n",
        ),
    );
    n.write(
        "db.yaml",
        &pod_yaml(
            "db",
            "  restartPolicy: Never\n",
            "  - name: mysql\n    image: mysql:5.7\n",
        ),
    );
    n.start_agent();
    n.until("the bootcamp's app runs from the archive", |n| {
        n.running("bootcamp")
    });
    let logs = |pod: &str| String::from_utf8_lossy(&n.knode(&["logs", pod]).stdout).into_owned();
    n.until("the bootcamp's app logs its start", |_| {
        logs("bootcamp").contains("Kubernetes Bootcamp App Started At:")
    });
    n.until("mysql:5.7 says why it stopped", |_| {
        logs("db").contains("database is uninitialized and password option is not specified")
    });
    let ls = String::from_utf8(n.knode(&["image", "ls"]).stdout).unwrap();
    for name in [
        "gcr.io/google-samples/kubernetes-bootcamp",
        "docker.io/jocatalin/kubernetes-bootcamp",
        "docker.io/kubeguide/redis-master",
        "docker.io/kubeguide/guestbook-redis-slave",
        "docker.io/kubeguide/guestbook-php-frontend",
        "docker.io/library/mysql",
    ] {
        assert!(ls.contains(name), "{name} missing:\n{ls}");
    }
}

/// Image archives dropped in `<root>/images/` (k3s's airgap images) are imported when the
/// agent starts: a pod with `imagePullPolicy: Never` runs from one with no registry at all; a
/// corrupt archive is refused with its name and the node starts all the same; what was
/// imported is recorded (a restart skips it). `knode image import` feeds a running node.
#[test]
fn image_archives_in_the_images_directory_are_preloaded_at_start() {
    let mut n = Node::stopped();
    let images = n.s.root().join("images");
    let layout = tempfile::tempdir().unwrap();
    busybox_image()
        .write_oci_layout(layout.path(), "docker.io/preloaded/app:1")
        .unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(layout.path())
        .arg("-czf")
        .arg(images.join("app.tar.gz"))
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    std::fs::write(images.join("broken.tar"), b"not an archive at all").unwrap();
    n.write(
        "pre.yaml",
        &pod_yaml(
            "pre",
            "",
            "  - name: app\n    image: preloaded/app:1\n    imagePullPolicy: Never\n    command: [sh, -c, 'echo from the archive; exec sleep 1000']\n",
        ),
    );
    n.start_agent();
    n.until("the pod runs from the preloaded image", |n| {
        n.running("pre")
    });
    let log = std::fs::read_to_string(n.log_path()).unwrap();
    assert!(
        log.contains("image archive refused") && log.contains("broken.tar"),
        "{log}"
    );
    let ls = String::from_utf8(n.knode(&["image", "ls"]).stdout).unwrap();
    assert!(ls.contains("docker.io/preloaded/app"), "{ls}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.join(".preloaded.json")).unwrap()).unwrap();
    let names: Vec<&String> = record.as_object().unwrap().keys().collect();
    assert_eq!(names, ["app.tar.gz"]);
    // The running node takes an image imported beside it.
    let o = n.knode(&[
        "image",
        "import",
        layout.path().to_str().unwrap(),
        "--name",
        "later/app:2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    n.write(
        "later.yaml",
        &pod_yaml(
            "later",
            "",
            "  - name: app\n    image: later/app:2\n    imagePullPolicy: Never\n    command: [sh, -c, 'exec sleep 1000']\n",
        ),
    );
    n.until("the pod runs from the imported image", |n| {
        n.running("later")
    });
}
