//! knode: a Kubernetes cluster in one binary. The hidden entry points the node starts itself
//! (a container's shim, the shim launcher, a pod's pause process) are dispatched here, before
//! any argument parsing; everything else is the command line in `cli`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let arg = |i: usize| args.get(i).map(Path::new);
    let hidden = match args.get(1).and_then(|a| a.to_str()) {
        Some("__shim") => match (arg(2), arg(3).and_then(|p| p.to_str()?.parse().ok())) {
            (Some(state), Some(report_fd)) => knode::node::shim::main(state, report_fd),
            _ => return usage("__shim STATE REPORT_FD"),
        },
        Some("__shim-launcher") => knode::node::shim::launcher_main(),
        Some("__pause") => match arg(2) {
            Some(dir) => knode::node::sandbox::pause_main(dir),
            None => return usage("__pause DIR"),
        },
        _ => return knode::cli::main(),
    };
    match hidden {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knode: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage(u: &str) -> ExitCode {
    eprintln!("knode: usage: knode {u} (internal, started by the node agent)");
    ExitCode::from(2)
}
