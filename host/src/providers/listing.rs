//! What `ociregistry providers` reports, without printing it (the CLI prints it, never a
//! secret): the plugins loaded from the plugin directory in name order ([`plugins`]), and
//! with `--check` one credential fetch per configured registry ([`check`]).

use ociregistry_plugin_api::{Credential, host};

use crate::config::{CredentialConfig, Settings};
use crate::providers::{self, Loaded, ProviderSetupError, scheduler};

/// The loaded plugins, sorted by provider name.
pub fn plugins(loaded: &Loaded) -> Vec<&host::Plugin> {
    let mut plugins: Vec<&host::Plugin> = loaded.by_name.values().collect();
    plugins.sort_by(|a, b| a.info().name.cmp(&b.info().name));
    plugins
}

/// Where a registry entry's credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No credential.
    Anonymous,
    /// `auth.user`/`auth.password` in the config file.
    Basic {
        /// The user name (not a secret).
        user: String,
    },
    /// A static token in the config file.
    Static,
    /// A provider plugin.
    Provider {
        /// Its name.
        name: String,
    },
}

/// Why a registry's credential could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The provider could not be found or set up.
    #[error(transparent)]
    Setup(#[from] ProviderSetupError),
    /// The fetch failed or timed out.
    #[error(transparent)]
    Fetch(scheduler::FetchError),
}

/// One registry entry checked.
#[derive(Debug)]
pub struct Check {
    /// The registry entry's name.
    pub registry: String,
    /// Where its credential comes from.
    pub source: Source,
    /// What a fetch gave: `None` when there is nothing to fetch (anonymous, config).
    pub result: Result<Option<Credential>, CheckError>,
}

/// Fetches each configured registry's credential once, in config order.
pub async fn check(settings: &Settings, loaded: &Loaded) -> Vec<Check> {
    let mut checks = Vec::new();
    for r in &settings.registries {
        let (source, result) = match &r.credential {
            CredentialConfig::None => (Source::Anonymous, Ok(None)),
            CredentialConfig::Basic { user, .. } => {
                (Source::Basic { user: user.clone() }, Ok(None))
            }
            CredentialConfig::Static(_) => (Source::Static, Ok(None)),
            CredentialConfig::Provider {
                provider,
                opts,
                timeout,
                ..
            } => {
                let source = Source::Provider {
                    name: provider.clone(),
                };
                match providers::create_fetcher(
                    loaded,
                    &settings.plugin_dir,
                    r,
                    provider,
                    opts,
                    *timeout,
                )
                .await
                {
                    Err(e) => (source, Err(CheckError::from(e))),
                    Ok(fetcher) => (
                        source,
                        scheduler::fetch_once(fetcher, *timeout)
                            .await
                            .map(Some)
                            .map_err(CheckError::Fetch),
                    ),
                }
            }
        };
        checks.push(Check {
            registry: r.name.clone(),
            source,
            result,
        });
    }
    checks
}
