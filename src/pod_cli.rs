//! `knode get pods`, `knode describe pod`, `knode logs`: the kubectl-like CLI over the
//! agent's local API.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;

use crate::kubelet::api;

pub(crate) fn age(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let s = (chrono::Utc::now() - t.0).num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The STATUS column, by kubectl's rules.
pub fn status_column(p: &Pod) -> String {
    let st = p.status.clone().unwrap_or_default();
    let mut reason = st
        .reason
        .clone()
        .or(st.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let inits = st.init_container_statuses.clone().unwrap_or_default();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let s = c.state.clone().unwrap_or_default();
        if let Some(t) = &s.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = format!(
                "Init:{}",
                t.reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code))
            );
        } else if let Some(w) = s.waiting.as_ref().filter(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| !r.is_empty() && r != "PodInitializing")
        }) {
            reason = format!("Init:{}", w.reason.clone().unwrap_or_default());
        } else {
            reason = format!("Init:{i}/{}", inits.len());
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in st.container_statuses.iter().flatten().rev() {
            let s = c.state.clone().unwrap_or_default();
            if let Some(r) = s
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = r;
            } else if let Some(t) = &s.terminated {
                reason = t
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
            } else if c.ready && s.running.is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if p.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".into();
    }
    reason
}

pub(crate) fn table(rows: &[Vec<String>]) {
    let mut w = vec![0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:w$}", w = w[i])
                }
            })
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn list(sock: &Path) -> Result<(Vec<Pod>, Vec<String>)> {
    let (_, body) = api::get(sock, "/pods")?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let items: Vec<Pod> = serde_json::from_value(v["items"].clone())?;
    let errors = v["manifestErrors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    Ok((items, errors))
}

pub fn get_pods(sock: &Path, namespace: Option<&str>, output: Option<&str>) -> Result<()> {
    let (mut pods, errors) = list(sock)?;
    pods.retain(|p| namespace.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)));
    pods.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    match output {
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods})
            )?
        ),
        Some("yaml") => print!(
            "{}",
            serde_yaml::to_string(
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods})
            )?
        ),
        Some("wide") | None => {
            let wide = output == Some("wide");
            let all_ns = namespace.is_none();
            let mut rows = vec![];
            let mut head = vec![];
            if all_ns {
                head.push("NAMESPACE".to_string());
            }
            head.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"].map(String::from));
            if wide {
                head.extend(["IP", "NODE"].map(String::from));
            }
            rows.push(head);
            for p in &pods {
                let st = p.status.clone().unwrap_or_default();
                let cs = st.container_statuses.clone().unwrap_or_default();
                let mut r = vec![];
                if all_ns {
                    r.push(p.metadata.namespace.clone().unwrap_or_default());
                }
                r.push(p.metadata.name.clone().unwrap_or_default());
                r.push(format!(
                    "{}/{}",
                    cs.iter().filter(|c| c.ready).count(),
                    cs.len()
                ));
                r.push(status_column(p));
                r.push(cs.iter().map(|c| c.restart_count).sum::<i32>().to_string());
                r.push(age(p.metadata.creation_timestamp.as_ref()));
                if wide {
                    r.push(st.pod_ip.clone().unwrap_or_else(|| "<none>".into()));
                    r.push(
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_else(|| "<none>".into()),
                    );
                }
                rows.push(r);
            }
            if pods.is_empty() {
                eprintln!("No resources found");
            } else {
                table(&rows);
            }
        }
        Some(o) => bail!("unknown output format {o:?}: use wide, yaml or json"),
    }
    for e in errors {
        eprintln!("warning: manifest: {e}");
    }
    Ok(())
}

pub fn describe_pod(sock: &Path, namespace: &str, name: &str) -> Result<()> {
    let (code, body) = api::get(sock, &format!("/pods/{namespace}/{name}"))?;
    if code == 404 {
        bail!("pods {name:?} not found");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let p: Pod = serde_json::from_value(v["pod"].clone())?;
    let st = p.status.clone().unwrap_or_default();
    let spec = p.spec.clone().unwrap_or_default();
    println!(
        "Name:         {}",
        p.metadata.name.clone().unwrap_or_default()
    );
    println!(
        "Namespace:    {}",
        p.metadata.namespace.clone().unwrap_or_default()
    );
    println!(
        "Node:         {}",
        spec.node_name.clone().unwrap_or_default()
    );
    println!(
        "Start Time:   {}",
        st.start_time
            .map(|t| t.0.to_rfc2822())
            .unwrap_or_else(|| "<unset>".into())
    );
    println!(
        "UID:          {}",
        p.metadata.uid.clone().unwrap_or_default()
    );
    println!("Status:       {}", st.phase.clone().unwrap_or_default());
    if let Some(r) = &st.reason {
        println!("Reason:       {r}");
    }
    if let Some(m) = &st.message {
        println!("Message:      {m}");
    }
    println!(
        "Restart Policy: {}",
        spec.restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into())
    );
    let show = |title: &str,
                specs: &[k8s_openapi::api::core::v1::Container],
                statuses: &[k8s_openapi::api::core::v1::ContainerStatus]| {
        if specs.is_empty() {
            return;
        }
        println!("{title}:");
        for c in specs {
            println!("  {}:", c.name);
            println!(
                "    Image:          {}",
                c.image.clone().unwrap_or_default()
            );
            if let Some(cmd) = &c.command {
                println!("    Command:        {}", cmd.join(" "));
            }
            if let Some(a) = &c.args {
                println!("    Args:           {}", a.join(" "));
            }
            if let Some(s) = statuses.iter().find(|s| s.name == c.name) {
                let state = |st: &k8s_openapi::api::core::v1::ContainerState| -> String {
                    if let Some(w) = &st.waiting {
                        format!(
                            "Waiting\n      Reason:       {}{}",
                            w.reason.clone().unwrap_or_default(),
                            w.message
                                .as_ref()
                                .map(|m| format!("\n      Message:      {m}"))
                                .unwrap_or_default()
                        )
                    } else if let Some(r) = &st.running {
                        format!(
                            "Running\n      Started:      {}",
                            r.started_at
                                .as_ref()
                                .map(|t| t.0.to_rfc2822())
                                .unwrap_or_default()
                        )
                    } else if let Some(t) = &st.terminated {
                        format!("Terminated\n      Reason:       {}\n      Exit Code:    {}\n      Finished:     {}", t.reason.clone().unwrap_or_default(), t.exit_code, t.finished_at.as_ref().map(|t| t.0.to_rfc2822()).unwrap_or_default())
                    } else {
                        "Unknown".into()
                    }
                };
                println!(
                    "    State:          {}",
                    state(&s.state.clone().unwrap_or_default())
                );
                if let Some(l) = &s.last_state {
                    println!("    Last State:     {}", state(l));
                }
                println!("    Ready:          {}", s.ready);
                println!("    Restart Count:  {}", s.restart_count);
            }
        }
    };
    show(
        "Init Containers",
        spec.init_containers.as_deref().unwrap_or(&[]),
        st.init_container_statuses.as_deref().unwrap_or(&[]),
    );
    show(
        "Containers",
        &spec.containers,
        st.container_statuses.as_deref().unwrap_or(&[]),
    );
    if let Some(w) = v["warnings"].as_array().filter(|w| !w.is_empty()) {
        println!("Warnings:");
        for x in w {
            println!("  {}", x.as_str().unwrap_or_default());
        }
    }
    println!("Events:");
    let events = v["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!("  <none>");
    } else {
        let mut rows = vec![vec![
            "  Type".to_string(),
            "Reason".into(),
            "Age".into(),
            "Message".into(),
        ]];
        for e in events {
            let t: Option<chrono::DateTime<chrono::Utc>> =
                serde_json::from_value(e["time"].clone()).ok();
            rows.push(vec![
                format!("  {}", e["kind"].as_str().unwrap_or_default()),
                e["reason"].as_str().unwrap_or_default().into(),
                age(t
                    .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
                    .as_ref()),
                e["message"].as_str().unwrap_or_default().into(),
            ]);
        }
        table(&rows);
    }
    Ok(())
}

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
                if let Some(rec) = crate::logs::parse_line(line.trim_end_matches('\n')) {
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

/// The container to use when none is named: the only one, or an error listing them.
fn only_container(sock: &Path, namespace: &str, pod: &str) -> Result<String> {
    let (code, body) = api::get(sock, &format!("/pods/{namespace}/{pod}"))?;
    if code == 404 {
        bail!("pods {pod:?} not found");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let p: Pod = serde_json::from_value(v["pod"].clone())?;
    let cs = p.spec.map(|s| s.containers).unwrap_or_default();
    match cs.as_slice() {
        [one] => Ok(one.name.clone()),
        _ => bail!(
            "a container name must be specified for pod {pod}, choose one of: [{}]",
            cs.iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

pub struct ExecArgs<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: Option<&'a str>,
    pub stdin: bool,
    pub tty: bool,
    pub argv: Vec<String>,
}

/// `knode exec`: runs a command in a running container, confined like the container.
pub fn exec(sock: &Path, a: &ExecArgs) -> Result<i32> {
    let container = match a.container {
        Some(c) => c.to_string(),
        None => only_container(sock, a.namespace, a.pod)?,
    };
    let (code, body) = api::get(
        sock,
        &format!("/execInfo/{}/{}/{container}", a.namespace, a.pod),
    )?;
    if code != 200 {
        bail!("{}", String::from_utf8_lossy(&body).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let pid = v["pid"].as_i64().context("no pid")? as i32;
    let state = std::path::PathBuf::from(v["state"].as_str().context("no state")?);
    let cfg: crate::shim::ShimConfig = serde_json::from_slice(
        &std::fs::read(state.join("config.json")).context("reading the container's spec")?,
    )?;
    if !a.stdin {
        let null = std::fs::File::open("/dev/null")?;
        // SAFETY: replaces our own stdin with /dev/null.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) };
    }
    let (child, master) = oci::runtime::exec(
        pid,
        &cfg.spec,
        &oci::runtime::ExecOptions {
            argv: a.argv.clone(),
            tty: a.tty,
        },
    )?;
    if let Some(m) = master {
        relay(&m, a.stdin);
    }
    Ok(oci::runtime::wait(child)?)
}

/// Copies the terminal to the pty and back until the pty closes, in raw mode.
fn relay(master: &std::os::fd::OwnedFd, stdin: bool) {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is a plain C struct; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let tty = stdin && unsafe { libc::isatty(0) == 1 && libc::tcgetattr(0, &mut saved) == 0 };
    if tty {
        let mut raw = saved;
        // SAFETY: cfmakeraw and tcsetattr on a valid termios and terminal fd.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
    }
    let stdin_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    let mut buf = [0u8; 8192];
    let mut stdin_open = stdin;
    loop {
        let mut fds = vec![rustix::event::PollFd::new(
            master,
            rustix::event::PollFlags::IN,
        )];
        if stdin_open {
            fds.push(rustix::event::PollFd::new(
                &stdin_fd,
                rustix::event::PollFlags::IN,
            ));
        }
        if rustix::event::poll(&mut fds, None).is_err() {
            continue;
        }
        let (m_ready, in_ready) = (
            !fds[0].revents().is_empty(),
            fds.get(1).is_some_and(|f| !f.revents().is_empty()),
        );
        drop(fds);
        if m_ready {
            match rustix::io::read(master, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = std::io::stdout().write_all(&buf[..n]);
                    let _ = std::io::stdout().flush();
                }
                _ => break, // EIO: the other side closed
            }
        }
        if in_ready {
            match rustix::io::read(stdin_fd, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = rustix::io::write(master, &buf[..n]);
                }
                _ => stdin_open = false,
            }
        }
    }
    if tty {
        // SAFETY: restores the saved terminal settings.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    let _ = master.as_raw_fd();
}

fn services(sock: &Path) -> Result<Vec<crate::service::ListedService>> {
    let (code, body) = crate::kubelet::api::get(sock, "/services")?;
    if code != 200 {
        anyhow::bail!("agent: {}", String::from_utf8_lossy(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(serde_json::from_value(v["items"].clone())?)
}

/// Prints one row per service of `namespace` (all namespaces: a NAMESPACE column first).
fn service_table(
    sock: &Path,
    namespace: Option<&str>,
    header: &[&str],
    row: impl Fn(&crate::service::ServiceState) -> Vec<String>,
) -> Result<()> {
    let mut header = header.to_vec();
    header.push("AGE");
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    if namespace.is_none() {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for listed in services(sock)? {
        let s = &listed.state;
        if namespace.is_some_and(|n| n != s.service.namespace) {
            continue;
        }
        let mut r = row(s);
        if namespace.is_none() {
            r.insert(0, s.service.namespace.clone());
        }
        let created = listed
            .created
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.to_utc()));
        r.push(age(created.as_ref()));
        rows.push(r);
    }
    print_table(&rows);
    Ok(())
}

/// `knode get services`, with kubectl's columns.
pub fn get_services(sock: &Path, namespace: Option<&str>) -> Result<()> {
    let header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"];
    service_table(sock, namespace, &header, |s| {
        let v = &s.service;
        let kind = match v.ports.iter().any(|p| p.node_port.is_some()) {
            true => "NodePort",
            false => "ClusterIP",
        };
        let ports: Vec<String> = v
            .ports
            .iter()
            .map(|p| match p.node_port {
                Some(np) => format!("{}:{np}/{}", p.port, p.protocol.k8s()),
                None => format!("{}/{}", p.port, p.protocol.k8s()),
            })
            .collect();
        vec![
            v.name.clone(),
            kind.into(),
            v.cluster_ip.map_or("None".into(), |i| i.to_string()),
            "<none>".into(),
            match ports.is_empty() {
                true => "<none>".into(),
                false => ports.join(","),
            },
        ]
    })
}

/// `knode get endpoints`, with kubectl's columns (ready addresses; three, then "+ N more...").
pub fn get_endpoints(sock: &Path, namespace: Option<&str>) -> Result<()> {
    service_table(sock, namespace, &["NAME", "ENDPOINTS"], |s| {
        let mut eps: Vec<String> = s
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.ready)
            .map(|e| format!("{}:{}", e.ip, e.port))
            .collect();
        eps.sort();
        eps.dedup();
        let shown = match eps.len() {
            0 => "<none>".to_string(),
            n if n > 3 => format!("{} + {} more...", eps[..3].join(","), n - 3),
            _ => eps.join(","),
        };
        vec![s.service.name.clone(), shown]
    })
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}
