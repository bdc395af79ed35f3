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
    /// After SIGTERM/SIGINT, how long open pulls and upstream fetches may take to finish
    /// before they are cut, e.g. 10s [config: shutdownGrace] [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
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
        Command::Providers(_) => (None, None, None, false, false, None),
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
            shutdown_grace: match &cli.command {
                Command::Serve(s) => s.shutdown_grace,
                _ => None,
            },
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
        Command::Serve(_) => {
            let served = runtime.block_on(serve(settings));
            // What the grace period cut (connection tasks, a stuck provider call on a
            // blocking thread) must not hold the exit.
            runtime.shutdown_timeout(Duration::from_secs(1));
            served.map(|()| ExitCode::SUCCESS)
        }
        Command::Providers(args) => {
            runtime.block_on(providers::listing::run(&settings, args.output, args.check))
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
    server::serve(listener, app, server::stop_signal())
        .await
        .map_err(|e| FatalError::Startup(e.to_string()))
}
