//! Settings of the inventory features: `pruneConfig` (Ociregistry's keys), `maxSize` and
//! `pruneGrace` (beyond Ociregistry), and `admin` (the admin API), read from the config file
//! and checked here; plain values (the inventory turns a [`PruneSelect`] into its criteria).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ociregistry_plugin_api::Secret;
use serde::Deserialize;

use super::error::{SizeError, Source};
use super::position::Step::Key;
use crate::config::{ConfigDuration, ConfigError, SecretString};

/// Default grace period (`pruneGrace`): see the module docs of [`crate::inventory`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Default `pruneConfig.frequency`.
pub const DEFAULT_PRUNE_FREQUENCY: Duration = Duration::from_secs(86_400);
/// Largest compiled `pruneConfig.expr` (the same limit the inventory compiles it with).
pub const PRUNE_PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// `pruneConfig.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneType {
    /// Images not pulled for `duration`.
    Accessed,
    /// Images first fetched more than `duration` ago.
    Created,
    /// Images whose reference matches `expr`.
    Pattern,
}

/// `pruneConfig` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PruneConfig {
    /// Run background pruning.
    #[serde(default)]
    pub enabled: bool,
    /// Age for `type: accessed|created` (`30d`).
    pub duration: Option<ConfigDuration>,
    /// What selects an image.
    #[serde(rename = "type")]
    pub kind: Option<PruneType>,
    /// Regex for `type: pattern`.
    pub expr: Option<String>,
    /// How often to run (default 1d).
    pub frequency: Option<ConfigDuration>,
    /// Most images removed per run; negative or absent: no limit.
    pub count: Option<i64>,
    /// Only log what would go.
    #[serde(default)]
    pub dry_run: bool,
}

/// `admin` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// `127.0.0.1:9090`: where the admin API listens (off when absent).
    pub address: Option<String>,
    /// Bearer token required on every admin request.
    pub token: Option<SecretString>,
    /// The token, from this environment variable.
    pub token_from_env: Option<String>,
}

/// A size in bytes: a number, or `500MB`, `50GiB`, `1.5T` (k/M/G/T decimal, Ki/Mi/Gi/Ti
/// binary; a trailing `B` is optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses the forms above.
    pub fn parse(s: &str) -> Result<ByteSize, SizeError> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| SizeError::Number(s.to_owned()))?;
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit.strip_suffix('b').unwrap_or(&unit);
        let mult: f64 = match unit {
            "" => 1.0,
            "k" => 1e3,
            "m" => 1e6,
            "g" => 1e9,
            "t" => 1e12,
            "ki" => 1024.0,
            "mi" => 1024.0 * 1024.0,
            "gi" => 1024.0 * 1024.0 * 1024.0,
            "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => {
                return Err(SizeError::Unit(s.to_owned()));
            }
        };
        let bytes = value * mult;
        if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
            return Err(SizeError::Range(s.to_owned()));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 500MB or 50GiB, or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                if v == 0 {
                    return Err(E::custom("a size must be more than zero"));
                }
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a size cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                ByteSize::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// What a scheduled prune selects (`pruneConfig.type` with its `duration` or `expr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneSelect {
    /// Images last pulled (or, never pulled, created) longer ago than this.
    AccessedBefore(Duration),
    /// Images first fetched longer ago than this.
    CreatedBefore(Duration),
    /// Images whose reference matches this regex (checked to compile).
    Pattern(String),
}

/// Background pruning, validated.
#[derive(Debug, Clone)]
pub struct PruneSchedule {
    /// What selects an image.
    pub spec: PruneSelect,
    /// How often.
    pub frequency: Duration,
    /// Most images per run.
    pub count: Option<usize>,
    /// Only log.
    pub dry_run: bool,
}

/// The admin API, validated.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where it listens.
    pub address: SocketAddr,
    /// The bearer token, when one is required.
    pub token: Option<Secret>,
}

/// What the inventory features run with.
#[derive(Debug, Clone)]
pub struct InventorySettings {
    /// Background pruning, when enabled.
    pub prune: Option<PruneSchedule>,
    /// Evict least-recently-pulled images above this many bytes.
    pub max_size: Option<u64>,
    /// See [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// The admin API, when on.
    pub admin: Option<AdminSettings>,
}

impl Default for InventorySettings {
    fn default() -> Self {
        InventorySettings {
            prune: None,
            max_size: None,
            grace: DEFAULT_GRACE,
            admin: None,
        }
    }
}

impl InventorySettings {
    /// Validates the file's keys; `admin_address` is the `--admin-address` flag, which beats
    /// the file.
    pub(crate) fn resolve(
        src: Source<'_>,
        prune: Option<&PruneConfig>,
        max_size: Option<ByteSize>,
        grace: Option<ConfigDuration>,
        admin: Option<&AdminConfig>,
        admin_address: Option<&str>,
    ) -> Result<InventorySettings, ConfigError> {
        let prune = match prune {
            Some(p) if p.enabled => Some(schedule(src, p)?),
            // Off: Ociregistry configs often carry a partial block; only its keys are checked.
            _ => None,
        };
        Ok(InventorySettings {
            prune,
            max_size: max_size.map(|b| b.0),
            grace: grace.map(|d| d.0).unwrap_or(DEFAULT_GRACE),
            admin: admin_settings(src, admin, admin_address)?,
        })
    }
}

fn schedule(src: Source<'_>, p: &PruneConfig) -> Result<PruneSchedule, ConfigError> {
    let kind = p.kind.ok_or_else(|| {
        src.invalid(
            "pruneConfig.type",
            &[Key("pruneConfig"), Key("type")],
            "is required: accessed, created or pattern",
        )
    })?;
    let age = || {
        p.duration
            .map(|d| d.0)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                src.invalid(
                    "pruneConfig.duration",
                    &[Key("pruneConfig"), Key("duration")],
                    "is required (more than zero) for type accessed or created, e.g. 30d",
                )
            })
    };
    let spec = match kind {
        PruneType::Accessed => PruneSelect::AccessedBefore(age()?),
        PruneType::Created => PruneSelect::CreatedBefore(age()?),
        PruneType::Pattern => {
            let expr = p.expr.clone().filter(|e| !e.is_empty()).ok_or_else(|| {
                src.invalid(
                    "pruneConfig.expr",
                    &[Key("pruneConfig"), Key("expr")],
                    "is required for type pattern",
                )
            })?;
            // Checked with the same limit each scheduled run compiles it with.
            regex::RegexBuilder::new(&expr)
                .size_limit(PRUNE_PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    src.invalid(
                        "pruneConfig.expr",
                        &[Key("pruneConfig"), Key("expr")],
                        format!("invalid pattern: {e}"),
                    )
                })?;
            PruneSelect::Pattern(expr)
        }
    };
    let frequency = p.frequency.map(|d| d.0).unwrap_or(DEFAULT_PRUNE_FREQUENCY);
    if frequency < Duration::from_secs(1) {
        return Err(src.invalid(
            "pruneConfig.frequency",
            &[Key("pruneConfig"), Key("frequency")],
            "must be at least 1s",
        ));
    }
    Ok(PruneSchedule {
        spec,
        frequency,
        count: p
            .count
            .and_then(|c| usize::try_from(c).ok())
            .filter(|c| *c > 0),
        dry_run: p.dry_run,
    })
}

fn admin_settings(
    src: Source<'_>,
    admin: Option<&AdminConfig>,
    flag: Option<&str>,
) -> Result<Option<AdminSettings>, ConfigError> {
    let address = flag.or(admin.and_then(|a| a.address.as_deref()));
    // An address from the flag is not on any line of the file.
    let address_at: &[super::position::Step<'_>] = match flag {
        Some(_) => &[],
        None => &[Key("admin"), Key("address")],
    };
    let token = match admin {
        Some(a) => match (&a.token, &a.token_from_env) {
            (Some(_), Some(_)) => {
                return Err(src.invalid(
                    "admin",
                    &[Key("admin")],
                    "use either token or tokenFromEnv, not both",
                ));
            }
            (Some(t), None) => Some(t.to_secret()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    return Err(src.invalid(
                        "admin.tokenFromEnv",
                        &[Key("admin"), Key("tokenFromEnv")],
                        format!("environment variable {var} is not set or empty"),
                    ));
                }
            },
            (None, None) => None,
        },
        None => None,
    };
    if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        return Err(src.invalid(
            "admin.token",
            &[Key("admin"), Key("token")],
            "must be at least 16 characters",
        ));
    }
    let Some(address) = address else {
        return Ok(None);
    };
    let address: SocketAddr = address.parse().map_err(|_| {
        src.invalid(
            "admin.address",
            address_at,
            format!("{address:?} is not IP:PORT (e.g. 127.0.0.1:9090)"),
        )
    })?;
    if token.is_none() && !address.ip().is_loopback() {
        return Err(src.invalid(
            "admin.address",
            address_at,
            format!(
                "{address} is reachable from other machines and no admin token is set: \
                 listen on a loopback address (127.0.0.1) or set admin.token / admin.tokenFromEnv"
            ),
        ));
    }
    Ok(Some(AdminSettings { address, token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source<'static> {
        Source {
            path: std::path::Path::new("c.yaml"),
            text: "",
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("50GiB"), Ok(ByteSize(50 << 30)));
        assert_eq!(ByteSize::parse("500MB"), Ok(ByteSize(500_000_000)));
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize(1024)));
        assert_eq!(ByteSize::parse("1.5Ki"), Ok(ByteSize(1536)));
        for bad in ["", "MB", "5XB", "0", "-1"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
    }

    fn admin(address: &str, token: Option<&str>) -> Result<Option<AdminSettings>, ConfigError> {
        let cfg: AdminConfig = serde_yaml_ng::from_str(&match token {
            Some(t) => format!("address: {address}\ntoken: {t}\n"),
            None => format!("address: {address}\n"),
        })
        .unwrap();
        admin_settings(src(), Some(&cfg), None)
    }

    #[test]
    fn admin_needs_loopback_or_token() {
        assert!(admin("127.0.0.1:9000", None).unwrap().is_some());
        let e = admin("0.0.0.0:9000", None).unwrap_err().to_string();
        assert!(e.contains("loopback") && e.contains("admin.address"), "{e}");
        let ok = admin("0.0.0.0:9000", Some("0123456789abcdef0123")).unwrap();
        assert!(ok.unwrap().token.is_some());
        assert!(admin("0.0.0.0:9000", Some("short")).is_err());
        assert!(admin("localhost", None).is_err());
    }

    #[test]
    fn prune_config_is_checked() {
        let p = |y: &str| {
            let cfg: PruneConfig = serde_yaml_ng::from_str(y).unwrap();
            schedule(src(), &cfg)
        };
        let s = p("enabled: true\ntype: accessed\nduration: 30d\ncount: -1\n").unwrap();
        assert_eq!(s.count, None);
        assert!(p("type: accessed\n").is_err());
        assert!(p("type: pattern\nexpr: '('\n").is_err());
        assert!(
            p("type: pattern\nexpr: '^docker.io/'\ncount: 5\n")
                .unwrap()
                .count
                == Some(5)
        );
        assert!(serde_yaml_ng::from_str::<PruneConfig>("typo: 1\n").is_err());
    }
}
