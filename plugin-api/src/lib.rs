#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Only `abi` (sabi_trait expansions), `export` (the root module header) and `host` (dlopen)
// need `unsafe`; each allows it where it must, with a SAFETY comment.
#[allow(unsafe_code)]
#[doc(hidden)]
pub mod abi;
pub mod credential;
mod error;
#[allow(unsafe_code)]
mod export;
#[allow(unsafe_code)]
pub mod host;
mod opts;
mod request;

pub use credential::{Credential, CredentialKind, Secret};
pub use error::{PluginError, PluginErrorKind};
pub use opts::{OptionSpec, ProviderOpts};
pub use request::{CreateContext, FetchReason, FetchRequest};

/// Re-exported so that plugins log without depending on `tracing` themselves. Events
/// logged inside a plugin (by the plugin or by its dependencies, e.g. the AWS SDK) reach the
/// host's log, up to the level the host had enabled when it loaded the plugin.
pub use tracing;

/// The ABI version of this plugin-api (`MAJOR.MINOR`), compiled into every plugin.
pub const ABI_VERSION: &str = abi::ABI_VERSION;

/// A configured provider instance: one per registry entry in the host's config.
///
/// The host calls [`Provider::fetch`] on a blocking thread, with a timeout, whenever it
/// needs a fresh credential (before the first pull, on its refresh schedule, after an
/// upstream `401`). Calls may come from different threads, and concurrently for the same
/// instance.
pub trait Provider: Send + Sync + 'static {
    /// Gets a credential. Blocking. A panic is caught and reported to the host as an
    /// error, but return an error instead where you can. Never put a secret in an error.
    fn fetch(&self) -> Result<Credential, PluginError>;

    /// Gets a credential for `request` (plugin-api 1.1: the repository being pulled, the
    /// reason, the deadline). The default calls [`Provider::fetch`]; override it when the
    /// credential depends on the repository or the reason. Hosts of ABI 1.1 call this one.
    fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, PluginError> {
        let _ = request;
        self.fetch()
    }
}

/// The factory a plugin exports with [`export_provider!`]: metadata, and `create`.
pub trait ProviderFactory: 'static {
    /// The provider name, as in the host's config `auth.token.provider` (e.g. `ecr`).
    /// No whitespace or commas.
    const NAME: &'static str;
    /// The plugin's own version, usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// One line for `ociregistry providers`.
    const DESCRIPTION: &'static str;
    /// The `providerOpts` keys the provider accepts. Anything else is refused before
    /// [`ProviderFactory::create`] is called, as is a missing required key.
    const OPTIONS: &'static [OptionSpec];

    /// Creates a provider from validated options. Called once per registry entry using
    /// this provider; may block (e.g. to read configuration).
    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError>;

    /// Creates a provider for the registry entry in `context` (plugin-api 1.1: its name
    /// and URL). The default calls [`ProviderFactory::create`]. Hosts of ABI 1.1 call this
    /// one.
    fn create_with(
        opts: &ProviderOpts,
        context: &CreateContext,
    ) -> Result<Box<dyn Provider>, PluginError> {
        let _ = context;
        Self::create(opts)
    }

    /// Whether a log event at `level` from `target` inside the plugin (the plugin's own or a
    /// dependency's) may be sent to the host, on top of the host's own level. Override it to
    /// keep out dependencies' verbose events that may print secrets (the AWS SDK's `TRACE`
    /// events print whole responses). The default lets everything through.
    fn log_enabled(target: &str, level: tracing::Level) -> bool {
        let _ = (target, level);
        true
    }
}

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{abi_stable, ext_v11, lib_header};
}
