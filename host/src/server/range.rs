//! The `Range` request header for blobs: one `bytes=` range, answered with 206.
//!
//! Hand-written on purpose: the registry answers a single range only (what clients resuming
//! a layer send), a few lines that are proptested, where a general multi-range parser would
//! add cases the server must then refuse.

/// What to send for a blob of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole blob, 200.
    Full,
    /// Bytes `start..end` (end exclusive), 206.
    Partial {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value. Syntax we do not serve (several ranges, other units,
/// garbage) yields the whole blob, as RFC 9110 allows.
pub fn answer(header: Option<&str>, total: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') || spec.len() > 64 {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if total == 0 => {
                let _ = n;
                RangeAnswer::Unsatisfiable
            }
            Some(n) => RangeAnswer::Partial {
                start: total.saturating_sub(n),
                end: total,
            },
            None => RangeAnswer::Full,
        },
        // bytes=a-
        (false, true) => match num(a) {
            Some(start) if start < total => RangeAnswer::Partial { start, end: total },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        // bytes=a-b
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= total {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Partial {
                        start,
                        end: last.saturating_add(1).min(total),
                    }
                }
            }
            _ => RangeAnswer::Full,
        },
        (true, true) => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        use RangeAnswer::*;
        assert_eq!(answer(None, 10), Full);
        assert_eq!(answer(Some("bytes=2-4"), 10), Partial { start: 2, end: 5 });
        assert_eq!(answer(Some("bytes=5-"), 10), Partial { start: 5, end: 10 });
        assert_eq!(answer(Some("bytes=-3"), 10), Partial { start: 7, end: 10 });
        assert_eq!(answer(Some("bytes=-30"), 10), Partial { start: 0, end: 10 });
        assert_eq!(
            answer(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 10 }
        );
        assert_eq!(answer(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=10-12"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=4-2"), 10), Full);
        assert_eq!(answer(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(answer(Some("items=0-1"), 10), Full);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        #[test]
        fn partial_is_always_inside(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", total in 0u64..5000) {
            if let RangeAnswer::Partial { start, end } = answer(Some(&h), total) {
                prop_assert!(start < end && end <= total);
            }
        }
    }
}
