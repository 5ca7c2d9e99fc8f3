//! `knode up` and `knode down`, in a network namespace of their own (the node's, linked to an
//! "outside" namespace by a veth, as a lab VM is to its host), driven by the real kubectl as
//! the bootcamp tutorial drives a cluster: `get nodes`, `create deployment`, `expose
//! --type=NodePort`, requests from outside, `scale`, `delete`; then `knode down` leaves no
//! process, pod directory, mount, veth, bridge or nftables table behind.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::server::KUBECTL;
use support::{knode_bin, Store};

struct Up {
    s: Store,
    ns: String,
    outside: String,
}

impl Up {
    /// A node namespace (lo up, a veth to the outside namespace, a default route through
    /// it) and an outside namespace.
    fn new() -> Up {
        // Unique per test too: the tests of this file may run at once.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ns = format!("kn-up-{:x}-{n}", std::process::id());
        let outside = format!("kn-upout-{:x}-{n}", std::process::id());
        for n in [&ns, &outside] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
            assert!(Command::new("ip")
                .args(["netns", "add", n])
                .status()
                .unwrap()
                .success());
        }
        let u = Up {
            s: Store::with_busybox(),
            ns,
            outside,
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link", "add", "knup0", "type", "veth", "peer", "name", "knup1", "netns",
                &u.outside,
            ],
            vec!["addr", "add", "192.0.2.1/24", "dev", "knup0"],
            vec!["link", "set", "knup0", "up"],
            vec!["route", "add", "default", "via", "192.0.2.2"],
        ] {
            let mut a = vec!["ip", "-n", &u.ns];
            a.extend(args);
            assert!(run(&a).status.success(), "{a:?}");
        }
        for args in [
            vec!["addr", "add", "192.0.2.2/24", "dev", "knup1"],
            vec!["link", "set", "knup1", "up"],
        ] {
            let mut a = vec!["ip", "-n", &u.outside];
            a.extend(args);
            assert!(run(&a).status.success(), "{a:?}");
        }
        u
    }

    fn kubeconfig(&self) -> PathBuf {
        self.s.root().join("kubeconfig")
    }

    /// `knode ARGS` in the node's namespace, on this store.
    fn knode(&self, args: &[&str]) -> Output {
        let mut a = vec![
            "nsenter".to_string(),
            format!("--net=/var/run/netns/{}", self.ns),
            knode_bin().to_string(),
            "--root".into(),
            self.s.root().display().to_string(),
            "--run-dir".into(),
            self.s.root().join("run").display().to_string(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&a)
    }

    fn up(&self) -> String {
        self.up_with(&[])
    }

    /// `knode up` with `extra` arguments too.
    fn up_with(&self, extra: &[&str]) -> String {
        let (kc, logs) = (self.kubeconfig(), self.s.root().join("logs"));
        let mut args = vec![
            "up",
            "--listen",
            "0.0.0.0:6443",
            "--write-kubeconfig",
            kc.to_str().unwrap(),
            "--log-dir",
            logs.to_str().unwrap(),
            "--node-name",
            "knode-test",
        ];
        args.extend_from_slice(extra);
        let o = self.knode(&args);
        assert!(o.status.success(), "knode up: {}", text(&o.stderr));
        text(&o.stdout)
    }

    /// kubectl 1.37 in the node's namespace; must succeed.
    fn kubectl(&self, args: &[&str]) -> String {
        let mut a = vec![
            "nsenter".to_string(),
            format!("--net=/var/run/netns/{}", self.ns),
            KUBECTL.to_string(),
            "--kubeconfig".into(),
            self.kubeconfig().display().to_string(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = run(&a);
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}\n--- knode.log:\n{}",
            text(&o.stderr),
            std::fs::read_to_string(self.s.root().join("knode.log")).unwrap_or_default()
        );
        text(&o.stdout)
    }

    /// kubectl 1.37 in the node's namespace, with the cluster's kubeconfig.
    fn kubectl_command(&self) -> Command {
        self.kubectl_of(KUBECTL)
    }

    /// `bin` (any kubectl) in the node's namespace with the cluster's kubeconfig.
    fn kubectl_of(&self, bin: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(bin)
            .arg("--kubeconfig")
            .arg(self.kubeconfig());
        c
    }

    /// Waits (60 s at most) for pod `pod` to reach `phase`.
    fn wait_phase(&self, pod: &str, phase: &str) {
        self.kubectl(&[
            "wait",
            &format!("--for=jsonpath={{.status.phase}}={phase}"),
            &format!("pod/{pod}"),
            "--timeout=60s",
        ]);
    }

    /// `kubectl apply -f -` of `yaml`; must succeed.
    fn apply(&self, yaml: &str) {
        let o = self.kubectl_with_stdin(&["apply", "-f", "-"], yaml);
        assert!(o.status.success(), "kubectl apply: {}", text(&o.stderr));
    }

    /// kubectl 1.37 in the node's namespace with `input` on its stdin; its output.
    fn kubectl_with_stdin(&self, args: &[&str], input: &str) -> Output {
        self.kubectl_of_with_stdin(self.kubectl_command(), args, input)
    }

    /// `kubectl` (a command from [`Up::kubectl_of`]) with `input` on its stdin; its output.
    fn kubectl_of_with_stdin(&self, mut kubectl: Command, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut c = kubectl
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }

    /// The first line kubectl 1.37 prints (a follow or a watch), then it is stopped.
    fn first_line(&self, args: &[&str]) -> String {
        format!("{}\n", self.watch_until(args, |_| true))
    }

    /// Runs a kubectl 1.37 watch until a line of its output satisfies `done`; that line.
    fn watch_until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let mut c = self.kubectl_command();
        c.args(args).arg("--request-timeout=60s");
        support::first_line_where(c, done).unwrap_or_else(|seen| {
            panic!(
                "kubectl {args:?} ended first: {seen:?}\n--- knode.log:\n{}",
                std::fs::read_to_string(self.s.root().join("knode.log")).unwrap_or_default()
            )
        })
    }

    /// GET from the outside namespace.
    fn outside_get(&self, url: &str) -> String {
        let o = run(&[
            "ip",
            "netns",
            "exec",
            &self.outside,
            "timeout",
            "5",
            "busybox",
            "wget",
            "-qO-",
            url,
        ]);
        text(&o.stdout)
    }

    fn pod_dirs(&self) -> usize {
        std::fs::read_dir(self.s.root().join("run/pods"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until the node holds `n` pod directories: the API shows a terminal pod gone at
    /// once (it is deleted without grace, as upstream), and the node then removes its
    /// directory on its own; nothing in the API marks that moment.
    fn await_pod_dirs(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.pod_dirs() != n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(self.pod_dirs(), n);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.knode(&[
            "down",
            "--log-dir",
            self.s.root().join("logs").to_str().unwrap(),
        ]);
        for n in [&self.ns, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0]).args(&argv[1..]).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn up_runs_the_bootcamp_and_down_leaves_nothing() {
    let u = Up::new();
    u.s.import("test/kubectl", &support::kubectl_image());
    let out = u.up();
    assert!(out.contains("Node knode-test is Ready"), "{out}");
    // Ready means ready: no wait needed before the tutorial's first command.
    let nodes = u.kubectl(&["get", "nodes", "-o", "wide"]);
    let row: Vec<&str> = nodes.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["knode-test", "Ready"], "{nodes}");
    assert_eq!(row[5], "192.0.2.1", "INTERNAL-IP: {nodes}");
    // A second `knode up` finds it running.
    assert!(u.up().contains("already up"));

    u.kubectl(&[
        "create",
        "deployment",
        "kubernetes-bootcamp",
        "--image=test/busybox:1",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        // httpd in the background, and a shell that exits at once on SIGTERM.
        "mkdir -p /tmp/w && hostname > /tmp/w/index.html && httpd -p 8080 -h /tmp/w && echo serving $(hostname) && echo on port 8080 >&2 && trap 'exit 0' TERM && while true; do sleep 0.2; done",
    ]);
    u.kubectl(&[
        "rollout",
        "status",
        "deployment/kubernetes-bootcamp",
        "--timeout=60s",
    ]);
    let pods = u.kubectl(&["get", "pods", "-o", "wide"]);
    let names: Vec<String> = pods
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[1..3], ["1/1", "Running"], "{pods}");
            assert!(f[5].starts_with("10.244.0."), "pod IP: {pods}");
            f[0].to_string()
        })
        .collect();
    assert_eq!(names.len(), 3, "{pods}");

    u.kubectl(&[
        "expose",
        "deployment/kubernetes-bootcamp",
        "--type=NodePort",
        "--port",
        "8080",
    ]);
    let port = u.kubectl(&[
        "get",
        "services/kubernetes-bootcamp",
        "-o",
        "go-template={{(index .spec.ports 0).nodePort}}",
    ]);
    // The endpoints controllers list the three ready pods, as describe shows them.
    u.kubectl(&[
        "wait",
        "endpoints/kubernetes-bootcamp",
        "--for=jsonpath={.subsets[0].addresses[2].targetRef.kind}=Pod",
        "--timeout=60s",
    ]);
    let ep = u.kubectl(&["get", "endpoints", "kubernetes-bootcamp"]);
    let row: Vec<&str> = ep.lines().nth(1).unwrap().split_whitespace().collect();
    let mut addrs: Vec<&str> = row[1].split(',').collect();
    addrs.sort();
    assert_eq!(addrs.len(), 3, "{ep}");
    assert!(
        addrs
            .iter()
            .all(|a| a.starts_with("10.244.0.") && a.ends_with(":8080")),
        "{ep}"
    );
    let describe = u.kubectl(&["describe", "services/kubernetes-bootcamp"]);
    assert!(
        describe.contains("Endpoints:") && describe.contains(":8080,"),
        "{describe}"
    );
    let slices: serde_json::Value = serde_json::from_str(&u.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes-bootcamp",
        "-o",
        "json",
    ]))
    .unwrap();
    let slice = &slices["items"][0];
    assert_eq!(slices["items"].as_array().unwrap().len(), 1, "{slices}");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 3, "{slice}");
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(slice["ports"][0]["port"], 8080);
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    let url = format!("http://192.0.2.1:{port}/");
    // Requests from outside reach every replica (the proxy picks at random).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let page = u.outside_get(&url);
        assert!(
            names.contains(&page.trim().to_string()),
            "{page:?} from {url}"
        );
        seen.insert(page.trim().to_string());
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Logs and exec through the API server and the node's kubelet API (the bootcamp's
    // `kubectl logs $POD_NAME` and `kubectl exec -ti $POD_NAME -- bash` steps).
    let pod = &names[0];
    assert_eq!(
        u.kubectl(&["logs", pod]),
        format!("serving {pod}\non port 8080\n")
    );
    assert_eq!(u.kubectl(&["logs", pod, "--tail=1"]), "on port 8080\n");
    let stamped = u.kubectl(&["logs", pod, "--timestamps", "--tail=1"]);
    assert!(
        stamped.ends_with("Z on port 8080\n") && stamped.starts_with("20"),
        "{stamped:?}"
    );
    let first = u.first_line(&["logs", "-f", pod]);
    assert_eq!(first, format!("serving {pod}\n"));
    let env = u.kubectl(&["exec", pod, "--", "env"]);
    assert!(env.lines().any(|l| l == format!("HOSTNAME={pod}")), "{env}");
    assert!(env.contains("KUBERNETES_SERVICE_HOST=10.96.0.1"), "{env}");
    let page = u.kubectl(&["exec", pod, "--", "cat", "/tmp/w/index.html"]);
    assert_eq!(page, format!("{pod}\n"));
    // stdin, and a command's exit code as kubectl reports it.
    let o = u.kubectl_with_stdin(
        &["exec", "-i", pod, "--", "sh", "-c", "tr a-z A-Z; exit 3"],
        "hello\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "HELLO\n");
    assert!(
        text(&o.stderr).contains("command terminated with exit code 3"),
        "{}",
        text(&o.stderr)
    );
    // The same over SPDY/3.1: kubectl 1.20 speaks nothing else, and 1.37 falls back to it
    // (here forced, as with a proxy that does not pass WebSockets).
    for (bin, env) in [
        (support::server::KUBECTL_120, ""),
        (KUBECTL, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false"),
    ] {
        let mut k = u.kubectl_of(bin);
        if let Some((n, v)) = env.split_once('=') {
            k.env(n, v);
        }
        let o = u.kubectl_of_with_stdin(
            k,
            &[
                "exec",
                "-i",
                pod,
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; echo err >&2; exit 3",
            ],
            "hello\n",
        );
        assert_eq!(o.status.code(), Some(3), "{bin}: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "HELLO\n", "{bin}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with("err\n") && err.contains("command terminated with exit code 3"),
            "{bin}: {err}"
        );
        let env_out = text(
            &u.kubectl_of(bin)
                .args(["exec", pod, "--", "env"])
                .output()
                .unwrap()
                .stdout,
        );
        assert!(
            env_out.lines().any(|l| l == format!("HOSTNAME={pod}")),
            "{bin}: {env_out}"
        );
    }
    // -ti under a terminal (script gives kubectl one): the command has a terminal too
    // (kubectl 1.20: over SPDY, with a resize stream and no stderr).
    for bin in [KUBECTL, support::server::KUBECTL_120] {
        let line = format!(
            "{bin} --kubeconfig {} exec -ti {pod} -- sh -c 'test -t 0 && test -t 1 && echo on a terminal'",
            u.kubeconfig().display()
        );
        let o = run(&[
            "nsenter",
            &format!("--net=/var/run/netns/{}", u.ns),
            "script",
            "-qec",
            &line,
            "/dev/null",
        ]);
        let out = text(&o.stdout);
        assert!(o.status.success(), "{bin}: {out} {}", text(&o.stderr));
        assert!(out.contains("on a terminal\r\n"), "{bin}: {out:?}");
    }
    // A pod reaches the API server through the `kubernetes` Service (its endpoint the node's
    // address, from the API's EndpointSlice).
    let o = u.kubectl(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "echo | nc -w 5 10.96.0.1 443 >/dev/null; echo exit=$?",
    ]);
    assert_eq!(o, "exit=0\n");
    // An in-cluster client: kubectl in a pod finds the API server from the `kubernetes`
    // Service's variables and authenticates with the ServiceAccount token mounted in it,
    // checking the server against the mounted CA; RBAC decides what it may do.
    let in_cluster = |name: &str, phase: &str| {
        u.kubectl(&[
            "run",
            name,
            "--image=test/kubectl:1",
            "--restart=Never",
            "--command",
            "--",
            "kubectl",
            "get",
            "pods",
            "-o",
            "name",
        ]);
        u.kubectl(&[
            "wait",
            &format!("pod/{name}"),
            &format!("--for=jsonpath={{.status.phase}}={phase}"),
            "--timeout=60s",
        ]);
        u.kubectl(&["logs", name])
    };
    let denied = in_cluster("denied", "Failed");
    assert!(
        denied.contains("Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\""),
        "{denied}"
    );
    u.kubectl(&[
        "create",
        "rolebinding",
        "pod-reader",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    let listed = in_cluster("allowed", "Succeeded");
    assert!(listed.contains(&format!("pod/{pod}\n")), "{listed}");
    // Finished pods keep their logs until deleted; then they leave nothing.
    let before = u.pod_dirs();
    u.kubectl(&["delete", "pod", "denied", "allowed", "--timeout=60s"]);
    u.await_pod_dirs(before - 2);
    const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let file = |f: &str| u.kubectl(&["exec", pod, "--", "cat", &format!("{SA}/{f}")]);
    assert_eq!(file("namespace"), "default");
    let ca = std::fs::read_to_string(u.s.root().join("server/tls/ca.crt")).unwrap();
    assert_eq!(file("ca.crt"), ca);
    // `kubectl proxy`, then the pod and the service through the API server's proxy.
    {
        use std::io::BufRead;
        let mut proxy = u
            .kubectl_command()
            .args(["proxy", "--port=8001"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(proxy.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("Starting to serve on 127.0.0.1:8001"),
            "{line}"
        );
        let get = |path: &str| {
            let o = run(&[
                "nsenter",
                &format!("--net=/var/run/netns/{}", u.ns),
                "busybox",
                "wget",
                "-qO-",
                &format!("http://127.0.0.1:8001{path}"),
            ]);
            text(&o.stdout)
        };
        let pod_page = get(&format!(
            "/api/v1/namespaces/default/pods/{pod}:8080/proxy/"
        ));
        let svc_page = get("/api/v1/namespaces/default/services/kubernetes-bootcamp:8080/proxy/");
        let version = get("/version");
        let _ = proxy.kill();
        let _ = proxy.wait();
        assert_eq!(pod_page, format!("{pod}\n"));
        assert!(names.contains(&svc_page.trim().to_string()), "{svc_page:?}");
        assert!(version.contains("\"gitVersion\""), "{version}");
    }
    // `kubectl port-forward` to the pod's port 8080 and to a port its container binds on
    // 127.0.0.1 only (reachable only from inside the pod's network namespace): kubectl 1.37
    // tunnels SPDY in a WebSocket, 1.35 too, 1.20 upgrades to SPDY/3.1 itself.
    u.kubectl(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/l && echo local > /tmp/l/index.html && httpd -p 127.0.0.1:9090 -h /tmp/l",
    ]);
    for (i, bin) in [
        KUBECTL,
        support::server::KUBECTL_135,
        support::server::KUBECTL_120,
    ]
    .iter()
    .enumerate()
    {
        use std::io::BufRead;
        let (a, b, c) = (18080 + i * 10, 18081 + i * 10, 18082 + i * 10);
        let mut pf = u
            .kubectl_of(bin)
            .args([
                "port-forward",
                &format!("pod/{pod}"),
                &format!("{a}:8080"),
                &format!("{b}:9090"),
                &format!("{c}:9999"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(pf.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            line.starts_with(&format!("Forwarding from 127.0.0.1:{a} -> 8080")),
            "{bin}: {line}"
        );
        let get = |port: usize| {
            let o = run(&[
                "nsenter",
                &format!("--net=/var/run/netns/{}", u.ns),
                "busybox",
                "wget",
                "-qO-",
                &format!("http://127.0.0.1:{port}/"),
            ]);
            text(&o.stdout)
        };
        // Several connections over one session, to both ports.
        let pages = [get(a), get(b), get(a)];
        // A port nothing listens on: that connection fails and kubectl says why (1.29 and
        // later then end the whole session, as on any cluster; 1.20 goes on).
        assert_eq!(get(c), "");
        let _ = pf.kill();
        let o = pf.wait_with_output().unwrap();
        let err = text(&o.stderr);
        assert!(
            err.contains("error forwarding port 9999 to pod default/")
                && err.contains("dial tcp4 127.0.0.1:9999: connect: connection refused"),
            "{bin}: {err}"
        );
        assert_eq!(
            pages,
            [format!("{pod}\n"), "local\n".into(), format!("{pod}\n")],
            "{bin}"
        );
    }
    let o = u.kubectl_with_stdin(&["logs", "nosuchpod"], "");
    assert!(
        text(&o.stderr).contains("pods \"nosuchpod\" not found"),
        "{}",
        text(&o.stderr)
    );
    // `knode explain`: the kernel objects behind the pod, each where a learner can look.
    let o = u.knode(&["explain", &format!("pod/{pod}")]);
    let ex = text(&o.stdout);
    assert!(o.status.success(), "{ex}{}", text(&o.stderr));
    let ip = u.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    assert!(ex.contains(&format!("  eth0 {ip}/24 in net:[")), "{ex}");
    let veth = ex
        .lines()
        .find_map(|l| l.trim().strip_prefix("its veth peer on the node: "))
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no veth:\n{ex}"));
    let link = text(&run(&["ip", "-n", &u.ns, "-o", "link", "show", veth]).stdout);
    assert!(link.contains("master knode0"), "{veth}: {link}");
    assert!(ex.contains(", a port of bridge knode0"), "{ex}");
    assert!(
        ex.contains("read-only layers (1 from docker.io/test/busybox:1"),
        "{ex}"
    );
    assert!(ex.contains("httpd"), "{ex}");
    let o = u.knode(&["explain", "pod/nosuchpod"]);
    assert!(
        !o.status.success()
            && text(&o.stderr).contains("pod default/nosuchpod is not on this node"),
        "{}",
        text(&o.stderr)
    );
    // The node's kubelet API through the API server (`nodes/proxy`): its health and its
    // usage summary (the node's from /proc here; pods have cgroups only in the VM).
    assert_eq!(
        u.kubectl(&["get", "--raw", "/api/v1/nodes/knode-test/proxy/healthz"]),
        "ok"
    );
    let summary: serde_json::Value = serde_json::from_str(&u.kubectl(&[
        "get",
        "--raw",
        "/api/v1/nodes/knode-test/proxy/stats/summary",
    ]))
    .unwrap();
    assert_eq!(summary["node"]["nodeName"], "knode-test", "{summary}");
    assert!(
        summary["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(
        summary["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["podRef"]["name"] == pod.as_str()),
        "{summary}"
    );
    // `knode logs` and `knode exec` go through the API server as kubectl does, on the
    // cluster this host serves (the server's own words show it: a node's agent answers
    // without "Error from server").
    let o = u.knode(&["logs", pod, "--tail=1"]);
    assert_eq!(text(&o.stdout), "on port 8080\n", "{}", text(&o.stderr));
    let o = u.knode(&["logs", "nosuchpod"]);
    assert!(
        !o.status.success()
            && text(&o.stderr)
                .contains("Error from server (NotFound): pods \"nosuchpod\" not found"),
        "{}",
        text(&o.stderr)
    );
    let o = u.knode(&[
        "exec",
        "--kubeconfig",
        u.kubeconfig().to_str().unwrap(),
        pod,
        "--",
        "sh",
        "-c",
        "echo $HOSTNAME; echo err >&2; exit 4",
    ]);
    assert_eq!(
        (o.status.code(), text(&o.stdout), text(&o.stderr)),
        (Some(4), format!("{pod}\n"), "err\n".to_string())
    );

    // Scale down: two pods stop, and their directories go.
    u.kubectl(&["scale", "deployment/kubernetes-bootcamp", "--replicas=1"]);
    u.kubectl(&[
        "wait",
        "deployment/kubernetes-bootcamp",
        "--for=jsonpath={.status.replicas}=1",
        "--timeout=60s",
    ]);
    let all: serde_json::Value =
        serde_json::from_str(&u.kubectl(&["get", "pods", "-o", "json"])).unwrap();
    let terminating: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_some())
        .map(|p| format!("pod/{}", p["metadata"]["name"].as_str().unwrap()))
        .collect();
    // (Those that stopped already are gone from the API too.)
    assert!(terminating.len() <= 2, "{all}");
    if !terminating.is_empty() {
        let mut wait = vec!["wait", "--for=delete", "--timeout=60s"];
        wait.extend(terminating.iter().map(String::as_str));
        u.kubectl(&wait);
    }
    assert_eq!(u.pod_dirs(), 1);
    u.kubectl(&[
        "wait",
        "--for=jsonpath={.status.availableReplicas}=1",
        "deployment/kubernetes-bootcamp",
        "--timeout=60s",
    ]);
    assert!(u
        .outside_get(&url)
        .trim()
        .starts_with("kubernetes-bootcamp-"));
    // The endpoints follow: the one pod left is the one address.
    let last = u.kubectl(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert!(!last.contains(' '), "{last}");
    u.kubectl(&[
        "wait",
        "endpoints/kubernetes-bootcamp",
        &format!("--for=jsonpath={{.subsets[0].addresses[*].targetRef.name}}={last}"),
        "--timeout=60s",
    ]);

    // Down: nothing of the cluster is left in the node's namespace or on the host.
    let o = u.knode(&[
        "down",
        "--log-dir",
        u.s.root().join("logs").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "knode down: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("Stopped knode"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(u.pod_dirs(), 0);
    let links = text(&run(&["ip", "-n", &u.ns, "-o", "link"]).stdout);
    assert!(
        !links.contains("knode0") && !links.contains("veth"),
        "{links}"
    );
    let tables = text(
        &run(&[
            "nsenter",
            &format!("--net=/var/run/netns/{}", u.ns),
            "nft",
            "list",
            "tables",
        ])
        .stdout,
    );
    assert!(tables.trim().is_empty(), "{tables}");
    let root = u.s.root().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root), "mounts left under {root}");
    let ps = text(&run(&["ps", "-eo", "args"]).stdout);
    assert!(!ps.lines().any(|l| l.contains(&root)), "{ps}");
    // The IP addresses went back to the pool.
    let ipam = u.s.root().join("cni/networks/knode");
    let held = std::fs::read_dir(&ipam)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
        .count();
    assert_eq!(held, 0, "addresses still held in {}", ipam.display());
}

#[test]
fn a_knode_up_killed_in_the_middle_of_a_rollout_converges_when_up_again() {
    let u = Up::new();
    u.up();
    u.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=test/busybox:1",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]);
    u.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    // A new template, and the whole cluster (server, controllers, agent) killed at once.
    u.kubectl(&["set", "env", "deployment/web", "VERSION=2"]);
    let pid: i32 = std::fs::read_to_string(u.s.root().join("run/up.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    {
        use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
        let fd = pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
        pidfd_send_signal(&fd, Signal::KILL).unwrap();
        // Gone (its pidfd says so), with its sockets and store closed.
        let mut polls = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 30,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut polls, Some(&ts)).unwrap(), 1);
    }
    // Up again: the store has the rollout, the agent adopts the containers still running,
    // and the controllers finish the rollout: three pods of the new template, no more.
    let out = u.up();
    assert!(out.contains("Node knode-test is Ready"), "{out}");
    u.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let pods: serde_json::Value =
        serde_json::from_str(&u.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"])).unwrap();
    let live: Vec<&serde_json::Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect();
    assert_eq!(live.len(), 3, "{pods}");
    for p in &live {
        assert_eq!(p["status"]["phase"], "Running", "{p}");
        assert_eq!(
            p["spec"]["containers"][0]["env"][0],
            serde_json::json!({"name": "VERSION", "value": "2"}),
            "{p}"
        );
    }
    let rs = u.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.replicas}",
    ]);
    let mut sizes: Vec<&str> = rs.split_whitespace().collect();
    sizes.sort();
    assert_eq!(sizes, ["0", "3"], "{rs}");
    // The old pods are gone from the node too.
    u.await_pod_dirs(3);
}

/// `script` gives `line` a terminal of 33 rows and 111 columns, in the node's namespace (its
/// input stays open and empty: at its end, script would type into the terminal).
fn on_a_terminal(u: &Up, line: &str) -> Output {
    let mut c = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", u.ns))
        .args([
            "script",
            "-qec",
            &format!("stty rows 33 cols 111; {line}"),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = c.stdin.take();
    let o = c.wait_with_output().unwrap();
    drop(input);
    o
}

/// Cluster DNS: `kube-system/kube-dns` as a real cluster lists it, served by the node on its
/// address (no DNS pod); a pod's resolv.conf points at it with the namespace searched first,
/// and `nslookup` in a pod finds Services by their short and full names and SRV records by
/// port name; `knode down` removes the address's link.
#[test]
fn pods_resolve_services_by_name_through_the_cluster_dns() {
    let u = Up::new();
    u.up();
    let svc = u.kubectl(&["get", "service", "kube-dns", "-n", "kube-system"]);
    assert!(
        svc.contains("kube-dns   ClusterIP   10.96.0.10   <none>        53/UDP,53/TCP,9153/TCP"),
        "{svc}"
    );
    u.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = u.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    // busybox's nslookup asks for the name as given (no search list, as busybox 1.28 and
    // later do); its ping resolves through the C library, which searches.
    let script = "cat /etc/resolv.conf; echo ===; nslookup kubernetes.default.svc.cluster.local; \
                  ping -c 1 -W 1 kubernetes.default | head -n 1; ping -c 1 -W 1 web | head -n 1; echo ===; \
                  nslookup web.default.svc.cluster.local; echo ===; \
                  nslookup -type=srv _80-8080._tcp.web.default.svc.cluster.local; echo ===; \
                  nslookup nosuch.default.svc.cluster.local; echo done";
    let o = u.kubectl_of_with_stdin(
        u.kubectl_command(),
        &[
            "run",
            "-i",
            "--rm",
            "--restart=Never",
            "dns",
            "--image=test/busybox:1",
            "--",
            "sh",
            "-c",
            script,
        ],
        "",
    );
    let out = text(&o.stdout);
    let parts: Vec<&str> = out.split("===\n").collect();
    assert_eq!(parts.len(), 5, "{out}\n{}", text(&o.stderr));
    // The node's own search domains, if any, come after the cluster's.
    assert!(
        parts[0].starts_with("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{out}"
    );
    let ns: Vec<&str> = parts[0]
        .lines()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    assert_eq!(ns, ["nameserver 10.96.0.10"], "{out}");
    assert!(parts[0].ends_with("options ndots:5\n"), "{out}");
    assert!(
        parts[1].contains("Name:\tkubernetes.default.svc.cluster.local\nAddress: 10.96.0.1\n"),
        "{out}"
    );
    // Short names, through the search list.
    assert!(
        parts[1].contains("PING kubernetes.default (10.96.0.1)"),
        "{out}"
    );
    assert!(parts[1].contains(&format!("PING web ({ip})")), "{out}");
    assert!(
        parts[2].contains(&format!(
            "Name:\tweb.default.svc.cluster.local\nAddress: {ip}\n"
        )),
        "{out}"
    );
    assert!(
        parts[3].contains("_80-8080._tcp.web.default.svc.cluster.local\tservice = 0 100 80 web.default.svc.cluster.local"),
        "{out}"
    );
    assert!(parts[4].contains("NXDOMAIN"), "{out}");
    // The address lives on a link of the node's, which `knode down` removes.
    let link = ["ip", "-n", &u.ns, "addr", "show", "knode-dns"];
    assert!(text(&run(&link).stdout).contains("inet 10.96.0.10/32"));
    let o = u.knode(&[
        "down",
        "--log-dir",
        u.s.root().join("logs").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!run(&link).status.success(), "knode-dns is left");
}

const HEADLESS: &str = "apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.test}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: 'test/busybox:1', command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: db
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: 'test/busybox:1', command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']}
";

/// dnsmasq in the outside namespace: the node's upstream resolver, which knows one name.
struct Upstream(std::process::Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless service's pods by name (their hostname under their subdomain) and all
/// together, its SRV records, their PTRs; an ExternalName's CNAME; a pod record; a name
/// outside the cluster from the node's upstream resolver (`--resolv-conf`); the pod's
/// /etc/hosts with its FQDN.
#[test]
fn headless_services_external_names_and_outside_names_resolve() {
    let u = Up::new();
    let upstream = Upstream(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &u.outside,
                "dnsmasq",
                "-k",
                "-C",
                "/dev/null",
            ])
            .args(["--no-resolv", "--no-hosts", "--listen-address=192.0.2.2"])
            .args(["--bind-interfaces", "--pid-file=", "--user=root"])
            .arg("--address=/www.example.test/198.51.100.7")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (scripts/deps.sh --test)"),
    );
    let resolv = u.s.root().join("node-resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.2\nsearch lab.test\n").unwrap();
    u.up_with(&["--resolv-conf", resolv.to_str().unwrap()]);
    u.apply(HEADLESS);
    u.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/db-0",
        "pod/db-1",
        "--timeout=60s",
    ]);
    // As a real server prints it: no cluster IP, the alias as its external IP.
    let row = u.kubectl(&["get", "service", "ext", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        [
            "ext",
            "ExternalName",
            "<none>",
            "www.example.test",
            "<none>"
        ],
        "{row}"
    );
    let ip = |p: &str| u.kubectl(&["get", "pod", p, "-o", "jsonpath={.status.podIP}"]);
    let (ip0, ip1) = (ip("db-0"), ip("db-1"));
    let hosts = u.kubectl(&["exec", "db-0", "--", "sh", "-c", "cat /etc/hosts; hostname"]);
    assert!(
        hosts.ends_with(&format!(
            "{ip0}\tdb-0.db.default.svc.cluster.local\tdb-0\ndb-0\n"
        )),
        "{hosts}"
    );
    let dashed = ip0.replace('.', "-");
    let script = format!(
        "cat /etc/resolv.conf; echo ===; nslookup db.default.svc.cluster.local; echo ===; \
         nslookup db-0.db.default.svc.cluster.local; echo ===; \
         nslookup -type=srv _pg._tcp.db.default.svc.cluster.local; echo ===; \
         nslookup {ip1}; echo ===; \
         nslookup -type=cname ext.default.svc.cluster.local; echo ===; \
         nslookup www.example.test; echo ===; \
         nslookup {dashed}.default.pod.cluster.local; echo done"
    );
    // A pod that asks and ends; its log read once it has (no attach racing a quick end).
    u.kubectl(&[
        "run",
        "--restart=Never",
        "dns",
        "--image=test/busybox:1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    u.wait_phase("dns", "Succeeded");
    let out = u.kubectl(&["logs", "dns"]);
    let parts: Vec<&str> = out.split("===\n").collect();
    assert_eq!(parts.len(), 8, "{out}");
    // The node's search path comes after the cluster's; its nameserver is not the pod's.
    assert!(
        parts[0].contains(
            "search default.svc.cluster.local svc.cluster.local cluster.local lab.test\n"
        ),
        "{out}"
    );
    assert!(!parts[0].contains("192.0.2.2"), "{out}");
    for want in [
        format!("Name:\tdb.default.svc.cluster.local\nAddress: {ip0}\n"),
        format!("Name:\tdb.default.svc.cluster.local\nAddress: {ip1}\n"),
    ] {
        assert!(parts[1].contains(&want), "{want}: {out}");
    }
    assert!(
        parts[2].contains(&format!(
            "Name:\tdb-0.db.default.svc.cluster.local\nAddress: {ip0}\n"
        )),
        "{out}"
    );
    assert!(!parts[2].contains(&ip1), "{out}");
    for host in ["db-0", "db-1"] {
        let want = format!("service = 0 100 5432 {host}.db.default.svc.cluster.local");
        assert!(parts[3].contains(&want), "{want}: {out}");
    }
    assert!(
        parts[4].contains("name = db-1.db.default.svc.cluster.local"),
        "{out}"
    );
    assert!(
        parts[5].contains("ext.default.svc.cluster.local\tcanonical name = www.example.test"),
        "{out}"
    );
    assert!(
        parts[6].contains("Name:\twww.example.test\nAddress: 198.51.100.7\n"),
        "{out}"
    );
    assert!(
        parts[7].contains(&format!(
            "Name:\t{dashed}.default.pod.cluster.local\nAddress: {ip0}\n"
        )),
        "{out}"
    );
    drop(upstream);
}

const PROBED: &str = "apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: 'test/busybox:1'
    command: [sh, -c, 'touch /tmp/healthy; sleep 2; rm /tmp/healthy; trap \"exit 0\" TERM; while true; do sleep 0.2; done']
    livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: gate, labels: {app: gate}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: 'test/busybox:1'
    command: [sh, -c, '(while [ ! -e /tmp/listen ]; do sleep 0.2; done; exec httpd -f -p 9 -h /tmp) & trap \"exit 0\" TERM; while true; do sleep 0.2; done']
    readinessProbe: {exec: {command: [test, -e, /tmp/ready]}, periodSeconds: 1}
    startupProbe: {tcpSocket: {port: 9}, periodSeconds: 1, failureThreshold: 1000}
---
apiVersion: v1
kind: Service
metadata: {name: gate}
spec: {selector: {app: gate}, ports: [{port: 80}]}
";

/// A Deployment whose pods serve their VERSION over HTTP, ready once they answer, and keep
/// serving 2 s after SIGTERM (the proxy's rules follow a deletion a moment later).
const ROLLED: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: 'test/busybox:1'
        env: [{name: VERSION, value: v1}]
        command: [sh, -c, 'mkdir -p /tmp/www; echo $VERSION > /tmp/www/index.html; sleep 1; httpd -f -p 8080 -h /tmp/www & trap \"sleep 2; kill $!; exit 0\" TERM; wait']
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
";

/// Liveness: a container whose health file goes away is restarted (Unhealthy and Killing
/// events, restartCount 1). Readiness and startup: a pod is Running but not Ready, started
/// only once its startup probe passes, out of its Service's endpoints until its readiness
/// probe passes (the Python client reads the same). A rolling update waits for each new pod
/// to be ready, and every request through the Service during it succeeds.
#[test]
fn probes_restart_gate_readiness_and_hold_a_rolling_update() {
    let u = Up::new();
    u.up();
    u.apply(PROBED);
    // kubectl gives up on a path not there yet: the statuses are there once it runs.
    u.wait_phase("live", "Running");
    u.kubectl(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
        "pod/live",
        "--timeout=60s",
    ]);
    let d = u.kubectl(&["describe", "pod", "live"]);
    for want in [
        "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory",
        "Container c failed liveness probe, will be restarted",
        "Liveness:       exec [cat /tmp/healthy] delay=0s timeout=1s period=1s successThreshold=1 failureThreshold=2",
    ] {
        assert!(d.contains(want), "{want}:\n{d}");
    }

    // The same failure again is one Event counted up (as client-go's correlator does), not
    // an Event per failure.
    let evs: serde_json::Value =
        serde_json::from_str(&u.kubectl(&["get", "events", "-o", "json"])).unwrap();
    let unhealthy: Vec<&serde_json::Value> = evs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Unhealthy" && e["involvedObject"]["name"] == "live")
        .collect();
    assert_eq!(unhealthy.len(), 1, "{unhealthy:#?}");
    assert!(
        unhealthy[0]["count"].as_i64().unwrap() >= 2,
        "{unhealthy:#?}"
    );
    // `gate`: its startup probe knocks on a port nobody listens on, until something does.
    u.kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "pod/gate",
        "--timeout=60s",
    ]);
    let statuses = |pod: &str| {
        u.kubectl(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].started} {.status.containerStatuses[0].ready} {.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    assert_eq!(statuses("gate"), "false false False");
    u.kubectl(&["exec", "gate", "--", "touch", "/tmp/listen"]);
    u.kubectl(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].started}=true",
        "pod/gate",
        "--timeout=60s",
    ]);
    assert_eq!(statuses("gate"), "true false False");
    let ready_endpoints = || {
        u.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=gate",
            "-o",
            "jsonpath={.items[0].endpoints[0].conditions.ready}",
        ])
    };
    assert_eq!(ready_endpoints(), "false");
    let script = format!(
        "from kubernetes import client, config\nconfig.load_kube_config({:?})\ns = client.CoreV1Api().read_namespaced_pod('gate', 'default').status.container_statuses[0]\nprint(s.started, s.ready)\n",
        u.kubeconfig().display().to_string()
    );
    let py = |want: &str| {
        let o = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", u.ns))
            .args([support::server::PYTHON, "-c", &script])
            .output()
            .unwrap();
        assert_eq!(text(&o.stdout), want, "{}", text(&o.stderr));
    };
    py("True False\n");
    u.kubectl(&["exec", "gate", "--", "touch", "/tmp/ready"]);
    u.kubectl(&["wait", "--for=condition=Ready", "pod/gate", "--timeout=60s"]);
    assert_eq!(statuses("gate"), "true true True");
    py("True True\n");
    u.kubectl(&[
        "wait",
        "--for=jsonpath={.endpoints[0].conditions.ready}=true",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=gate",
        "--timeout=60s",
    ]);

    // The rolling update, with requests all along.
    u.apply(ROLLED);
    u.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let ip = u.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ns = u.ns.clone();
    let (s2, ip2) = (stop.clone(), ip.clone());
    let requests = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid network namespace descriptor, for this thread alone.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let (mut ok, mut failed, mut seen) = (0, vec![], std::collections::BTreeSet::new());
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            match get(&format!("{ip2}:80")) {
                Ok(body) => {
                    ok += 1;
                    seen.insert(body);
                }
                Err(e) => failed.push(e),
            }
        }
        (ok, failed, seen)
    });
    u.kubectl(&["set", "env", "deployment/web", "VERSION=v2"]);
    u.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, seen) = requests.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed, the first: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "{ok}");
    assert!(seen.contains("v1\n") && seen.contains("v2\n"), "{seen:?}");
}

/// postStart runs once the container has started; on deletion preStop runs, then SIGTERM
/// (the container's trap), each writing a line to a hostPath file the test reads after.
#[test]
fn lifecycle_hooks_run_after_the_start_and_before_sigterm() {
    let u = Up::new();
    u.up();
    let dir = u.s.root().join("hooks");
    let pod = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: d, hostPath: {{path: {}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: 'test/busybox:1'
    command: [sh, -c, 'trap \"echo term >> /d/log; exit 0\" TERM; while true; do sleep 0.2; done']
    volumeMounts: [{{name: d, mountPath: /d}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, 'echo poststart >> /d/log']}}}}
      preStop: {{exec: {{command: [sh, -c, 'echo prestop >> /d/log; sleep 1']}}}}
",
        dir.display()
    );
    u.apply(&pod);
    u.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/hooked",
        "--timeout=60s",
    ]);
    assert_eq!(
        std::fs::read_to_string(dir.join("log")).unwrap(),
        "poststart\n"
    );
    u.kubectl(&["delete", "pod", "hooked", "--timeout=60s"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("log")).unwrap(),
        "poststart\nprestop\nterm\n"
    );
}

const ENDING: &str = "apiVersion: v1
kind: Pod
metadata: {name: ending}
spec:
  restartPolicy: Never
  containers:
  - name: file
    image: 'test/busybox:1'
    securityContext: {runAsUser: 1000}
    command: [sh, -c, 'echo bye from file > /dev/termination-log; exit 3']
  - name: custom
    image: 'test/busybox:1'
    terminationMessagePath: /tmp/why
    command: [sh, -c, 'echo custom > /tmp/why']
  - name: logs
    image: 'test/busybox:1'
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, 'echo first; echo last words; exit 2']
";

/// A container's termination message: what it wrote to /dev/termination-log (as a
/// non-root user too), to its own terminationMessagePath, or with FallbackToLogsOnError the
/// end of its log, in its terminated state as kubectl shows it.
#[test]
fn termination_messages_come_from_the_file_or_the_log() {
    let u = Up::new();
    u.up();
    u.apply(ENDING);
    u.wait_phase("ending", "Failed");
    let msgs = u.kubectl(&[
        "get",
        "pod",
        "ending",
        "-o",
        "jsonpath={range .status.containerStatuses[*]}{.name}={.state.terminated.message}|{end}",
    ]);
    assert_eq!(
        msgs,
        "custom=custom\n|file=bye from file\n|logs=first\nlast words\n|"
    );
    let d = u.kubectl(&["describe", "pod", "ending"]);
    assert!(
        d.contains("      Reason:   Error\n      Message:  bye from file\n"),
        "{d}"
    );
}

const DOWNWARD: &str = "apiVersion: v1
kind: Pod
metadata: {name: downward, labels: {app: dw, tier: back}}
spec:
  restartPolicy: Never
  volumes:
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: cpu, resourceFieldRef: {containerName: c, resource: limits.cpu, divisor: 1m}}
  containers:
  - name: c
    image: 'test/busybox:1'
    resources: {limits: {cpu: 500m, memory: 64Mi}, requests: {cpu: 250m, memory: 32Mi}}
    volumeMounts: [{name: info, mountPath: /info}]
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    command: [sh, -c, 'echo ip=$POD_IP node=$NODE_IP mem=$MEM cpu=$CPU; cat /info/labels; echo; cat /info/cpu; echo']
";

/// The downward API: env from the pod's status (its IP, its node's) and from a
/// container's resources in divisor units; a downwardAPI volume with the labels and a
/// limit.
#[test]
fn the_downward_api_gives_env_and_files() {
    let u = Up::new();
    u.up();
    u.apply(DOWNWARD);
    u.wait_phase("downward", "Succeeded");
    let ip = u.kubectl(&["get", "pod", "downward", "-o", "jsonpath={.status.podIP}"]);
    let node_ip = u.kubectl(&["get", "pod", "downward", "-o", "jsonpath={.status.hostIP}"]);
    assert!(!ip.is_empty() && !node_ip.is_empty());
    assert_eq!(
        u.kubectl(&["logs", "downward"]),
        format!("ip={ip} node={node_ip} mem=64 cpu=250\napp=\"dw\"\ntier=\"back\"\n500\n")
    );
}

/// One HTTP GET of `/` at `addr` (2 s at most); the body.
fn get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &addr.parse().unwrap(),
        std::time::Duration::from_secs(2),
    )
    .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| format!("read: {e}"))?;
    if !(r.starts_with("HTTP/1.0 200 ") || r.starts_with("HTTP/1.1 200 ")) {
        return Err(format!("answer: {}", r.lines().next().unwrap_or_default()));
    }
    Ok(r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[test]
fn kubectl_run_attaches_and_terminals_follow_the_clients_size() {
    let u = Up::new();
    u.up();
    // `kubectl run -i`: the pod's stdin is the client's (stdinOnce: its end is the
    // container's EOF), the output comes back, the exit code is the container's, and --rm
    // deletes the pod. kubectl 1.37 and 1.35 attach over WebSocket, 1.20 over SPDY.
    let bins = [
        (KUBECTL, "v137"),
        (support::server::KUBECTL_135, "v135"),
        (support::server::KUBECTL_120, "v120"),
    ];
    for (bin, v) in bins {
        let name = format!("echo-{v}");
        let o = u.kubectl_of_with_stdin(
            u.kubectl_of(bin),
            &[
                "run",
                "-i",
                "--rm",
                "--restart=Never",
                &name,
                "--image=test/busybox:1",
                "--",
                "sh",
                "-c",
                "while read x; do echo got $x; done; echo stdin closed; exit 4",
            ],
            "hello\nworld\n",
        );
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert_eq!(o.status.code(), Some(4), "{bin}: {out} {err}");
        assert!(
            out.contains("got hello\ngot world\nstdin closed\n"),
            "{bin}: {out:?} {err}"
        );
        assert!(
            err.contains(&format!("pod default/{name} terminated (Error)")),
            "{bin}: {err}"
        );
        assert!(
            out.contains(&format!("pod \"{name}\" deleted")),
            "{bin}: {out}"
        );
    }
    // `kubectl run -it`: the container runs on a terminal, which takes the size of the
    // client's (kubectl sends it when attached), and what it prints comes back; `kubectl
    // exec -ti` follows the client's size too.
    u.kubectl(&[
        "run",
        "sleeper",
        "--image=test/busybox:1",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]);
    u.kubectl(&[
        "wait",
        "pod/sleeper",
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    // Waits (20 s at most) for the terminal to have the client's size, and prints it.
    let sized = r#"timeout 20 sh -c "until [ \"\$(stty size 2>/dev/null)\" = \"33 111\" ]; do sleep 0.05; done"; echo size $(stty size)"#;
    let cases = [
        (
            KUBECTL,
            "run -it --rm --restart=Never tty-v137 --image=test/busybox:1 --",
            "; test -t 0 && echo TERM=$TERM",
            "size 33 111\r\nTERM=xterm\r\n",
        ),
        (
            support::server::KUBECTL_120,
            "run -it --rm --restart=Never tty-v120 --image=test/busybox:1 --",
            "; test -t 0 && echo TERM=$TERM",
            "size 33 111\r\nTERM=xterm\r\n",
        ),
        (KUBECTL, "exec -ti sleeper --", "", "size 33 111\r\n"),
        (
            support::server::KUBECTL_120,
            "exec -ti sleeper --",
            "",
            "size 33 111\r\n",
        ),
    ];
    for (bin, cmd, more, want) in cases {
        let o = on_a_terminal(
            &u,
            &format!(
                "{bin} --kubeconfig {} {cmd} sh -c '{sized}{more}'",
                u.kubeconfig().display()
            ),
        );
        let out = text(&o.stdout);
        assert!(o.status.success(), "{bin} {cmd}: {out} {}", text(&o.stderr));
        assert!(out.contains(want), "{bin} {cmd}: {out:?}");
    }
    // `knode exec -ti` through the API: a terminal of the client's size.
    let o = on_a_terminal(
        &u,
        &format!(
            "{} --root {} exec -ti sleeper -- sh -c '{sized}'",
            knode_bin(),
            u.s.root().display()
        ),
    );
    assert!(
        o.status.success() && text(&o.stdout).contains("size 33 111\r\n"),
        "{} {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // A client that goes away without ending its input ends it all the same (stdinOnce):
    // the container reads EOF and completes.
    {
        use std::io::{BufRead, Write};
        let mut c = u
            .kubectl_command()
            .args([
                "run",
                "-i",
                "--restart=Never",
                "cat",
                "--image=test/busybox:1",
                "--",
                "sh",
                "-c",
                "cat; echo stdin closed",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        input.write_all(b"typed\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "typed\n");
        c.kill().unwrap();
        c.wait().unwrap();
        u.kubectl(&[
            "wait",
            "pod/cat",
            "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=60s",
        ]);
        assert_eq!(u.kubectl(&["logs", "cat"]), "typed\nstdin closed\n");
        drop(input);
    }
    // `kubectl attach` without input: what the container writes from then on.
    u.kubectl(&[
        "run",
        "talker",
        "--image=test/busybox:1",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    u.kubectl(&[
        "wait",
        "pod/talker",
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    let line = u.first_line(&["attach", "talker"]);
    assert!(line.starts_with("tick "), "{line:?}");
    u.kubectl(&["delete", "pod", "sleeper", "talker", "cat", "--timeout=60s"]);
    // Nothing is left of the pods on the node.
    u.await_pod_dirs(0);
}

#[test]
fn static_pods_appear_as_mirror_pods() {
    let u = Up::new();
    u.up();
    // A static pod dropped in the node's manifests directory (kubeadm's control plane runs
    // this way) appears in the API as `<name>-<node>`, owned by the Node.
    let manifest = u.s.root().join("manifests/static-web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web, labels: {app: static}}\nspec:\n  containers:\n  - name: web\n    image: test/busybox:1\n    command: [sh, -c, \"echo static up; trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n",
    )
    .unwrap();
    let first = u.watch_until(
        &[
            "get",
            "pods",
            "-w",
            "-o",
            "jsonpath={.metadata.uid} {.status.phase}{\"\\n\"}",
        ],
        |l| l.ends_with(" Running"),
    );
    let uid = first.split_whitespace().next().unwrap().to_string();
    let pod: serde_json::Value =
        serde_json::from_str(&u.kubectl(&["get", "pod", "static-web-knode-test", "-o", "json"]))
            .unwrap();
    assert_eq!(pod["metadata"]["uid"], uid.as_str());
    let hash = pod["metadata"]["annotations"]["kubernetes.io/config.mirror"]
        .as_str()
        .unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.hash"],
        hash
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["name"], "knode-test");
    assert_eq!(pod["spec"]["nodeName"], "knode-test");
    // No ServiceAccount token for a mirror pod, as upstream.
    assert!(pod["spec"]["volumes"].is_null(), "{pod}");
    let describe = u.kubectl(&["describe", "pod", "static-web-knode-test"]);
    assert!(
        describe.contains("Controlled By:  Node/knode-test"),
        "{describe}"
    );
    // Logs and exec reach the static pod by its API name.
    assert_eq!(u.kubectl(&["logs", "static-web-knode-test"]), "static up\n");
    assert_eq!(
        u.kubectl(&["exec", "static-web-knode-test", "--", "echo", "inside"]),
        "inside\n"
    );
    // Deleting the mirror pod does not stop the static pod: the node makes it again.
    u.kubectl(&["delete", "pod", "static-web-knode-test", "--timeout=60s"]);
    u.watch_until(
        &[
            "get",
            "pods",
            "-w",
            "-o",
            "jsonpath={.metadata.uid} {.status.phase}{\"\\n\"}",
        ],
        |l| l.ends_with(" Running") && !l.starts_with(&uid),
    );
    assert_eq!(u.kubectl(&["logs", "static-web-knode-test"]), "static up\n");
    // Removing the manifest stops the pod, and its mirror pod goes.
    std::fs::remove_file(&manifest).unwrap();
    u.kubectl(&[
        "wait",
        "--for=delete",
        "pod/static-web-knode-test",
        "--timeout=60s",
    ]);
    u.await_pod_dirs(0);
}

/// The README's main job (`knode demo`, what `scripts/run.sh` runs): the bootcamp and the
/// guestbook with the tutorials' own commands, files and image names, served through a
/// registries.yaml mirror (no gcr.io or Docker Hub here), answering as the tutorials show at
/// each step; then nothing is left behind.
#[test]
fn the_demo_walks_the_bootcamp_and_the_guestbook_with_the_tutorials_names() {
    let s = Store::new();
    let o = Command::new(knode_bin())
        .arg("--root")
        .arg(s.root())
        .arg("--run-dir")
        .arg(s.root().join("run"))
        .args(["demo", "--kubectl", KUBECTL])
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    // The steps in order, as typed in the tutorial.
    let steps = [
        "==> knode image pull gcr.io/google-samples/kubernetes-bootcamp:v1",
        "through the mirror",
        "==> kubectl create deployment kubernetes-bootcamp --image=gcr.io/google-samples/kubernetes-bootcamp:v1",
        "==> kubectl expose deployment/kubernetes-bootcamp --type=NodePort --port 8080",
        "==> kubectl scale deployments/kubernetes-bootcamp --replicas=3",
        "==> knode explain svc/kubernetes-bootcamp",
        "in map service-ips:",
        "goto service-",
        "-default/kubernetes-bootcamp/tcp/",
        "in map service-nodeports",
        "counter packets 10 ",
        "in map endpoint-picks-tcp-",
        "Counters: 10 new connection(s) to default/kubernetes-bootcamp",
        "==> kubectl set image deployments/kubernetes-bootcamp kubernetes-bootcamp=jocatalin/kubernetes-bootcamp:v2",
        "==> kubectl rollout undo deployments/kubernetes-bootcamp",
        "==> kubectl exec ",
        "==> knode explain pod/kubernetes-bootcamp-",
        "Namespaces the containers share",
        "its veth peer on the node: ",
        "==> kubectl create -f redis-master-controller.yaml",
        "==> kubectl create -f redis-master-service.yaml",
        "==> kubectl create -f redis-slave-controller.yaml",
        "==> kubectl create -f redis-slave-service.yaml",
        "==> kubectl create -f frontend-controller.yaml",
        "==> kubectl create -f frontend-service.yaml",
        "==> kubectl get rc",
        "==> kubectl get endpoints",
        "<title>Guestbook</title>",
        "{\"message\": \"Updated\"}",
        "(read back from the slaves)\n{\"data\": \"Hello from knode\"}",
        "==> kubectl scale rc redis-slave --replicas=3",
        "==> kubectl get namespace\nNAME ",
        "==> done",
    ];
    assert_in_order(&out, &steps);
    // What each part answers: v=1 before the update, v=2 after it, v=1 after the undo.
    let part = |from: &str, to: &str| -> Vec<String> {
        let a = out.find(from).unwrap();
        let b = a + out[a..].find(to).unwrap();
        out[a..b]
            .lines()
            .filter(|l| {
                l.starts_with("Hello Kubernetes bootcamp! | Running on: kubernetes-bootcamp-")
            })
            .map(|l| l.rsplit(" | ").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        part(
            "==> kubectl get services",
            "==> kubectl scale deployments/kubernetes-bootcamp --replicas=2"
        ),
        vec!["v=1"; 11]
    );
    assert_eq!(
        part("==> kubectl set image", "==> kubectl rollout undo"),
        vec!["v=2"; 3]
    );
    assert_eq!(
        part("==> kubectl rollout undo", "==> export POD_NAME"),
        vec!["v=1"; 3]
    );
    assert!(
        out.contains("Kubernetes Bootcamp App Started At: "),
        "{out}"
    );
    // `knode explain svc/...` after the ten requests: the three endpoints the DNAT picks
    // from, and a counter that counted exactly those ten connections.
    let svc = &out[out.find("==> knode explain svc/").unwrap()..];
    let svc = &svc[..svc.find("\n==>").unwrap()];
    let picks = svc
        .lines()
        .filter(|l| l.trim_start().starts_with("65") && l.ends_with(" . 8080"))
        .count();
    assert_eq!(picks, 3, "{svc}");
    assert!(out.contains("\nHOSTNAME=kubernetes-bootcamp-"), "{out}");
    // The guestbook's controllers and services, as `kubectl get rc` and `get endpoints` show
    // them: three frontends, a master, two slaves, each Service with its pods' addresses.
    let rc = &out[out.find("==> kubectl get rc\n").unwrap()..];
    for row in [
        "frontend       3         3         3",
        "redis-master   1         1         1",
        "redis-slave    2         2         2",
    ] {
        assert!(rc.contains(row), "{row:?}:\n{rc}");
    }
    let eps = &out[out.find("==> kubectl get endpoints\n").unwrap()..];
    let eps = &eps[..eps.find("\n==>").unwrap()];
    let count = |svc: &str| {
        eps.lines()
            .find(|l| l.starts_with(&format!("{svc} ")))
            .map_or(0, |l| {
                l.split_whitespace().nth(1).unwrap().split(',').count()
            })
    };
    assert_eq!(
        (
            count("frontend"),
            count("redis-master"),
            count("redis-slave")
        ),
        (3, 1, 2),
        "{eps}"
    );
    // `kubectl get namespace`: the tutorial's columns, and the namespaces a cluster starts with.
    let ns = &out[out.find("==> kubectl get namespace\n").unwrap()..];
    let ns = &ns[..ns.find("\n==>").unwrap()];
    let header: Vec<&str> = ns.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "AGE"], "{ns}");
    for name in ["default", "kube-system"] {
        assert!(
            ns.lines()
                .any(|l| l.split_whitespace().take(2).eq([name, "Active"])),
            "{name}:\n{ns}"
        );
    }
    // The bootcamp's Service went, and its Endpoints with it.
    assert!(!eps.contains("kubernetes-bootcamp"), "{eps}");
    // Its cluster is gone: its state, and every process it started (the namespace is
    // another test's by now, maybe: demos take turns under a lock).
    assert!(!s.root().join("run/demo-cluster").exists());
    assert_eq!(processes_under(s.root()), Vec::<String>::new());
}

/// The command lines of live processes that name `dir` (a test's root).
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .filter(|c| c.contains(&dir))
        .collect()
}

/// `knode tutorial bootcamp`: the bootcamp at a learner's pace: each step titled and
/// explained before it runs, on Enter; an input that ends runs the rest straight through.
/// The guestbook is not part of it.
#[test]
fn a_tutorial_explains_each_step_and_waits_for_enter() {
    let s = Store::new();
    let mut c = Command::new(knode_bin())
        .arg("--root")
        .arg(s.root())
        .arg("--run-dir")
        .arg(s.root().join("run"))
        .args(["tutorial", "bootcamp", "--kubectl", KUBECTL])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        // Two steps' Enter, then the input ends.
        c.stdin.take().unwrap().write_all(b"\n\n").unwrap();
    }
    let o = c.wait_with_output().unwrap();
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    let steps = [
        "--- Step 1: The cluster ---",
        "kubectl talks to the API server only",
        "[Enter: run it]",
        "==> kubectl get nodes",
        "--- Step 2: Deploy an app ---",
        "==> kubectl create deployment kubernetes-bootcamp --image=gcr.io/google-samples/kubernetes-bootcamp:v1",
        "--- Step 3: Expose it ---",
        "--- Step 6: A rolling update ---",
        "| v=2",
        "--- Step 7: Roll back ---",
        "--- Step 8: Look inside a pod ---",
        "==> knode explain pod/kubernetes-bootcamp-",
        "==> done",
    ];
    assert_in_order(&out, &steps);
    assert!(!out.contains("redis"), "{out}");
    assert_eq!(processes_under(s.root()), Vec::<String>::new());
}

/// The ConfigMap, Secret and hostPath tutorial: `mysql:5.7` (MariaDB, built here) starts from
/// the tutorial's own files, its data outlives the pod on the node's /home/mysql/data, the
/// ConfigMap configures the server, the Secret's password works; the host directory is gone
/// afterwards.
#[test]
fn the_mysql_tutorial_keeps_data_on_the_node_and_reads_a_configmap_and_a_secret() {
    let s = Store::new();
    let home_before = std::path::Path::new("/home/mysql").exists();
    let o = Command::new(knode_bin())
        .arg("--root")
        .arg(s.root())
        .arg("--run-dir")
        .arg(s.root().join("run"))
        .args(["tutorial", "mysql", "--kubectl", KUBECTL])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert_in_order(
        &out,
        &[
            "--- Step 1: A database keeping its data on the node ---",
            "==> kubectl apply -f ",
            "pod/mysql-pod created",
            "pod/mysql-pod condition met",
            "\ntutorial\n",
            "==> ls /home/mysql/data   (on the node)",
            "ibdata1",
            "--- Step 2: Configuration from a ConfigMap ---",
            "pod \"mysql-pod\" deleted",
            "configmap/mysql-config created",
            "mysql-config   1      ",
            "character-set-server=utf8mb4",
            // The ConfigMap's setting is the server's, and the database made by the first
            // pod is still there.
            "character_set_server\tutf8mb4",
            "Database (tutorial)\ntutorial",
            "--- Step 3: A password from a Secret ---",
            "secret/mysql-password created",
            "mysql-password   Opaque   1      ",
            "MTIzNDU2Cg==",
            "123456\n",
            "root@localhost",
            "Database (tutorial)\ntutorial",
            "configmap \"mysql-config\" deleted",
            "==> done",
        ],
    );
    assert!(!out.contains("redis"), "{out}");
    assert_eq!(
        std::path::Path::new("/home/mysql").exists(),
        home_before,
        "the tutorial's hostPath is left on the host"
    );
    assert_eq!(processes_under(s.root()), Vec::<String>::new());
}

/// Asserts that `steps` appear in `out` in that order.
fn assert_in_order(out: &str, steps: &[&str]) {
    let mut at = 0;
    for step in steps {
        let i = out[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing (or out of order):\n{out}"));
        at += i + step.len();
    }
}

const INDEXED_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: idx}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: test/busybox:1
        command: ["sh", "-c", "echo index=$JOB_COMPLETION_INDEX host=$(hostname)"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: flaky}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: work, image: test/busybox:1, command: ["sh", "-c", "exit 3"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: fatal}
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {operator: In, values: [42]}
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: work, image: test/busybox:1, command: ["sh", "-c", "exit 42"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 2
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: work, image: test/busybox:1, command: ["sleep", "300"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: brief}
spec:
  ttlSecondsAfterFinished: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: work, image: test/busybox:1, command: ["true"]}
"#;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: agent, image: test/busybox:1, command: ["sleep", "3600"]}
"#;

#[test]
fn jobs_cronjobs_and_daemonsets_run_as_kubectl_expects() {
    let u = Up::new();
    u.up();
    // The CronJob first: its minute comes while the rest runs.
    u.kubectl(&[
        "create",
        "cronjob",
        "hello",
        "--image=test/busybox:1",
        "--schedule=*/1 * * * *",
        "--",
        "echo",
        "hello from cron",
    ]);
    // Bad input: upstream's texts, nothing made.
    let o = u
        .kubectl_command()
        .args([
            "create",
            "cronjob",
            "bad",
            "--image=x",
            "--schedule=61 * * * *",
        ])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains(
            r#"CronJob.batch "bad" is invalid: spec.schedule: Invalid value: "61 * * * *": end of range (61) above maximum (59): 61"#
        ),
        "{}",
        text(&o.stderr)
    );
    let o = u.kubectl_with_stdin(
        &["apply", "-f", "-"],
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: always}\nspec:\n  template:\n    spec:\n      restartPolicy: Always\n      containers: [{name: c, image: x}]\n",
    );
    assert!(
        text(&o.stderr).contains(r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        u.kubectl(&["get", "cronjobs,jobs", "-o", "name"]),
        "cronjob.batch/hello\n"
    );

    // A Job as the bootcamp makes one.
    u.kubectl(&[
        "create",
        "job",
        "pi",
        "--image=test/busybox:1",
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    u.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/pi",
        "--timeout=60s",
    ]);
    assert_eq!(u.kubectl(&["logs", "job/pi"]), "done\n");
    let row = u.kubectl(&["get", "job", "pi", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["pi", "Complete", "1/1"], "{row}");
    assert_eq!(
        u.kubectl(&[
            "get",
            "job",
            "pi",
            "-o",
            "jsonpath={.spec.selector.matchLabels}"
        ]),
        format!(
            "{{\"batch.kubernetes.io/controller-uid\":\"{}\"}}",
            u.kubectl(&["get", "job", "pi", "-o", "jsonpath={.metadata.uid}"])
        )
    );

    // Indexed, retried, failed by policy, out of time, and gone after its TTL.
    u.apply(INDEXED_JOB);
    u.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/idx",
        "--timeout=60s",
    ]);
    let mut lines: Vec<String> = u
        .kubectl(&["logs", "-l", "job-name=idx", "--prefix=false"])
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "index=0 host=idx-0",
            "index=1 host=idx-1",
            "index=2 host=idx-2"
        ]
    );
    assert_eq!(
        u.kubectl(&[
            "get",
            "job",
            "idx",
            "-o",
            "jsonpath={.status.completedIndexes}"
        ]),
        "0-2"
    );
    let failed_reason = |job: &str| {
        u.kubectl(&[
            "get",
            "job",
            job,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Failed")].reason} {.status.failed}"#,
        ])
    };
    u.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/fatal",
        "--timeout=60s",
    ]);
    assert_eq!(failed_reason("fatal"), "PodFailurePolicy 1");
    u.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/slow",
        "--timeout=60s",
    ]);
    assert_eq!(failed_reason("slow"), "DeadlineExceeded 1");
    // Two tries, ten seconds apart.
    u.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/flaky",
        "--timeout=60s",
    ]);
    assert_eq!(failed_reason("flaky"), "BackoffLimitExceeded 2");
    let events = u.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=flaky",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert_eq!(events.matches("SuccessfulCreate").count(), 2, "{events}");
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
    u.kubectl(&["wait", "--for=delete", "job/brief", "--timeout=60s"]);
    let script = format!(
        "from kubernetes import client, config\nconfig.load_kube_config({:?})\nb = client.BatchV1Api()\ns = b.read_namespaced_job_status('idx', 'default').status\nprint(s.succeeded, s.completed_indexes, [c.type for c in s.conditions])\n",
        u.kubeconfig().display().to_string()
    );
    let o = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", u.ns))
        .args([support::server::PYTHON, "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        text(&o.stdout),
        "3 0-2 ['SuccessCriteriaMet', 'Complete']\n",
        "{}",
        text(&o.stderr)
    );

    // A DaemonSet: a pod on the node, replaced by a rolling update.
    u.apply(DAEMONSET);
    u.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    let pod_of_ds = || {
        u.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=agent",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ])
    };
    let first = pod_of_ds();
    let node = u.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert_eq!(first.lines().count(), 1, "{first}");
    assert!(first.trim_end().ends_with(&format!(" {node}")), "{first}");
    let row = u.kubectl(&["get", "ds", "agent", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..7],
        ["agent", "1", "1", "1", "1", "1", "<none>"],
        "{row}"
    );
    u.kubectl(&["set", "env", "daemonset/agent", "MODE=new"]);
    u.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    u.kubectl(&[
        "wait",
        "--for=delete",
        &format!("pod/{}", first.split_whitespace().next().unwrap()),
        "--timeout=60s",
    ]);
    let second = pod_of_ds();
    assert_eq!(second.lines().count(), 1, "{second}");
    assert_ne!(first, second);

    // The CronJob's Job, named for its minute, ran.
    let line = u.watch_until(&["get", "jobs", "-w", "--no-headers"], |l| {
        l.starts_with("hello-")
    });
    let job = line.split_whitespace().next().unwrap().to_string();
    u.kubectl(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{job}"),
        "--timeout=60s",
    ]);
    assert_eq!(
        u.kubectl(&["logs", &format!("job/{job}")]),
        "hello from cron\n"
    );
    let minutes: i64 = job.trim_start_matches("hello-").parse().unwrap();
    assert_eq!(
        u.kubectl(&[
            "get",
            "job",
            &job,
            "-o",
            "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}"
        ]),
        u.kubectl(&[
            "get",
            "cronjob",
            "hello",
            "-o",
            "jsonpath={.status.lastScheduleTime}"
        ])
    );
    assert!(minutes > 29_000_000, "{job}");

    // Deleting owners deletes what they own.
    u.kubectl(&["delete", "cronjob", "hello"]);
    u.kubectl(&["delete", "jobs", "--all"]);
    u.kubectl(&["delete", "daemonset", "agent"]);
    u.kubectl(&["wait", "--for=delete", "pods", "--all", "--timeout=60s"]);
    assert_eq!(u.kubectl(&["get", "jobs,pods", "-o", "name"]), "");
}

const STATEFUL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80, name: web}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: test/busybox:1
        command: ["sleep", "3600"]
        volumeMounts: [{name: www, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

#[test]
fn statefulsets_keep_names_addresses_and_data_on_local_path_volumes() {
    let u = Up::new();
    u.up();
    assert_eq!(
        u.kubectl(&["get", "storageclass", "--no-headers"])
            .split_whitespace()
            .take(5)
            .collect::<Vec<_>>(),
        [
            "local-path",
            "(default)",
            "knode.io/local-path",
            "Delete",
            "WaitForFirstConsumer"
        ]
    );
    u.apply(STATEFUL);
    u.kubectl(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    let row = u.kubectl(&["get", "sts", "web", "--no-headers"]);
    assert_eq!(
        row.split_whitespace().take(2).collect::<Vec<_>>(),
        ["web", "3/3"],
        "{row}"
    );
    // Made in order, each with its own claim bound to a volume provisioned on the node.
    let created = |p: &str| {
        u.kubectl(&[
            "get",
            "pod",
            p,
            "-o",
            "jsonpath={.metadata.creationTimestamp}",
        ])
    };
    assert!(created("web-0") <= created("web-1") && created("web-1") <= created("web-2"));
    let claims = u.kubectl(&["get", "pvc", "--no-headers"]);
    let mut rows: Vec<Vec<&str>> = claims
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 3, "{claims}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], format!("www-web-{i}"));
        assert_eq!(r[1], "Bound", "{claims}");
        assert_eq!(r[3..6], ["1Gi", "RWO", "local-path"], "{claims}");
    }
    let volumes = u.kubectl(&["get", "pv", "--no-headers"]);
    assert_eq!(volumes.lines().count(), 3, "{volumes}");
    for l in volumes.lines() {
        let c: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(c[1..5], ["1Gi", "RWO", "Delete", "Bound"], "{l}");
    }

    // Stable names through the headless Service.
    let ip1 = u.kubectl(&["get", "pod", "web-1", "-o", "jsonpath={.status.podIP}"]);
    let answer = u.kubectl(&[
        "exec",
        "web-0",
        "--",
        "nslookup",
        "web-1.nginx.default.svc.cluster.local",
    ]);
    assert!(answer.contains(&format!("Address: {ip1}")), "{answer}");
    assert_eq!(u.kubectl(&["exec", "web-2", "--", "hostname"]), "web-2\n");

    // Data written by web-1 outlives it.
    u.kubectl(&["exec", "web-1", "--", "sh", "-c", "echo kept > /data/f"]);
    let uid = u.kubectl(&["get", "pvc", "www-web-1", "-o", "jsonpath={.metadata.uid}"]);
    let on_node =
        u.s.root()
            .join(format!("storage/pvc-{uid}_default_www-web-1/f"));
    assert_eq!(std::fs::read_to_string(&on_node).unwrap(), "kept\n");
    let old = u.kubectl(&["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"]);
    // kubectl waits until the pod of that uid is gone; the set makes it again.
    u.kubectl(&["delete", "pod", "web-1"]);
    u.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/web-1",
        "--timeout=60s",
    ]);
    assert_ne!(
        u.kubectl(&["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"]),
        old
    );
    assert_eq!(
        u.kubectl(&["exec", "web-1", "--", "cat", "/data/f"]),
        "kept\n"
    );

    // The Python client reads the set and its claims.
    let script = format!(
        "from kubernetes import client, config\nconfig.load_kube_config({:?})\ns = client.AppsV1Api().read_namespaced_stateful_set('web', 'default').status\nc = client.CoreV1Api().list_namespaced_persistent_volume_claim('default').items\nprint(s.ready_replicas, s.current_revision == s.update_revision, sorted((x.metadata.name, x.status.phase) for x in c))\n",
        u.kubeconfig().display().to_string()
    );
    let o = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", u.ns))
        .args([support::server::PYTHON, "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        text(&o.stdout),
        "3 True [('www-web-0', 'Bound'), ('www-web-1', 'Bound'), ('www-web-2', 'Bound')]\n",
        "{}",
        text(&o.stderr)
    );

    // Scaled down highest first; the claims stay.
    u.kubectl(&["scale", "statefulset", "web", "--replicas=1"]);
    u.kubectl(&[
        "wait",
        "--for=delete",
        "pod/web-2",
        "pod/web-1",
        "--timeout=60s",
    ]);
    assert_eq!(u.kubectl(&["get", "pods", "-o", "name"]), "pod/web-0\n");
    assert_eq!(u.kubectl(&["get", "pvc", "-o", "name"]).lines().count(), 3);

    // A claim of a class that does not exist: said on the claim, nothing else disturbed.
    u.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: bad}\nspec:\n  storageClassName: fast\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n");
    let line = u.watch_until(
        &[
            "get",
            "events",
            "-w",
            "--field-selector",
            "involvedObject.name=bad",
            "-o",
            "custom-columns=R:.reason,M:.message",
            "--no-headers",
        ],
        |l| l.starts_with("ProvisioningFailed"),
    );
    assert!(
        line.contains(r#"storageclass.storage.k8s.io "fast" not found"#),
        "{line}"
    );
    let o = u.kubectl_with_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: worse}\nspec:\n  resources: {requests: {storage: 0}}\n",
    );
    assert!(
        text(&o.stderr)
            .contains("spec.accessModes: Required value: at least 1 access mode is required")
            && text(&o.stderr).contains(
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
            ),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        u.kubectl(&["get", "pvc", "bad", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // Deleting the set and its claims deletes the volumes and their directories.
    u.kubectl(&["delete", "statefulset", "web"]);
    u.kubectl(&["wait", "--for=delete", "pod/web-0", "--timeout=60s"]);
    u.kubectl(&["delete", "pvc", "--all"]);
    u.kubectl(&["wait", "--for=delete", "pv", "--all", "--timeout=60s"]);
    let storage = u.s.root().join("storage");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let left = || std::fs::read_dir(&storage).map(|d| d.count()).unwrap_or(0);
    while left() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(left(), 0, "the node removes a deleted volume's directory");
}

#[test]
fn kubectl_top_reads_the_resource_metrics_api() {
    let u = Up::new();
    u.up();
    // Discovery lists the group, as with metrics-server installed.
    let groups = u.kubectl(&["api-versions"]);
    assert!(groups.contains("metrics.k8s.io/v1beta1"), "{groups}");
    let top = u.kubectl(&["top", "nodes", "--no-headers"]);
    let node = u.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let cells: Vec<&str> = top.split_whitespace().collect();
    assert_eq!(cells.len(), 5, "{top}");
    assert_eq!(cells[0], node);
    assert!(
        cells[1].ends_with('m')
            && cells[2].ends_with('%')
            && cells[3].ends_with("Mi")
            && cells[4].ends_with('%'),
        "{top}"
    );
    // The figure is the node's: its working set is within what /proc says is in use.
    let mem: u64 = cells[3].trim_end_matches("Mi").parse().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |k: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let used_mib = (kib("MemTotal:") - kib("MemAvailable:")) / 1024;
    assert!(
        mem > 0 && mem <= kib("MemTotal:") / 1024,
        "{mem} Mi of {used_mib} Mi used"
    );
    // One object, and a name that has none: the errors metrics-server gives.
    let one = u.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/metrics.k8s.io/v1beta1/nodes/{node}"),
    ]);
    assert!(one.contains("\"kind\":\"NodeMetrics\""), "{one}");
    let o = u
        .kubectl_command()
        .args(["top", "pod", "nope"])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains(r#"podmetrics.metrics.k8s.io "default/nope" not found"#),
        "{}",
        text(&o.stderr)
    );
}
