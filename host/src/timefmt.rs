//! Timestamps: Unix seconds on disk, RFC 3339 (UTC) for people and JSON, and the cut-off
//! arguments of `prune` (`30d` ago, or an RFC 3339 time).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds.
pub fn now() -> u64 {
    unix_secs(SystemTime::now())
}

/// `t` in Unix seconds (a time before 1970 as 0).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` as `2024-05-01T12:00:00Z` (a time before 1970 as 1970-01-01T00:00:00Z).
pub fn format_system_time(t: SystemTime) -> String {
    format_rfc3339(unix_secs(t))
}

/// `2024-05-01T12:00:00Z`.
pub fn format_rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Reads `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (a space may stand for `T`).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let mut secs = days_from_civil(y, m as u32, d as u32) * 86400;
    if let Some(t) = time {
        let (clock, offset) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else {
            let i = t.rfind(['+', '-'])?;
            let (c, off) = t.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off[1..].split_once(':')?;
            (c, sign * (num(oh)? * 3600 + num(om)? * 60))
        };
        let clock = clock.split('.').next()?;
        let mut hms = clock.split(':');
        let (h, mi, se) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
        if hms.next().is_some() || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se - offset;
    }
    u64::try_from(secs).ok()
}

/// A `prune` cut-off: a duration (`30d`, `12h`) meaning that long before `now`, or an
/// RFC 3339 time.
pub fn parse_cutoff(s: &str, now: u64) -> Result<u64, String> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    match crate::duration::parse(s) {
        Ok(d) => Ok(now.saturating_sub(d.as_secs())),
        Err(_) => Err(cutoff_error(s)),
    }
}

/// The error for a `prune` cut-off that is neither form, naming both.
pub fn cutoff_error(s: &str) -> String {
    format!("{s:?} is neither a duration (30d, 12h, 90m) nor a timestamp (2024-05-01T00:00:00Z)")
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_times() {
        assert_eq!(format_system_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_system_time(UNIX_EPOCH + std::time::Duration::from_secs(1_798_761_600)),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            format_system_time(UNIX_EPOCH - std::time::Duration::from_secs(5)),
            "1970-01-01T00:00:00Z",
            "before 1970 reads as the epoch"
        );
    }

    #[test]
    fn round_trips() {
        for secs in [
            0u64,
            951_782_400,
            1_700_000_000,
            1_709_208_000,
            4_102_444_800,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs), "{secs}");
        }
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn offsets_dates_and_cutoffs() {
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("2023-11-14"), Some(1_699_920_000));
        for bad in ["", "2023-13-01", "2023-11-14T25:00:00Z", "30d", "yesterday"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_cutoff("1d", 100_000), Ok(100_000 - 86_400));
        assert_eq!(parse_cutoff("2023-11-14", 5), Ok(1_699_920_000));
        assert!(parse_cutoff("soon", 5).is_err());
    }
}
