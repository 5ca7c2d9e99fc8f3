//! `knode run IMAGE [ARGS...]`: one container in the foreground (like `docker run --rm`).

use std::path::Path;

use anyhow::Result;

use crate::node::container::RunArgs;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunCmd {
    pub image: String,
    /// Replaces the image's Cmd.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Replace the image's Entrypoint (space-separated words).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long, short)]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short)]
    pub workdir: Option<String>,
    /// User: uid, uid:gid, name or name:group (resolved in the image).
    #[arg(long, short)]
    pub user: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Mount the image read-only.
    #[arg(long)]
    pub read_only: bool,
    /// All capabilities, no seccomp, no masked paths.
    #[arg(long)]
    pub privileged: bool,
    #[arg(long)]
    pub cap_add: Vec<String>,
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Share the host's network namespace instead of a new one (loopback only).
    #[arg(long)]
    pub host_network: bool,
}

impl From<RunCmd> for RunArgs {
    fn from(c: RunCmd) -> RunArgs {
        RunArgs {
            image: c.image,
            args: c.args,
            entrypoint: c.entrypoint,
            env: c.env,
            workdir: c.workdir,
            user: c.user,
            hostname: c.hostname,
            read_only: c.read_only,
            privileged: c.privileged,
            cap_add: c.cap_add,
            cap_drop: c.cap_drop,
            host_network: c.host_network,
        }
    }
}

/// Runs the container and exits with its code.
pub fn run(root: &Path, run_dir: &Path, cmd: RunCmd) -> Result<()> {
    let code = crate::node::container::run(root, run_dir, &cmd.into())?;
    std::process::exit(code);
}
