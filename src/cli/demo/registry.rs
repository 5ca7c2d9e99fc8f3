//! Runs a real registry (Debian's `docker-registry`, the CNCF distribution registry) on a free
//! loopback port with its storage in a temporary directory. The demo uses it when no registry
//! is given; the tests and the benchmark use it as the registry under test.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const REGISTRY_BIN: &str = "docker-registry";

pub struct LocalRegistry {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

#[derive(Default, Clone)]
pub struct RegistryOptions {
    /// An htpasswd file's content (bcrypt entries): turns on Basic authentication.
    pub htpasswd: Option<String>,
    /// PEM certificate and key files: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl LocalRegistry {
    pub fn start() -> Result<LocalRegistry> {
        Self::start_with(&RegistryOptions::default())
    }

    pub fn start_with(opts: &RegistryOptions) -> Result<LocalRegistry> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(opts) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("attempted"))
    }

    fn try_start(opts: &RegistryOptions) -> Result<LocalRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("knode-registry-")
            .tempdir()?;
        // A free port: bind, read it, release it for the registry.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut auth = String::new();
        if let Some(h) = &opts.htpasswd {
            let p = dir.path().join("htpasswd");
            std::fs::write(&p, h)?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: knode-test\n    path: {}\n",
                p.display()
            );
        }
        let tls = match &opts.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls}{auth}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {REGISTRY_BIN} (install the Debian package docker-registry)")
            })?;
        let mut reg = LocalRegistry { child, dir, addr };
        reg.wait_ready()?;
        Ok(reg)
    }

    /// Waits until the registry accepts connections (or exits).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{REGISTRY_BIN} exited with {status}: {}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{REGISTRY_BIN} did not listen on {} within 20 s: {}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
