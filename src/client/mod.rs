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

/// What a watched cache holds: a typed, cluster-scoped-or-namespaced API object.
pub trait Cached:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Cached for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Who hears a cache's changes.
type Wakes = Arc<std::sync::Mutex<Vec<Arc<tokio::sync::Notify>>>>;

/// A cache of every `K` in the cluster, kept by a watch (re-listing with backoff when the
/// server goes away); `wake` hears every change. The control loops' shared building block.
pub fn cache<K: Cached>(client: &Client, wake: Arc<tokio::sync::Notify>) -> reflector::Store<K> {
    cache_of(
        kube::Api::<K>::all(client.clone()),
        watcher::Config::default(),
        wake,
    )
}

/// A cache of the `K`s `api` and `config` (a field or label selector) select, as [`cache`].
pub fn cache_of<K: Cached>(
    api: kube::Api<K>,
    config: watcher::Config,
    wake: Arc<tokio::sync::Notify>,
) -> reflector::Store<K> {
    watched(api, config, Arc::new(std::sync::Mutex::new(vec![wake])))
}

fn watched<K: Cached>(
    api: kube::Api<K>,
    config: watcher::Config,
    wakes: Wakes,
) -> reflector::Store<K> {
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {
            for w in wakes.lock().expect("wakes").iter() {
                w.notify_one();
            }
        }
    });
    store
}

/// The watch events of every `K` in the cluster, each object made small by `compact` as it
/// comes, sent on `tx` (re-listed with backoff when the watch is lost, as [`cache`]). For
/// loops that keep only a little of many objects: 10,000 Services and their EndpointSlices
/// as whole objects hold over a hundred megabytes, what cluster DNS needs of them a few.
pub fn watch_compact<K: Cached, C: Send + 'static>(
    client: &Client,
    compact: fn(K) -> C,
    tx: tokio::sync::mpsc::UnboundedSender<watcher::Event<C>>,
) {
    let stream = watcher(
        kube::Api::<K>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(e) = s.next().await {
            let e = match e {
                Ok(watcher::Event::Apply(o)) => watcher::Event::Apply(compact(o)),
                Ok(watcher::Event::Delete(o)) => watcher::Event::Delete(compact(o)),
                Ok(watcher::Event::Init) => watcher::Event::Init,
                Ok(watcher::Event::InitApply(o)) => watcher::Event::InitApply(compact(o)),
                Ok(watcher::Event::InitDone) => watcher::Event::InitDone,
                Err(e) => {
                    tracing::debug!(error = %e, "watch lost; listing again");
                    continue;
                }
            };
            if tx.send(e).is_err() {
                return;
            }
        }
    });
}

/// Caches shared by every loop of a process (client-go's shared informers): one watch and
/// one copy of each kind, however many loops read it, each with its own wake. The scheduler
/// and the controllers of `knode server` all read Pods and Nodes from the same caches.
pub struct Informers {
    client: Client,
    kinds: std::sync::Mutex<
        std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>,
    >,
}

struct Entry<K: Cached> {
    shared: SharedStore<K>,
    wakes: Wakes,
}

/// A shared cache as its readers see it: the store (through `Deref`), and readiness that any
/// number of readers may await. (kube-runtime's `Store::wait_until_ready` wakes only the last
/// of several tasks waiting at once: its readiness is a oneshot receiver with one waker.)
pub struct SharedStore<K: Cached> {
    store: reflector::Store<K>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<K: Cached> Clone for SharedStore<K> {
    fn clone(&self) -> Self {
        SharedStore {
            store: self.store.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K: Cached> std::ops::Deref for SharedStore<K> {
    type Target = reflector::Store<K>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

/// The cache's watch ended before its first list was in.
#[derive(Debug, thiserror::Error)]
#[error("the cache's watch ended before it was filled")]
pub struct NeverReady;

impl<K: Cached> SharedStore<K> {
    /// Waits until the first list is in.
    pub async fn wait_until_ready(&self) -> Result<(), NeverReady> {
        let mut r = self.ready.clone();
        r.wait_for(|v| *v).await.map(|_| ()).map_err(|_| NeverReady)
    }
}

impl Informers {
    pub fn new(client: Client) -> Arc<Informers> {
        Arc::new(Informers {
            client,
            kinds: Default::default(),
        })
    }

    /// The client the caches watch with (for writes).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The shared cache of every `K`, started by its first reader; `wake` hears its changes
    /// (and once now, when the cache was there already).
    pub fn cache<K: Cached>(&self, wake: Arc<tokio::sync::Notify>) -> SharedStore<K> {
        let mut kinds = self.kinds.lock().expect("informers");
        let id = std::any::TypeId::of::<K>();
        if let Some(e) = kinds.get(&id).and_then(|b| b.downcast_ref::<Entry<K>>()) {
            e.wakes.lock().expect("wakes").push(wake.clone());
            wake.notify_one();
            return e.shared.clone();
        }
        let wakes: Wakes = Arc::new(std::sync::Mutex::new(vec![wake]));
        let store = watched(
            kube::Api::<K>::all(self.client.clone()),
            watcher::Config::default(),
            wakes.clone(),
        );
        // The one waiter on the store's own readiness, which every reader then sees.
        let (tx, ready) = tokio::sync::watch::channel(false);
        let first = store.clone();
        tokio::spawn(async move {
            if first.wait_until_ready().await.is_ok() {
                let _ = tx.send(true);
                // Kept until the process ends: readers check the value, not the sender.
                std::future::pending::<()>().await;
            }
        });
        let shared = SharedStore { store, ready };
        kinds.insert(
            id,
            Box::new(Entry {
                shared: shared.clone(),
                wakes,
            }),
        );
        shared
    }
}
