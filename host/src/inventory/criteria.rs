//! Which images a prune selects: a regex on the reference, a last-pulled cut-off and a
//! created cut-off; every criterion given must hold.

use std::time::Duration;

use super::scan::Image;
use crate::timefmt;

/// A criterion that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CriteriaError {
    /// A cut-off that is neither form; the message names both.
    #[error("{0:?} is neither a duration (30d, 12h, 90m) nor a timestamp (2024-05-01T00:00:00Z)")]
    Cutoff(String),
    /// The pattern is not a regular expression (or too large a one).
    #[error("invalid pattern: {0}")]
    Pattern(#[from] regex::Error),
}

/// A point in time given as an age (`30d`: that long before the run) or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// That long before now.
    Age(Duration),
    /// Unix seconds.
    At(u64),
}

impl Cutoff {
    /// Reads `30d`, `12h` or an RFC 3339 time.
    pub fn parse(s: &str) -> Result<Cutoff, CriteriaError> {
        if let Some(t) = timefmt::parse_rfc3339(s) {
            return Ok(Cutoff::At(t));
        }
        crate::duration::parse(s)
            .map(Cutoff::Age)
            .map_err(|_| CriteriaError::Cutoff(s.to_owned()))
    }

    /// The instant, for a run at `now`.
    pub fn instant(self, now: u64) -> u64 {
        match self {
            Cutoff::Age(d) => now.saturating_sub(d.as_secs()),
            Cutoff::At(t) => t,
        }
    }
}

/// Criteria as given (by flags, the admin API or `pruneConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriteriaSpec {
    /// Regex searched in the image reference (`registry/repository:tag` or `...@digest`).
    pub pattern: Option<String>,
    /// Last pulled (or, never pulled, created) before this.
    pub accessed_before: Option<Cutoff>,
    /// First fetched before this.
    pub created_before: Option<Cutoff>,
}

impl CriteriaSpec {
    /// No criterion at all (prune refuses that rather than removing everything).
    pub fn is_empty(&self) -> bool {
        self.pattern.is_none() && self.accessed_before.is_none() && self.created_before.is_none()
    }

    /// Compiles the regex and fixes the cut-offs for a run at `now`.
    pub fn compile(&self, now: u64) -> Result<Criteria, CriteriaError> {
        let pattern = match &self.pattern {
            Some(p) => Some(regex::RegexBuilder::new(p).size_limit(1 << 20).build()?),
            None => None,
        };
        Ok(Criteria {
            pattern,
            accessed_before: self.accessed_before.map(|c| c.instant(now)),
            created_before: self.created_before.map(|c| c.instant(now)),
        })
    }
}

impl From<crate::config::inventory::PruneSelect> for CriteriaSpec {
    /// What `pruneConfig` selects, as criteria.
    fn from(select: crate::config::inventory::PruneSelect) -> CriteriaSpec {
        use crate::config::inventory::PruneSelect;
        match select {
            PruneSelect::AccessedBefore(age) => CriteriaSpec {
                accessed_before: Some(Cutoff::Age(age)),
                ..CriteriaSpec::default()
            },
            PruneSelect::CreatedBefore(age) => CriteriaSpec {
                created_before: Some(Cutoff::Age(age)),
                ..CriteriaSpec::default()
            },
            PruneSelect::Pattern(p) => CriteriaSpec {
                pattern: Some(p),
                ..CriteriaSpec::default()
            },
        }
    }
}

/// Compiled criteria.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    pattern: Option<regex::Regex>,
    accessed_before: Option<u64>,
    created_before: Option<u64>,
}

impl Criteria {
    /// Only a pattern (for `list --pattern`).
    pub fn pattern(p: Option<&str>) -> Result<Criteria, CriteriaError> {
        CriteriaSpec {
            pattern: p.map(str::to_owned),
            ..CriteriaSpec::default()
        }
        .compile(0)
    }

    /// Whether `img` is selected.
    pub fn matches(&self, img: &Image) -> bool {
        self.pattern
            .as_ref()
            .is_none_or(|re| re.is_match(&img.reference()))
            && self.accessed_before.is_none_or(|t| img.last_used() < t)
            && self.created_before.is_none_or(|t| img.created < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs() {
        assert_eq!(
            Cutoff::parse("2d"),
            Ok(Cutoff::Age(Duration::from_secs(172_800)))
        );
        assert_eq!(
            Cutoff::parse("2023-11-14T22:13:20Z"),
            Ok(Cutoff::At(1_700_000_000))
        );
        assert_eq!(Cutoff::Age(Duration::from_secs(10)).instant(100), 90);
        let e = Cutoff::parse("2024-02-31").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"2024-02-31\" is neither a duration (30d, 12h, 90m) nor a timestamp (2024-05-01T00:00:00Z)"
        );
    }

    #[test]
    fn bad_pattern_is_an_error() {
        let e = Criteria::pattern(Some("(")).unwrap_err();
        assert!(matches!(e, CriteriaError::Pattern(_)), "{e}");
        assert!(e.to_string().starts_with("invalid pattern: "), "{e}");
        assert!(Criteria::pattern(None).is_ok());
    }
}
