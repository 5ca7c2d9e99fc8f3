//! Services end to end: the agent in a node network namespace the test creates (never the
//! host's), pods on knode's bridge, Service manifests, and knode's nftables table in that
//! namespace only.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::process::Command;

use support::node::Node;

/// A network namespace removed when the test ends.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const NET: &str = r#"{"type":"knode-bridge","bridge":"knsvc0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"knode-cni","subnet":"10.87.0.0/24","dataDir":"@DATA@"}}"#;

fn web_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    ports: [{{name: http, containerPort: 8080}}]\n    command: [sh, -c, 'mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w']\n"
    )
}

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http, nodePort: 30080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: nobody}\nspec:\n  clusterIP: 10.96.0.81\n  selector: {app: nobody}\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  clusterIP: 10.96.0.83\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  clusterIP: 10.96.0.84\n  selector: {app: echo}\n  ports: [{port: 7, targetPort: 7000}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: echo\n  labels: {app: echo}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    command: [nc, -ll, -p, '7000', -e, cat]\n";

/// `count` HTTP GETs of `url` from inside `pod`, one answer (or FAIL) per line.
fn requests(n: &Node, pod: &str, count: usize, url: &str) -> String {
    let script = format!("for i in $(seq {count}); do wget -qO- {url} || echo FAIL; done");
    let o = n.s.knode(&["exec", pod, "--", "sh", "-c", &script]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until the service has `n` ready endpoints.
fn wait_endpoints(n: &Node, svc: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sock = n.s.root().join("run/knode.sock");
        let ready = knode::node::kubelet::api::get(&sock, "/services")
            .ok()
            .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["items"].as_array()?.iter().find_map(|s| {
                    (s["service"]["name"] == svc).then(|| {
                        s["endpoints"][0]
                            .as_array()
                            .map(|e| e.iter().filter(|e| e["ready"] == true).count())
                            .unwrap_or(0)
                    })
                })
            });
        if ready == Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{svc}: {ready:?} ready endpoints"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cluster_ip_and_node_port_reach_every_endpoint_and_leave_nothing() {
    let mut n = Node::builder().network("svc", NET).build();
    // Like a real node, the node has a default route (an uplink that leads nowhere here):
    // traffic to a ClusterIP without endpoints is then routed, and rejected by the proxy.
    for args in [
        &[
            "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ][..],
        &["ip", "link", "set", "uplink0", "up"],
        &["ip", "link", "set", "uplink1", "up"],
        &["ip", "route", "add", "default", "dev", "uplink0"],
    ] {
        assert!(n.in_ns(args).status.success(), "{args:?}");
    }
    // Another table in the node's ruleset: knode never touches it.
    let other = "add table ip other\nadd chain ip other c { type filter hook input priority 10; }\nadd rule ip other c tcp dport 9 drop\n";
    assert!(n
        .in_ns(&["sh", "-c", &format!("printf '{other}' | nft -f -")])
        .status
        .success());
    let other_before = n.in_ns(&["nft", "list", "table", "ip", "other"]).stdout;
    // An "outside" client: another namespace linked to the node.
    let outside = Netns(format!("kn-svcout-{:x}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &outside.0])
        .status()
        .unwrap()
        .success());
    for args in [
        vec![
            "link", "add", "knout0", "type", "veth", "peer", "name", "knout1", "netns", &outside.0,
        ],
        vec!["addr", "add", "192.0.2.1/24", "dev", "knout0"],
        vec!["link", "set", "knout0", "up"],
    ] {
        let mut a = vec!["ip"];
        a.extend(args);
        assert!(n.in_ns(&a).status.success(), "{a:?}");
    }
    for args in [
        vec!["addr", "add", "192.0.2.2/24", "dev", "knout1"],
        vec!["link", "set", "knout1", "up"],
    ] {
        assert!(Command::new("ip")
            .args(["-n", &outside.0])
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    n.start_agent();
    for i in 0..3 {
        n.manifest(&format!("web-{i}"), &web_pod(&format!("web-{i}")));
    }
    n.manifest("services", SERVICES);
    wait_endpoints(&n, "web", 3);
    let svc = String::from_utf8(n.s.knode(&["get", "svc"]).stdout).unwrap();
    assert!(
        svc.contains("web") && svc.contains("NodePort") && svc.contains("80:30080/TCP"),
        "{svc}"
    );
    // kubectl's columns; AGE from the allocation (seconds old here).
    let columns = |table: &str| -> Vec<String> {
        let head = table.lines().next().unwrap_or_default();
        head.split_whitespace().map(str::to_string).collect()
    };
    let age_of = |table: &str, name: &str| -> String {
        let row = table.lines().find(|l| l.starts_with(&format!("{name} ")));
        row.and_then(|r| r.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        columns(&svc),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{svc}"
    );
    let age = age_of(&svc, "web");
    assert!(
        age.strip_suffix('s')
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "{svc}"
    );
    let eps = String::from_utf8(n.s.knode(&["get", "endpoints"]).stdout).unwrap();
    assert!(eps.contains(":8080"), "{eps}");
    assert_eq!(columns(&eps), ["NAME", "ENDPOINTS", "AGE"], "{eps}");
    assert!(age_of(&eps, "web").ends_with('s'), "{eps}");

    // A pod started after the services exist sees their environment variables.
    n.run_pod("client", "exec sleep 600");
    n.ready_ip("client");
    let env = String::from_utf8(n.s.knode(&["exec", "client", "--", "env"]).stdout).unwrap();
    assert!(env.contains("WEB_SERVICE_HOST=10.96.0.80"), "{env}");
    assert!(env.contains("WEB_PORT=tcp://10.96.0.80:80"), "{env}");

    // 600 requests through the ClusterIP from a pod: all three endpoints answer, and the split
    // passes a chi-square test (2 degrees of freedom, p = 0.001: 13.82).
    let out = requests(&n, "client", 600, "http://10.96.0.80/");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in out.lines() {
        *counts.entry(l.trim().to_string()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    let chi: f64 = counts
        .values()
        .map(|c| (*c as f64 - 200.0).powi(2) / 200.0)
        .sum();
    assert!(chi < 13.82, "chi-square {chi:.1}: {counts:?}");

    // Session affinity: one client, one endpoint.
    let seen: std::collections::BTreeSet<String> = requests(&n, "client", 30, "http://10.96.0.83/")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen.iter().next().unwrap().starts_with("web-"), "{seen:?}");

    // An agent restart (a full sync of the table) keeps established connections: a TCP
    // connection through a ClusterIP from the client's namespace to an echo pod.
    wait_endpoints(&n, "echo", 1);
    let (to_conn, from_test) = std::sync::mpsc::channel::<&'static [u8]>();
    let (to_test, from_conn) = std::sync::mpsc::channel::<Vec<u8>>();
    let conn = in_pod_netns(pod_netns(&n, "client"), move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect("10.96.0.84:7").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for msg in from_test {
            c.write_all(msg).unwrap();
            let mut buf = vec![0u8; msg.len()];
            let ok = c.read_exact(&mut buf).is_ok();
            to_test
                .send(if ok { buf } else { b"(no echo)".to_vec() })
                .unwrap();
        }
    });
    to_conn.send(b"before").unwrap();
    assert_eq!(from_conn.recv().unwrap(), b"before");
    n.kill_agent();
    n.start_agent();
    wait_endpoints(&n, "echo", 1);
    to_conn.send(b"after").unwrap();
    assert_eq!(from_conn.recv().unwrap(), b"after");
    drop(to_conn);
    conn.join().unwrap();

    // NodePort from the node itself (its address on the bridge), from a pod, and from the
    // outside client.
    let page = n.node_get("http://10.87.0.1:30080/");
    assert!(page.starts_with("web-"), "{page:?}");
    assert!(n
        .pod_get("client", "http://10.87.0.1:30080/")
        .starts_with("web-"));
    let o = Command::new("ip")
        .args([
            "netns", "exec", &outside.0, "timeout", "5", "busybox", "wget", "-qO-",
        ])
        .arg("http://192.0.2.1:30080/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("web-"),
        "outside -> NodePort"
    );
    // A pod reaches itself through its own service (hairpin): every request answers.
    let out = requests(&n, "web-0", 30, "http://10.96.0.80/");
    assert!(!out.contains("FAIL") && out.contains("web-0"), "{out}");
    // No endpoints: refused at once, not a timeout.
    let t = Instant::now();
    let o =
        n.s.knode(&["exec", "client", "--", "wget", "-qO-", "http://10.96.0.81/"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "not a timeout");

    // An endpoint removed gets no new connections.
    n.delete_pod("web-2");
    wait_endpoints(&n, "web", 2);
    let out = requests(&n, "client", 60, "http://10.96.0.80/");
    assert!(!out.contains("web-2") && !out.contains("FAIL"), "{out}");
    // The table deleted from outside comes back (full sync).
    assert!(n
        .in_ns(&["nft", "delete", "table", "ip", "knode-proxy"])
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !n
        .pod_get("client", "http://10.96.0.80/")
        .starts_with("web-")
    {
        assert!(
            Instant::now() < deadline,
            "the proxy table was not restored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        n.in_ns(&["nft", "list", "table", "ip", "other"]).stdout,
        other_before,
        "another table was touched"
    );

    // Deleting the services removes knode's table; pods go, nothing is left.
    std::fs::remove_file(n.s.root().join("manifests/services.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while n
        .in_ns(&["nft", "list", "table", "ip", "knode-proxy"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the proxy table is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in ["web-0", "web-1", "client"] {
        n.delete_pod(p);
    }
    n.until_no_pod_dirs();
    assert!(n.veths().is_empty());
}

/// Runs `f` on a thread that entered the network namespace at `path` (a pod's).
fn in_pod_netns<T: Send + 'static>(
    path: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsFd;
        // Only this thread moves.
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
}

fn pod_netns(n: &Node, pod: &str) -> std::path::PathBuf {
    let uid = n.status_full(pod)["pod"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    n.s.root().join(format!("run/pods/{uid}/sandbox/ns/net"))
}

#[test]
fn udp_through_a_cluster_ip_and_stale_conntrack_entries_go_with_the_endpoint() {
    let mut n = Node::builder()
        .network(
            "svcudp",
            &NET.replace("knsvc0", "knsvc1").replace("10.87.", "10.86."),
        )
        .build();
    n.start_agent();
    n.manifest(
        "udp-0",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: udp-0\n  labels: {app: udp}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    ports: [{name: dns, containerPort: 5353, protocol: UDP}]\n    command: [sleep, '600']\n",
    );
    n.run_pod("client", "exec sleep 600");
    n.manifest(
        "dns",
        "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  clusterIP: 10.96.0.82\n  selector: {app: udp}\n  ports: [{port: 53, protocol: UDP, targetPort: dns}]\n",
    );
    let backend = n.ready_ip("udp-0");
    n.ready_ip("client");
    wait_endpoints(&n, "dns", 1);
    // A UDP echo server in the backend pod's namespace (busybox has no UDP server).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = in_pod_netns(pod_netns(&n, "udp-0"), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..len], from);
            }
        }
    });
    // The client sends from a fixed port, as a DNS resolver would, and hears back from the
    // ClusterIP (the reply is un-NATed).
    let reply = in_pod_netns(pod_netns(&n, "client"), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:40001").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..10 {
            s.send_to(b"ping", "10.96.0.82:53").unwrap();
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                return Some((buf[..len].to_vec(), from.to_string()));
            }
        }
        None
    })
    .join()
    .unwrap();
    assert_eq!(reply, Some((b"ping".to_vec(), "10.96.0.82:53".to_string())));
    let entries = |ip: &str| {
        String::from_utf8_lossy(
            &n.in_ns(&["conntrack", "-L", "-p", "udp", "--dst-nat", ip])
                .stdout,
        )
        .lines()
        .count()
    };
    assert!(
        entries(&backend) > 0,
        "a conntrack entry DNATed to the backend"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();
    // The endpoint goes: its UDP conntrack entries go too (they would live 30 s or more).
    std::fs::remove_file(n.s.root().join("manifests/udp-0.yaml")).unwrap();
    wait_endpoints(&n, "dns", 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries(&backend) > 0 {
        assert!(
            Instant::now() < deadline,
            "stale UDP conntrack entries stay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n.delete_pod("client");
    std::fs::remove_file(n.s.root().join("manifests/dns.yaml")).unwrap();
    n.until_no_pod_dirs();
}
