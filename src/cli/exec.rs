//! `knode exec POD [-c C] [-i] [-t] -- CMD...`.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::local::only_container;
use crate::node::kubelet::api;

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
    let cfg: crate::node::shim::ShimConfig = serde_json::from_slice(
        &std::fs::read(state.join("config.json")).context("reading the container's spec")?,
    )?;
    if !a.stdin {
        let null = std::fs::File::open("/dev/null")?;
        rustix::stdio::dup2_stdin(&null)?;
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
    let stdin_fd = std::io::stdin();
    let stdin_fd = stdin_fd.as_fd();
    let saved = (stdin && rustix::termios::isatty(stdin_fd))
        .then(|| rustix::termios::tcgetattr(stdin_fd).ok())
        .flatten();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(stdin_fd, rustix::termios::OptionalActions::Now, &raw);
    }
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
    if let Some(saved) = &saved {
        let _ = rustix::termios::tcsetattr(stdin_fd, rustix::termios::OptionalActions::Now, saved);
    }
}
