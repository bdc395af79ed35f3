//! The command line: `serve` and `providers`, global flags shared by both, and turning
//! flags plus config file into [`Settings`](crate::config::Settings).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cache::BlobStore;
use crate::config::{self, ConfigError, Overrides, Settings};
use crate::logging::{self, LogFormat};
use crate::providers;
use crate::server::{self, App};
use crate::upstream::Upstreams;

/// A pull-through caching OCI registry: one endpoint for every upstream registry, images
/// cached on local disk and served even when the upstream is down.
#[derive(Debug, Parser)]
#[command(name = "ociregistry", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  ociregistry serve                          # defaults: port 8080, cache in ./ociregistry-cache\n  ociregistry --config-file config.yaml serve\n  ociregistry providers --output json\n\nPull through it:\n  skopeo copy --src-tls-verify=false docker://localhost:8080/quay.io/org/img:tag oci:img\n  curl 'http://localhost:8080/v2/library/alpine/manifests/3.20?ns=docker.io'"
)]
pub struct Cli {
    /// Ociregistry config file (YAML); flags given here beat its values.
    #[arg(long, global = true, value_name = "FILE", env = "OCIREGISTRY_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Cache directory [config: imagePath] [default: ./ociregistry-cache].
    #[arg(long, global = true, value_name = "DIR")]
    pub image_path: Option<PathBuf>,
    /// Directory holding provider plugins [config: pluginDir] [default: plugins/ next to the binary, else the binary's directory].
    #[arg(long, global = true, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// error, warn, info, debug, trace, or a tracing filter [config: logLevel] [default: info].
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry mirror.
    Serve(ServeArgs),
    /// List the provider plugins found in the plugin directory, or check configured credentials.
    Providers(ProvidersArgs),
    /// List the cached images: repository, tag or digest, type, created, last pulled, size.
    List(crate::inventory::commands::ListArgs),
    /// Remove cached images by pattern or age, then the blobs nothing references any more.
    Prune(crate::inventory::commands::PruneArgs),
    /// Forget one cached tag so that its next pull fetches it from the upstream again.
    Invalidate(crate::inventory::commands::InvalidateArgs),
}

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
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub pull_timeout: Option<Duration>,
    /// Serve the admin API on this IP:PORT (loopback unless admin.token is set) [config: admin.address].
    #[arg(long, value_name = "IP:PORT")]
    pub admin_address: Option<String>,
}

/// `providers` flags.
#[derive(Debug, Args)]
pub struct ProvidersArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: providers::listing::Output,
    /// Fetch each configured registry's credential once and report the result (never the secret).
    #[arg(long)]
    pub check: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// Runs the command line; the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ociregistry: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A failure that stops the program, reported as one line.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something at start-up.
    #[error("{0}")]
    Startup(String),
}

fn execute(cli: Cli) -> Result<ExitCode, FatalError> {
    let file = match &cli.config_file {
        Some(path) => {
            let (cfg, text) = config::load_file(path)?;
            Some((cfg, text, path.clone()))
        }
        None => None,
    };
    let (port, host, default_ns, air_gapped, always_pull_latest, pull_timeout) = match &cli.command
    {
        Command::Serve(s) => (
            s.port,
            s.host.clone(),
            s.default_ns.clone(),
            s.air_gapped,
            s.always_pull_latest,
            s.pull_timeout,
        ),
        _ => (None, None, None, false, false, None),
    };
    let admin_address = match &cli.command {
        Command::Serve(s) => s.admin_address.clone(),
        _ => None,
    };
    let settings = config::resolve(
        file,
        Overrides {
            image_path: cli.image_path.clone(),
            port,
            host,
            plugin_dir: cli.plugin_dir.clone(),
            default_ns,
            air_gapped,
            always_pull_latest,
            pull_timeout,
            admin_address,
        },
    )?;
    logging::init(
        cli.log_level.as_deref().or(settings.log_level.as_deref()),
        cli.log_format,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ociregistry")
        .build()
        .map_err(|e| FatalError::Startup(format!("cannot start the runtime: {e}")))?;
    match cli.command {
        Command::Serve(_) => runtime
            .block_on(serve(settings))
            .map(|()| ExitCode::SUCCESS),
        Command::Providers(args) => {
            runtime.block_on(providers::listing::run(&settings, args.output, args.check))
        }
        Command::List(args) => {
            crate::inventory::commands::list(&settings, &args).map_err(FatalError::Startup)
        }
        Command::Prune(args) => {
            crate::inventory::commands::prune_cmd(&settings, &args).map_err(FatalError::Startup)
        }
        Command::Invalidate(args) => {
            crate::inventory::commands::invalidate(&settings, &args).map_err(FatalError::Startup)
        }
    }
}

async fn serve(settings: Settings) -> Result<(), FatalError> {
    if !settings.ignored_keys.is_empty() {
        tracing::warn!(keys = ?settings.ignored_keys, "config keys accepted but not supported by this version; ignored");
    }
    let store = BlobStore::open(&settings.image_path).map_err(|e| {
        FatalError::Startup(format!(
            "cannot use image path {}: {e}",
            settings.image_path.display()
        ))
    })?;
    let managed = providers::start(&settings).map_err(|e| FatalError::Startup(e.to_string()))?;
    let upstreams =
        Upstreams::new(&settings, managed).map_err(|e| FatalError::Startup(e.to_string()))?;
    let listener = server::bind(&settings.host, settings.port)
        .await
        .map_err(|e| {
            FatalError::Startup(format!(
                "cannot listen on {}:{}: {e}",
                settings.host, settings.port
            ))
        })?;
    let image_path =
        std::fs::canonicalize(&settings.image_path).unwrap_or_else(|_| settings.image_path.clone());
    tracing::info!(
        image_path = %image_path.display(),
        default_ns = %settings.default_ns,
        air_gapped = settings.air_gapped,
        registries = settings.registries.len(),
        "starting"
    );
    let app = Arc::new(App::new(settings, store, upstreams));
    crate::inventory::background::start(&app)
        .await
        .map_err(FatalError::Startup)?;
    let stop = crate::inventory::stop_requested(server::stop_signal(), app.clone());
    let served = server::serve(listener, app.clone(), stop).await;
    app.inventory.access.flush(&app.store).await;
    served.map_err(|e| FatalError::Startup(e.to_string()))
}
