//! Deployments, after upstream's deployment controller: a ReplicaSet per pod template
//! (`<deployment>-<pod-template-hash>`, the hash in its selector and its pods' labels), the
//! newest scaled up and the older ones down within `maxSurge` and `maxUnavailable`
//! (RollingUpdate) or all old ones first (Recreate), revisions in the
//! `deployment.kubernetes.io/revision` annotation (a rollback, `kubectl rollout undo`, puts an
//! old template back: its ReplicaSet becomes the newest with the next revision), history kept
//! to `revisionHistoryLimit`, and the status and conditions `kubectl get deploy` and
//! `kubectl rollout status` read.
//!
//! [`plan`] is pure: the Deployment and its ReplicaSets in, the writes out.

use serde_json::{json, Value};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The alphabet of generated names and hashes (apimachinery's `rand.SafeEncodeString`).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash of a template: FNV-1a over its JSON (keys sorted), plus the
/// collision count, written as upstream writes it (the decimal digits mapped to the
/// alphabet above).
pub fn template_hash(template: &Value, collisions: i64) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u32::from(*x);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(template.to_string().as_bytes());
    if collisions > 0 {
        feed(collisions.to_string().as_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// A ReplicaSet as the deployment controller sees it.
#[derive(Clone, Debug)]
pub struct Rs {
    pub name: String,
    pub replicas: i64,
    pub template: Value,
    pub revision: i64,
    pub created: String,
    pub status_replicas: i64,
    pub ready: i64,
    pub available: i64,
    pub annotations: Value,
}

impl Rs {
    pub fn from_value(v: &Value) -> Rs {
        let i = |p: &Value| p.as_i64().unwrap_or(0);
        Rs {
            name: v["metadata"]["name"].as_str().unwrap_or("").into(),
            replicas: v["spec"]["replicas"].as_i64().unwrap_or(1),
            template: v["spec"]["template"].clone(),
            revision: v["metadata"]["annotations"][REVISION]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            created: v["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .into(),
            status_replicas: i(&v["status"]["replicas"]),
            ready: i(&v["status"]["readyReplicas"]),
            available: i(&v["status"]["availableReplicas"]),
            annotations: v["metadata"]["annotations"].clone(),
        }
    }

    /// Its template without the hash label (what a Deployment's template is compared with).
    fn bare_template(&self) -> Value {
        let mut t = self.template.clone();
        if let Some(l) = t["metadata"]["labels"].as_object_mut() {
            l.remove(HASH_LABEL);
        }
        t
    }
}

/// A write the controller makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A new ReplicaSet (the body).
    Create(Value),
    /// `spec.replicas` of a ReplicaSet, with annotations to set.
    Scale {
        name: String,
        replicas: i64,
        annotations: Option<Value>,
    },
    Delete(String),
    /// The Deployment's status.
    Status(Value),
    /// The Deployment's revision annotation (kubectl rollout undo patches beside it).
    Revision(String),
}

/// maxSurge / maxUnavailable as counts (a percentage rounds up for surge and down for
/// unavailable; both zero means one unavailable, as upstream resolves them).
pub fn surge_and_unavailable(strategy: &Value, replicas: i64) -> (i64, i64) {
    let val = |v: &Value, default: &str, up: bool| -> i64 {
        let s = match v {
            Value::Number(n) => return n.as_i64().unwrap_or(0),
            Value::String(s) => s.clone(),
            _ => default.to_string(),
        };
        match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if up => (p * replicas + 99) / 100,
            Some(p) => p * replicas / 100,
            None => s.parse().unwrap_or(0),
        }
    };
    let ru = &strategy["rollingUpdate"];
    let surge = val(&ru["maxSurge"], "25%", true);
    let mut unavailable = val(&ru["maxUnavailable"], "25%", false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// The writes for deployment `d` (as stored) and the ReplicaSets it controls.
pub fn plan(d: &Value, rss: &[Rs]) -> Vec<Write> {
    plan_at(d, rss, chrono::Utc::now())
}

/// Whether the rollout moved since the status `d` has (`DeploymentProgressing` in
/// `pkg/controller/deployment/util`): more updated, ready or available replicas, or fewer
/// old ones.
fn progressed(d: &Value, updated: i64, ready: i64, available: i64, total: i64) -> bool {
    let st = &d["status"];
    let n = |k: &str| st[k].as_i64().unwrap_or(0);
    updated > n("updatedReplicas")
        || ready > n("readyReplicas")
        || available > n("availableReplicas")
        || total - updated < n("replicas") - n("updatedReplicas")
}

/// How long until `d`'s rollout passes its progress deadline, if it is rolling and not
/// paused (the controller looks again then, as upstream's requeue of stuck deployments).
pub fn until_deadline(
    d: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<std::time::Duration> {
    let secs = d["spec"]["progressDeadlineSeconds"].as_i64()?;
    if d["spec"]["paused"] == true || secs >= i32::MAX as i64 {
        return None;
    }
    let c = d["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Progressing" && c["reason"] == "ReplicaSetUpdated")?;
    let since = chrono::DateTime::parse_from_rfc3339(c["lastUpdateTime"].as_str()?).ok()?;
    let left = secs - now.signed_duration_since(since).num_seconds();
    Some(std::time::Duration::from_secs(left.max(0) as u64 + 1))
}

/// [`plan`] at the time `now` (the progress deadline is measured against it).
pub fn plan_at(d: &Value, rss: &[Rs], now_at: chrono::DateTime<chrono::Utc>) -> Vec<Write> {
    let name = d["metadata"]["name"].as_str().unwrap_or("");
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let template = d["spec"]["template"].clone();
    let strategy = &d["spec"]["strategy"];
    let recreate = strategy["type"] == "Recreate";
    let paused = d["spec"]["paused"].as_bool().unwrap_or(false);
    let collisions = d["status"]["collisionCount"].as_i64().unwrap_or(0);
    let mut out = Vec::new();

    let new = rss.iter().find(|r| r.bare_template() == template);
    let max_rev = rss.iter().map(|r| r.revision).max().unwrap_or(0);
    let olds: Vec<&Rs> = rss
        .iter()
        .filter(|r| new.is_none_or(|n| n.name != r.name))
        .collect();
    let old_total: i64 = olds.iter().map(|r| r.replicas).sum();
    let cause = d["metadata"]["annotations"][CHANGE_CAUSE].clone();

    // The new ReplicaSet's size: all of it when nothing old runs, else within the surge.
    let (surge, unavailable) = if recreate {
        (0, replicas)
    } else {
        surge_and_unavailable(strategy, replicas)
    };
    let mut new_replicas = new.map(|n| n.replicas).unwrap_or(0);
    let mut new_name = new.map(|n| n.name.clone());
    if !paused {
        let target = if recreate {
            let old_running: i64 = olds.iter().map(|r| r.status_replicas).sum();
            if old_total > 0 || old_running > 0 {
                new_replicas
            } else {
                replicas
            }
        } else if new_replicas > replicas {
            replicas
        } else {
            let current = old_total + new_replicas;
            let room = (replicas + surge - current).max(0);
            new_replicas + room.min(replicas - new_replicas)
        };
        match new {
            None => {
                let hash = template_hash(&template, collisions);
                let rs_name = format!("{name}-{hash}");
                let mut t = template.clone();
                t["metadata"]["labels"][HASH_LABEL] = json!(hash);
                let mut sel = d["spec"]["selector"].clone();
                sel["matchLabels"][HASH_LABEL] = json!(hash);
                let mut labels = template["metadata"]["labels"].clone();
                labels[HASH_LABEL] = json!(hash);
                let mut ann = json!({REVISION: (max_rev + 1).to_string()});
                if cause.is_string() {
                    ann[CHANGE_CAUSE] = cause.clone();
                }
                out.push(Write::Create(json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs_name, "namespace": d["metadata"]["namespace"],
                                 "labels": labels, "annotations": ann,
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": name, "uid": d["metadata"]["uid"],
                                     "controller": true, "blockOwnerDeletion": true}]},
                    "spec": {"replicas": target, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                             "selector": sel, "template": t},
                })));
                new_replicas = target;
                new_name = Some(rs_name);
            }
            Some(n) => {
                // An old template back (a rollback) takes the next revision.
                let annotations = (n.revision < max_rev || (cause.is_string() && n.annotations[CHANGE_CAUSE] != cause))
                    .then(|| {
                        let mut a = json!({REVISION: (if n.revision < max_rev { max_rev + 1 } else { n.revision }).to_string()});
                        if cause.is_string() {
                            a[CHANGE_CAUSE] = cause.clone();
                        }
                        a
                    });
                if target != n.replicas || annotations.is_some() {
                    out.push(Write::Scale {
                        name: n.name.clone(),
                        replicas: target,
                        annotations,
                    });
                }
                new_replicas = target;
            }
        }

        // The old ReplicaSets come down as far as availability allows (all of them at once
        // for Recreate), the oldest first.
        let mut olds_sorted = olds.clone();
        olds_sorted.sort_by(|a, b| (a.revision, &a.created).cmp(&(b.revision, &b.created)));
        if recreate {
            for o in &olds_sorted {
                if o.replicas > 0 {
                    out.push(Write::Scale {
                        name: o.name.clone(),
                        replicas: 0,
                        annotations: None,
                    });
                }
            }
        } else if old_total > 0 {
            let all = old_total + new_replicas;
            let min_available = replicas - unavailable;
            let new_unavailable = new
                .map(|n| (n.replicas - n.available).max(0))
                .unwrap_or(new_replicas);
            let mut budget = all - min_available - new_unavailable;
            // First the old pods that are not available anyway, then available ones while
            // enough stay available.
            let available: i64 = rss.iter().map(|r| r.available).sum();
            let mut healthy_budget = (available - min_available).max(0);
            for o in &olds_sorted {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (o.replicas - o.available).max(0);
                let mut down = unhealthy.min(budget);
                let more = (o.replicas - down).min(healthy_budget).min(budget - down);
                down += more.max(0);
                healthy_budget -= more.max(0);
                if down > 0 {
                    budget -= down;
                    out.push(Write::Scale {
                        name: o.name.clone(),
                        replicas: o.replicas - down,
                        annotations: None,
                    });
                }
            }
        }

        // History: old ReplicaSets with nothing left, beyond the limit, go (oldest first).
        let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10);
        let idle: Vec<&&Rs> = olds_sorted
            .iter()
            .filter(|o| o.replicas == 0 && o.status_replicas == 0)
            .collect();
        let extra = idle.len() as i64 - limit;
        for o in idle.iter().take(extra.max(0) as usize) {
            out.push(Write::Delete(o.name.clone()));
        }
    }

    // The Deployment carries its newest ReplicaSet's revision, as upstream's does.
    let revision = out
        .iter()
        .find_map(|w| match w {
            Write::Create(rs) => rs["metadata"]["annotations"][REVISION]
                .as_str()
                .map(str::to_string),
            Write::Scale {
                name,
                annotations: Some(a),
                ..
            } if Some(name) == new_name.as_ref() => a[REVISION].as_str().map(str::to_string),
            _ => None,
        })
        .or_else(|| new.map(|n| n.revision.to_string()));
    if let Some(rev) = revision {
        if d["metadata"]["annotations"][REVISION].as_str() != Some(rev.as_str()) && rev != "0" {
            out.push(Write::Revision(rev));
        }
    }

    // Status, from what the ReplicaSets report.
    let sum = |f: fn(&Rs) -> i64| rss.iter().map(f).sum::<i64>();
    let updated = new.map(|n| n.status_replicas).unwrap_or(0);
    let available = sum(|r| r.available);
    let total = sum(|r| r.status_replicas);
    let now = crate::api::time::rfc3339(now_at);
    let new_label = new_name.clone().unwrap_or_default();
    let min_ok = available >= replicas - if recreate { 0 } else { unavailable };
    let complete =
        updated == replicas && total == replicas && available >= replicas && new.is_some();
    // The progress deadline (`progressDeadlineSeconds`, 600 by default): a rollout that has
    // not moved for that long is Progressing=False, ProgressDeadlineExceeded, which `kubectl
    // rollout status` reports as a failure. A new ReplicaSet or any progress resets it.
    let old_progressing = d["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned();
    let moved = progressed(d, updated, sum(|r| r.ready), available, total)
        || old_progressing.as_ref().is_none_or(|c| {
            !matches!(
                c["reason"].as_str(),
                Some("ReplicaSetUpdated" | "ProgressDeadlineExceeded")
            )
        });
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64();
    let updating = json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": format!("ReplicaSet \"{new_label}\" is progressing.")});
    let progressing = match (&old_progressing, deadline) {
        _ if moved => updating,
        (Some(c), _) if c["reason"] == "ProgressDeadlineExceeded" => c.clone(),
        (Some(c), Some(secs)) if secs < i32::MAX as i64 => {
            let since = c["lastUpdateTime"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            match since {
                Some(t) if now_at.signed_duration_since(t).num_seconds() >= secs => json!({
                    "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": format!("ReplicaSet \"{new_label}\" has timed out progressing.")}),
                _ => updating,
            }
        }
        _ => updating,
    };
    let mut conditions = vec![
        if min_ok {
            json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."})
        } else {
            json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."})
        },
        if complete {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{new_label}\" has successfully progressed.")})
        } else if paused {
            json!({"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused", "message": "Deployment is paused"})
        } else if new.is_none() {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated", "message": format!("Created new replica set \"{new_label}\"")})
        } else {
            progressing.clone()
        },
    ];
    // A condition keeps its transition time while its status does not change, and its update
    // time while nothing happens (Progressing's moves with the rollout: the deadline counts
    // from it).
    for c in conditions.iter_mut() {
        let old = d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["type"] == c["type"]);
        let same = old.is_some_and(|o| o["status"] == c["status"] && o["reason"] == c["reason"]);
        let touched = c["type"] == "Progressing" && c["reason"] == "ReplicaSetUpdated" && moved;
        c["lastUpdateTime"] = if same && !touched {
            old.expect("same")["lastUpdateTime"].clone()
        } else {
            json!(now)
        };
        c["lastTransitionTime"] = match old {
            Some(o) if o["status"] == c["status"] => o["lastTransitionTime"].clone(),
            _ => json!(now),
        };
    }
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": sum(|r| r.ready),
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conditions,
    });
    // Zero counts are left out as Go's omitempty stores them: null in the merge patch.
    if let Some(m) = status.as_object_mut() {
        for (k, v) in m.iter_mut() {
            if k != "conditions" && k != "observedGeneration" && v == &json!(0) {
                *v = Value::Null;
            }
        }
    }
    let changed = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .any(|k| d["status"][*k].as_i64().unwrap_or(0) != status[*k].as_i64().unwrap_or(0))
        || conditions_differ(&d["status"]["conditions"], &status["conditions"]);
    if changed {
        out.push(Write::Status(status));
    }
    out
}

fn conditions_differ(a: &Value, b: &Value) -> bool {
    let key = |v: &Value| -> Vec<(String, String, String)> {
        let mut k: Vec<(String, String, String)> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or("").into(),
                    c["status"].as_str().unwrap_or("").into(),
                    c["reason"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        k.sort();
        k
    };
    key(a) != key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(replicas: i64, image: &str) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 1},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": image}]}}},
               "status": {}})
    }

    fn rs_of(d: &Value, name: &str, replicas: i64, available: i64, revision: i64) -> Rs {
        let mut t = d["spec"]["template"].clone();
        t["metadata"]["labels"][HASH_LABEL] = json!("h");
        Rs {
            name: name.into(),
            replicas,
            template: t,
            revision,
            created: format!("2026-01-0{revision}T00:00:00Z"),
            status_replicas: replicas,
            ready: available,
            available,
            annotations: json!({REVISION: revision.to_string()}),
        }
    }

    #[test]
    fn a_new_deployment_makes_its_replica_set_with_the_hash_and_revision_1() {
        let d = dep(3, "nginx:1");
        let w = plan(&d, &[]);
        let Write::Create(rs) = &w[0] else {
            panic!("{w:?}")
        };
        let hash = template_hash(&d["spec"]["template"], 0);
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert!(hash.bytes().all(|b| ALPHANUMS.contains(&b)), "{hash}");
        assert_eq!(rs["spec"]["replicas"], 3);
        assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], hash);
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            hash
        );
        assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        assert!(w.contains(&Write::Revision("1".into())), "{w:?}");
    }

    #[test]
    fn a_rolling_update_surges_then_trades_old_for_new_within_the_budget() {
        let old_d = dep(4, "nginx:1");
        let d = dep(4, "nginx:2");
        // 4 replicas: surge 1, unavailable 1.
        assert_eq!(surge_and_unavailable(&d["spec"]["strategy"], 4), (1, 1));
        let old = rs_of(&old_d, "web-old", 4, 4, 1);
        let w = plan(&d, std::slice::from_ref(&old));
        let Write::Create(rs) = &w[0] else {
            panic!("{w:?}")
        };
        assert_eq!(rs["spec"]["replicas"], 1, "one over the desired count");
        assert_eq!(rs["metadata"]["annotations"][REVISION], "2");
        // The old one may lose one while the new one is not available yet.
        assert!(
            w.contains(&Write::Scale {
                name: "web-old".into(),
                replicas: 3,
                annotations: None
            }),
            "{w:?}"
        );
        // Later: the new RS has 2 available; old has 3.
        let mut new = rs_of(&d, "web-new", 2, 2, 2);
        new.status_replicas = 2;
        let old = rs_of(&old_d, "web-old", 3, 3, 1);
        let w = plan(&d, &[old, new]);
        // 5 pods = 4 + surge: the new one waits; 5 available - 3 needed: two old ones go.
        assert!(
            !w.iter()
                .any(|x| matches!(x, Write::Scale { name, .. } if name == "web-new")),
            "{w:?}"
        );
        assert!(
            w.contains(&Write::Scale {
                name: "web-old".into(),
                replicas: 1,
                annotations: None
            }),
            "{w:?}"
        );
    }

    #[test]
    fn a_rollback_reuses_the_old_replica_set_with_the_next_revision() {
        let d = dep(2, "nginx:1");
        let v1 = rs_of(&dep(2, "nginx:1"), "web-v1", 0, 0, 1);
        let v2 = rs_of(&dep(2, "nginx:2"), "web-v2", 2, 2, 2);
        let w = plan(&d, &[v1, v2]);
        assert!(!w.iter().any(|x| matches!(x, Write::Create(_))), "{w:?}");
        let up = w
            .iter()
            .find(|x| matches!(x, Write::Scale { name, .. } if name == "web-v1"))
            .unwrap();
        let Write::Scale {
            replicas,
            annotations,
            ..
        } = up
        else {
            unreachable!()
        };
        assert_eq!(*replicas, 1);
        assert_eq!(annotations.as_ref().unwrap()[REVISION], "3");
    }

    #[test]
    fn recreate_scales_old_to_zero_before_the_new_one_grows() {
        let mut d = dep(2, "nginx:2");
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        let old = rs_of(&dep(2, "nginx:1"), "web-old", 2, 2, 1);
        let w = plan(&d, &[old]);
        let Write::Create(rs) = &w[0] else {
            panic!("{w:?}")
        };
        assert_eq!(rs["spec"]["replicas"], 0);
        assert!(w.contains(&Write::Scale {
            name: "web-old".into(),
            replicas: 0,
            annotations: None
        }));
    }

    #[test]
    fn status_counts_and_conditions() {
        let d = dep(2, "nginx:1");
        let rs = rs_of(&d, "web-x", 2, 2, 1);
        let w = plan(&d, &[rs]);
        let Some(Write::Status(st)) = w.last() else {
            panic!("{w:?}")
        };
        assert_eq!(st["updatedReplicas"], 2);
        assert_eq!(st["availableReplicas"], 2);
        assert_eq!(st["conditions"][0]["reason"], "MinimumReplicasAvailable");
        assert_eq!(st["conditions"][1]["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            st["conditions"][1]["message"],
            "ReplicaSet \"web-x\" has successfully progressed."
        );
    }

    #[test]
    fn a_rollout_that_stops_moving_exceeds_its_progress_deadline() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut d = dep(2, "nginx:2");
        d["spec"]["progressDeadlineSeconds"] = json!(600);
        // Its new ReplicaSet made, none of its pods available yet.
        let rs = rs_of(&d, "web-y", 2, 0, 1);
        let status_of = |w: &[Write]| {
            w.iter().find_map(|w| match w {
                Write::Status(s) => Some(s.clone()),
                _ => None,
            })
        };
        let st = status_of(&plan_at(&d, std::slice::from_ref(&rs), t0)).unwrap();
        assert_eq!(st["conditions"][1]["reason"], "ReplicaSetUpdated");
        assert_eq!(
            st["conditions"][1]["lastUpdateTime"],
            "2026-01-01T00:00:00Z"
        );
        d["status"] = st;
        // Nothing moves: nothing to write before the deadline, then the condition turns.
        assert!(status_of(&plan_at(&d, std::slice::from_ref(&rs), at(599))).is_none());
        let st = status_of(&plan_at(&d, std::slice::from_ref(&rs), at(600))).unwrap();
        let c = &st["conditions"][1];
        assert_eq!(
            (&c["status"], &c["reason"]),
            (&json!("False"), &json!("ProgressDeadlineExceeded"))
        );
        assert_eq!(
            c["message"],
            "ReplicaSet \"web-y\" has timed out progressing."
        );
        d["status"] = st;
        assert!(status_of(&plan_at(&d, std::slice::from_ref(&rs), at(900))).is_none());
        // A pod becoming available is progress again: the clock starts over.
        let moving = rs_of(&d, "web-y", 2, 1, 1);
        let st = status_of(&plan_at(&d, std::slice::from_ref(&moving), at(1000))).unwrap();
        let c = &st["conditions"][1];
        assert_eq!(
            (&c["status"], &c["reason"]),
            (&json!("True"), &json!("ReplicaSetUpdated"))
        );
        assert_eq!(c["lastUpdateTime"], "2026-01-01T00:16:40Z");
        // A paused rollout has no deadline.
        let mut paused = d.clone();
        paused["spec"]["paused"] = json!(true);
        let st = status_of(&plan_at(&paused, std::slice::from_ref(&rs), at(5000))).unwrap();
        assert_eq!(st["conditions"][1]["reason"], "DeploymentPaused");
    }
}
