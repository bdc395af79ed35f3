//! The cache inventory: what is cached and when it was last pulled, and keeping the disk in
//! bounds.
//!
//! - [`access`] remembers in memory when each tag and manifest was last served and flushes
//!   that to disk now and then (never on the pull path).
//! - [`scan`] reads the cache directory into images (a tag, or a manifest pulled by
//!   digest), with type, created, last-pulled time and size; it only reads, so it works
//!   while a server runs on the same directory.
//! - [`prune`] selects images ([`criteria`]), plans what goes (tag records, manifests, and
//!   the blobs no remaining manifest references) and carries the plan out; [`evict`] picks
//!   least-recently-pulled images until the cache fits `maxSize`.
//! - [`images`] lists the cached images as people see them; [`invalidate`] forgets a tag.
//! - Who may prune: [`crate::store::Store::lock_inventory`] (on the filesystem the file
//!   lock of [`crate::store::lock`], which also keeps the access flush and the `prune` and
//!   `invalidate` verbs apart; on a bucket a lease object, so that one replica at a time
//!   prunes or evicts).
//! - [`background`] runs the access flush, `pruneConfig` and `maxSize` inside `serve`;
//!   [`crate::config::inventory`] holds their settings (timestamps: [`crate::timefmt`]). The admin API's
//!   routes and the `list`, `prune` and `invalidate` verbs live in the layers above; this
//!   module prints nothing and speaks no HTTP.
//!
//! # Pulls in progress are never broken
//!
//! - A blob being streamed from the cache has an open file: unlinking it (Linux) leaves the
//!   reader's bytes intact.
//! - A blob still being downloaded lives under `tmp/`, which pruning never touches; when it
//!   completes it lands in `blobs/` and is collected by a later run if nothing needs it.
//! - The race "manifest served, then its blobs pruned before the client asks for them" is
//!   closed by the *grace period* (`pruneGrace`, default 5m): a blob is kept when it was
//!   stored within the grace period, or when a manifest referencing it was pulled within it
//!   (the server's in-memory access times count, not only the flushed ones). Such blobs are
//!   reported as kept and go in a later run once nothing references them.

pub mod access;
pub mod background;
pub mod criteria;
pub mod evict;
pub mod images;
pub mod invalidate;
pub mod prune;
pub mod scan;

/// How often last-access times are written to disk.
pub const ACCESS_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a replica on a shared store removes its local copies of blobs pruned from it.
pub const LOCAL_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(300);
/// How often `maxSize` is checked besides after downloads.
pub const MAX_SIZE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

use std::sync::Arc;

/// Resolves when `signal` does or when the admin API asks the server to stop.
pub async fn stop_requested(
    signal: impl std::future::Future<Output = ()>,
    app: Arc<crate::mirror::Mirror>,
) {
    tokio::select! {
        () = signal => {}
        () = app.inventory.stop.notified() => {
            tracing::info!("stop requested through the admin API");
        }
    }
}
