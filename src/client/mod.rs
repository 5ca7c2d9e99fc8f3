//! The client every component uses to reach the API server: kube-rs's `kube::Client` (typed
//! `Api<K>` on knode's k8s-openapi types, watchers and reflectors from `kube::runtime`), made
//! from a kubeconfig, as a remote agent or `kubectl` makes it. The control loops `knode server`
//! runs use the server's own admin kubeconfig over loopback HTTPS: the same path a remote
//! component takes, so nothing is tested only in-process.

use std::path::{Path, PathBuf};

pub use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("a client for {path}: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// A client from a kubeconfig file (its current context).
pub async fn from_kubeconfig(path: &Path) -> Result<Client, ClientError> {
    let kc =
        kube::config::Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|source| ClientError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    Client::try_from(cfg).map_err(|source| ClientError::Client {
        path: path.to_path_buf(),
        source,
    })
}
