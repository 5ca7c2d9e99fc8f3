//! `knode exec POD [-c C] [-i] [-t] -- CMD...`.

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
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
    /// A descriptor to read terminal sizes from (`WIDTH HEIGHT` lines).
    pub resize_fd: Option<i32>,
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
    // SAFETY: the caller (the kubelet API) passed this descriptor for exactly this use, and
    // nothing else in this process owns it.
    let resize = a
        .resize_fd
        .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    if let Some(m) = master {
        relay(&m, a.stdin, resize);
    }
    Ok(oci::runtime::wait(child)?)
}

/// Copies the terminal to the pty and back until the pty closes, in raw mode. The pty takes
/// the size of our terminal, if we have one, and then the sizes read from `resize`.
fn relay(master: &std::os::fd::OwnedFd, stdin: bool, mut resize: Option<std::os::fd::OwnedFd>) {
    let stdin_fd = std::io::stdin();
    let stdin_fd = stdin_fd.as_fd();
    let saved = (stdin && rustix::termios::isatty(stdin_fd))
        .then(|| rustix::termios::tcgetattr(stdin_fd).ok())
        .flatten();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(stdin_fd, rustix::termios::OptionalActions::Now, &raw);
        if let Ok(size) = rustix::termios::tcgetwinsize(stdin_fd) {
            let _ = rustix::termios::tcsetwinsize(master, size);
        }
    }
    let mut buf = [0u8; 8192];
    let mut sizes = Vec::new();
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
        let resize_at = fds.len();
        if let Some(r) = &resize {
            fds.push(rustix::event::PollFd::new(r, rustix::event::PollFlags::IN));
        }
        if rustix::event::poll(&mut fds, None).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let (m_ready, in_ready) = (ready[0], stdin_open && ready[1]);
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
        if ready.get(resize_at) == Some(&true) {
            let r = resize.as_ref().expect("polled");
            match rustix::io::read(r, &mut buf) {
                Ok(n) if n > 0 => {
                    sizes.extend_from_slice(&buf[..n]);
                    while let Some(i) = sizes.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = sizes.drain(..=i).collect();
                        if let Some(size) = parse_size(&String::from_utf8_lossy(&line)) {
                            let _ = rustix::termios::tcsetwinsize(master, size);
                        }
                    }
                }
                _ => resize = None,
            }
        }
    }
    if let Some(saved) = &saved {
        let _ = rustix::termios::tcsetattr(stdin_fd, rustix::termios::OptionalActions::Now, saved);
    }
}

/// `WIDTH HEIGHT` as a terminal size.
fn parse_size(line: &str) -> Option<rustix::termios::Winsize> {
    let mut it = line.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (w, h) = (it.next()??, it.next()??);
    Some(rustix::termios::Winsize {
        ws_col: w,
        ws_row: h,
        ws_xpixel: 0,
        ws_ypixel: 0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_are_read_width_first() {
        let s = super::parse_size("120 40\n").unwrap();
        assert_eq!((s.ws_col, s.ws_row), (120, 40));
        assert!(super::parse_size("120\n").is_none());
        assert!(super::parse_size("a b\n").is_none());
    }
}
