//! `ociregistry serve`: runs the registry mirror (pull port, admin API, metrics and health,
//! background preload and inventory tasks) until SIGTERM/SIGINT or the admin API's stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::FatalError;
use crate::config::Settings;
use crate::mirror::Mirror;
use crate::observability;
use crate::preload::{self, platform::Platform};
use crate::providers;
use crate::server;
use crate::upstream::Upstreams;

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Pull port; 0 picks a free one [config: port] [default: 8080].
    #[arg(long)]
    pub port: Option<u16>,
    /// Listen address [config: host] [default: 0.0.0.0].
    #[arg(long)]
    pub host: Option<String>,
    /// Upstream for requests that name none [config: defaultNs] [default: docker.io].
    #[arg(long, value_name = "REGISTRY")]
    pub default_ns: Option<String>,
    /// Never contact an upstream; serve only what is cached [config: airGapped].
    #[arg(long)]
    pub air_gapped: bool,
    /// Re-check `:latest` tags upstream on every pull [config: alwaysPullLatest].
    #[arg(long)]
    pub always_pull_latest: bool,
    /// How long an upstream may take to answer, e.g. 30s [config: pullTimeout] [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub pull_timeout: Option<Duration>,
    /// Image list to pull into the cache in the background once listening (same format as
    /// `load --image-file`) [config: preloadImages].
    #[arg(long, value_name = "FILE")]
    pub preload_images: Option<PathBuf>,
    /// Platform the preload takes from multi-platform images, os/arch[/variant]; repeatable
    /// [config: os, arch] [default: linux/<this machine's architecture>].
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<Platform>,
    /// Serve the admin API on this IP:PORT (loopback unless admin.token is set) [config: admin.address].
    #[arg(long, value_name = "IP:PORT")]
    pub admin_address: Option<String>,
    /// After SIGTERM/SIGINT, how long open pulls and upstream fetches may take to finish
    /// before they are cut, e.g. 10s [config: shutdownGrace] [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub shutdown_grace: Option<Duration>,
    /// Serve Prometheus metrics at /metrics on this port (own listener at --host; 0 picks a free one) [config: metrics].
    #[arg(long, value_name = "PORT")]
    pub metrics: Option<u16>,
    /// Serve /healthz (liveness) and /readyz (readiness, credential states) on this port [config: health].
    #[arg(long, value_name = "PORT")]
    pub health: Option<u16>,
}

/// `ociregistry serve`: returns once the server has stopped.
pub async fn serve(settings: Settings) -> Result<(), FatalError> {
    // Built once, before anything listens: a key that does not match its certificate
    // stops the start with the config key and line.
    let tls = settings
        .server_tls
        .as_ref()
        .map(server::tls::acceptor_of)
        .transpose()?;
    let store = super::storage::open(&settings, super::storage::Opener::Server).await?;
    let preload_list = match &settings.preload.preload_images {
        Some(path) => Some(preload::read_list(path, &settings.default_ns)?),
        None => None,
    };
    let managed = providers::start(&settings).await?;
    let registry_credentials = observability::health::credentials(&settings, &managed);
    let upstreams = Upstreams::new(&settings, managed)?;
    let listener = server::bind(&settings.host, settings.port)
        .await
        .map_err(|source| FatalError::Listen {
            host: settings.host.clone(),
            port: settings.port,
            source,
        })?;
    let image_path =
        std::fs::canonicalize(&settings.image_path).unwrap_or_else(|_| settings.image_path.clone());
    tracing::info!(
        image_path = %image_path.display(),
        store = %store.describe(),
        default_ns = %settings.default_ns,
        air_gapped = settings.air_gapped,
        registries = settings.registries.len(),
        "starting"
    );
    let (metrics_port, health_port, host) = (
        settings.metrics_port,
        settings.health_port,
        settings.host.clone(),
    );
    let app = Arc::new(Mirror::new(settings, store, upstreams));
    if let Some(list) = preload_list {
        let opts = preload::Options::new(&app.settings.preload.platforms);
        preload::spawn_in_background(app.clone(), list, opts);
    }
    server::admin::start(&app, tls.clone()).await?;
    crate::inventory::background::start(&app);
    let observed = Arc::new(observability::Observed {
        app: app.clone(),
        registries: registry_credentials,
        serving: true.into(),
    });
    observability::start(observed.clone(), &host, metrics_port, health_port)
        .await
        .map_err(FatalError::Observability)?;
    // Readiness turns 503 as soon as a stop is asked for, before open pulls drain.
    let stop = {
        let requested = crate::inventory::stop_requested(server::stop_signal(), app.clone());
        let observed = observed.clone();
        async move {
            requested.await;
            observed.set_serving(false);
        }
    };
    let served = server::serve(listener, app.clone(), tls, stop).await;
    observed.set_serving(false);
    crate::inventory::access::flush(&app.inventory.access, &*app.store).await;
    served.map_err(FatalError::Serve)
}
