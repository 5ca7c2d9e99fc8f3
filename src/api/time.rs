//! Times as the API writes them. k8s-openapi 0.29 carries `jiff` timestamps; the node keeps
//! `chrono` ones, so the conversions live here, with kubectl's duration format.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A chrono instant as an API `Time`.
pub fn time(t: DateTime<Utc>) -> Time {
    let nanos = i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos());
    Time(Timestamp::from_nanosecond(nanos).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// An API `Time` as a chrono instant.
pub fn chrono(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// RFC 3339 with whole seconds, as the API server writes `creationTimestamp`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 2822, as `kubectl describe` prints times.
pub fn rfc2822(t: &Time) -> String {
    chrono(t).to_rfc2822()
}

/// apimachinery's `duration.HumanDuration`: the AGE column of every table.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => {
            if s % 60 == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{}s", s % 60)
            }
        }
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => {
            if m % 60 == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{}m", m % 60)
            }
        }
        s if s < 48 * 3600 => format!("{h}h"),
        s if s < 8 * 86400 => {
            if h % 24 == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{}h", h % 24)
            }
        }
        s if s < 2 * 365 * 86400 => format!("{d}d"),
        s if s < 8 * 365 * 86400 => {
            let y = d / 365;
            if d % 365 == 0 {
                format!("{y}y")
            } else {
                format!("{y}y{}d", d % 365)
            }
        }
        _ => format!("{}y", d / 365),
    }
}

/// The age of a timestamp as a table cell; `<unknown>` when absent.
pub fn age(t: Option<&Time>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => human_duration((now - chrono(t)).num_seconds()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_apimachinery() {
        let cases = [
            (-5, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 7, "3h7m"),
            (10 * 3600, "10h"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (800 * 86400, "2y70d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s} s");
        }
    }

    #[test]
    fn times_round_trip_through_jiff() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T20:10:55.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(chrono(&time(t)), t);
        assert_eq!(rfc3339(t), "2026-11-30T20:10:55Z");
    }
}
