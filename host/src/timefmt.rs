//! Timestamps: Unix seconds on disk, RFC 3339 (UTC) for people and JSON. The calendar
//! (valid dates, days since the epoch) is `jiff`'s; this module owns only which forms are
//! read and written (what a `prune` cut-off means is `crate::inventory::criteria`'s).

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::Offset;

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

/// `2024-05-01T12:00:00Z` (a time past `jiff`'s range, late in the year 9999, as its
/// end, 9999-12-30T22:00:00Z).
pub fn format_rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::MAX);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reads `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (a space may stand for `T`);
/// a date that does not exist (2024-02-31) or before 1970 is `None`.
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
    if parts.next().is_some() || y < 1970 {
        return None;
    }
    let date = Date::new(
        i16::try_from(y).ok()?,
        i8::try_from(m).ok()?,
        i8::try_from(d).ok()?,
    )
    .ok()?;
    let mut secs = Offset::UTC
        .to_timestamp(date.to_datetime(Time::midnight()))
        .ok()?
        .as_second();
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
    }

    #[test]
    fn dates_that_do_not_exist_are_rejected() {
        for bad in [
            "2024-02-31",
            "2024-02-30T00:00:00Z",
            "2023-02-29",
            "2024-04-31",
            "2024-00-10",
            "2024-01-00",
            "1969-12-31",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_rfc3339("2024-02-29"), Some(1_709_164_800), "leap day");
        assert_eq!(
            format_rfc3339(u64::MAX),
            "9999-12-30T22:00:00Z",
            "past the calendar's range"
        );
    }
}
