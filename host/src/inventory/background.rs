//! What the inventory runs inside `serve`: the periodic flush of last-pull times,
//! `pruneConfig` runs, and the `maxSize` check (periodically and after each stored blob).
//! Replicas sharing a bucket each run these; the inventory lease lets one at a time prune
//! or evict.
//! It starts no listener (the admin API is the HTTP layer's).

use std::sync::Arc;
use std::time::Duration;

use super::{ACCESS_FLUSH_EVERY, MAX_SIZE_CHECK_EVERY};
use super::{evict, prune};
use crate::mirror::Mirror;

/// How soon a `maxSize` check that found the inventory lease held looks again (the holder
/// may have counted before this replica's last additions).
const EVICT_RETRY: Duration = Duration::from_secs(10);

/// Starts the background tasks.
pub fn start(app: &Arc<Mirror>) {
    let a = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            super::access::flush(&a.inventory.access, &*a.store).await;
        }
    });
    if app.store.kind() != "filesystem" {
        // Local copies of blobs another replica pruned from the shared store.
        let a = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::LOCAL_SWEEP_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = a.store.sweep_local_copies().await {
                    tracing::debug!(error = %e, "local copies not swept this time");
                }
            }
        });
    }
    if let Some(schedule) = app.settings.inventory.prune.clone() {
        let a = app.clone();
        tracing::info!(every = %crate::duration::format(schedule.frequency), dry_run = schedule.dry_run, "background pruning on");
        tokio::spawn(async move {
            let grace = a.settings.inventory.grace;
            loop {
                tokio::time::sleep(schedule.frequency).await;
                // On a shared bucket the replica that holds the inventory lease prunes;
                // the others skip this round.
                let run = prune::run_in_server(
                    &a,
                    schedule.spec.clone().into(),
                    schedule.count,
                    grace,
                    schedule.dry_run,
                    false,
                )
                .await;
                match run {
                    Ok(_) => {}
                    Err(prune::PruneError::Busy { holder, .. }) => {
                        tracing::debug!(
                            holder,
                            "another replica holds the inventory lease; not this time"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "background prune failed"),
                }
            }
        });
    }
    if let Some(max) = app.settings.inventory.max_size {
        let a = app.clone();
        tokio::spawn(async move {
            loop {
                let next = match evict::run_in_server(&a, max).await {
                    Ok(_) => MAX_SIZE_CHECK_EVERY,
                    Err(prune::PruneError::Busy { holder, .. }) => {
                        tracing::debug!(
                            holder,
                            "another replica holds the inventory lease; not this time"
                        );
                        EVICT_RETRY
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "maxSize check failed");
                        MAX_SIZE_CHECK_EVERY
                    }
                };
                tokio::select! {
                    () = a.downloads.stored.notified() => {
                        // Let a burst of downloads finish before scanning again.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    () = tokio::time::sleep(next) => {}
                }
            }
        });
    }
}
