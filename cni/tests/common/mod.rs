//! Running knode-cni through the CNI protocol: CNI_* environment and stdin in, exit code and
//! JSON out. `cmd` is the command to start (the binary itself, or it under `ip netns exec`).

use std::io::Write;
use std::process::{Command, Stdio};

pub fn invoke(
    mut cmd: Command,
    command: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> (i32, serde_json::Value) {
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", "/usr/lib/cni");
    if !id.is_empty() {
        cmd.env("CNI_CONTAINERID", id);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap(),
        serde_json::from_slice(&o.stdout).unwrap_or_default(),
    )
}
