//! Opening the cache the config asks for (`storage:`): the filesystem store at `imagePath`
//! by default, or the S3-compatible bucket with its local copy; and refusing, at start, the
//! features that do not work on the chosen backend yet. What a store does is
//! [`crate::store`]'s; this file only chooses and opens one.

use std::sync::Arc;

use super::FatalError;
use crate::config::Settings;
use crate::config::storage::Backend;
use crate::store::s3::{S3Keys, S3Options, S3Store};
use crate::store::{FsStore, Store};

/// Who opens the cache: the server, or a verb working beside a running server (which must
/// leave the server's downloads in progress alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// `serve`.
    Server,
    /// `load` and other verbs that write beside a server.
    Alongside,
}

/// Opens the configured store.
pub(crate) async fn open(
    settings: &Settings,
    opener: Opener,
) -> Result<Arc<dyn Store>, FatalError> {
    match &settings.storage.backend {
        Backend::Filesystem => {
            let path = &settings.image_path;
            let opened = match opener {
                Opener::Server => FsStore::open(path),
                Opener::Alongside => FsStore::open_alongside(path),
            };
            let store = opened.map_err(|source| FatalError::ImagePath {
                path: path.clone(),
                source,
            })?;
            Ok(Arc::new(store))
        }
        Backend::S3(s3) => {
            let opts = S3Options {
                bucket: s3.bucket.clone(),
                prefix: s3.prefix.clone(),
                region: s3.region.clone(),
                endpoint: s3.endpoint.clone(),
                credentials: s3.credentials.as_ref().map(|c| S3Keys {
                    access_key_id: c.access_key_id.clone(),
                    secret_access_key: c.secret_access_key.clone(),
                    session_token: c.session_token.clone(),
                }),
            };
            let store = S3Store::open(opts, &settings.storage.local_path)
                .await
                .map_err(FatalError::Storage)?
                .with_local_bound(settings.storage.local_max_size);
            Ok(Arc::new(store))
        }
    }
}

/// Why the inventory cannot work on a bucket yet (it reads the filesystem layout, so on a
/// bucket it would see only this machine's local copy).
const INVENTORY_ON_S3: &str = "works on the filesystem store only so far; with storage.s3 it \
     would see only this machine's local copy (remove it, or use the filesystem store)";

/// Refuses, before anything starts, inventory features the configured backend cannot do:
/// `verb` is the command (`list`, `prune`), or `serve` for the background features of the
/// config (`pruneConfig`, `maxSize`). (`invalidate` works on a bucket.)
pub(crate) fn check_inventory(settings: &Settings, verb: &str) -> Result<(), FatalError> {
    if !matches!(settings.storage.backend, Backend::S3(_)) {
        return Ok(());
    }
    let what = match verb {
        "serve" if settings.inventory.prune.is_some() => "pruneConfig".to_owned(),
        "serve" if settings.inventory.max_size.is_some() => "maxSize".to_owned(),
        "serve" => return Ok(()),
        other => format!("`ociregistry {other}`"),
    };
    Err(FatalError::StorageUnsupported {
        what,
        why: INVENTORY_ON_S3,
    })
}
