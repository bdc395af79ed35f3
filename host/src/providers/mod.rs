//! Auth provider plugins on the host side: loading each configured provider by name from
//! the plugin directory and keeping one credential per registry entry fresh
//! ([`scheduler`]); `ociregistry providers` ([`listing`]); the typed error of a provider
//! call ([`error`]). It sends no request to a registry (the upstream layer presents the
//! credentials) and holds no unsafe code (the ABI is `ociregistry-plugin-api`'s).

pub mod error;
pub mod listing;
pub mod scheduler;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ociregistry_plugin_api::host::{self, Plugin, ProviderHandle};
use ociregistry_plugin_api::{CreateContext, Credential, FetchReason, FetchRequest};

use crate::config::{CredentialConfig, Settings};
pub use error::{ProviderError, ProviderErrorKind};
pub use scheduler::{CredentialFetcher, ManagedCredential, Schedule};

/// Why the configured providers could not be set up; the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum ProviderSetupError {
    /// The plugin directory could not be read.
    #[error("plugin directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// No loadable plugin provides the configured name.
    #[error(
        "registries entry {registry}: unknown provider \"{provider}\" in plugin directory {dir} (available: {available}){failures}"
    )]
    Unknown {
        /// Registry entry.
        registry: String,
        /// Provider name as configured.
        provider: String,
        /// Directory searched.
        dir: String,
        /// Provider names that did load.
        available: String,
        /// Files that failed, one line each.
        failures: String,
    },
    /// The file that looks like the provider (its name contains the provider name) failed
    /// to load: that reason leads, as it is almost certainly the cause.
    #[error("registries entry {registry}: provider \"{provider}\" cannot be used: {error}")]
    Unusable {
        /// Registry entry.
        registry: String,
        /// Provider name.
        provider: String,
        /// The load failure, naming the file.
        error: Box<host::LoadError>,
    },
    /// The provider refused its `providerOpts` or could not be created.
    #[error("registries entry {registry}: provider \"{provider}\": {message}")]
    Create {
        /// Registry entry.
        registry: String,
        /// Provider name.
        provider: String,
        /// The plugin's message.
        message: String,
    },
}

/// The loaded plugins of a directory by provider name, and the files that failed.
#[derive(Debug)]
pub struct Loaded {
    /// Provider name -> plugin.
    pub by_name: HashMap<String, Plugin>,
    /// Files that are not usable plugins.
    pub failures: Vec<(std::path::PathBuf, host::LoadError)>,
    /// Plugins not used because another file provides the same name with a higher version
    /// (or the same version and a file name sorting first): (not used, used).
    pub shadowed: Vec<(Plugin, Plugin)>,
}

/// A plugin's version as numbers for comparing (`0.10.1` > `0.9.3`); a part that is not a
/// number (or a pre-release suffix) compares as 0.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Loads every plugin in `dir`. When two files provide the same name, the one with the
/// highest version is used (on a tie, the file name sorting first), with a warning naming
/// both.
pub fn load_dir(dir: &Path) -> Result<Loaded, ProviderSetupError> {
    let scan = host::scan_dir(dir).map_err(|source| ProviderSetupError::Dir {
        dir: dir.display().to_string(),
        source,
    })?;
    let mut by_name: HashMap<String, Plugin> = HashMap::new();
    let mut shadowed = Vec::new();
    // `scan.plugins` is in file name order.
    for p in scan.plugins {
        let name = p.info().name.clone();
        match by_name.remove(&name) {
            None => {
                by_name.insert(name, p);
            }
            Some(held) => {
                let (used, unused) =
                    if version_key(&p.info().version) > version_key(&held.info().version) {
                        (p, held)
                    } else {
                        (held, p)
                    };
                tracing::warn!(
                    provider = %name,
                    used = %used.info().path.display(),
                    used_version = %used.info().version,
                    not_used = %unused.info().path.display(),
                    not_used_version = %unused.info().version,
                    "two plugin files provide the same provider; the highest version is used"
                );
                shadowed.push((unused, used.clone()));
                by_name.insert(name, used);
            }
        }
    }
    Ok(Loaded {
        by_name,
        failures: scan.failures,
        shadowed,
    })
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn versions_compare_as_numbers() {
        assert!(version_key("0.10.0") > version_key("0.9.9"));
        assert!(version_key("1.0.0") > version_key("0.99.0"));
        assert_eq!(version_key("1.2.3-beta.1"), version_key("1.2.3"));
        assert!(version_key("x") < version_key("0.0.1"));
    }
}

/// What a provider's `create` gave, once it returned; fetches wait for it.
type Created = Arc<CreatedSlot>;

/// Set once by the thread running `create`; waited for (with a deadline) by fetches.
#[derive(Default, Debug)]
struct CreatedSlot {
    value: std::sync::OnceLock<Result<ProviderHandle, ProviderError>>,
    lock: std::sync::Mutex<()>,
    changed: std::sync::Condvar,
}

impl CreatedSlot {
    fn get(&self) -> Option<&Result<ProviderHandle, ProviderError>> {
        self.value.get()
    }

    fn set(&self, value: Result<ProviderHandle, ProviderError>) {
        let _ = self.value.set(value);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }

    /// The result, waiting for it until `deadline`.
    fn wait_until(
        &self,
        deadline: std::time::Instant,
    ) -> Option<&Result<ProviderHandle, ProviderError>> {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = self.value.get() {
                return Some(v);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            guard = match self.changed.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// How long the server start waits for the providers' `create` calls: refusals (bad
/// options) come at once and stop the start; a slower `create` goes on in the background,
/// and the first fetch waits for it (within the provider timeout).
pub const CREATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A provider instance as the scheduler's fetcher. Its `create` runs on its own thread; a
/// fetch waits for it until the fetch's deadline, then fails with a clear reason (and the
/// next fetch waits again).
struct PluginFetcher {
    provider: String,
    timeout: std::time::Duration,
    created: Created,
}

impl CredentialFetcher for PluginFetcher {
    fn fetch(&self) -> Result<Credential, ProviderError> {
        let deadline = std::time::SystemTime::now() + self.timeout;
        self.fetch_with(&FetchRequest::new(FetchReason::FirstUse, deadline))
    }

    fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, ProviderError> {
        let deadline = std::time::Instant::now() + request.time_left();
        match self.created.wait_until(deadline) {
            Some(Ok(handle)) => handle
                .fetch_with(request)
                .map_err(|e| ProviderError::from_plugin(&self.provider, &e))
                .and_then(|c| usable(&self.provider, c)),
            Some(Err(error)) => Err(error.clone()),
            None => Err(ProviderError::new(
                &self.provider,
                ProviderErrorKind::TimedOut,
                format!(
                    "provider \"{}\": create did not return within {} (still running)",
                    self.provider,
                    crate::duration::format(self.timeout)
                ),
            )),
        }
    }
}

/// A credential with an empty secret is refused (an error of kind `failed`), so that
/// `--check`, `/readyz` and the metrics flag it instead of reporting it valid.
fn usable(provider: &str, credential: Credential) -> Result<Credential, ProviderError> {
    use ociregistry_plugin_api::CredentialKind;
    let secret = match &credential.kind {
        CredentialKind::Basic { secret, .. } => Some(secret),
        CredentialKind::Bearer { token } | CredentialKind::IdentityToken { token } => Some(token),
        _ => None,
    };
    if secret.is_some_and(|s| s.expose().is_empty()) {
        return Err(ProviderError::new(
            provider,
            ProviderErrorKind::Failed,
            format!("provider \"{provider}\" returned a credential with an empty secret"),
        ));
    }
    Ok(credential)
}

/// A provider's `create` started on its own thread ([`begin_create`]).
#[derive(Debug)]
pub struct PendingCreate {
    registry: String,
    provider: String,
    created: Created,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// The URL a registry entry is reached at, as providers see it in their create context
/// (`docker.io` is `https://registry-1.docker.io`).
pub fn registry_url(registry: &crate::config::Registry) -> String {
    let host = if registry.name == crate::oci::registry::DOCKER_HUB {
        crate::oci::registry::DOCKER_HUB_API
    } else {
        registry.name.as_str()
    };
    format!("{}://{host}", registry.scheme)
}

/// Finds the provider of one registry entry and starts its `create(providerOpts)` on a
/// thread of its own (a plugin may block there, or hang); [`PendingCreate::finish`] waits
/// for it with a timeout. A plugin of plugin-api 1.1 gets the entry's name and `url`.
pub fn begin_create(
    loaded: &Loaded,
    dir: &Path,
    registry: &str,
    url: &str,
    provider: &str,
    opts: &str,
) -> Result<PendingCreate, ProviderSetupError> {
    let Some(plugin) = loaded.by_name.get(provider) else {
        let looks_like_it = loaded.failures.iter().find(|(path, _)| {
            path.file_name()
                .is_some_and(|f| f.to_string_lossy().contains(provider))
        });
        if let Some((_, error)) = looks_like_it {
            return Err(ProviderSetupError::Unusable {
                registry: registry.to_owned(),
                provider: provider.to_owned(),
                error: Box::new(error.clone()),
            });
        }
        let mut available: Vec<&str> = loaded.by_name.keys().map(String::as_str).collect();
        available.sort_unstable();
        let failures: String = loaded
            .failures
            .iter()
            .map(|(_, e)| format!("; {e}"))
            .collect();
        return Err(ProviderSetupError::Unknown {
            registry: registry.to_owned(),
            provider: provider.to_owned(),
            dir: dir.display().to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
            failures,
        });
    };
    let created: Created = Arc::default();
    let (tx, done) = tokio::sync::oneshot::channel();
    let (plugin, opts, slot) = (plugin.clone(), opts.to_owned(), Arc::clone(&created));
    let name = provider.to_owned();
    let context = CreateContext::new(registry, url);
    // A plain thread, not the blocking pool: a create that never returns must not hold up
    // the runtime's shutdown.
    std::thread::Builder::new()
        .name(format!("create-{provider}"))
        .spawn(move || {
            let created = plugin
                .create_with(&opts, &context)
                .map_err(|e| ProviderError::from_plugin(name, &e));
            slot.set(created);
            let _ = tx.send(());
        })
        .map_err(|e| ProviderSetupError::Create {
            registry: registry.to_owned(),
            provider: provider.to_owned(),
            message: format!("cannot start a thread for create: {e}"),
        })?;
    Ok(PendingCreate {
        registry: registry.to_owned(),
        provider: provider.to_owned(),
        created,
        done,
    })
}

impl PendingCreate {
    /// Waits for `create` until `deadline`. Its error (options refused) is returned; a
    /// create still running at the deadline gives a fetcher that fails, naming the
    /// provider, until create returns.
    pub async fn finish(
        self,
        deadline: tokio::time::Instant,
        timeout: std::time::Duration,
    ) -> Result<Arc<dyn CredentialFetcher>, ProviderSetupError> {
        let error = |message: String| ProviderSetupError::Create {
            registry: self.registry.clone(),
            provider: self.provider.clone(),
            message,
        };
        match tokio::time::timeout_at(deadline, self.done).await {
            Ok(Ok(())) => {
                if let Some(Err(refused)) = self.created.get() {
                    return Err(error(refused.to_string()));
                }
            }
            Ok(Err(_closed)) => return Err(error("create panicked".to_owned())),
            Err(_elapsed) => {
                tracing::warn!(
                    registry = %self.registry,
                    provider = %self.provider,
                    timeout = %crate::duration::format(timeout),
                    "provider create did not return in time; going on without it: this registry's fetches wait for it (each up to the timeout) and fail until it returns"
                );
            }
        }
        Ok(Arc::new(PluginFetcher {
            provider: self.provider,
            timeout,
            created: self.created,
        }))
    }
}

/// Creates the provider of one registry entry (plugin found, `providerOpts` accepted),
/// waiting at most `timeout` for its `create`.
pub async fn create_fetcher(
    loaded: &Loaded,
    dir: &Path,
    registry: &crate::config::Registry,
    provider: &str,
    opts: &str,
    timeout: std::time::Duration,
) -> Result<Arc<dyn CredentialFetcher>, ProviderSetupError> {
    let url = registry_url(registry);
    begin_create(loaded, dir, &registry.name, &url, provider, opts)?
        .finish(tokio::time::Instant::now() + timeout, timeout)
        .await
}

/// Starts a refreshed credential for every registry entry that names a provider. Must run
/// inside the tokio runtime. Plugins are loaded only when some entry needs one. The
/// providers' `create` calls run at the same time, each bounded by its entry's timeout.
pub async fn start(
    settings: &Settings,
) -> Result<HashMap<String, ManagedCredential>, ProviderSetupError> {
    let mut out = HashMap::new();
    let wanted: Vec<_> = settings
        .registries
        .iter()
        .filter_map(|r| match &r.credential {
            CredentialConfig::Provider {
                provider,
                opts,
                every,
                timeout,
            } => Some((r, provider, opts, *every, *timeout)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(out);
    }
    let loaded = load_dir(&settings.plugin_dir)?;
    let began = tokio::time::Instant::now();
    let mut pending = Vec::with_capacity(wanted.len());
    for (registry, provider, opts, every, timeout) in wanted {
        let create = begin_create(
            &loaded,
            &settings.plugin_dir,
            &registry.name,
            &registry_url(registry),
            provider,
            opts,
        )?;
        pending.push((registry, provider, every, timeout, create));
    }
    for (registry, provider, every, timeout, create) in pending {
        // Slow creates do not hold the start (the listener) longer than the grace.
        let fetcher = create
            .finish(began + timeout.min(CREATE_GRACE), timeout)
            .await?;
        let schedule = Schedule {
            every,
            fetch_timeout: timeout,
            ..Schedule::default()
        };
        tracing::info!(registry = %registry.name, provider, every = %crate::duration::format(every), "starting provider credential");
        out.insert(
            registry.name.clone(),
            ManagedCredential::spawn_for(
                registry.name.clone(),
                provider.clone(),
                fetcher,
                schedule,
            ),
        );
    }
    Ok(out)
}
