//! Merging the file with the command-line flags into [`Settings`], and the rules that span
//! several keys.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ociregistry_plugin_api::Secret;

use super::*;
use crate::oci::reference;

/// The default plugin directory: `plugins/` next to the binary when it exists (an installed
/// layout), else the binary's own directory (where `cargo build` puts the bundled plugins).
pub fn default_plugin_dir() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let beside = exe_dir.join("plugins");
    if beside.is_dir() { beside } else { exe_dir }
}

/// Merges file and flags into settings and validates cross-key rules.
pub fn resolve(
    file: Option<(FileConfig, String, PathBuf)>,
    o: Overrides,
) -> Result<Settings, ConfigError> {
    let (cfg, text, path) = match file {
        Some((cfg, text, path)) => (cfg, text, path),
        None => (
            FileConfig::default(),
            String::new(),
            PathBuf::from("<none>"),
        ),
    };
    let invalid = |key: String, line: Option<usize>, message: String| ConfigError::Invalid {
        path: path.clone(),
        key,
        line,
        message,
    };
    let mut seen = HashSet::new();
    let mut registries = Vec::new();
    for (i, r) in cfg.registries.iter().enumerate() {
        let line = line_of_entry(&text, &r.name.0);
        let key = |k: &str| format!("registries[{i}]{k}");
        // Requests name docker.io's aliases as `docker.io`: so must the settings.
        let name = crate::oci::registry::canonical_name(&r.name.0).to_owned();
        if !seen.insert(name.clone()) {
            return Err(invalid(
                key(".name"),
                line,
                format!("{} is listed twice", r.name.0),
            ));
        }
        let tls = r.tls.clone().unwrap_or_default();
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(invalid(
                key(".tls"),
                line,
                "cert and key must be given together".into(),
            ));
        }
        if r.scheme == Scheme::Http && r.name.0.ends_with(":443") {
            return Err(invalid(
                key(".name"),
                line,
                "port 443 means https here (quay.io:443 is quay.io); use scheme: https or another port".into(),
            ));
        }
        if r.scheme == Scheme::Http && r.tls.is_some() {
            return Err(invalid(
                key(".tls"),
                line,
                "tls settings need scheme: https".into(),
            ));
        }
        let credential = credential_of(r.auth.as_ref())
            .map_err(|(k, message)| invalid(key(&format!(".auth{k}")), line, message))?;
        registries.push(Registry {
            name,
            scheme: r.scheme,
            credential,
            tls,
            tag_ttl: r.tag_ttl.map(|d| d.0),
            redirect_hosts: r.redirect_hosts.clone(),
            realms: r
                .auth
                .as_ref()
                .map(|a| a.realms.clone())
                .unwrap_or_default(),
        });
    }
    let default_ns = match o.default_ns {
        Some(ns) => reference::parse_host(&ns)
            .map_err(|e| invalid("--default-ns".into(), None, e.to_string()))?,
        None => cfg
            .default_ns
            .map(|h| h.0)
            .unwrap_or_else(|| DEFAULT_NS.to_owned()),
    };
    let pull_timeout = o
        .pull_timeout
        .or(cfg.pull_timeout.map(|d| d.0))
        .unwrap_or(DEFAULT_PULL_TIMEOUT);
    if pull_timeout.is_zero() {
        return Err(invalid(
            "pullTimeout".into(),
            None,
            "must be more than zero".into(),
        ));
    }
    let max_manifest_size = match cfg.max_manifest_size {
        None => DEFAULT_MAX_MANIFEST_SIZE,
        Some(n) if (1024..=64 * 1024 * 1024).contains(&n) => n as usize,
        Some(_) => {
            return Err(invalid(
                "maxManifestSize".into(),
                None,
                "must be between 1024 and 67108864 bytes".into(),
            ));
        }
    };
    let max_connections = match cfg.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(0) => {
            return Err(invalid(
                "maxConnections".into(),
                None,
                "must be at least 1".into(),
            ));
        }
        Some(n) => n,
    };
    let preload = PreloadSettings {
        platforms: crate::preload::platform::Platform::from_config(
            cfg.os.as_deref(),
            cfg.arch.as_deref(),
        )
        .map_err(|(key, message)| invalid(key.into(), None, message))?
        .into_iter()
        .collect(),
        preload_images: cfg.preload_images,
        image_file: cfg.image_file,
    };
    let inventory = crate::inventory::config::InventorySettings::resolve(
        &path,
        cfg.prune_config.as_ref(),
        cfg.max_size,
        cfg.prune_grace,
        cfg.admin.as_ref(),
        o.admin_address.as_deref(),
    )?;
    let server_tls = match &cfg.server_tls_config {
        None => None,
        Some(t) => {
            let mut tls = ServerTls {
                cert: t.cert.0.clone(),
                key: t.key.0.clone(),
                ca: t.ca.as_ref().map(|f| f.0.clone()),
                client_auth: t.client_auth,
                built: None,
            };
            // Read and check the PEM files now, once: a bad one is a config error with its
            // line; the pull port and the admin API use the acceptor built here.
            match crate::server::tls::acceptor(&tls) {
                Ok(a) => tls.built = Some(crate::server::tls::BuiltAcceptor(a)),
                Err(e) => {
                    return Err(invalid(
                        format!("serverTlsConfig.{}", e.key),
                        line_of_nested_key(&text, "serverTlsConfig", e.key),
                        e.detail(),
                    ));
                }
            }
            Some(tls)
        }
    };
    let shutdown_grace = o
        .shutdown_grace
        .or(cfg.shutdown_grace.map(|d| d.0))
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let max_connections_per_client = match cfg.max_connections_per_client {
        None => DEFAULT_MAX_CONNECTIONS_PER_CLIENT.min(max_connections),
        Some(0) => {
            return Err(invalid(
                "maxConnectionsPerClient".into(),
                None,
                "must be at least 1".into(),
            ));
        }
        Some(n) => n,
    };
    let upstream_policy = match cfg.upstreams {
        None => UpstreamPolicy::default(),
        Some(u) => {
            let allow = u.allow.unwrap_or_else(|| UpstreamPolicy::default().allow);
            if allow.is_empty() {
                return Err(invalid(
                    "upstreams.allow".into(),
                    line_of_nested_key(&text, "upstreams", "allow"),
                    "is empty: no upstream could be contacted (leave it out for the default [\"*\"], or write [configured])".into(),
                ));
            }
            UpstreamPolicy {
                allow,
                deny: u.deny,
            }
        }
    };
    let at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
        None => Ok(default),
        Some(0) => Err(invalid(
            key.into(),
            line_of_top_key(&text, key),
            "must be at least 1".into(),
        )),
        Some(n) => Ok(n),
    };
    let max_fetches = at_least_one(
        "maxUpstreamFetches",
        cfg.max_upstream_fetches,
        DEFAULT_MAX_UPSTREAM_FETCHES,
    )?;
    let fetch_limits = FetchLimits {
        max_blob_size: cfg.max_blob_size.map_or(DEFAULT_MAX_BLOB_SIZE, |b| b.0),
        max_fetches,
        max_fetches_per_registry: at_least_one(
            "maxUpstreamFetchesPerRegistry",
            cfg.max_upstream_fetches_per_registry,
            DEFAULT_MAX_UPSTREAM_FETCHES_PER_REGISTRY.min(max_fetches),
        )?,
        wait: cfg
            .upstream_fetch_wait
            .map_or(DEFAULT_UPSTREAM_FETCH_WAIT, |d| d.0),
    };
    let positive = |key: &str, d: Option<ConfigDuration>, default: Duration| match d {
        None => Ok(default),
        Some(d) if d.0.is_zero() => Err(invalid(
            key.into(),
            line_of_key(&text, key),
            "must be more than zero".into(),
        )),
        Some(d) => Ok(d.0),
    };
    let header_timeout = positive("headerTimeout", cfg.header_timeout, DEFAULT_HEADER_TIMEOUT)?;
    let idle_timeout = positive("idleTimeout", cfg.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
    Ok(Settings {
        preload,
        inventory,
        server_tls,
        shutdown_grace,
        tag_ttl: cfg.tag_ttl.map(|d| d.0),
        revalidate_timeout: cfg
            .revalidate_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_REVALIDATE_TIMEOUT)
            .min(pull_timeout),
        max_manifest_size,
        max_connections,
        max_connections_per_client,
        metrics_port: o.metrics.or(cfg.metrics),
        health_port: o.health.or(cfg.health),
        image_path: o
            .image_path
            .or(cfg.image_path)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_PATH)),
        port: o.port.or(cfg.port).unwrap_or(DEFAULT_PORT),
        host: o
            .host
            .or(cfg.host)
            .unwrap_or_else(|| DEFAULT_HOST.to_owned()),
        plugin_dir: o
            .plugin_dir
            .or(cfg.plugin_dir)
            .unwrap_or_else(default_plugin_dir),
        default_ns,
        air_gapped: o.air_gapped || cfg.air_gapped.unwrap_or(false),
        always_pull_latest: o.always_pull_latest || cfg.always_pull_latest.unwrap_or(false),
        pull_timeout,
        registries,
        log_level: cfg.log_level,
        // An empty `logFile` (Ociregistry's default) means stderr.
        log_file: o
            .log_file
            .or(cfg.log_file)
            .filter(|p| !p.as_os_str().is_empty()),
        upstream_policy,
        fetch_limits,
        header_timeout,
        idle_timeout,
    })
}

/// The 1-based line on which top-level `key:` is written, if it is.
fn line_of_top_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

/// Validates one `auth` block; errors carry the sub-key.
fn credential_of(auth: Option<&AuthConfig>) -> Result<CredentialConfig, (String, String)> {
    let Some(a) = auth else {
        return Ok(CredentialConfig::None);
    };
    let err = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
    if let Some(t) = &a.token {
        if a.user.is_some() || a.password.is_some() || a.password_from_env.is_some() {
            return err(".token", "use either token or user/password, not both");
        }
        return match (&t.provider, &t.static_token) {
            (Some(_), Some(_)) => err(".token", "use either provider or static, not both"),
            (None, None) => err(".token", "needs provider or static"),
            (None, Some(s)) => {
                if t.provider_opts.is_some() || t.expiry.is_some() || t.timeout.is_some() {
                    return err(".token", "providerOpts, expiry and timeout need a provider");
                }
                Ok(CredentialConfig::Static(s.to_secret()))
            }
            (Some(p), None) => {
                let every = t.expiry.map(|d| d.0).unwrap_or(DEFAULT_TOKEN_EXPIRY);
                if every < Duration::from_secs(1) {
                    return err(".token.expiry", "must be at least 1s");
                }
                if p.trim().is_empty() {
                    return err(".token.provider", "is empty");
                }
                let timeout = t.timeout.map(|d| d.0).unwrap_or(DEFAULT_PROVIDER_TIMEOUT);
                if timeout.is_zero() {
                    return err(".token.timeout", "must be more than zero");
                }
                Ok(CredentialConfig::Provider {
                    provider: p.trim().to_owned(),
                    opts: t.provider_opts.clone().unwrap_or_default(),
                    every,
                    timeout,
                })
            }
        };
    }
    let password = match (&a.password, &a.password_from_env) {
        (Some(_), Some(_)) => return err("", "use either password or passwordFromEnv, not both"),
        (Some(p), None) => Some(p.to_secret()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) => Some(Secret::new(v)),
            Err(_) => {
                return Err((
                    ".passwordFromEnv".into(),
                    format!("environment variable {var} is not set"),
                ));
            }
        },
        (None, None) => None,
    };
    match (&a.user, password) {
        (Some(user), Some(password)) => Ok(CredentialConfig::Basic {
            user: user.clone(),
            password,
        }),
        (None, None) => Ok(CredentialConfig::None),
        (Some(_), None) => err("", "user needs password or passwordFromEnv"),
        (None, Some(_)) => err("", "password needs user"),
    }
}

/// The 1-based line of `key:` inside the top-level block `parent:` (or of `parent:` itself when
/// the block is written inline), for messages about values checked after parsing.
fn line_of_nested_key(text: &str, parent: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("{parent}:")))?;
    let nested = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.starts_with([' ', '\t']) || l.starts_with('#'))
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| start + 1 + i + 1);
    nested.or(Some(start + 1))
}

/// The 1-based line of the top-level `key:`, for messages about values checked after parsing.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

/// The 1-based line of the `name: <registry>` key of a registries entry, for messages about
/// rules that span several keys.
fn line_of_entry(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('-').trim_start();
            l.strip_prefix("name:")
                .map(|v| {
                    v.trim()
                        .trim_matches(|c| c == '"' || c == '\'')
                        .eq_ignore_ascii_case(name)
                })
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}
