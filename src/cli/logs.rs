//! `knode logs POD [-c C] [-f] [--tail N] [-p]`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;

use crate::node::kubelet::api;

pub struct LogArgs<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: Option<&'a str>,
    pub follow: bool,
    pub tail: Option<usize>,
    pub previous: bool,
}

pub fn logs(sock: &Path, a: &LogArgs) -> Result<()> {
    let container = match a.container {
        Some(c) => c.to_string(),
        None => {
            let (code, body) = api::get(sock, &format!("/pods/{}/{}", a.namespace, a.pod))?;
            if code == 404 {
                bail!("pods {:?} not found", a.pod);
            }
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let p: Pod = serde_json::from_value(v["pod"].clone())?;
            let cs = p.spec.map(|s| s.containers).unwrap_or_default();
            if cs.len() != 1 {
                bail!(
                    "a container name must be specified for pod {}, choose one of: [{}]",
                    a.pod,
                    cs.iter()
                        .map(|c| c.name.clone())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            cs[0].name.clone()
        }
    };
    let mut q = vec![];
    if let Some(t) = a.tail {
        q.push(format!("tailLines={t}"));
    }
    if a.previous {
        q.push("previous=true".into());
    }
    let (code, body) = api::get(
        sock,
        &format!(
            "/containerLogs/{}/{}/{container}?{}",
            a.namespace,
            a.pod,
            q.join("&")
        ),
    )?;
    if code != 200 {
        bail!("{}", String::from_utf8_lossy(&body).trim());
    }
    std::io::stdout().write_all(&body)?;
    if !a.follow || a.previous {
        return Ok(());
    }
    // Follow: tail the file the agent names until the container stops running.
    let (_, body) = api::get(
        sock,
        &format!("/logPath/{}/{}/{container}", a.namespace, a.pod),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let path = std::path::PathBuf::from(v["path"].as_str().context("no log path")?);
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut last_check = std::time::Instant::now();
    loop {
        if let Ok(f) = std::fs::File::open(&path) {
            let len = f.metadata()?.len();
            if len < pos {
                pos = 0; // rotated
            }
            let mut r = std::io::BufReader::new(f);
            std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(pos))?;
            let mut raw = Vec::new();
            while r.read_until(b'\n', &mut raw)? > 0 {
                if !raw.ends_with(b"\n") {
                    break;
                }
                pos += raw.len() as u64;
                let line = String::from_utf8_lossy(&raw).into_owned();
                if let Some(rec) = crate::node::logs::parse_line(line.trim_end_matches('\n')) {
                    print!("{}", rec.msg);
                    if !rec.partial {
                        println!();
                    }
                }
                raw.clear();
            }
            std::io::stdout().flush()?;
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let (_, body) = api::get(
                sock,
                &format!("/logPath/{}/{}/{container}", a.namespace, a.pod),
            )?;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["running"] != true || v["path"].as_str() != path.to_str() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
