//! Host patterns (`*.corp.example`) and the upstream policy built from them (`upstreams`:
//! `allow`, `deny`); matching hosts only, not resolving or contacting them.

use std::fmt;

use serde::Deserialize;

use super::error::HostPatternError;
use crate::oci::reference;

/// One `upstreams.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// `configured`: the hosts of `registries` entries and `defaultNs`.
    Configured,
    /// A host pattern; with `private_addresses` its hosts may be on loopback, private,
    /// link-local and similar addresses.
    Host {
        /// The pattern.
        pattern: HostPattern,
        /// `privateAddresses: true`.
        private_addresses: bool,
    },
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Written {
            host: HostPattern,
            #[serde(default)]
            private_addresses: bool,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AllowRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a host pattern, `configured`, or {host: PATTERN, privateAddresses: true}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                if s == "configured" {
                    return Ok(AllowRule::Configured);
                }
                HostPattern::parse(s)
                    .map(|pattern| AllowRule::Host {
                        pattern,
                        private_addresses: false,
                    })
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let w = Written::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(AllowRule::Host {
                    pattern: w.host,
                    private_addresses: w.private_addresses,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A host pattern (`quay.io`, `*.corp.example`, `127.0.0.*`): a host name or address
/// without port, lower-cased; `*` matches any run of characters, dots included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(String);

impl HostPattern {
    /// Validates a pattern; a `host:port` form is refused (patterns match hosts, not ports).
    pub fn parse(s: &str) -> Result<Self, HostPatternError> {
        let p = s.trim().to_ascii_lowercase();
        let p = p
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(&p)
            .to_owned();
        if p.is_empty() || p.len() > reference::MAX_HOST_LEN {
            return Err(HostPatternError::Invalid(s.to_owned()));
        }
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*' | b':'))
        {
            return Err(HostPatternError::Characters(s.to_owned()));
        }
        if p.matches(':').count() == 1 {
            return Err(HostPatternError::Port(s.to_owned()));
        }
        Ok(HostPattern(p))
    }

    /// Whether `host` (lower-case, without port or brackets) matches.
    pub fn matches(&self, host: &str) -> bool {
        glob(self.0.as_bytes(), host.as_bytes())
    }

    /// The pattern as written (lower-cased).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::file::checked_str(d, "a host pattern", HostPattern::parse)
    }
}

/// `*`-only glob, linear in practice (the classic backtrack-to-last-star walk).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// The upstream policy after validation (`upstreams`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// `upstreams.allow` (default: `*`).
    pub allow: Vec<AllowRule>,
    /// `upstreams.deny`.
    pub deny: Vec<HostPattern>,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            allow: vec![AllowRule::Host {
                pattern: HostPattern("*".into()),
                private_addresses: false,
            }],
            deny: Vec::new(),
        }
    }
}
