//! The `{{provider_name}}` auth provider for ociregistry.
//!
//! Build with `cargo build --release`, copy `target/release/lib{{crate_name}}.so` into
//! ociregistry's plugin directory, and try it once with
//! `ociregistry --plugin-dir DIR providers --try target/release/lib{{crate_name}}.so token=hello`
//! (or this crate's `fetch` example of `ociregistry-plugin-api`).

use std::time::{Duration, SystemTime};

use ociregistry_plugin_api::{
    CreateContext, Credential, FetchRequest, OptionSpec, PluginError, Provider, ProviderFactory,
    ProviderOpts, export_provider, tracing,
};

struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "{{provider_name}}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "returns the token given in its options (replace me)";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "token",
            description: "the token to return",
            required: true,
        },
        OptionSpec {
            key: "ttl",
            description: "seconds until it expires",
            required: false,
        },
    ];

    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError> {
        Self::create_with(opts, &CreateContext::new("", ""))
    }

    /// Called once per registry entry using this provider, with its name and URL.
    fn create_with(
        opts: &ProviderOpts,
        context: &CreateContext,
    ) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(TheProvider {
            registry: context.registry.clone(),
            token: opts.required("token")?.to_owned(),
            ttl: opts.parsed::<u64>("ttl")?,
        }))
    }
}

struct TheProvider {
    registry: String,
    token: String,
    ttl: Option<u64>,
}

impl Provider for TheProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        let credential = Credential::bearer(self.token.clone());
        Ok(match self.ttl {
            Some(s) => credential.expiring_at(SystemTime::now() + Duration::from_secs(s)),
            None => credential,
        })
    }

    /// Blocking; called on a host thread before `request.deadline`. `request.repository`
    /// is the repository being pulled when a pull asked for the credential.
    fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, PluginError> {
        tracing::debug!(registry = %self.registry, reason = ?request.reason, "fetch");
        self.fetch()
    }
}

export_provider!(Factory);
