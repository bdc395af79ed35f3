//! What the mirror tells the inventory while it serves: last-pull times kept in memory on
//! the pull path ([`AccessTracker`], flushed to the store by
//! `crate::inventory::access::flush`), and the inventory's share of the server's state
//! ([`Inventory`]). It does not write anything to disk.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::oci::reference::{Digest, RepoName};

/// Last-pull times not yet on disk.
#[derive(Debug, Default)]
pub struct Pending {
    /// (registry, repository, tag) -> last served.
    pub tags: HashMap<(String, String, String), u64>,
    /// (registry, repository, manifest hex) -> last served.
    pub digests: HashMap<(String, String, String), u64>,
}

/// Access times not yet on disk.
#[derive(Debug, Default)]
pub struct AccessTracker {
    pending: Mutex<Pending>,
}

impl AccessTracker {
    /// A manifest was served for `registry/repo:tag`.
    pub fn touch_tag(&self, registry: &str, repo: &RepoName, tag: &str) {
        let now = crate::timefmt::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.tags.insert(
            (
                registry.to_owned(),
                repo.as_str().to_owned(),
                tag.to_owned(),
            ),
            now,
        );
    }

    /// A manifest was served for `registry/repo@digest`.
    pub fn touch_digest(&self, registry: &str, repo: &RepoName, digest: &Digest) {
        let now = crate::timefmt::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.digests.insert(
            (
                registry.to_owned(),
                repo.as_str().to_owned(),
                digest.hex().to_owned(),
            ),
            now,
        );
    }

    /// Takes every pending time (for the flush to disk).
    pub fn take(&self) -> Pending {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *p)
    }
}

/// The inventory's share of the running server's state.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Last-access times not yet on disk.
    pub access: AccessTracker,
    /// Woken by `POST /admin/v1/stop`: the same graceful stop as SIGTERM.
    pub stop: Notify,
    /// One prune or eviction at a time inside this process.
    pub prune_lock: tokio::sync::Mutex<()>,
}
