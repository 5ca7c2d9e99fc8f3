//! The Job controller's plan: from a Job and the pods it owns, the pods to create and delete,
//! the status to write, the events to record and when to look again, as kube-controller-
//! manager's job controller decides them for the cases users meet: `completions` and
//! `parallelism` (and the work-queue form, parallelism alone), `backoffLimit` with upstream's
//! exponential delay before a failed pod is replaced (10 s doubling up to 6 min; container
//! restarts of `OnFailure` pods count too), the `Indexed` completion mode (one pod per index,
//! its index in an annotation, label, `JOB_COMPLETION_INDEX` and hostname),
//! `activeDeadlineSeconds`, `suspend`, `podFailurePolicy` (`FailJob`, `Ignore`, `Count` on exit
//! codes and pod conditions) and `ttlSecondsAfterFinished` (upstream's TTL-after-finished
//! controller: the finished Job is deleted, its pods with it).
//!
//! A finishing Job first gets upstream's interim condition (`SuccessCriteriaMet` or
//! `FailureTarget`) while its remaining pods are deleted, then `Complete` or `Failed`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::api::time::{chrono as to_utc, rfc3339};

/// The index annotation and label of an Indexed Job's pods.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// How long a failed pod's replacement waits at first, doubled per failure.
const BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

#[derive(Debug, PartialEq)]
pub enum Write {
    CreatePod(Value),
    DeletePod(String),
    /// The whole new status.
    Status(Value),
    /// An event on the Job: type, reason, message.
    Event(&'static str, &'static str, String),
    /// The TTL passed: the Job goes, its pods with it (foreground).
    DeleteJob,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// When the Job needs another look though nothing changes (a backoff, a deadline, a TTL).
    pub next: Option<Duration>,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn index_of(p: &Pod) -> Option<i64> {
    p.metadata.annotations.as_ref()?.get(INDEX)?.parse().ok()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When a failed pod finished: its last container's finish, else its creation.
fn finished_at(p: &Pod) -> Option<DateTime<Utc>> {
    let s = p.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(to_utc)
        .max()
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(to_utc))
}

fn restarts(p: &Pod) -> i64 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0)
}

/// What the pod failure policy says of a failed pod.
#[derive(Debug, PartialEq)]
enum Verdict {
    Count,
    Ignore,
    FailJob(String),
}

fn judge(policy: &Value, p: &Pod) -> Verdict {
    let Some(rules) = policy["rules"].as_array() else {
        return Verdict::Count;
    };
    let status = p.status.as_ref();
    for (i, r) in rules.iter().enumerate() {
        let mut hit: Option<String> = None;
        if let Some(on) = r["onExitCodes"].as_object() {
            let values: Vec<i64> = on
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let only = on.get("containerName").and_then(Value::as_str);
            let not_in = on.get("operator").and_then(Value::as_str) == Some("NotIn");
            for c in status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
            {
                if only.is_some_and(|n| n != c.name) {
                    continue;
                }
                let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                    continue;
                };
                // Exit code 0 never matches (upstream).
                if t.exit_code != 0 && values.contains(&i64::from(t.exit_code)) != not_in {
                    hit = Some(format!(
                        "Container {} for pod {}/{} failed with exit code {} matching {} rule at index {i}",
                        c.name,
                        p.metadata.namespace.as_deref().unwrap_or(""),
                        p.metadata.name.as_deref().unwrap_or(""),
                        t.exit_code,
                        r["action"].as_str().unwrap_or("")
                    ));
                    break;
                }
            }
        }
        for want in r["onPodConditions"].as_array().into_iter().flatten() {
            let st = want["status"].as_str().unwrap_or("True");
            if status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| Some(c.type_.as_str()) == want["type"].as_str() && c.status == st)
            {
                hit = Some(format!(
                    "Pod {}/{} has condition {} matching {} rule at index {i}",
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or(""),
                    want["type"].as_str().unwrap_or(""),
                    r["action"].as_str().unwrap_or("")
                ));
            }
        }
        if let Some(msg) = hit {
            return match r["action"].as_str() {
                Some("FailJob") => Verdict::FailJob(msg),
                Some("Ignore") => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

/// The indexes of upstream's `0-2,4,6-7` (at most 100,000, as upstream caps completions of
/// Indexed Jobs).
pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
            for i in a.max(0)..=b.min(a.max(0) + 100_000) {
                out.insert(i);
            }
        }
    }
    out
}

/// `0-2,4,6-7`: upstream's form of a set of indexes.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now})
}

fn has(status: &Value, kind: &str) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

/// Whether the Job has finished (`Complete` or `Failed`).
pub fn finished(job: &Value) -> bool {
    has(&job["status"], "Complete") || has(&job["status"], "Failed")
}

/// The new pod for `job` (with its index, if Indexed).
pub fn new_pod(job: &Value, index: Option<i64>) -> Value {
    let name = job["metadata"]["name"].as_str().unwrap_or("");
    let t = &job["spec"]["template"];
    let mut meta = json!({
        "generateName": match index { Some(i) => format!("{name}-{i}-"), None => format!("{name}-") },
        "namespace": job["metadata"]["namespace"],
        "labels": t["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
            "uid": job["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
    });
    if let Some(a) = t["metadata"]["annotations"].as_object() {
        meta["annotations"] = json!(a);
    }
    let mut spec = t["spec"].clone();
    if let Some(i) = index {
        meta["annotations"][INDEX] = json!(i.to_string());
        meta["labels"][INDEX] = json!(i.to_string());
        if spec["hostname"].is_null() {
            spec["hostname"] = json!(format!("{name}-{i}"));
        }
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                let env = c
                    .as_object_mut()
                    .map(|c| c.entry("env").or_insert_with(|| json!([])));
                if let Some(Value::Array(env)) = env {
                    env.insert(
                        0,
                        json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef":
                            {"apiVersion": "v1", "fieldPath": format!("metadata.annotations['{INDEX}']")}}}),
                    );
                }
            }
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// The writes for `job`, given the pods it owns.
pub fn plan(job: &Value, pods: &[&Pod], now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    if !job["metadata"]["deletionTimestamp"].is_null() {
        return plan;
    }
    let spec = &job["spec"];
    let old = &job["status"];
    let now_s = rfc3339(now);
    let live: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let active: Vec<&Pod> = live
        .iter()
        .copied()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let terminating = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .count();

    // Finished: only the TTL is left to honour, and stragglers to stop.
    if finished(job) {
        for p in &active {
            plan.writes.push(Write::DeletePod(
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
        if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
            let done = old["completionTime"]
                .as_str()
                .or_else(|| {
                    old["conditions"]
                        .as_array()?
                        .iter()
                        .find(|c| c["type"] == "Failed")?["lastTransitionTime"]
                        .as_str()
                })
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now);
            // A TTL beyond what time can hold is never reached.
            match chrono::Duration::try_seconds(ttl).and_then(|d| done.checked_add_signed(d)) {
                Some(due) if now >= due => plan.writes.push(Write::DeleteJob),
                Some(due) => plan.next = (due - now).to_std().ok(),
                None => {}
            }
        }
        return plan;
    }

    let indexed = spec["completionMode"] == "Indexed";
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let suspended = spec["suspend"] == true;

    // Count what finished (the failure policy judges each failure).
    let succeeded: Vec<&Pod> = live
        .iter()
        .copied()
        .filter(|p| phase(p) == "Succeeded")
        .collect();
    let mut done_indexes: BTreeSet<i64> = BTreeSet::new();
    // What finished stays counted when its pod is deleted (by a user, or the collector).
    let succeeded_n = (succeeded.len() as i64).max(old["succeeded"].as_i64().unwrap_or(0));
    if indexed {
        done_indexes.extend(
            parse_indexes(old["completedIndexes"].as_str().unwrap_or(""))
                .into_iter()
                .filter(|i| Some(*i) < completions),
        );
        for p in &succeeded {
            if let Some(i) = index_of(p).filter(|i| *i >= 0 && Some(*i) < completions) {
                done_indexes.insert(i);
            }
        }
    }
    let mut failed = 0i64;
    let mut fail_job: Option<(String, String)> = None;
    let mut last_failure: Option<DateTime<Utc>> = None;
    for p in live.iter().filter(|p| phase(p) == "Failed") {
        match judge(&spec["podFailurePolicy"], p) {
            Verdict::Ignore => continue,
            Verdict::FailJob(msg) if fail_job.is_none() => {
                fail_job = Some(("PodFailurePolicy".into(), msg));
            }
            _ => {}
        }
        failed += 1;
        last_failure = last_failure.max(finished_at(p));
    }
    // Counts never go down: a finished pod deleted later (by a user, or by this controller
    // stopping an active one, which counts as failed as upstream counts it) stays counted.
    failed = failed.max(old["failed"].as_i64().unwrap_or(0));
    let restarts: i64 = active.iter().map(|p| restarts(p)).sum();

    let mut status = json!({
        "active": active.len(),
        "ready": active.iter().filter(|p| ready(p)).count(),
        "succeeded": succeeded_n,
        "failed": failed,
        "terminating": terminating,
        "uncountedTerminatedPods": {},
    });
    if indexed {
        status["completedIndexes"] = json!(format_indexes(&done_indexes));
        status["succeeded"] = json!(done_indexes.len());
    }
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let mut start = old["startTime"].clone();

    // Suspension stops every pod and the deadline's clock.
    let was_suspended = has(old, "Suspended");
    if suspended {
        for p in &active {
            plan.writes.push(Write::DeletePod(
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
        if !was_suspended {
            // A Job suspended before has the condition, False: it turns True again.
            conditions.retain(|c| c["type"] != "Suspended");
            conditions.push(condition(
                "Suspended",
                "JobSuspended",
                "Job suspended",
                &now_s,
            ));
            plan.writes
                .push(Write::Event("Normal", "Suspended", "Job suspended".into()));
        }
        start = Value::Null;
        status["active"] = json!(0);
        status["conditions"] = json!(conditions);
        status["startTime"] = start;
        status_write(&mut plan, old, status);
        return plan;
    }
    if was_suspended {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Suspended") {
            c["status"] = json!("False");
            c["reason"] = json!("JobResumed");
            c["message"] = json!("Job resumed");
            c["lastTransitionTime"] = json!(now_s);
        }
        plan.writes
            .push(Write::Event("Normal", "Resumed", "Job resumed".into()));
    }
    if start.is_null() {
        start = json!(now_s);
    }
    status["startTime"] = start.clone();

    // Has it failed?
    let started = start
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    if fail_job.is_none() && failed + restarts > backoff_limit {
        fail_job = Some((
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into(),
        ));
    }
    if let Some(due) = spec["activeDeadlineSeconds"]
        .as_i64()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| started.checked_add_signed(d))
    {
        if fail_job.is_none() && now >= due {
            fail_job = Some((
                "DeadlineExceeded".into(),
                "Job was active longer than specified deadline".into(),
            ));
        } else if now < due {
            plan.next = (due - now).to_std().ok();
        }
    }
    let complete = match (indexed, completions) {
        (true, Some(c)) => done_indexes.len() as i64 >= c,
        (false, Some(c)) => succeeded_n >= c,
        // A work queue is done when one pod succeeded and the rest have stopped.
        (_, None) => succeeded_n > 0 && active.is_empty(),
    };
    let ending = if let Some((reason, msg)) = &fail_job {
        Some(("FailureTarget", "Failed", reason.clone(), msg.clone()))
    } else if complete {
        Some((
            "SuccessCriteriaMet",
            "Complete",
            "CompletionsReached".to_string(),
            "Reached expected number of succeeded pods".to_string(),
        ))
    } else {
        None
    };
    if let Some((interim, last, reason, msg)) = ending {
        if !has(old, interim) {
            conditions.push(condition(interim, &reason, &msg, &now_s));
        }
        if last == "Failed" {
            status["failed"] = json!(failed + active.len() as i64);
        }
        for p in &active {
            plan.writes.push(Write::DeletePod(
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
        if active.is_empty() && terminating == 0 {
            conditions.push(condition(last, &reason, &msg, &now_s));
            if last == "Complete" {
                status["completionTime"] = json!(now_s);
                plan.writes
                    .push(Write::Event("Normal", "Completed", "Job completed".into()));
            } else {
                plan.writes
                    .push(Write::Event("Warning", leak(&reason), msg.clone()));
            }
            if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                plan.next = Some(Duration::from_secs(ttl.max(0) as u64));
            }
        }
        status["conditions"] = json!(conditions);
        status_write(&mut plan, old, status);
        return plan;
    }

    // Make up the pods still wanted, after the backoff of the last failure.
    let wanted: Vec<Option<i64>> = if indexed {
        let running: BTreeSet<i64> = active.iter().filter_map(|p| index_of(p)).collect();
        let room = (parallelism - active.len() as i64).max(0) as usize;
        (0..completions.unwrap_or(0))
            .filter(|i| !done_indexes.contains(i) && !running.contains(i))
            .take(room)
            .map(Some)
            .collect()
    } else {
        let want = match completions {
            Some(c) => parallelism.min(c - succeeded_n),
            None if succeeded_n > 0 => 0,
            None => parallelism,
        };
        let n = (want - active.len() as i64).max(0);
        (0..n).map(|_| None).collect()
    };
    let excess = if indexed {
        0
    } else {
        let want = match completions {
            Some(c) => parallelism.min(c - succeeded_n),
            None => parallelism,
        };
        (active.len() as i64 - want.max(0)).max(0) as usize
    };
    let mut newest: Vec<&Pod> = active.clone();
    newest.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(to_utc)));
    for p in newest.iter().take(excess) {
        plan.writes.push(Write::DeletePod(
            p.metadata.name.clone().unwrap_or_default(),
        ));
    }
    if !wanted.is_empty() {
        let delay = if failed > 0 {
            let shift = (failed - 1).min(6) as u32;
            (BACKOFF * 2u32.pow(shift)).min(MAX_BACKOFF)
        } else {
            Duration::ZERO
        };
        let ready_at =
            last_failure.map(|t| t + chrono::Duration::from_std(delay).unwrap_or_default());
        match ready_at.filter(|t| *t > now) {
            Some(t) => {
                let wait = (t - now).to_std().unwrap_or_default();
                plan.next = Some(plan.next.map_or(wait, |n| n.min(wait)));
            }
            None => {
                for i in wanted {
                    plan.writes.push(Write::CreatePod(new_pod(job, i)));
                }
            }
        }
    }
    status["conditions"] = json!(conditions);
    status_write(&mut plan, old, status);
    plan
}

/// The reasons are a closed set; this maps one back to its `'static` spelling.
fn leak(reason: &str) -> &'static str {
    match reason {
        "BackoffLimitExceeded" => "BackoffLimitExceeded",
        "DeadlineExceeded" => "DeadlineExceeded",
        "PodFailurePolicy" => "PodFailurePolicy",
        _ => "Failed",
    }
}

/// Writes `status` if it differs from the stored one.
fn status_write(plan: &mut Plan, old: &Value, mut status: Value) {
    if status["conditions"].as_array().is_some_and(Vec::is_empty) {
        status.as_object_mut().map(|s| s.remove("conditions"));
    }
    for k in ["completionTime"] {
        if status[k].is_null() && !old[k].is_null() {
            status[k] = old[k].clone();
        }
    }
    let bare = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
        }
        v
    };
    if bare(&status) != bare(old) {
        plan.writes.push(Write::Status(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        let mut s = json!({"parallelism": 1, "completions": 1, "backoffLimit": 6, "completionMode": "NonIndexed",
            "template": {"metadata": {"labels": {"job-name": "pi"}}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "pi", "image": "busybox"}]}}});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        json!({"metadata": {"name": "pi", "namespace": "default", "uid": "u1"}, "spec": s, "status": {}})
    }

    fn pod(name: &str, phase: &str, exit: i32, finished: &str) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-12-01T10:00:00Z"},
            "status": {"phase": phase}});
        if phase == "Failed" || phase == "Succeeded" {
            p["status"]["containerStatuses"] = json!([{"name": "pi", "image": "busybox", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": exit, "finishedAt": finished}}}]);
        }
        serde_json::from_value(p).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn creates(p: &Plan) -> Vec<&Value> {
        p.writes
            .iter()
            .filter_map(|w| match w {
                Write::CreatePod(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    fn status(p: &Plan) -> &Value {
        p.writes
            .iter()
            .find_map(|w| match w {
                Write::Status(v) => Some(v),
                _ => None,
            })
            .expect("a status")
    }

    #[test]
    fn a_new_job_makes_parallelism_pods_up_to_its_completions() {
        let j = job(json!({"parallelism": 2, "completions": 5}));
        let p = plan(&j, &[], at("2026-12-01T10:00:00Z"));
        assert_eq!(creates(&p).len(), 2);
        let made = creates(&p)[0];
        assert_eq!(made["metadata"]["generateName"], "pi-");
        assert_eq!(made["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(status(&p)["startTime"], "2026-12-01T10:00:00Z");
        // Four done, one running: nothing more.
        let pods: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("s{i}"), "Succeeded", 0, "2026-12-01T10:01:00Z"))
            .chain([pod("r", "Running", 0, "")])
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:02:00Z"));
        assert!(creates(&p).is_empty());
        assert_eq!(status(&p)["succeeded"], 4);
        assert_eq!(status(&p)["active"], 1);
    }

    #[test]
    fn failures_wait_out_the_backoff_then_exceed_the_limit() {
        let j = job(json!({"backoffLimit": 1}));
        let one = [pod("f1", "Failed", 1, "2026-12-01T10:00:00Z")];
        let refs: Vec<&Pod> = one.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:00:04Z"));
        assert!(creates(&p).is_empty(), "within the 10 s backoff");
        assert_eq!(p.next, Some(Duration::from_secs(6)));
        let p = plan(&j, &refs, at("2026-12-01T10:00:11Z"));
        assert_eq!(creates(&p).len(), 1);
        let two = [
            pod("f1", "Failed", 1, "2026-12-01T10:00:00Z"),
            pod("f2", "Failed", 1, "2026-12-01T10:00:20Z"),
        ];
        let refs: Vec<&Pod> = two.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:00:21Z"));
        let st = status(&p);
        assert_eq!(st["failed"], 2);
        let types: Vec<&str> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["FailureTarget", "Failed"]);
        assert_eq!(st["conditions"][1]["reason"], "BackoffLimitExceeded");
        assert!(p.writes.contains(&Write::Event(
            "Warning",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into()
        )));
    }

    #[test]
    fn indexed_jobs_make_one_pod_per_missing_index() {
        let j = job(json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3}));
        let mut done = pod("pi-1-x", "Succeeded", 0, "2026-12-01T10:01:00Z");
        done.metadata.annotations = Some([(INDEX.to_string(), "1".to_string())].into());
        let refs = [&done];
        let p = plan(&j, &refs, at("2026-12-01T10:02:00Z"));
        let made = creates(&p);
        let idx: Vec<&Value> = made
            .iter()
            .map(|m| &m["metadata"]["annotations"][INDEX])
            .collect();
        assert_eq!(idx, [&json!("0"), &json!("2")]);
        assert_eq!(made[0]["spec"]["hostname"], "pi-0");
        assert_eq!(
            made[0]["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(status(&p)["completedIndexes"], "1");
        let mut set = BTreeSet::from([0, 1, 2, 4, 6, 7]);
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        set.clear();
        assert_eq!(format_indexes(&set), "");
    }

    #[test]
    fn completion_deadline_policy_and_ttl() {
        let j = job(json!({"completions": 1}));
        let ok = [pod("s", "Succeeded", 0, "2026-12-01T10:01:00Z")];
        let refs: Vec<&Pod> = ok.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:02:00Z"));
        assert_eq!(status(&p)["conditions"][1]["type"], "Complete");
        assert_eq!(status(&p)["completionTime"], "2026-12-01T10:02:00Z");

        let mut j = job(json!({"activeDeadlineSeconds": 30}));
        j["status"]["startTime"] = json!("2026-12-01T10:00:00Z");
        let running = [pod("r", "Running", 0, "")];
        let refs: Vec<&Pod> = running.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:00:10Z"));
        assert_eq!(p.next, Some(Duration::from_secs(20)));
        let p = plan(&j, &refs, at("2026-12-01T10:00:31Z"));
        assert!(p.writes.contains(&Write::DeletePod("r".into())));
        assert_eq!(status(&p)["conditions"][0]["reason"], "DeadlineExceeded");
        assert_eq!(
            status(&p)["conditions"].as_array().unwrap().len(),
            1,
            "Failed waits for the pod"
        );

        let j = job(json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}}));
        let ignored = [pod("i", "Failed", 3, "2026-12-01T10:00:00Z")];
        let refs: Vec<&Pod> = ignored.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:00:01Z"));
        assert_eq!(status(&p)["failed"], 0);
        assert_eq!(creates(&p).len(), 1, "an ignored failure has no backoff");
        let fatal = [pod("f", "Failed", 42, "2026-12-01T10:00:00Z")];
        let refs: Vec<&Pod> = fatal.iter().collect();
        let p = plan(&j, &refs, at("2026-12-01T10:00:01Z"));
        assert_eq!(status(&p)["conditions"][1]["reason"], "PodFailurePolicy");
        assert_eq!(
            status(&p)["conditions"][1]["message"],
            "Container pi for pod default/f failed with exit code 42 matching FailJob rule at index 1"
        );

        let mut j = job(json!({"ttlSecondsAfterFinished": 60}));
        j["status"] = json!({"completionTime": "2026-12-01T10:00:00Z", "conditions": [
            {"type": "Complete", "status": "True"}]});
        assert_eq!(
            plan(&j, &[], at("2026-12-01T10:00:30Z")).next,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            plan(&j, &[], at("2026-12-01T10:01:00Z")).writes,
            [Write::DeleteJob]
        );
    }
}
