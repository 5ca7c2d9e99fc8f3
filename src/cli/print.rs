//! Printing as kubectl prints: aligned tables, ages, the pod STATUS column.

use k8s_openapi::api::core::v1::Pod;

pub fn age(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    crate::api::time::age(t, chrono::Utc::now())
}

/// The STATUS column, by kubectl's rules.
pub fn status_column(p: &Pod) -> String {
    let st = p.status.clone().unwrap_or_default();
    let mut reason = st
        .reason
        .clone()
        .or(st.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let inits = st.init_container_statuses.clone().unwrap_or_default();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let s = c.state.clone().unwrap_or_default();
        if let Some(t) = &s.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = format!(
                "Init:{}",
                t.reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code))
            );
        } else if let Some(w) = s.waiting.as_ref().filter(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| !r.is_empty() && r != "PodInitializing")
        }) {
            reason = format!("Init:{}", w.reason.clone().unwrap_or_default());
        } else {
            reason = format!("Init:{i}/{}", inits.len());
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in st.container_statuses.iter().flatten().rev() {
            let s = c.state.clone().unwrap_or_default();
            if let Some(r) = s
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = r;
            } else if let Some(t) = &s.terminated {
                reason = t
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
            } else if c.ready && s.running.is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if p.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".into();
    }
    reason
}

pub fn table(rows: &[Vec<String>]) {
    let mut w = vec![0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:w$}", w = w[i])
                }
            })
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}
