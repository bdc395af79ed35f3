//! Merging the file with the command-line flags into [`Settings`], section by section
//! (registries, upstream policy and limits, server, preload, inventory, storage), and the rules that
//! span several keys. Errors name the key and the line the parser marks for it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ociregistry_plugin_api::Secret;

use super::error::Source;
use super::inventory::InventorySettings;
use super::position::{
    Step::{Index, Key},
    first_line_of,
};
use super::*;
use crate::oci::platform::Platform;
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
    let src = Source {
        path: &path,
        text: &text,
    };
    let registries = registries(src, &cfg.registries)?;
    let default_ns = default_ns(src, o.default_ns, cfg.default_ns.clone())?;
    let pull_timeout = pull_timeout(src, o.pull_timeout, cfg.pull_timeout)?;
    let max_manifest_size = max_manifest_size(src, cfg.max_manifest_size)?;
    let max_connections = at_least_one(
        src,
        "maxConnections",
        cfg.max_connections,
        DEFAULT_MAX_CONNECTIONS,
    )?;
    let preload = preload(src, &cfg)?;
    let inventory = InventorySettings::resolve(
        src,
        cfg.prune_config.as_ref(),
        cfg.max_size,
        cfg.prune_grace,
        cfg.admin.as_ref(),
        o.admin_address.as_deref(),
    )?;
    let server_tls = cfg
        .server_tls_config
        .as_ref()
        .map(|t| ServerTls::read(t, src))
        .transpose()?;
    let max_connections_per_client = at_least_one(
        src,
        "maxConnectionsPerClient",
        cfg.max_connections_per_client,
        DEFAULT_MAX_CONNECTIONS_PER_CLIENT.min(max_connections),
    )?;
    let upstream_policy = upstream_policy(src, cfg.upstreams.clone())?;
    let fetch_limits = fetch_limits(src, &cfg)?;
    let header_timeout = positive(
        src,
        "headerTimeout",
        cfg.header_timeout,
        DEFAULT_HEADER_TIMEOUT,
    )?;
    let idle_timeout = positive(src, "idleTimeout", cfg.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
    let image_path = o
        .image_path
        .or(cfg.image_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_PATH));
    let storage = StorageSettings::resolve(src, cfg.storage.as_ref(), &image_path)?;
    let cluster = super::cluster::ClusterSettings::resolve(
        src,
        cfg.cluster.as_ref(),
        matches!(storage.backend, super::storage::Backend::S3(_)),
    )?;
    Ok(Settings {
        preload,
        inventory,
        server_tls,
        shutdown_grace: o
            .shutdown_grace
            .or(cfg.shutdown_grace.map(|d| d.0))
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
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
        image_path,
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
        hello_world: cfg.hello_world.unwrap_or(true),
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
        storage,
        cluster,
    })
}

/// `registries`: each entry validated, names canonical and listed once.
fn registries(src: Source<'_>, entries: &[RegistryConfig]) -> Result<Vec<Registry>, ConfigError> {
    let mut seen = HashSet::new();
    let mut registries = Vec::new();
    for (i, r) in entries.iter().enumerate() {
        let registry = registry(src, i, r)?;
        if !seen.insert(registry.name.clone()) {
            return Err(entry_error(
                src,
                i,
                ".name",
                format!("{} is listed twice", r.name.0),
            ));
        }
        registries.push(registry);
    }
    // An alias names one registry: never another entry's name or alias, nor a public
    // registry's name.
    let names: HashSet<&str> = registries.iter().map(|r| r.name.as_str()).collect();
    let mut aliases = HashSet::new();
    for (i, r) in registries.iter().enumerate() {
        for (j, a) in r.aliases.iter().enumerate() {
            let clash = if names.contains(a.as_str()) {
                Some(format!("{a} is the name of a registries entry"))
            } else if PUBLIC_REGISTRIES.contains(&a.as_str()) {
                Some(format!("{a} is a public registry's name"))
            } else if !aliases.insert(a.as_str()) {
                Some(format!("{a} is an alias of another entry too"))
            } else {
                None
            };
            if let Some(message) = clash {
                return Err(src.invalid(
                    format!("registries[{i}].aliases[{j}]"),
                    &[Key("registries"), Index(i), Key("aliases"), Index(j)],
                    message,
                ));
            }
        }
    }
    Ok(registries)
}

/// An alias: one path component (`corp`) or a host name without a port
/// (`registry.corp.example`), lower case.
fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.split(['.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `endpoints[j].url`: `http(s)://host[:port]`, nothing else (no user info: credentials
/// belong under `auth`, where they are kept secret).
fn endpoint_url(raw: &str) -> Result<(String, Scheme), String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("scheme {other} is not http or https")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user info; use the endpoint's auth".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return Err("must be scheme://host[:port] only (no path, query or fragment)".into());
    }
    let Some(host) = url.host_str() else {
        return Err("has no host".into());
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    reference::parse_host(&authority).map_err(|e| e.to_string())?;
    Ok((
        format!("{scheme}://{}", authority.to_ascii_lowercase()),
        scheme,
    ))
}

/// A rule on `registries[i]` broken at `key` (`.tls`), reported at the entry's `name` line.
fn entry_error(src: Source<'_>, i: usize, key: &str, message: String) -> ConfigError {
    src.invalid(
        format!("registries[{i}]{key}"),
        &[Key("registries"), Index(i), Key("name")],
        message,
    )
}

/// One `registries[]` entry.
fn registry(src: Source<'_>, i: usize, r: &RegistryConfig) -> Result<Registry, ConfigError> {
    let invalid = |key: &str, message: &str| Err(entry_error(src, i, key, message.into()));
    let tls = r.tls.clone().unwrap_or_default();
    if tls.cert.is_some() != tls.key.is_some() {
        return invalid(".tls", "cert and key must be given together");
    }
    if r.scheme == Scheme::Http && r.name.0.ends_with(":443") {
        return invalid(
            ".name",
            "port 443 means https here (quay.io:443 is quay.io); use scheme: https or another port",
        );
    }
    if r.scheme == Scheme::Http && r.tls.is_some() {
        return invalid(".tls", "tls settings need scheme: https");
    }
    let credential = credential_of(src, i, "", r.auth.as_ref())?;
    let mut endpoints = Vec::new();
    for (j, e) in r.endpoints.iter().enumerate() {
        let at = |k: &str| format!("registries[{i}].endpoints[{j}]{k}");
        let (url, scheme) = endpoint_url(&e.url).map_err(|m| {
            src.invalid(
                at(""),
                &[Key("registries"), Index(i), Key("endpoints"), Index(j)],
                m,
            )
        })?;
        if endpoints.iter().any(|x: &Endpoint| x.url == url) {
            return Err(src.invalid(
                at(""),
                &[Key("registries"), Index(i), Key("endpoints"), Index(j)],
                format!("{url} is listed twice"),
            ));
        }
        let tls = match &e.tls {
            Some(t) => t.clone(),
            None if scheme == Scheme::Https => tls.clone(),
            None => TlsConfig::default(),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return invalid(
                &format!(".endpoints[{j}].tls"),
                "cert and key must be given together",
            );
        }
        if scheme == Scheme::Http && e.tls.is_some() {
            return invalid(
                &format!(".endpoints[{j}].tls"),
                "tls settings need an https URL",
            );
        }
        let credential = match &e.auth {
            None => credential.clone(),
            Some(a) => {
                if a.token.as_ref().is_some_and(|t| t.provider.is_some()) {
                    return invalid(
                        &format!(".endpoints[{j}].auth.token.provider"),
                        "a provider credential belongs to the registries entry (its auth), not to one endpoint",
                    );
                }
                credential_of(src, i, &format!(".endpoints[{j}]"), Some(a))?
            }
        };
        endpoints.push(Endpoint {
            url,
            scheme,
            credential,
            tls,
        });
    }
    let mut aliases: Vec<String> = Vec::new();
    for (j, a) in r.aliases.iter().enumerate() {
        let a = a.trim().to_ascii_lowercase();
        if !valid_alias(&a) {
            return Err(src.invalid(
                format!("registries[{i}].aliases[{j}]"),
                &[Key("registries"), Index(i), Key("aliases"), Index(j)],
                format!("{a:?} is not a usable alias: lower-case letters, digits and . _ - (no port, no slash)"),
            ));
        }
        if !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    let revalidate_floor = r.rate_limit.as_ref().and_then(|l| l.revalidate_floor);
    let mut breaker = BreakerSettings::default();
    if let Some(b) = &r.breaker {
        if let Some(d) = b.cool_down {
            breaker.cool_down = d.0;
        }
        if let Some(d) = b.max_cool_down {
            breaker.max_cool_down = d.0;
        } else {
            breaker.max_cool_down = breaker.max_cool_down.max(breaker.cool_down);
        }
        if breaker.cool_down.is_zero() {
            return invalid(".breaker.coolDown", "must be more than zero");
        }
        if breaker.max_cool_down < breaker.cool_down {
            return invalid(".breaker.maxCoolDown", "must not be shorter than coolDown");
        }
    }
    Ok(Registry {
        // Requests name docker.io's aliases as `docker.io`: so must the settings.
        name: crate::oci::registry::canonical_name(&r.name.0).to_owned(),
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
        endpoints,
        aliases,
        revalidate_floor,
        breaker,
    })
}

/// `--default-ns` beats `defaultNs` beats docker.io.
fn default_ns(
    src: Source<'_>,
    flag: Option<String>,
    file: Option<HostName>,
) -> Result<String, ConfigError> {
    match flag {
        Some(ns) => reference::parse_host(&ns).map_err(|e| src.invalid("--default-ns", &[], e)),
        None => Ok(file.map(|h| h.0).unwrap_or_else(|| DEFAULT_NS.to_owned())),
    }
}

/// `--pull-timeout` beats `pullTimeout`; never zero.
fn pull_timeout(
    src: Source<'_>,
    flag: Option<Duration>,
    file: Option<ConfigDuration>,
) -> Result<Duration, ConfigError> {
    let at: &[_] = if flag.is_some() {
        &[]
    } else {
        &[Key("pullTimeout")]
    };
    let timeout = flag.or(file.map(|d| d.0)).unwrap_or(DEFAULT_PULL_TIMEOUT);
    if timeout.is_zero() {
        return Err(src.invalid("pullTimeout", at, "must be more than zero"));
    }
    Ok(timeout)
}

/// `maxManifestSize`: between 1 KiB and 64 MiB.
fn max_manifest_size(src: Source<'_>, size: Option<u64>) -> Result<usize, ConfigError> {
    match size {
        None => Ok(DEFAULT_MAX_MANIFEST_SIZE),
        Some(n) if (1024..=64 * 1024 * 1024).contains(&n) => Ok(n as usize),
        Some(_) => Err(src.invalid(
            "maxManifestSize",
            &[Key("maxManifestSize")],
            "must be between 1024 and 67108864 bytes",
        )),
    }
}

/// A top-level count that must be at least 1.
fn at_least_one(
    src: Source<'_>,
    key: &str,
    value: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(src.invalid(key, &[Key(key)], "must be at least 1")),
        Some(n) => Ok(n),
    }
}

/// A top-level duration that must be more than zero.
fn positive(
    src: Source<'_>,
    key: &str,
    value: Option<ConfigDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(d) if d.0.is_zero() => Err(src.invalid(key, &[Key(key)], "must be more than zero")),
        Some(d) => Ok(d.0),
    }
}

/// `preloadImages`, `imageFile`, `os` and `arch`.
fn preload(src: Source<'_>, cfg: &FileConfig) -> Result<PreloadSettings, ConfigError> {
    let platform = Platform::from_config(cfg.os.as_deref(), cfg.arch.as_deref())
        .map_err(|(key, message)| src.invalid(key, &[Key(key)], message))?;
    Ok(PreloadSettings {
        platforms: platform.into_iter().collect(),
        preload_images: cfg.preload_images.clone(),
        image_file: cfg.image_file.clone(),
    })
}

/// `upstreams`: `allow` (default `*`, never empty) and `deny`.
fn upstream_policy(
    src: Source<'_>,
    upstreams: Option<UpstreamsConfig>,
) -> Result<UpstreamPolicy, ConfigError> {
    let Some(u) = upstreams else {
        return Ok(UpstreamPolicy::default());
    };
    let allow = u.allow.unwrap_or_else(|| UpstreamPolicy::default().allow);
    if allow.is_empty() {
        return Err(ConfigError::Invalid {
            path: src.path.to_owned(),
            key: "upstreams.allow".into(),
            line: first_line_of(
                src.text,
                &[&[Key("upstreams"), Key("allow")], &[Key("upstreams")]],
            ),
            message: "is empty: no upstream could be contacted (leave it out for the default [\"*\"], or write [configured])".into(),
        });
    }
    Ok(UpstreamPolicy {
        allow,
        deny: u.deny,
    })
}

/// `maxBlobSize`, `maxUpstreamFetches`, `maxUpstreamFetchesPerRegistry`, `upstreamFetchWait`.
fn fetch_limits(src: Source<'_>, cfg: &FileConfig) -> Result<FetchLimits, ConfigError> {
    let max_fetches = at_least_one(
        src,
        "maxUpstreamFetches",
        cfg.max_upstream_fetches,
        DEFAULT_MAX_UPSTREAM_FETCHES,
    )?;
    Ok(FetchLimits {
        max_blob_size: cfg.max_blob_size.map_or(DEFAULT_MAX_BLOB_SIZE, |b| b.0),
        max_fetches,
        // The per-registry default never exceeds the global limit.
        max_fetches_per_registry: at_least_one(
            src,
            "maxUpstreamFetchesPerRegistry",
            cfg.max_upstream_fetches_per_registry,
            DEFAULT_MAX_UPSTREAM_FETCHES_PER_REGISTRY.min(max_fetches),
        )?,
        wait: cfg
            .upstream_fetch_wait
            .map_or(DEFAULT_UPSTREAM_FETCH_WAIT, |d| d.0),
    })
}

/// Validates the `auth` block of `registries[i]`; errors name the sub-key (`.auth.token`).
fn credential_of(
    src: Source<'_>,
    i: usize,
    prefix: &str,
    auth: Option<&AuthConfig>,
) -> Result<CredentialConfig, ConfigError> {
    let Some(a) = auth else {
        return Ok(CredentialConfig::None);
    };
    let err = |k: &str, m: &str| {
        Err(entry_error(
            src,
            i,
            &format!("{prefix}.auth{k}"),
            m.to_owned(),
        ))
    };
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
                return Err(entry_error(
                    src,
                    i,
                    &format!("{prefix}.auth.passwordFromEnv"),
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
