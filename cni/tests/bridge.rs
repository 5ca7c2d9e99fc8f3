//! knode-cni's bridge end to end, inside network namespaces the test creates (a "node" holding
//! the bridge and two "pods"): never the host's own interfaces. Needs root and iproute2.

mod common;

use std::process::Command;

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip_netns(args: &[&str]) -> std::process::Output {
    Command::new("ip").arg("netns").args(args).output().unwrap()
}

fn plugin(
    node: &str,
    command: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> (i32, serde_json::Value) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node, env!("CARGO_BIN_EXE_knode-cni")]);
    common::invoke(cmd, command, id, netns, conf)
}

fn ping(ns: &str, ip: &str) -> bool {
    ip_netns(&["exec", ns, "busybox", "ping", "-c", "1", "-W", "2", ip])
        .status
        .success()
}

#[test]
fn pods_on_a_bridge_reach_each_other_and_the_node_and_leave_nothing() {
    let tag = format!("{:x}", std::process::id());
    let (node, pa, pb) = (
        format!("kn-node-{tag}"),
        format!("kn-pa-{tag}"),
        format!("kn-pb-{tag}"),
    );
    let _guard = Netns(vec![node.clone(), pa.clone(), pb.clone()]);
    for n in [&node, &pa, &pb] {
        assert!(ip_netns(&["add", n]).status.success(), "ip netns add {n}");
    }
    let data = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bridgetest","type":"knode-bridge","bridge":"kntest0","isGateway":true,"hairpinMode":true,"ipMasq":true,"ipam":{{"type":"knode-cni","subnet":"10.99.0.0/24","dataDir":"{}"}}}}"#,
        data.path().display()
    );
    let path = |n: &str| format!("/var/run/netns/{n}");
    let (code, a) = plugin(&node, "ADD", "pod-a", &path(&pa), &conf);
    assert_eq!(code, 0, "{a}");
    let (code, b) = plugin(&node, "ADD", "pod-b", &path(&pb), &conf);
    assert_eq!(code, 0, "{b}");
    let ip = |r: &serde_json::Value| {
        r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let (ipa, ipb) = (ip(&a), ip(&b));
    assert_eq!(a["interfaces"][2]["name"], "eth0");
    assert_eq!(a["ips"][0]["interface"], 2);
    assert!(ping(&pa, &ipb), "pod -> pod");
    assert!(ping(&node, &ipa), "node -> pod");
    assert!(ping(&pa, "10.99.0.1"), "pod -> node (gateway)");
    assert!(ping(&pa, &ipa), "pod -> itself");
    assert_eq!(plugin(&node, "CHECK", "pod-a", &path(&pa), &conf).0, 0);
    // Leaving the cluster: masqueraded. The "outside" namespace has no route back to the pods,
    // so a reply can only come if the pod's traffic left with the node's address.
    let outside = format!("kn-out-{tag}");
    let _guard2 = Netns(vec![outside.clone()]);
    assert!(ip_netns(&["add", &outside]).status.success());
    let (vo, vn) = (format!("kno{tag}"), format!("knn{tag}"));
    let run = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    run(&[
        "-n", &node, "link", "add", &vn, "type", "veth", "peer", "name", &vo, "netns", &outside,
    ]);
    run(&["-n", &node, "addr", "add", "198.51.100.1/24", "dev", &vn]);
    run(&["-n", &node, "link", "set", &vn, "up"]);
    run(&["-n", &outside, "addr", "add", "198.51.100.2/24", "dev", &vo]);
    run(&["-n", &outside, "link", "set", &vo, "up"]);
    assert!(ping(&pa, "198.51.100.2"), "pod -> outside (masqueraded)");
    let rules =
        String::from_utf8(ip_netns(&["exec", &node, "nft", "list", "table", "ip", "knode"]).stdout)
            .unwrap();
    assert!(
        rules.contains("ip saddr 10.99.0.0/24 ip daddr != 10.99.0.0/16 masquerade"),
        "{rules}"
    );
    // DEL twice; DEL after the pod's namespace is gone still releases its address.
    assert_eq!(plugin(&node, "DEL", "pod-a", &path(&pa), &conf).0, 0);
    assert_eq!(plugin(&node, "DEL", "pod-a", &path(&pa), &conf).0, 0);
    assert_ne!(
        plugin(&node, "CHECK", "pod-a", &path(&pa), &conf).0,
        0,
        "CHECK notices the pod is gone"
    );
    assert!(ip_netns(&["del", &pb]).status.success());
    assert_eq!(plugin(&node, "DEL", "pod-b", &path(&pb), &conf).0, 0);
    let links = String::from_utf8(ip_netns(&["exec", &node, "ip", "-o", "link"]).stdout).unwrap();
    assert!(!links.contains("veth"), "no veth left: {links}");
    let held = std::fs::read_dir(data.path().join("bridgetest"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10.")
        })
        .count();
    assert_eq!(held, 0, "no address left allocated");
}
