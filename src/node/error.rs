//! The node's error: what failed, what was being done, and of which class (see
//! `api::error`). The sandbox, the shim, containers, the pod network, the agent and the
//! service proxy return it; [`Ctx`] adds what was being done, as `anyhow`'s `context` would
//! (anyhow stays in `cli/`).

use std::fmt::Display;

use crate::api::error::{Classify, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] oci::image::ImageError),
    #[error(transparent)]
    Runtime(#[from] oci::runtime::RuntimeError),
    #[error(transparent)]
    Spec(#[from] oci::runtime::spec::SpecError),
    #[error(transparent)]
    Paths(#[from] crate::node::safefs::SafeFsError),
    #[error(transparent)]
    Cgroup(#[from] crate::node::cgroup::CgroupError),
    #[error(transparent)]
    NetworkConfig(#[from] cni::config::ConfigError),
    #[error(transparent)]
    Rules(#[from] crate::node::proxy::netlink::NetlinkError),
    /// A CNI plugin's error result.
    #[error("CNI {command} ({plugin}): {} {}", .error.msg, .error.details)]
    Cni {
        command: String,
        plugin: String,
        error: cni::protocol::Error,
    },
    /// A request to the agent's local API failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// Bad input (a flag, a configuration) knode refuses, said in words.
    #[error("{0}")]
    Invalid(String),
    /// Something else that failed, said in words.
    #[error("{0}")]
    Failed(String),
    /// What was being done when `source` failed.
    #[error("{what}: {source}")]
    Context {
        what: String,
        #[source]
        source: Box<NodeError>,
    },
}

impl NodeError {
    pub fn failed(message: impl Into<String>) -> NodeError {
        NodeError::Failed(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> NodeError {
        NodeError::Invalid(message.into())
    }

    /// The last OS error (errno), with what was being done.
    pub fn last_os(what: impl Into<String>) -> NodeError {
        NodeError::Io {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

impl From<std::io::Error> for NodeError {
    fn from(source: std::io::Error) -> NodeError {
        NodeError::Io {
            what: "I/O".into(),
            source,
        }
    }
}

impl From<rustix::io::Errno> for NodeError {
    fn from(e: rustix::io::Errno) -> NodeError {
        NodeError::from(std::io::Error::from(e))
    }
}

impl From<std::num::ParseIntError> for NodeError {
    fn from(e: std::num::ParseIntError) -> NodeError {
        NodeError::Failed(e.to_string())
    }
}

impl From<hyper::Error> for NodeError {
    fn from(e: hyper::Error) -> NodeError {
        NodeError::Http(e.to_string())
    }
}

impl From<hyper::http::Error> for NodeError {
    fn from(e: hyper::http::Error) -> NodeError {
        NodeError::Http(e.to_string())
    }
}

impl From<serde_json::Error> for NodeError {
    fn from(e: serde_json::Error) -> NodeError {
        NodeError::Failed(format!("JSON: {e}"))
    }
}

impl Classify for NodeError {
    fn class(&self) -> ErrorClass {
        match self {
            NodeError::Io { source, .. } => ErrorClass::of_io(source),
            NodeError::Image(oci::image::ImageError::NotFound(_)) => ErrorClass::NotFound,
            NodeError::Invalid(_) | NodeError::NetworkConfig(_) => ErrorClass::Invalid,
            NodeError::Cni { error, .. } if error.code == cni::protocol::code::TRY_AGAIN => {
                ErrorClass::Transient
            }
            NodeError::Context { source, .. } => source.class(),
            _ => ErrorClass::Internal,
        }
    }
}

/// Adds what was being done to an error, as anyhow's `context` does.
pub trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Result<T, NodeError>;
    fn with_ctx<D: Display>(self, what: impl FnOnce() -> D) -> Result<T, NodeError>;
}

fn wrap(e: NodeError, what: String) -> NodeError {
    match e {
        // An I/O error named only "I/O" takes the description instead.
        NodeError::Io { what: w, source } if w == "I/O" => NodeError::Io { what, source },
        e => NodeError::Context {
            what,
            source: Box::new(e),
        },
    }
}

impl<T, E: Into<NodeError>> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Result<T, NodeError> {
        self.map_err(|e| wrap(e.into(), what.to_string()))
    }

    fn with_ctx<D: Display>(self, what: impl FnOnce() -> D) -> Result<T, NodeError> {
        self.map_err(|e| wrap(e.into(), what().to_string()))
    }
}

impl<T> Ctx<T> for Option<T> {
    fn ctx(self, what: impl Display) -> Result<T, NodeError> {
        self.ok_or_else(|| NodeError::Failed(what.to_string()))
    }

    fn with_ctx<D: Display>(self, what: impl FnOnce() -> D) -> Result<T, NodeError> {
        self.ok_or_else(|| NodeError::Failed(what().to_string()))
    }
}

/// `bail!` for the node: returns a [`NodeError::Failed`] with a formatted message.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::node::error::NodeError::Failed(format!($($arg)*)))
    };
}
pub(crate) use fail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_reads_like_anyhow_and_keeps_the_class() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::from_raw_os_error(24));
        let e = r.ctx("creating /run/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "creating /run/x: Too many open files (os error 24)"
        );
        assert_eq!(e.class(), ErrorClass::Transient);
        let e = Err::<(), _>(e).ctx("starting the pod").unwrap_err();
        assert_eq!(
            e.to_string(),
            "starting the pod: creating /run/x: Too many open files (os error 24)"
        );
        assert_eq!(e.class(), ErrorClass::Transient);
        let e = None::<u8>.ctx("no pid").unwrap_err();
        assert_eq!(
            (e.to_string(), e.class()),
            ("no pid".into(), ErrorClass::Internal)
        );
    }
}
