//! knode-cni: knode's CNI plugin binary (see the library's `protocol`).

use std::io::Read;

fn main() {
    let env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = String::new();
    if env.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let version = serde_json::from_str::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| cni::SUPPORTED_VERSIONS[cni::SUPPORTED_VERSIONS.len() - 1].to_string());
    match cni::protocol::run(&env, &stdin) {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details})
            );
            std::process::exit(1);
        }
    }
}
