//! The CronJob controller's plan: from a CronJob and the Jobs it owns, the Job to start (named
//! `<cronjob>-<minutes since the epoch>` as upstream names them, so a schedule is never run
//! twice), the Jobs to delete (`Replace`, and the history limits), the status
//! (`active`, `lastScheduleTime`, `lastSuccessfulTime`) and when to look next. Schedules are
//! read in UTC (`spec.timeZone` may only say so: knode carries no time zone database).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::api::cron::Schedule;
use crate::api::time::rfc3339;

/// The annotation upstream puts on each Job with the time it was scheduled for.
pub const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

#[derive(Debug, PartialEq)]
pub enum Write {
    CreateJob(Value),
    /// A Job to delete (its pods with it: background propagation).
    DeleteJob(String),
    Status(Value),
    Event(&'static str, &'static str, String),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// The next scheduled time from now.
    pub next: Option<Duration>,
}

fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn condition(job: &Value, kind: &str) -> Option<DateTime<Utc>> {
    let c = job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")?;
    time_of(&c["lastTransitionTime"]).or_else(|| time_of(&job["status"]["completionTime"]))
}

fn name(v: &Value) -> String {
    v["metadata"]["name"].as_str().unwrap_or("").to_string()
}

/// The most recent scheduled time in `(since, now]`, and how many were missed.
fn most_recent(
    s: &Schedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, u32) {
    // A CronJob stopped for long catches up only its last slot; so look back a week at most.
    let mut t = since.max(now - chrono::Duration::days(7));
    // A fixed period: the last slot by arithmetic, not by walking every one.
    if let Some(p) = s.period().filter(|p| p.num_seconds() > 0) {
        let n = (now - t).num_seconds() / p.num_seconds();
        if n <= 0 {
            return (None, 0);
        }
        let last = t.checked_add_signed(
            chrono::Duration::try_seconds(n * p.num_seconds()).unwrap_or_default(),
        );
        return (last, u32::try_from(n).unwrap_or(u32::MAX));
    }
    let mut last = None;
    let mut missed = 0;
    while let Some(n) = s.next(t).filter(|n| *n <= now) {
        last = Some(n);
        missed += 1;
        t = n;
    }
    (last, missed)
}

/// The Job for the slot `at`.
pub fn new_job(cj: &Value, at: DateTime<Utc>) -> Value {
    let cj_name = name(cj);
    let t = &cj["spec"]["jobTemplate"];
    let mut meta = json!({
        "name": format!("{cj_name}-{}", at.timestamp() / 60),
        "namespace": cj["metadata"]["namespace"],
        "labels": t["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
        "annotations": t["metadata"]["annotations"].as_object().cloned().unwrap_or_default(),
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cj_name,
            "uid": cj["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
    });
    meta["annotations"][SCHEDULED] = json!(rfc3339(at));
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": t["spec"]})
}

/// The writes for `cj`, given the Jobs it owns.
pub fn plan(cj: &Value, jobs: &[&Value], now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    if !cj["metadata"]["deletionTimestamp"].is_null() {
        return plan;
    }
    let spec = &cj["spec"];
    let old = &cj["status"];
    let Ok(schedule) = Schedule::parse(spec["schedule"].as_str().unwrap_or("")) else {
        return plan;
    };
    let finished =
        |j: &&Value| condition(j, "Complete").is_some() || condition(j, "Failed").is_some();
    let mut running: Vec<&Value> = jobs
        .iter()
        .copied()
        .filter(|j| !finished(j) && j["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let mut status = json!({});
    let mut last_success = time_of(&old["lastSuccessfulTime"]);
    for j in jobs {
        if let Some(t) = condition(j, "Complete") {
            last_success = last_success.max(Some(t));
        }
    }

    // The slot due now, if any.
    let since = time_of(&old["lastScheduleTime"])
        .or_else(|| time_of(&cj["metadata"]["creationTimestamp"]))
        .unwrap_or(now);
    let mut last_schedule = time_of(&old["lastScheduleTime"]);
    if spec["suspend"] != true {
        let (due, missed) = most_recent(&schedule, since, now);
        if missed > 100 {
            plan.writes.push(Write::Event(
                "Warning",
                "TooManyMissedTimes",
                format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
            ));
        }
        let too_late = |t: DateTime<Utc>| {
            spec["startingDeadlineSeconds"]
                .as_i64()
                .and_then(chrono::Duration::try_seconds)
                .is_some_and(|d| now - t > d)
        };
        if let Some(t) = due {
            let job = new_job(cj, t);
            let job_name = name(&job);
            let exists = jobs.iter().any(|j| name(j) == job_name);
            if too_late(t) {
                plan.writes.push(Write::Event(
                    "Warning",
                    "MissSchedule",
                    format!("Missed scheduled time to start a job: {}", rfc3339(t)),
                ));
                last_schedule = Some(t);
            } else if exists {
                last_schedule = Some(t);
            } else if spec["concurrencyPolicy"] == "Forbid" && !running.is_empty() {
                plan.writes.push(Write::Event(
                    "Normal",
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                ));
            } else {
                if spec["concurrencyPolicy"] == "Replace" {
                    for j in running.drain(..) {
                        plan.writes.push(Write::DeleteJob(name(j)));
                        plan.writes.push(Write::Event(
                            "Normal",
                            "SuccessfulDelete",
                            format!("Deleted job {}", name(j)),
                        ));
                    }
                }
                // Its SuccessfulCreate event is the loop's, once the Job is made.
                plan.writes.push(Write::CreateJob(job));
                last_schedule = Some(t);
            }
        }
        plan.next = schedule
            .next(now)
            .and_then(|n| (n - now).to_std().ok())
            .map(|d| d + Duration::from_millis(200));
    }

    // Active Jobs (including one being created now) and the time fields.
    let mut active: Vec<Value> = running
        .iter()
        .map(|j| {
            json!({"kind": "Job", "namespace": j["metadata"]["namespace"], "name": name(j),
            "uid": j["metadata"]["uid"], "apiVersion": "batch/v1",
            "resourceVersion": j["metadata"]["resourceVersion"]})
        })
        .collect();
    for w in &plan.writes {
        if let Write::CreateJob(j) = w {
            active.push(
                json!({"kind": "Job", "namespace": j["metadata"]["namespace"],
                "name": name(j), "apiVersion": "batch/v1"}),
            );
        }
    }
    // None running: `null` removes the list (a merge patch keeps what it does not name).
    status["active"] = if active.is_empty() {
        Value::Null
    } else {
        json!(active)
    };
    if let Some(t) = last_schedule {
        status["lastScheduleTime"] = json!(rfc3339(t));
    }
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(rfc3339(t));
    }

    // History limits: the oldest finished Jobs beyond them go.
    for (kind, limit) in [
        (
            "Complete",
            spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3),
        ),
        (
            "Failed",
            spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1),
        ),
    ] {
        let mut done: Vec<(DateTime<Utc>, String)> = jobs
            .iter()
            .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|j| Some((condition(j, kind)?, name(j))))
            .collect();
        done.sort();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for (_, n) in done.into_iter().take(extra) {
            plan.writes.push(Write::DeleteJob(n.clone()));
            plan.writes.push(Write::Event(
                "Normal",
                "SuccessfulDelete",
                format!("Deleted job {n}"),
            ));
        }
    }
    // Tidy keys to compare with what is stored.
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
        }
        for a in v["active"].as_array_mut().into_iter().flatten() {
            if let Some(o) = a.as_object_mut() {
                o.retain(|k, _| k == "name");
            }
        }
        v
    };
    if strip(&status) != strip(old) {
        plan.writes.push(Write::Status(status));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cj(policy: &str) -> Value {
        json!({"metadata": {"name": "hello", "namespace": "default", "uid": "c1",
            "creationTimestamp": "2026-12-01T10:00:30Z"},
            "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": policy, "suspend": false,
                "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1,
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "hello", "image": "busybox"}]}}}}},
            "status": {}})
    }

    fn job(name: &str, done: Option<&str>) -> Value {
        let mut j =
            json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "status": {}});
        if let Some(t) = done {
            j["status"]["conditions"] =
                json!([{"type": "Complete", "status": "True", "lastTransitionTime": t}]);
        }
        j
    }

    #[test]
    fn each_slot_starts_one_job_named_for_its_minute() {
        let c = cj("Allow");
        let p = plan(&c, &[], at("2026-12-01T10:00:50Z"));
        assert!(
            !p.writes.iter().any(|w| matches!(w, Write::CreateJob(_))),
            "no slot yet"
        );
        assert_eq!(p.next, Some(Duration::from_millis(10_200)));
        let p = plan(&c, &[], at("2026-12-01T10:01:00Z"));
        let Some(Write::CreateJob(j)) = p.writes.iter().find(|w| matches!(w, Write::CreateJob(_)))
        else {
            panic!("{:?}", p.writes)
        };
        let minutes = at("2026-12-01T10:01:00Z").timestamp() / 60;
        assert_eq!(j["metadata"]["name"], format!("hello-{minutes}"));
        assert_eq!(
            j["metadata"]["annotations"][SCHEDULED],
            "2026-12-01T10:01:00Z"
        );
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        // Already made: only the status.
        let made = job(&format!("hello-{minutes}"), None);
        let p = plan(&c, &[&made], at("2026-12-01T10:01:01Z"));
        assert!(!p.writes.iter().any(|w| matches!(w, Write::CreateJob(_))));
    }

    #[test]
    fn forbid_waits_replace_deletes_and_history_is_trimmed() {
        let running = job("hello-1", None);
        let p = plan(&cj("Forbid"), &[&running], at("2026-12-01T10:01:00Z"));
        assert!(!p.writes.iter().any(|w| matches!(w, Write::CreateJob(_))));
        let p = plan(&cj("Replace"), &[&running], at("2026-12-01T10:01:00Z"));
        assert!(p.writes.contains(&Write::DeleteJob("hello-1".into())));
        assert!(p.writes.iter().any(|w| matches!(w, Write::CreateJob(_))));
        let a = job("hello-a", Some("2026-12-01T10:00:40Z"));
        let b = job("hello-b", Some("2026-12-01T10:00:45Z"));
        let mut c = cj("Allow");
        c["spec"]["suspend"] = json!(true);
        let p = plan(&c, &[&a, &b], at("2026-12-01T10:05:00Z"));
        assert!(p.writes.contains(&Write::DeleteJob("hello-a".into())));
        assert!(!p.writes.contains(&Write::DeleteJob("hello-b".into())));
        assert!(
            !p.writes.iter().any(|w| matches!(w, Write::CreateJob(_))),
            "suspended"
        );
    }

    #[test]
    fn a_fixed_period_finds_its_last_slot_without_walking_and_an_empty_active_list_is_cleared() {
        let s = Schedule::parse("@every 1s").unwrap();
        let since = at("2026-11-01T00:00:00Z");
        let (last, missed) = most_recent(&s, since, at("2026-12-01T00:00:00Z"));
        assert_eq!(last, Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(missed, 7 * 24 * 3600);
        let mut c = cj("Allow");
        c["spec"]["suspend"] = json!(true);
        c["status"] = json!({"active": [{"name": "hello-1"}]});
        let p = plan(&c, &[], at("2026-12-01T10:05:00Z"));
        let Some(Write::Status(st)) = p.writes.iter().find(|w| matches!(w, Write::Status(_)))
        else {
            panic!("{:?}", p.writes)
        };
        assert!(st["active"].is_null() && st.get("active").is_some());
    }
}
