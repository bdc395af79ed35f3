//! Auth provider plugins on the host side: loading each configured provider by name from
//! the plugin directory and keeping one credential per registry entry fresh
//! ([`scheduler`]); `ociregistry providers` ([`listing`]).

pub mod listing;
pub mod scheduler;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ociregistry_plugin_api::Credential;
use ociregistry_plugin_api::host::{self, Plugin, ProviderHandle};

use crate::config::{CredentialConfig, Settings};
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
}

/// Loads every plugin in `dir`.
pub fn load_dir(dir: &Path) -> Result<Loaded, ProviderSetupError> {
    let scan = host::scan_dir(dir).map_err(|source| ProviderSetupError::Dir {
        dir: dir.display().to_string(),
        source,
    })?;
    let mut by_name = HashMap::new();
    for p in scan.plugins {
        by_name.entry(p.info().name.clone()).or_insert(p);
    }
    Ok(Loaded {
        by_name,
        failures: scan.failures,
    })
}

/// A provider instance as the scheduler's fetcher.
struct PluginFetcher(ProviderHandle);

impl CredentialFetcher for PluginFetcher {
    fn fetch(&self) -> Result<Credential, String> {
        self.0.fetch().map_err(|e| e.to_string())
    }
}

/// Creates the provider of one registry entry (plugin found, `providerOpts` accepted).
pub fn create_fetcher(
    loaded: &Loaded,
    dir: &Path,
    registry: &str,
    provider: &str,
    opts: &str,
) -> Result<Arc<dyn CredentialFetcher>, ProviderSetupError> {
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
    let handle = plugin
        .create(opts)
        .map_err(|e| ProviderSetupError::Create {
            registry: registry.to_owned(),
            provider: provider.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(PluginFetcher(handle)))
}

/// Starts a refreshed credential for every registry entry that names a provider. Must run
/// inside the tokio runtime. Plugins are loaded only when some entry needs one.
pub fn start(
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
    for (registry, provider, opts, every, timeout) in wanted {
        let fetcher = create_fetcher(
            &loaded,
            &settings.plugin_dir,
            &registry.name,
            provider,
            opts,
        )?;
        let schedule = Schedule {
            every,
            fetch_timeout: timeout,
            ..Schedule::default()
        };
        tracing::info!(registry = %registry.name, provider, every = %crate::duration::format(every), "starting provider credential");
        out.insert(
            registry.name.clone(),
            ManagedCredential::spawn(registry.name.clone(), fetcher, schedule),
        );
    }
    Ok(out)
}
