//! The client every component uses to reach the API server: kube-rs's `kube::Client` (typed
//! `Api<K>` on knode's k8s-openapi types, watchers and reflectors from `kube::runtime`), made
//! from a kubeconfig, as a remote agent or `kubectl` makes it. The control loops `knode server`
//! runs use the server's own admin kubeconfig over loopback HTTPS: the same path a remote
//! component takes, so nothing is tested only in-process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod join;

use futures_util::StreamExt;
use kube::runtime::{reflector, watcher, WatchStreamExt};

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

/// A cache of every `K` in the cluster, kept by a watch (re-listing with backoff when the
/// server goes away); `wake` hears every change. The control loops' shared building block.
pub fn cache<K>(client: &Client, wake: Arc<tokio::sync::Notify>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    cache_of(
        kube::Api::<K>::all(client.clone()),
        watcher::Config::default(),
        wake,
    )
}

/// A cache of the `K`s `api` and `config` (a field or label selector) select, as [`cache`].
pub fn cache_of<K>(
    api: kube::Api<K>,
    config: watcher::Config,
    wake: Arc<tokio::sync::Notify>,
) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {
            wake.notify_one();
        }
    });
    store
}
