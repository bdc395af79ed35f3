//! Go-style durations as Ociregistry's config writes them: `90s`, `6h`, `1h30m`, `500ms`.
//!
//! Hand-written on purpose: the accepted forms are Ociregistry's (Go's units plus `d`, bare
//! milliseconds), which no maintained crate reads exactly, and the parser is proptested.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (examples: 30s, 15m, 6h, 1h30m)")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

/// Parses a sequence of `<number><unit>` with units ns, us, ms, s, m, h, and `d` for days
/// (a convenience Go lacks). Fractions (`1.5h`) are allowed; a bare `0` means zero.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.chars().take(40).collect(),
        why,
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(err("unknown unit (use ns, us, ms, s, m, h or d)")),
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    if !total.is_finite() || total > 100.0 * 365.0 * 86400.0 {
        return Err(err("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way [`parse`] reads it, for help and status output.
pub fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_forms() {
        assert_eq!(parse("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["", "6", "h", "6x", "1h30", "-1h", "abc", "1e9h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(
            parse("6x")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
    }

    #[test]
    fn round_trip_format() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(
            parse(&format(Duration::from_secs(3723))).unwrap(),
            Duration::from_secs(3723)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(s in ".{0,30}") { let _ = parse(&s); }
    }
}
