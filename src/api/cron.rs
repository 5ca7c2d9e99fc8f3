//! CronJob schedules: the standard five-field cron syntax and descriptors, parsed with the
//! rules and error texts of robfig/cron v3's `ParseStandard`, which the API server validates
//! `spec.schedule` with and the CronJob controller schedules by. Written here rather than
//! taken from a crate because the crates (cron, croner, saffron) differ from robfig in what
//! they accept (seconds fields, `L`/`W`/`#`, year fields) or in their errors, and users read
//! those errors from `kubectl apply`.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// `@every <duration>`: a fixed period instead of fields.
    every: Option<Duration>,
}

/// A field's range and names.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// robfig's "star bit": the field was `*` or `?` (day-of-month and day-of-week then AND
/// instead of OR).
const STAR: u64 = 1 << 63;

fn bits(min: u32, max: u32, step: u32) -> u64 {
    (min..=max)
        .step_by(step as usize)
        .fold(0, |a, i| a | 1 << i)
}

fn number(expr: &str, b: &Bounds) -> Result<u32, String> {
    let lower = expr.to_ascii_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    match expr.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("negative number ({n}) not allowed: {expr}")),
        Ok(n) => u32::try_from(n).map_err(|_| format!("failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": value out of range")),
        Err(_) => Err(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": invalid syntax"
        )),
    }
}

/// One comma-separated part of a field: `*`, `?`, `n`, `a-b`, each optionally `/step`.
fn range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let (lowhigh, step) = match expr.split('/').collect::<Vec<_>>()[..] {
        [r] => (r, None),
        [r, s] => (r, Some(s)),
        _ => return Err(format!("too many slashes: {expr}")),
    };
    let parts: Vec<&str> = lowhigh.split('-').collect();
    let mut extra = 0;
    let (start, mut end) = if parts[0] == "*" || parts[0] == "?" {
        extra = STAR;
        (b.min, b.max)
    } else {
        let start = number(parts[0], b)?;
        match parts.len() {
            1 => (start, start),
            2 => (start, number(parts[1], b)?),
            _ => return Err(format!("too many hyphens: {expr}")),
        }
    };
    if parts[0] == "*" && parts.len() > 1 {
        return Err(format!("too many hyphens: {expr}"));
    }
    let step = match step {
        None => 1,
        Some(s) => {
            let n = number(s, b)?;
            // "n/step" means n through the maximum.
            if parts.len() == 1 && extra == 0 {
                end = b.max;
            }
            if n > 1 {
                extra = 0;
            }
            n
        }
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(bits(start, end, step) | extra)
}

fn field(expr: &str, b: &Bounds) -> Result<u64, String> {
    expr.split(',')
        .try_fold(0, |acc, part| Ok(acc | range(part, b)?))
}

/// Go's `time.ParseDuration` for the units a schedule uses (`@every 1h30m`).
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    // Go's durations end at about 2562047 hours (int64 nanoseconds).
    if !(0.0..=9.2e9).contains(&total) {
        return None;
    }
    Some(Duration::milliseconds((total * 1000.0) as i64))
}

impl Schedule {
    /// Parses `spec` as `cron.ParseStandard` does; the error is robfig's text.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty spec string".into());
        }
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            // The API server refuses these itself (timeZone is the field for it).
            return Err("provided bad location".into());
        }
        if let Some(d) = spec.strip_prefix('@') {
            let fields = |m: &str, h: &str, dom: &str, mon: &str, dow: &str| {
                Ok(Schedule {
                    minute: field(m, &MINUTES)?,
                    hour: field(h, &HOURS)?,
                    dom: field(dom, &DOM)?,
                    month: field(mon, &MONTHS)?,
                    dow: field(dow, &DOW)?,
                    every: None,
                })
            };
            return match d {
                "yearly" | "annually" => fields("0", "0", "1", "1", "*"),
                "monthly" => fields("0", "0", "1", "*", "*"),
                "weekly" => fields("0", "0", "*", "*", "0"),
                "daily" | "midnight" => fields("0", "0", "*", "*", "*"),
                "hourly" => fields("0", "*", "*", "*", "*"),
                _ => match d.strip_prefix("every ") {
                    Some(p) => match go_duration(p.trim()) {
                        Some(period) => Ok(Schedule {
                            minute: 0,
                            hour: 0,
                            dom: 0,
                            month: 0,
                            dow: 0,
                            // robfig rounds a period up to a whole second, at least one.
                            every: Some(period.max(Duration::seconds(1))),
                        }),
                        None => Err(format!(
                            "failed to parse duration {spec}: time: invalid duration \"{}\"",
                            p.trim()
                        )),
                    },
                    None => Err(format!("unrecognized descriptor: {spec}")),
                },
            };
        }
        let f: Vec<&str> = spec.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                f.len(),
                f.join(" ")
            ));
        }
        Ok(Schedule {
            minute: field(f[0], &MINUTES)?,
            hour: field(f[1], &HOURS)?,
            dom: field(f[2], &DOM)?,
            month: field(f[3], &MONTHS)?,
            dow: field(f[4], &DOW)?,
            every: None,
        })
    }

    /// The period of an `@every` schedule.
    pub fn period(&self) -> Option<Duration> {
        self.every
    }

    fn day_matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.dom & 1 << t.day() != 0;
        let dow = self.dow & 1 << t.weekday().num_days_from_sunday() != 0;
        // robfig: if either field is a star, both must match; else either.
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first activation strictly after `t` (UTC), or None if there is none within five
    /// years (`0 0 30 2 *`), as robfig gives up.
    pub fn next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(p) = self.every {
            let secs = p.num_seconds().max(1);
            let base = t.with_nanosecond(0)?;
            return base.checked_add_signed(Duration::try_seconds(secs)?);
        }
        let mut t = t.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let limit = t.year() + 5;
        while t.year() <= limit {
            if self.month & 1 << t.month() == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(t) {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                    .single()?
                    + Duration::days(1);
                continue;
            }
            if self.hour & 1 << t.hour() == 0 {
                t = t.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if self.minute & 1 << t.minute() == 0 {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fields_ranges_steps_and_names_schedule_as_cron_does() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // Saturday 2026-12-05 → Monday 09:00.
        assert_eq!(
            s.next(at("2026-12-05T10:00:00Z")),
            Some(at("2026-12-07T09:00:00Z"))
        );
        assert_eq!(
            s.next(at("2026-12-07T09:00:00Z")),
            Some(at("2026-12-07T09:15:00Z"))
        );
        assert_eq!(
            s.next(at("2026-12-07T17:45:30Z")),
            Some(at("2026-12-08T09:00:00Z"))
        );
        let every = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            every.next(at("2026-12-31T23:59:10Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        // Day of month OR day of week when neither is a star.
        let either = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(
            either.next(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-04T00:00:00Z"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next(at("2026-12-01T10:20:00Z")),
            Some(at("2026-12-01T11:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next(at("2026-01-01T00:00:00Z")),
            None
        );
        let e = Schedule::parse("@every 90s").unwrap();
        assert_eq!(
            e.next(at("2026-12-01T10:20:00Z")),
            Some(at("2026-12-01T10:21:30Z"))
        );
    }

    #[test]
    fn bad_schedules_get_robfigs_errors() {
        for (spec, want) in [
            ("* * *", "expected exactly 5 fields, found 3: [* * *]"),
            ("61 * * * *", "end of range (61) above maximum (59): 61"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            ("@often", "unrecognized descriptor: @often"),
            ("@every 3000000000h", "failed to parse duration @every 3000000000h: time: invalid duration \"3000000000h\""),
            ("", "empty spec string"),
        ] {
            assert_eq!(Schedule::parse(spec).unwrap_err(), want, "{spec}");
        }
    }
}
