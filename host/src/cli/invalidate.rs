//! `ociregistry invalidate`: forgets one cached tag ([`crate::inventory::invalidate`]) under
//! the inventory lock, so that its next pull fetches it from the upstream again.

use std::process::ExitCode;

use clap::Args;

use super::FatalError;
use crate::config::Settings;
use crate::inventory::invalidate::{remove_blocking, tag_reference};

/// `invalidate` arguments.
#[derive(Debug, Args)]
pub struct InvalidateArgs {
    /// The cached tag to forget: REGISTRY/REPOSITORY:TAG (e.g. docker.io/library/alpine:3.20).
    pub reference: String,
}

/// `ociregistry invalidate`.
pub fn invalidate(settings: &Settings, args: &InvalidateArgs) -> Result<ExitCode, FatalError> {
    super::storage::check_inventory(settings, "invalidate")?;
    let root = &settings.image_path;
    let refs = tag_reference(&args.reference)?;
    super::require_cache(root)?;
    let _lock = super::inventory_lock(root)?;
    let removed = remove_blocking(root, refs)?;
    if removed.is_empty() {
        return Err(FatalError::NotCached(args.reference.clone()));
    }
    for r in removed {
        println!("invalidated {r}: the next pull fetches it from the upstream");
    }
    Ok(ExitCode::SUCCESS)
}
