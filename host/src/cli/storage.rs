//! Opening the cache the config asks for (`storage:`): the filesystem store at `imagePath`
//! by default, or the S3-compatible bucket with its local copy. What a store does is
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

/// Opens the configured store for a verb that reads or prunes an existing cache beside
/// running servers: on the filesystem, the image path must hold a cache already (nothing
/// is created there, so that `list` works on a cache it may only read).
pub(crate) async fn open_existing(settings: &Settings) -> Result<Arc<dyn Store>, FatalError> {
    if matches!(settings.storage.backend, Backend::Filesystem) {
        super::require_cache(&settings.image_path)?;
        return Ok(Arc::new(FsStore::at(&settings.image_path)));
    }
    open(settings, Opener::Alongside).await
}
