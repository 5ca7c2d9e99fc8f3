//! Attaching to a running container (`kubectl attach`, `kubectl run -i`): the shim that
//! supervises the container listens on `attach` in its state directory (a Unix socket, root
//! only), and the kubelet API connects there for each attach session.
//!
//! The shim owns the container's standard streams: with `tty: true`, a pseudo-terminal whose
//! far side is the container's stdin, stdout, stderr and controlling terminal; with
//! `stdin: true`, the write end of the container's stdin pipe. What the container writes goes
//! to the CRI log as always, and to every attached session. A session's input goes to the
//! container's stdin; with `stdinOnce`, the first session that ends its input, or ends while
//! it carries input, closes the container's stdin for good (for a terminal: no more input is
//! taken), as the kubelet does.
//!
//! On the socket, both ways, frames of `[kind: u8][length: u32, big-endian][payload]`:
//! [`STDIN`] (to the shim; a session that carries input sends one, perhaps empty, first),
//! [`STDOUT`] and [`STDERR`] (from it), [`CLOSE_STDIN`] (the session's input ended) and
//! [`RESIZE`] (width and height as two big-endian u16). The shim
//! closes every session when the container has exited and its output is drained.
//!
//! This is conmon's attach socket idea; neither containerd's shim API (ttrpc, FIFOs) nor
//! conmon's (a separate control FIFO for resizes) is worth adopting for one node-local peer.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::node::error::NodeError;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const CLOSE_STDIN: u8 = 3;
pub const RESIZE: u8 = 4;

/// The largest payload a frame may carry.
pub const MAX_FRAME: usize = 1 << 20;

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "attach";

/// A path naming `SOCKET` in the directory `dir` is open on: short whatever the directory's
/// path (a socket path must fit in 108 bytes), and it never follows a link planted in `dir`'s
/// parents after `dir` was opened.
pub fn socket_path(dir: &OwnedFd) -> String {
    format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd())
}

/// Opens `state` to name its socket.
pub fn open_dir(state: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        state,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, data: &[u8]) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    w.write_all(&f)
}

/// Reads one frame; `None` at the end of the stream.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an attach frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((head[0], data)))
}

/// A resize's payload.
pub fn resize_payload(width: u16, height: u16) -> [u8; 4] {
    let (w, h) = (width.to_be_bytes(), height.to_be_bytes());
    [w[0], w[1], h[0], h[1]]
}

/// The shim's side: the sessions attached to one container.
pub struct Hub {
    sessions: Mutex<Vec<UnixStream>>,
    /// Where a session's input goes: the stdin pipe's write end or the terminal; none once
    /// closed (or when the container takes no input).
    stdin: Mutex<Option<std::fs::File>>,
    /// The terminal's near side, for resizes.
    terminal: Option<OwnedFd>,
    stdin_once: bool,
    /// Input closed for good (`stdinOnce`).
    closed: AtomicBool,
}

impl Hub {
    /// `stdin`: where input goes (none: the container takes none); `terminal`: the pty's
    /// near side when the container has a terminal.
    pub fn new(stdin: Option<OwnedFd>, terminal: Option<OwnedFd>, stdin_once: bool) -> Arc<Hub> {
        Arc::new(Hub {
            sessions: Mutex::new(Vec::new()),
            stdin: Mutex::new(stdin.map(std::fs::File::from)),
            terminal,
            stdin_once,
            closed: AtomicBool::new(false),
        })
    }

    /// Listens on `state`'s socket (root only; before the container starts, so that no
    /// session misses the beginning once the container runs).
    pub fn listen(state: &Path) -> Result<UnixListener, NodeError> {
        let dir = open_dir(state)?;
        let path = socket_path(&dir);
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|e| {
            NodeError::failed(format!("the attach socket in {}: {e}", state.display()))
        })?;
        rustix::fs::chmod(path.as_str(), rustix::fs::Mode::from_raw_mode(0o600))?;
        Ok(l)
    }

    /// Accepts sessions on a thread of its own (the caller must be past the container's
    /// start: the runtime needs a single-threaded process for that). Without threads, there
    /// are no sessions, but the container is still supervised: a failure here is no reason
    /// to lose it.
    pub fn serve(self: &Arc<Hub>, listener: UnixListener) {
        let hub = self.clone();
        let _ = std::thread::Builder::new().spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                // A session that stops reading is dropped rather than stall the container.
                let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(10)));
                let Ok(reader) = conn.try_clone() else {
                    continue;
                };
                let h = hub.clone();
                if std::thread::Builder::new()
                    .spawn(move || h.input(reader))
                    .is_ok()
                {
                    hub.sessions.lock().expect("sessions").push(conn);
                }
            }
        });
    }

    /// A session's frames to the container.
    fn input(&self, mut conn: UnixStream) {
        let mut carries_input = false;
        while let Ok(Some((kind, data))) = read_frame(&mut conn) {
            carries_input |= kind == STDIN;
            match kind {
                STDIN if !self.closed.load(Ordering::SeqCst) => {
                    let mut stdin = self.stdin.lock().expect("stdin");
                    if let Some(f) = stdin.as_mut() {
                        if f.write_all(&data).is_err() {
                            // The container closed its stdin: no one can write to it again.
                            *stdin = None;
                        }
                    }
                }
                CLOSE_STDIN => self.end_input(),
                RESIZE if data.len() == 4 => {
                    if let Some(t) = &self.terminal {
                        let size = rustix::termios::Winsize {
                            ws_col: u16::from_be_bytes([data[0], data[1]]),
                            ws_row: u16::from_be_bytes([data[2], data[3]]),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(t, size);
                    }
                }
                _ => {}
            }
        }
        // A session that carried input and went away (a client gone, the kubelet killed)
        // ended its input too.
        if carries_input {
            self.end_input();
        }
    }

    /// A session's input ended: with `stdinOnce`, the container's stdin is closed.
    fn end_input(&self) {
        if !self.stdin_once {
            return;
        }
        self.closed.store(true, Ordering::SeqCst);
        // A pipe is closed (the container reads EOF); a terminal stays, as it is also the
        // container's output.
        if self.terminal.is_none() {
            *self.stdin.lock().expect("stdin") = None;
        }
    }

    /// Sends output to every session; drops those that fail.
    pub fn broadcast(&self, kind: u8, data: &[u8]) {
        let mut sessions = self.sessions.lock().expect("sessions");
        if sessions.is_empty() {
            return;
        }
        sessions.retain_mut(|s| write_frame(s, kind, data).is_ok());
    }

    /// Ends every session (the container has exited).
    pub fn close(&self) {
        for s in self.sessions.lock().expect("sessions").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, STDOUT, b"hello").unwrap();
        write_frame(&mut buf, RESIZE, &resize_payload(80, 24)).unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((RESIZE, vec![0, 80, 0, 24]))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut big = vec![STDIN];
        big.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(read_frame(&mut &big[..]).is_err());
    }

    #[test]
    fn a_session_writes_to_stdin_and_stdin_once_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let hub = Hub::new(Some(w), None, true);
        hub.serve(Hub::listen(dir.path()).unwrap());
        let d = open_dir(dir.path()).unwrap();
        let mut s = UnixStream::connect(socket_path(&d)).unwrap();
        write_frame(&mut s, STDIN, b"typed\n").unwrap();
        write_frame(&mut s, CLOSE_STDIN, b"").unwrap();
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "typed\n", "the input, then EOF");
        // Output reaches the session once it is registered, and close ends it.
        while hub.sessions.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        hub.broadcast(STDERR, b"oops");
        hub.close();
        assert_eq!(
            read_frame(&mut s).unwrap(),
            Some((STDERR, b"oops".to_vec()))
        );
        assert_eq!(read_frame(&mut s).unwrap(), None);
    }

    #[test]
    fn a_session_with_input_that_goes_away_ends_the_input_with_stdin_once() {
        for once in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (r, w) = rustix::pipe::pipe().unwrap();
            let hub = Hub::new(Some(w), None, once);
            hub.serve(Hub::listen(dir.path()).unwrap());
            let d = open_dir(dir.path()).unwrap();
            // Output only: its end changes nothing.
            drop(UnixStream::connect(socket_path(&d)).unwrap());
            let mut s = UnixStream::connect(socket_path(&d)).unwrap();
            write_frame(&mut s, STDIN, b"").unwrap();
            write_frame(&mut s, STDIN, b"x").unwrap();
            drop(s);
            let mut got = [0u8; 1];
            let r = std::fs::File::from(r);
            assert_eq!((&r).read(&mut got).unwrap(), 1);
            assert_eq!(&got, b"x");
            if once {
                let mut rest = Vec::new();
                (&r).read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty(), "EOF after the session went away");
            } else {
                // Still open: a later session may type.
                let mut s = UnixStream::connect(socket_path(&d)).unwrap();
                write_frame(&mut s, STDIN, b"y").unwrap();
                assert_eq!((&r).read(&mut got).unwrap(), 1);
                assert_eq!(&got, b"y");
            }
        }
    }
}
