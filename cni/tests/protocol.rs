//! Drives the knode-cni binary through the CNI protocol (environment + stdin -> stdout).

mod common;

fn cni(command: &str, id: &str, conf: &str) -> (i32, serde_json::Value) {
    common::invoke(
        std::process::Command::new(env!("CARGO_BIN_EXE_knode-cni")),
        command,
        id,
        "/var/run/netns/x",
        conf,
    )
}

fn conf(dir: &std::path::Path, subnet: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"testnet","type":"bridge","ipam":{{"type":"knode-cni","subnet":"{subnet}","dataDir":"{}"}}}}"#,
        dir.display()
    )
}

#[test]
fn ipam_plugin_conformance() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), "10.22.0.0/29");
    let (code, v) = cni("VERSION", "", "");
    assert_eq!(code, 0);
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "1.0.0"));
    let (code, v) = cni("ADD", "ctr1", &c);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ips"][0]["address"], "10.22.0.2/29");
    assert_eq!(v["ips"][0]["gateway"], "10.22.0.1");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        cni("ADD", "ctr1", &c).1["ips"][0]["address"],
        "10.22.0.2/29",
        "ADD is idempotent"
    );
    assert_eq!(cni("CHECK", "ctr1", &c).0, 0);
    assert_eq!(cni("DEL", "ctr1", &c).0, 0);
    assert_eq!(cni("DEL", "ctr1", &c).0, 0, "DEL twice succeeds");
    let (code, v) = cni("CHECK", "ctr1", &c);
    assert_eq!((code, v["code"].as_u64()), (1, Some(3)), "{v}");
    // Exhaustion: /29 has .2-.6 (the gateway is .1).
    for i in 0..5 {
        assert_eq!(cni("ADD", &format!("c{i}"), &c).0, 0);
    }
    let (code, v) = cni("ADD", "c5", &c);
    assert_eq!((code, v["code"].as_u64()), (1, Some(11)));
    assert!(
        v["msg"].as_str().unwrap().contains("no free address"),
        "{v}"
    );
    // GC keeps only the valid attachments.
    let gc = c.replace(
        r#""type":"bridge""#,
        r#""type":"bridge","cni.dev/valid-attachments":[{"containerID":"c0","ifname":"eth0"}]"#,
    );
    assert_eq!(cni("GC", "", &gc).0, 0);
    assert_eq!(
        std::fs::read_dir(d.path().join("testnet"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10."))
            .count(),
        1
    );
}

#[test]
fn protocol_errors() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), "10.22.0.0/24");
    let (code, v) = cni("ADD", "", &c);
    assert_eq!(
        (code, v["code"].as_u64()),
        (1, Some(4)),
        "missing CNI_CONTAINERID: {v}"
    );
    let (code, v) = cni("ADD", "x", "{not json");
    assert_eq!((code, v["code"].as_u64()), (1, Some(6)));
    let (code, v) = cni("ADD", "x", &c.replace("1.0.0", "0.1.0"));
    assert_eq!((code, v["code"].as_u64()), (1, Some(1)));
    let (code, v) = cni("ADD", "x", &c.replace("10.22.0.0/24", "10.22.0.0/31"));
    assert_eq!((code, v["code"].as_u64()), (1, Some(7)), "{v}");
    let (code, v) = cni("FROB", "x", &c);
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)));
}
