//! Pods on the pod network: the agent runs inside a node network namespace the test creates
//! (never the host's), with knode's CNI plugin, or the reference `bridge` + `host-local`
//! plugins, from a conflist (as root, with iproute2 and containernetworking-plugins).

mod support;

use std::time::{Duration, Instant};

use support::node::Node;

const WEB: &str = "exec httpd -f -p 8080 -h /www";
const SLEEP: &str = "exec sleep 600";

/// The pod network's promises, whatever the plugins: pod -> pod, pod -> itself, pod -> node,
/// node -> pod, /etc/hosts, `-o wide`; and nothing left once the pods are deleted.
fn pods_reach_each_other(n: &mut Node, subnet_prefix: &str, gateway: &str) {
    n.run_pod("web", WEB);
    n.run_pod("client", SLEEP);
    let (web, client) = (n.ready_ip("web"), n.ready_ip("client"));
    assert!(
        web.starts_with(subnet_prefix) && client.starts_with(subnet_prefix) && web != client,
        "{web} {client}"
    );
    let wide = String::from_utf8(n.s.knode(&["get", "pods", "-o", "wide"]).stdout).unwrap();
    assert!(wide.contains(&web), "{wide}");
    let page = format!("http://{web}:8080/");
    assert!(
        n.pod_get("client", &page)
            .contains("Hello from a knode pod"),
        "pod -> pod"
    );
    assert!(n.pod_get("web", &page).contains("Hello"), "pod -> itself");
    assert!(n.node_get(&page).contains("Hello"), "node -> pod");
    let o = n.s.knode(&[
        "exec", "client", "--", "ping", "-c", "1", "-W", "2", gateway,
    ]);
    assert!(o.status.success(), "pod -> node ({gateway})");
    let hosts = String::from_utf8(
        n.s.knode(&["exec", "web", "--", "cat", "/etc/hosts"])
            .stdout,
    )
    .unwrap();
    assert!(hosts.contains(&format!("{web}\tweb")), "{hosts}");
    assert_eq!(n.veths().len(), 2, "{:?}", n.veths());
    assert_eq!(n.held(), 2);
    // Deleting the pods leaves no veth and no address allocated.
    n.delete_pod("web");
    n.delete_pod("client");
    n.until_no_pod_dirs();
    assert!(n.veths().is_empty(), "{:?}", n.veths());
    assert_eq!(n.held(), 0, "no address left allocated");
}

#[test]
fn pods_reach_each_other_with_knodes_plugin() {
    let mut n = Node::builder().network("own", r#"{"type":"knode-bridge","bridge":"kntest1","isGateway":true,"hairpinMode":true,"ipam":{"type":"knode-cni","subnet":"10.88.0.0/24","dataDir":"@DATA@"}}"#,
    )
    .build();
    // An address leaked by an earlier agent (its pod is long gone): reclaimed at start.
    let leaked = n.s.root().join("ipam/podnet/10.88.0.200");
    std::fs::create_dir_all(leaked.parent().unwrap()).unwrap();
    std::fs::write(&leaked, "gone-pod-uid\r\neth0").unwrap();
    n.start_agent();
    n.run_pod("first", SLEEP);
    n.ready_ip("first");
    assert!(
        !leaked.exists(),
        "the leaked allocation was reclaimed at agent start"
    );
    n.delete_pod("first");
    n.until_no_pod_dirs();
    pods_reach_each_other(&mut n, "10.88.0.", "10.88.0.1");
}

#[test]
fn pods_reach_each_other_with_the_reference_plugins() {
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "containernetworking-plugins is not installed (scripts/deps.sh --test installs it)"
    );
    let mut n = Node::builder().network("ref", r#"{"type":"bridge","bridge":"kntest2","isGateway":true,"hairpinMode":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.0.0/24"}]],"dataDir":"@DATA@"}}"#,
    )
    .build();
    n.start_agent();
    pods_reach_each_other(&mut n, "10.89.0.", "10.89.0.1");
}

#[test]
fn an_agent_restart_reattaches_a_pod_whose_network_is_gone() {
    let mut n = Node::builder().network("reattach", r#"{"type":"knode-bridge","bridge":"kntest3","isGateway":true,"ipam":{"type":"knode-cni","subnet":"10.93.0.0/24","dataDir":"@DATA@"}}"#,
    )
    .build();
    n.start_agent();
    n.run_pod("web", WEB);
    let ip = n.ready_ip("web");
    assert!(n.node_get(&format!("http://{ip}:8080/")).contains("Hello"));
    n.kill_agent();
    // While no agent runs, the pod loses its veth (and with it eth0 in the pod).
    let veths = n.veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    assert!(n.in_ns(&["ip", "link", "del", &veths[0]]).status.success());
    assert!(n.node_get(&format!("http://{ip}:8080/")).is_empty());
    n.start_agent();
    // The same container (never restarted) answers on the pod's (possibly new) address.
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_ip = loop {
        let st = n.status("web").unwrap_or_default();
        if let Some(ip) = st["podIP"].as_str() {
            if n.node_get(&format!("http://{ip}:8080/")).contains("Hello") {
                assert_eq!(st["containerStatuses"][0]["restartCount"], 0);
                break ip.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pod was not re-attached: {st}\n{:?}\n{}",
            n.veths(),
            String::from_utf8_lossy(&n.s.knode(&["describe", "pod", "web"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let hosts = String::from_utf8(
        n.s.knode(&["exec", "web", "--", "cat", "/etc/hosts"])
            .stdout,
    )
    .unwrap();
    assert!(hosts.contains(&format!("{new_ip}\tweb")), "{hosts}");
    let events = String::from_utf8(n.s.knode(&["describe", "pod", "web"]).stdout).unwrap();
    assert!(events.contains("NetworkRepaired"), "{events}");
    n.delete_pod("web");
    n.until_no_pod_dirs();
    assert!(n.veths().is_empty());
    assert_eq!(n.held(), 0);
}

#[test]
fn bad_network_input_is_reported_and_leaves_nothing() {
    // Overlapping the Service CIDR: the agent refuses to start, naming the file and field.
    let n = Node::builder().network("overlap", r#"{"type":"knode-bridge","ipam":{"type":"knode-cni","subnet":"10.96.0.0/24","dataDir":"@DATA@"}}"#,
    )
    .build();
    let o = n.agent_command().output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("net.conflist: plugins[0].ipam.subnet: 10.96.0.0/24 overlaps the Service CIDR 10.96.0.0/12"),
        "{err}"
    );
    drop(n);

    // A range of one address: the second pod shows why it has no network; once the first is
    // deleted it gets the address.
    let mut n = Node::builder().network("exhaust", r#"{"type":"knode-bridge","bridge":"kntest4","isGateway":true,"ipam":{"type":"knode-cni","subnet":"10.95.0.0/24","rangeStart":"10.95.0.10","rangeEnd":"10.95.0.10","dataDir":"@DATA@"}}"#,
    )
    .build();
    n.start_agent();
    n.run_pod("one", SLEEP);
    assert_eq!(n.ready_ip("one"), "10.95.0.10");
    n.run_pod("two", SLEEP);
    let m = n.message("two", "no free address");
    assert!(m.contains("10.95.0.10-10.95.0.10"), "{m}");
    assert_eq!(n.veths().len(), 1, "the failed pod left no veth");
    let st = n.status("two").unwrap();
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    n.delete_pod("one");
    assert_eq!(n.ready_ip("two"), "10.95.0.10");
    n.delete_pod("two");
    n.until_no_pod_dirs();
    assert!(n.veths().is_empty());
    assert_eq!(n.held(), 0);
    drop(n);

    // A plugin that is not installed: the pod says which; the plugin before it in the list
    // is undone (no veth, no address).
    let mut n = Node::builder().network("missing", r#"{"type":"knode-bridge","bridge":"kntest5","isGateway":true,"ipam":{"type":"knode-cni","subnet":"10.94.0.0/24","dataDir":"@DATA@"}},{"type":"no-such-plugin"}"#,
    )
    .build();
    n.start_agent();
    n.run_pod("lonely", SLEEP);
    let m = n.message("lonely", "/usr/lib/cni/no-such-plugin");
    assert!(m.contains("is it installed?"), "{m}");
    assert!(n.veths().is_empty(), "{:?}", n.veths());
    assert_eq!(n.held(), 0);
    n.delete_pod("lonely");
    n.until_no_pod_dirs();
}
