//! `knode logs` and `knode exec` through the API server, as kubectl does them: `pods/log`
//! and `pods/exec` (WebSocket), so they reach a pod on any node of the cluster. They are
//! used with `--kubeconfig`, or when this host runs the cluster's server (`knode up`); a
//! standalone node (`knode run`) is still reached through its agent's socket.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use futures_util::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, LogParams, TerminalSize};

use super::exec::ExecArgs;
use super::logs::LogArgs;

/// A runtime and a client for the cluster `kubeconfig` names.
fn connect(kubeconfig: &Path) -> Result<(tokio::runtime::Runtime, kube::Client)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt.block_on(crate::client::from_kubeconfig(kubeconfig))?;
    Ok((rt, client))
}

/// What the server said, as kubectl prints it (`Error from server (NotFound): ...`).
fn server_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => {
            anyhow::anyhow!("Error from server ({}): {}", s.reason, s.message)
        }
        other => anyhow::Error::new(other).context("talking to the API server"),
    }
}

/// `knode logs` through `pods/log`.
pub fn logs(kubeconfig: &Path, a: &LogArgs) -> Result<()> {
    let (rt, client) = connect(kubeconfig)?;
    let api: Api<Pod> = Api::namespaced(client, a.namespace);
    let lp = LogParams {
        container: a.container.map(str::to_string),
        follow: a.follow,
        previous: a.previous,
        tail_lines: a.tail.map(|t| t as i64),
        ..Default::default()
    };
    rt.block_on(async {
        let mut stream = Box::pin(api.log_stream(a.pod, &lp).await.map_err(server_error)?);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .context("reading the log stream")?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
    })
}

/// Puts the terminal on stdin in raw mode until dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter(on: bool) -> RawMode {
        let stdin = std::io::stdin();
        let saved = on
            .then(|| rustix::termios::tcgetattr(&stdin).ok())
            .flatten();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        }
        RawMode(saved)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

/// The size of the terminal on stdin (or stdout), if there is one.
fn terminal_size() -> Option<TerminalSize> {
    let s = rustix::termios::tcgetwinsize(std::io::stdin())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdout()))
        .ok()?;
    Some(TerminalSize {
        width: s.ws_col,
        height: s.ws_row,
    })
}

/// `knode exec` through `pods/exec`: the command's exit code, as kubectl returns it.
pub fn exec(kubeconfig: &Path, a: &ExecArgs) -> Result<i32> {
    let (rt, client) = connect(kubeconfig)?;
    let api: Api<Pod> = Api::namespaced(client, a.namespace);
    let ap = AttachParams {
        container: a.container.map(str::to_string),
        stdin: a.stdin,
        stdout: true,
        stderr: !a.tty,
        tty: a.tty,
        ..Default::default()
    };
    let _raw = RawMode::enter(a.tty && a.stdin && std::io::stdin().is_terminal());
    let code = rt.block_on(async {
        let mut p = api
            .exec(a.pod, a.argv.clone(), &ap)
            .await
            .map_err(server_error)?;
        if a.tty {
            if let Some(mut tx) = p.terminal_size() {
                if let Some(size) = terminal_size() {
                    let _ = tx.try_send(size);
                }
                // Later sizes follow the terminal (SIGWINCH).
                tokio::spawn(async move {
                    let Ok(mut winch) = tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::window_change(),
                    ) else {
                        return;
                    };
                    while winch.recv().await.is_some() {
                        if let Some(size) = terminal_size() {
                            if tx.try_send(size).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        }
        if let Some(mut w) = p.stdin() {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
        let out = p.stdout().map(|mut r| {
            tokio::spawn(async move {
                let mut o = tokio::io::stdout();
                let _ = tokio::io::copy(&mut r, &mut o).await;
                let _ = tokio::io::AsyncWriteExt::flush(&mut o).await;
            })
        });
        let err = p.stderr().map(|mut r| {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut r, &mut tokio::io::stderr()).await;
            })
        });
        let status = p.take_status().context("the exec session has no status")?;
        let status = status.await;
        for t in [out, err].into_iter().flatten() {
            let _ = t.await;
        }
        Ok(exit_code(status))
    });
    // The copy of stdin blocks in a read no one can cancel: the runtime goes without it.
    rt.shutdown_background();
    code
}

/// The exit code a finished session's `Status` carries (`NonZeroExitCode`, with the code as
/// the cause `ExitCode`), 0 for `Success`, 1 when the session ended without one.
fn exit_code(s: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> i32 {
    let Some(s) = s else { return 1 };
    if s.status.as_deref() == Some("Success") {
        return 0;
    }
    s.details
        .iter()
        .flat_map(|d| d.causes.iter().flatten())
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("{}", s.message.as_deref().unwrap_or("the command failed"));
            1
        })
}
