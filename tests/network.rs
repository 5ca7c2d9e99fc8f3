//! Pods on the pod network: the agent runs inside a node network namespace the test creates
//! (never the host's), with knode's CNI plugin from a conflist (as root, with iproute2).

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::*;

struct NodeNs {
    name: String,
    agent: Option<Child>,
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn pods_get_addresses_and_reach_each_other_and_the_node() {
    let s = Store::with_busybox();
    let ns = NodeNs {
        name: format!("kn-agentnode-{:x}", std::process::id()),
        agent: None,
    };
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.name])
        .status()
        .unwrap()
        .success());
    let mut ns = ns;
    let conf = s.root().join("net.conflist");
    std::fs::write(
        &conf,
        format!(
            r#"{{"cniVersion":"1.0.0","name":"podnet","plugins":[{{"type":"knode-bridge","bridge":"kntest1","isGateway":true,"hairpinMode":true,"ipam":{{"type":"knode-cni","subnet":"10.98.0.0/24","dataDir":"{}"}}}}]}}"#,
            s.root().join("ipam").display()
        ),
    )
    .unwrap();
    let manifests = s.root().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    // An address leaked by an earlier agent (its pod is long gone): reclaimed at start.
    let leaked = s.root().join("ipam/podnet/10.98.0.200");
    std::fs::create_dir_all(leaked.parent().unwrap()).unwrap();
    std::fs::write(&leaked, "gone-pod-uid\r\neth0").unwrap();
    ns.agent = Some(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, knode_bin()])
            .arg("--root")
            .arg(s.root())
            .arg("--run-dir")
            .arg(s.root().join("run"))
            .args(["agent", "--manifests"])
            .arg(&manifests)
            .arg("--log-dir")
            .arg(s.root().join("logs"))
            .arg("--cni-conf")
            .arg(&conf)
            .spawn()
            .unwrap(),
    );
    for (name, cmd) in [
        ("web", "exec httpd -f -p 8080 -h /www"),
        ("client", "exec sleep 600"),
    ] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: test/busybox:1\n    command: [sh, -c, '{cmd}']\n"),
        )
        .unwrap();
    }
    let sock = s.root().join("run/knode.sock");
    let pod_ip = |name: &str| -> Option<String> {
        let (_, b) = knode::kubelet::api::get(&sock, &format!("/pods/default/{name}")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        let ready = v["pod"]["status"]["containerStatuses"][0]["ready"] == true;
        ready
            .then(|| v["pod"]["status"]["podIP"].as_str().map(str::to_string))
            .flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (web, client) = loop {
        if let (Some(w), Some(c)) = (pod_ip("web"), pod_ip("client")) {
            break (w, c);
        }
        assert!(Instant::now() < deadline, "pods did not get addresses");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        web.starts_with("10.98.0.") && client.starts_with("10.98.0.") && web != client,
        "{web} {client}"
    );
    assert!(
        !leaked.exists(),
        "the leaked allocation was reclaimed at agent start"
    );
    let wide = String::from_utf8(s.knode(&["get", "pods", "-o", "wide"]).stdout).unwrap();
    assert!(wide.contains(&web), "{wide}");
    // Pod -> pod over the bridge, and the pod's /etc/hosts names its address.
    let o = s.knode(&[
        "exec",
        "client",
        "--",
        "wget",
        "-qO-",
        &format!("http://{web}:8080/"),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Hello from a knode pod"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let hosts =
        String::from_utf8(s.knode(&["exec", "web", "--", "cat", "/etc/hosts"]).stdout).unwrap();
    assert!(hosts.contains(&format!("{web}\tweb")), "{hosts}");
    // Node -> pod.
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{web}:8080/"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Hello"),
        "node -> pod"
    );
    // Deleting the pods leaves no veth and no address allocated.
    for name in ["web", "client"] {
        std::fs::remove_file(manifests.join(format!("{name}.yaml"))).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(s.root().join("run/pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(Instant::now() < deadline, "pods not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let links = String::from_utf8(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!links.contains("veth"), "{links}");
    let held = std::fs::read_dir(s.root().join("ipam/podnet"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10.")
        })
        .count();
    assert_eq!(held, 0);
}
