//! `ociregistry invalidate`: forgets one cached tag ([`crate::inventory::invalidate`]) under
//! the inventory lock, so that its next pull fetches it from the upstream again; with
//! `storage.s3`, removes its record from the bucket, for every replica.

use std::process::ExitCode;

use clap::Args;

use super::FatalError;
use crate::config::Settings;
use crate::config::storage::Backend;
use crate::inventory::invalidate::{remove_blocking, remove_in_store, tag_reference};

/// `invalidate` arguments.
#[derive(Debug, Args)]
pub struct InvalidateArgs {
    /// The cached tag to forget: REGISTRY/REPOSITORY:TAG (e.g. docker.io/library/alpine:3.20).
    pub reference: String,
}

/// `ociregistry invalidate`.
pub async fn invalidate(
    settings: &Settings,
    args: &InvalidateArgs,
) -> Result<ExitCode, FatalError> {
    let refs = tag_reference(&args.reference)?;
    let removed = if matches!(settings.storage.backend, Backend::S3(_)) {
        // The bucket's record is the one every replica reads; their local copies are read
        // only while the bucket cannot be reached.
        let store = super::storage::open(settings, super::storage::Opener::Alongside).await?;
        remove_in_store(&*store, refs)
            .await
            .map_err(FatalError::Storage)?
    } else {
        let root = &settings.image_path;
        super::require_cache(root)?;
        let _lock = super::inventory_lock(root)?;
        remove_blocking(root, refs)?
    };
    if removed.is_empty() {
        return Err(FatalError::NotCached(args.reference.clone()));
    }
    for r in removed {
        println!("invalidated {r}: the next pull fetches it from the upstream");
    }
    Ok(ExitCode::SUCCESS)
}
