//! The loop that keeps the zone equal to the API's Services and, for headless ones, their
//! EndpointSlices.
//!
//! Only what DNS needs of each object is kept (a [`ServiceDns`], a slice's endpoints), cut
//! down as it comes off the watch: CoreDNS does the same with its informers' transforms.
//! Each event redoes only the service it touched (a slice's owner is its
//! `kubernetes.io/service-name` label), so a change costs the same with 10,000 services as
//! with ten; a re-list (the start, or a lost watch) redoes them all.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use kube::Client;

use super::server::Dns;
use super::zone::{slice_endpoints, EndpointDns, Kind};
use super::{ServiceDns, Zone};

/// A namespace and a name.
type Key = (String, String);

fn key(m: &ObjectMeta) -> Key {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// What DNS keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceDns {
    /// The service it is for (its label).
    pub service: Option<String>,
    pub endpoints: Vec<EndpointDns>,
}

/// A watch event, its object cut down.
#[derive(Debug)]
pub enum Change {
    /// A Service (None: one with no DNS records of its own, such as one without a spec).
    Service(Event<(Key, Option<ServiceDns>)>),
    Slice(Event<(Key, SliceDns)>),
}

fn service(s: Service) -> (Key, Option<ServiceDns>) {
    (key(&s.metadata), ServiceDns::from_service(&s))
}

fn slice(s: EndpointSlice) -> (Key, SliceDns) {
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME))
        .cloned();
    (
        key(&s.metadata),
        SliceDns {
            service,
            endpoints: slice_endpoints(&s),
        },
    )
}

/// Keeps `dns`'s zone from the API server of `client`, until the task is dropped.
pub async fn keep_zone(client: Client, dns: Arc<Dns>) {
    let (stx, mut srx) = tokio::sync::mpsc::unbounded_channel();
    let (ltx, mut lrx) = tokio::sync::mpsc::unbounded_channel();
    crate::client::watch_compact::<Service, _>(&client, service, stx);
    crate::client::watch_compact::<EndpointSlice, _>(&client, slice, ltx);
    let mut keeper = Keeper::default();
    loop {
        let first = tokio::select! {
            Some(e) = srx.recv() => Change::Service(e),
            Some(e) = lrx.recv() => Change::Slice(e),
            else => return,
        };
        // What came meanwhile goes in the same pass (one write lock).
        let mut batch = vec![first];
        while let Ok(e) = srx.try_recv() {
            batch.push(Change::Service(e));
        }
        while let Ok(e) = lrx.try_recv() {
            batch.push(Change::Slice(e));
        }
        let dirty = keeper.apply(batch);
        keeper.update(dirty, &mut dns.zone.write().expect("zone"));
    }
}

/// What the loop keeps: each service and slice as DNS needs it, which slices each service
/// has, and what a re-list in progress has brought so far.
#[derive(Default)]
pub struct Keeper {
    services: HashMap<Key, ServiceDns>,
    slices: HashMap<Key, SliceDns>,
    /// Service -> the names of its slices (in its namespace).
    slices_of: HashMap<Key, BTreeSet<String>>,
    listing_services: Option<HashMap<Key, ServiceDns>>,
    listing_slices: Option<HashMap<Key, SliceDns>>,
}

impl Keeper {
    /// Takes in `batch`; the services whose records may have changed.
    pub fn apply(&mut self, batch: Vec<Change>) -> HashSet<Key> {
        let mut dirty = HashSet::new();
        for c in batch {
            match c {
                Change::Service(Event::Init) => self.listing_services = Some(HashMap::new()),
                Change::Service(Event::InitApply((k, s))) => {
                    if let (Some(l), Some(s)) = (&mut self.listing_services, s) {
                        l.insert(k, s);
                    }
                }
                Change::Service(Event::InitDone) => {
                    let new = self.listing_services.take().unwrap_or_default();
                    dirty.extend(self.services.keys().cloned());
                    dirty.extend(new.keys().cloned());
                    self.services = new;
                }
                Change::Service(Event::Apply((k, Some(s)))) => {
                    self.services.insert(k.clone(), s);
                    dirty.insert(k);
                }
                Change::Service(Event::Apply((k, None)) | Event::Delete((k, _))) => {
                    self.services.remove(&k);
                    dirty.insert(k);
                }
                Change::Slice(Event::Init) => self.listing_slices = Some(HashMap::new()),
                Change::Slice(Event::InitApply((k, s))) => {
                    if let Some(l) = &mut self.listing_slices {
                        l.insert(k, s);
                    }
                }
                Change::Slice(Event::InitDone) => {
                    let new = self.listing_slices.take().unwrap_or_default();
                    for k in self.slices.keys().cloned().collect::<Vec<_>>() {
                        dirty.extend(self.disown(&k));
                    }
                    self.slices.clear();
                    for (k, s) in new {
                        dirty.extend(self.own(k, s));
                    }
                }
                Change::Slice(Event::Apply((k, s))) => {
                    dirty.extend(self.disown(&k));
                    dirty.extend(self.own(k, s));
                }
                Change::Slice(Event::Delete((k, _))) => {
                    dirty.extend(self.disown(&k));
                }
            }
        }
        dirty
    }

    /// Puts the `dirty` services' records in `zone` as they now are.
    pub fn update(&self, dirty: HashSet<Key>, zone: &mut Zone) {
        for k in dirty {
            let Some(s) = self.services.get(&k) else {
                zone.remove_service(&k.0, &k.1);
                continue;
            };
            if !matches!(s.kind, Kind::Headless(_)) {
                zone.set_service(s);
                continue;
            }
            let eps = self
                .slices_of
                .get(&k)
                .into_iter()
                .flatten()
                .filter_map(|n| self.slices.get(&(k.0.clone(), n.clone())))
                .flat_map(|s| s.endpoints.iter().cloned())
                .collect();
            zone.set_service(&ServiceDns {
                kind: Kind::Headless(eps),
                ..s.clone()
            });
        }
    }

    /// Keeps slice `k` under the service it names; that service.
    fn own(&mut self, k: Key, s: SliceDns) -> Option<Key> {
        let owner = s.service.clone().map(|svc| (k.0.clone(), svc));
        if let Some(o) = &owner {
            self.slices_of
                .entry(o.clone())
                .or_default()
                .insert(k.1.clone());
        }
        self.slices.insert(k, s);
        owner
    }

    /// Takes slice `k` out; the service it was under.
    fn disown(&mut self, k: &Key) -> Option<Key> {
        let s = self.slices.remove(k)?;
        let owner = (k.0.clone(), s.service?);
        if let Some(set) = self.slices_of.get_mut(&owner) {
            set.remove(&k.1);
            if set.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        Some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Lookup, Qtype, Rr};

    fn svc(name: &str, headless: bool) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "clusterIP": if headless { "None" } else { "10.96.0.20" },
                "ports": [{"name": "http", "port": 80}],
            },
        }))
        .unwrap()
    }

    fn sl(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": "default",
                "labels": {SERVICE_NAME: service},
            },
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|ip| serde_json::json!({
                "addresses": [ip],
                "conditions": {"ready": true},
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn a(zone: &Zone, name: &str) -> Vec<String> {
        match zone.lookup(&format!("{name}.default.svc.cluster.local."), Qtype::A) {
            Lookup::Answer(rrs) => rrs
                .into_iter()
                .filter_map(|(_, r)| match r {
                    Rr::A(a) => Some(a.to_string()),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        }
    }

    /// Events as the watches deliver them: a slice moving from one headless service to
    /// another redoes both; a deleted service leaves the zone; a re-list after deletions
    /// that were never heard takes them out too; nothing else is redone for one event.
    #[test]
    fn each_event_redoes_the_services_it_touched() {
        let mut z = Zone::new("cluster.local");
        let mut k = Keeper::default();
        // The batch in; how many services it redid.
        let feed = |k: &mut Keeper, z: &mut Zone, c: Vec<Change>| {
            let dirty = k.apply(c);
            let n = dirty.len();
            k.update(dirty, z);
            n
        };
        let list = |s: Vec<Service>| {
            let mut v = vec![Change::Service(Event::Init)];
            v.extend(
                s.into_iter()
                    .map(|s| Change::Service(Event::InitApply(service(s)))),
            );
            v.push(Change::Service(Event::InitDone));
            v
        };
        let n = feed(
            &mut k,
            &mut z,
            list(vec![svc("web", false), svc("db", true), svc("cache", true)]),
        );
        assert_eq!((n, z.services()), (3, 3));
        assert_eq!(a(&z, "web"), ["10.96.0.20"]);
        // Headless without ready endpoints: no name yet.
        assert_eq!(a(&z, "db"), Vec::<String>::new());
        let n = feed(
            &mut k,
            &mut z,
            vec![Change::Slice(Event::Apply(slice(sl(
                "db-x",
                "db",
                &["10.244.0.5"],
            ))))],
        );
        assert_eq!(n, 1);
        assert_eq!(a(&z, "db"), ["10.244.0.5"]);
        // The slice now names `cache`: both change.
        let n = feed(
            &mut k,
            &mut z,
            vec![Change::Slice(Event::Apply(slice(sl(
                "db-x",
                "cache",
                &["10.244.0.6"],
            ))))],
        );
        assert_eq!(n, 2);
        assert_eq!(a(&z, "db"), Vec::<String>::new());
        assert_eq!(a(&z, "cache"), ["10.244.0.6"]);
        // A deleted slice and a deleted service.
        feed(
            &mut k,
            &mut z,
            vec![
                Change::Slice(Event::Delete(slice(sl("db-x", "cache", &[])))),
                Change::Service(Event::Delete(service(svc("web", false)))),
            ],
        );
        assert_eq!(a(&z, "cache"), Vec::<String>::new());
        assert_eq!(a(&z, "web"), Vec::<String>::new());
        assert_eq!(z.services(), 2);
        // A re-list that no longer has `db` (its deletion was missed) and has a new one,
        // then the slices' re-list.
        feed(
            &mut k,
            &mut z,
            list(vec![svc("cache", true), svc("api", false)]),
        );
        assert_eq!(z.services(), 2);
        feed(
            &mut k,
            &mut z,
            vec![
                Change::Slice(Event::Init),
                Change::Slice(Event::InitApply(slice(sl(
                    "cache-y",
                    "cache",
                    &["10.244.0.9"],
                )))),
                Change::Slice(Event::InitDone),
            ],
        );
        assert_eq!(a(&z, "api"), ["10.96.0.20"]);
        assert_eq!(a(&z, "cache"), ["10.244.0.9"]);
    }
}
