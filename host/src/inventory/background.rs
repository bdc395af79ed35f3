//! What the inventory runs inside `serve`: the periodic flush of last-pull times,
//! `pruneConfig` runs, the `maxSize` check (periodically and after each stored blob), and
//! the admin API listener.

use std::sync::Arc;
use std::time::Duration;

use super::{ACCESS_FLUSH_EVERY, MAX_SIZE_CHECK_EVERY};
use super::{admin, evict, prune};
use crate::server::App;

/// Starts the background tasks and, when configured, the admin API (a bind failure is an
/// error: the operator asked for it).
pub async fn start(app: &Arc<App>) -> Result<(), String> {
    if let Some(a) = &app.settings.inventory.admin {
        // The admin API speaks TLS whenever the pull port does.
        let tls = match &app.settings.server_tls {
            Some(t) => Some(crate::server::tls::acceptor_of(t).map_err(|e| e.to_string())?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(a.address)
            .await
            .map_err(|e| format!("cannot listen for the admin API on {}: {e}", a.address))?;
        tokio::spawn(admin::serve(listener, app.clone(), a.token.clone(), tls));
    }
    let a = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            a.inventory.access.flush(&a.store).await;
        }
    });
    if let Some(schedule) = app.settings.inventory.prune.clone() {
        let a = app.clone();
        tracing::info!(every = %crate::duration::format(schedule.frequency), dry_run = schedule.dry_run, "background pruning on");
        tokio::spawn(async move {
            let grace = a.settings.inventory.grace;
            loop {
                tokio::time::sleep(schedule.frequency).await;
                let run = prune::run_in_server(
                    &a,
                    schedule.spec.clone().into(),
                    schedule.count,
                    grace,
                    schedule.dry_run,
                )
                .await;
                if let Err(e) = run {
                    tracing::warn!(error = %e, "background prune failed");
                }
            }
        });
    }
    if let Some(max) = app.settings.inventory.max_size {
        let a = app.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = evict::run_in_server(&a, max).await {
                    tracing::warn!(error = %e, "maxSize check failed");
                }
                tokio::select! {
                    () = a.inventory.stored.notified() => {
                        // Let a burst of downloads finish before scanning again.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    () = tokio::time::sleep(MAX_SIZE_CHECK_EVERY) => {}
                }
            }
        });
    }
    Ok(())
}
