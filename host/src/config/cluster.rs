//! The `cluster:` section (beyond Ociregistry): how replicas sharing a bucket reach each
//! other for the one-upstream-fetch-per-blob lease (this replica's advertised pull URL, the
//! peer endpoint's bearer token, the lease's lifetime). Its keys as written, checked and
//! resolved into plain [`ClusterSettings`]; it opens no connection.

use std::fmt;
use std::time::Duration;

use ociregistry_plugin_api::Secret;
use serde::Deserialize;

use super::ConfigError;
use super::error::{Rejected, Source};
use super::file::{ConfigDuration, SecretString};
use super::position::Step::Key;

/// How long a fetch lease lives unless renewed, when `cluster.leaseTtl` is not given.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Shortest `cluster.leaseTtl`.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(5);
/// Longest `cluster.leaseTtl`.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(600);
/// Shortest `cluster.token`.
pub const MIN_TOKEN_LEN: usize = 16;

/// `cluster` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// How peers reach this replica's pull port: `http://10.0.0.5:8080` or `10.0.0.5:8080`.
    pub advertise: Option<String>,
    /// The same, from this environment variable.
    pub advertise_from_env: Option<String>,
    /// Bearer token of the peer endpoint (shared by every replica).
    pub token: Option<SecretString>,
    /// The token, from this environment variable.
    pub token_from_env: Option<String>,
    /// How long a fetch lease lives unless renewed (default 30s, 5s..10m).
    pub lease_ttl: Option<ConfigDuration>,
}

/// `cluster`, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This replica's pull URL as peers reach it: `scheme://host[:port]`, no path.
    pub advertise: String,
    /// The peer endpoint's bearer token (never shown by `Debug`).
    pub token: Secret,
    /// Lifetime of a fetch lease; renewed every third of it.
    pub lease_ttl: Duration,
}

impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("advertise", &self.advertise)
            .field("token", &"<redacted>")
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl ClusterSettings {
    /// Checks `cluster` (`has_s3`: `storage.s3` is set; the lease lives in the bucket).
    pub(crate) fn resolve(
        src: Source<'_>,
        cluster: Option<&ClusterConfig>,
        has_s3: bool,
    ) -> Result<Option<ClusterSettings>, ConfigError> {
        let Some(c) = cluster else {
            return Ok(None);
        };
        if !has_s3 {
            return Err(src.invalid(
                "cluster",
                &[Key("cluster")],
                "needs storage.s3: the replicas coordinate through the bucket they share",
            ));
        }
        let invalid = |key: &str, message: String| {
            src.invalid(
                format!("cluster.{key}"),
                &[Key("cluster"), Key(key)],
                message,
            )
        };
        let from_env = |key: &str, var: &str| match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            _ => Err(invalid(
                key,
                format!("environment variable {var} is not set or empty"),
            )),
        };
        let (advertise, advertise_key) = match (&c.advertise, &c.advertise_from_env) {
            (Some(_), Some(_)) => {
                return Err(src.invalid(
                    "cluster",
                    &[Key("cluster")],
                    "use either advertise or advertiseFromEnv, not both",
                ));
            }
            (Some(a), None) => (a.clone(), "advertise"),
            (None, Some(var)) => (from_env("advertiseFromEnv", var)?, "advertiseFromEnv"),
            (None, None) => {
                return Err(src.invalid(
                    "cluster",
                    &[Key("cluster")],
                    "needs advertise or advertiseFromEnv (how the other replicas reach this one)",
                ));
            }
        };
        let advertise = check_advertise(&advertise).map_err(|m| invalid(advertise_key, m.0))?;
        let (token, token_key) = match (&c.token, &c.token_from_env) {
            (Some(_), Some(_)) => {
                return Err(src.invalid(
                    "cluster",
                    &[Key("cluster")],
                    "use either token or tokenFromEnv, not both",
                ));
            }
            (Some(t), None) => (t.to_secret(), "token"),
            (None, Some(var)) => (Secret::new(from_env("tokenFromEnv", var)?), "tokenFromEnv"),
            (None, None) => {
                return Err(src.invalid(
                    "cluster",
                    &[Key("cluster")],
                    "needs token or tokenFromEnv (the peer endpoint's bearer token)",
                ));
            }
        };
        if token.expose().len() < MIN_TOKEN_LEN {
            return Err(invalid(
                token_key,
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        let lease_ttl = c.lease_ttl.map(|d| d.0).unwrap_or(DEFAULT_LEASE_TTL);
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
            return Err(invalid("leaseTtl", "must be between 5s and 10m".to_owned()));
        }
        Ok(Some(ClusterSettings {
            advertise,
            token,
            lease_ttl,
        }))
    }
}

/// `http(s)://host[:port]` or `host[:port]` (read as `http://`), no path, query or user:
/// the base URL peers reach this replica's pull port at.
fn check_advertise(raw: &str) -> Result<String, Rejected> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme)
        .map_err(|e| Rejected(format!("{raw:?} is not a URL or host[:port] ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Rejected(format!(
            "{raw:?}: the scheme must be http or https"
        )));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(Rejected(format!("{raw:?} names no host")));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Rejected(format!("{raw:?}: no user or password here")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(Rejected(format!(
            "{raw:?}: scheme://host[:port] only (no path or query)"
        )));
    }
    Ok(match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}
