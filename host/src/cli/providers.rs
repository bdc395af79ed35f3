//! `ociregistry providers`: the provider plugins found in the plugin directory, or with
//! `--check` one credential fetch per configured registry, reported without the secret.

use clap::Args;

use super::output::Output;

/// `providers` flags.
#[derive(Debug, Args)]
pub struct ProvidersArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Fetch each configured registry's credential once and report the result (never the secret).
    #[arg(long)]
    pub check: bool,
}
