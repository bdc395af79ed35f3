//! The command line: `serve`, `providers` and `load`, global flags shared by them, and turning
//! flags plus config file into [`Settings`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cache::BlobStore;
use crate::config::{self, ConfigError, Overrides, Settings};
use crate::logging::{self, LogFormat};
use crate::observability;
use crate::preload::{self, platform::Platform};
use crate::providers;
use crate::server::{self, App};
use crate::upstream::Upstreams;

/// A pull-through caching OCI registry: one endpoint for every upstream registry, images
/// cached on local disk and served even when the upstream is down.
#[derive(Debug, Parser)]
#[command(name = "ociregistry", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  ociregistry serve                          # defaults: port 8080, cache in ./ociregistry-cache\n  ociregistry --config-file config.yaml serve\n  ociregistry providers --output json\n  ociregistry --config-file config.yaml load --image-file images.txt --platform linux/arm64\n\nPull through it:\n  skopeo copy --src-tls-verify=false docker://localhost:8080/quay.io/org/img:tag oci:img\n  curl 'http://localhost:8080/v2/library/alpine/manifests/3.20?ns=docker.io'"
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
    /// Append log lines to FILE instead of writing them to stderr (created if missing; works
    /// with logrotate's copytruncate) [config: logFile] [default: stderr].
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
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
    /// Pull the images listed in a file into the cache (warm it), then exit; exit code 0 only
    /// when every line was valid and every image is cached. Safe beside a running server.
    Load(LoadArgs),
    /// List the cached images: repository, tag or digest, type, created, last pulled, size.
    List(crate::inventory::commands::ListArgs),
    /// Remove cached images by pattern or age, then the blobs nothing references any more.
    Prune(crate::inventory::commands::PruneArgs),
    /// Forget one cached tag so that its next pull fetches it from the upstream again.
    Invalidate(crate::inventory::commands::InvalidateArgs),
}

/// `load` flags.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Image list: one reference per line (`quay.io/org/img:tag`, `alpine:3.20`,
    /// `127.0.0.1:5000/app@sha256:...`), `#` comments and blank lines ignored
    /// [config: imageFile].
    #[arg(long, value_name = "FILE")]
    pub image_file: Option<PathBuf>,
    /// Platform taken from multi-platform images, os/arch[/variant]; repeatable
    /// [config: os, arch] [default: linux/<this machine's architecture>].
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<Platform>,
    /// Registry for references that name none [config: defaultNs] [default: docker.io].
    #[arg(long, value_name = "REGISTRY")]
    pub default_ns: Option<String>,
    /// Images pulled at the same time.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parallel: u16,
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
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Serve Prometheus metrics at /metrics on this port (own listener at --host; 0 picks a free one) [config: metrics].
    #[arg(long, value_name = "PORT")]
    pub metrics: Option<u16>,
    /// Serve /healthz (liveness) and /readyz (readiness, credential states) on this port [config: health].
    #[arg(long, value_name = "PORT")]
    pub health: Option<u16>,
}

/// `providers` flags.
#[derive(Debug, Args)]
pub struct ProvidersArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Fetch each configured registry's credential once and report the result (never the secret).
    #[arg(long)]
    pub check: bool,
}

/// Threads for blocking work (file reads and writes, plugin calls).
const BLOCKING_THREADS: usize = 64;

/// Reads a `--*-timeout`/`--*-grace` flag (`30s`, `5m`, milliseconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// Output format of the verbs that list things (`providers`, `list`, `prune`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Prints `rows` as aligned columns: every cell but a row's last is padded to its column's
/// width, two spaces apart.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
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
    // What each verb's own flags add to the config file's values.
    let common = Overrides {
        image_path: cli.image_path.clone(),
        plugin_dir: cli.plugin_dir.clone(),
        log_file: cli.log_file.clone(),
        ..Overrides::default()
    };
    let (overrides, image_list, platforms) = match &cli.command {
        Command::Serve(s) => (
            Overrides {
                port: s.port,
                host: s.host.clone(),
                default_ns: s.default_ns.clone(),
                air_gapped: s.air_gapped,
                always_pull_latest: s.always_pull_latest,
                pull_timeout: s.pull_timeout,
                admin_address: s.admin_address.clone(),
                shutdown_grace: s.shutdown_grace,
                metrics: s.metrics,
                health: s.health,
                ..common
            },
            s.preload_images.clone(),
            s.platforms.clone(),
        ),
        Command::Load(l) => (
            Overrides {
                default_ns: l.default_ns.clone(),
                ..common
            },
            l.image_file.clone(),
            l.platforms.clone(),
        ),
        _ => (common, None, Vec::new()),
    };
    let mut settings = config::resolve(file, overrides)?;
    if !platforms.is_empty() {
        settings.preload.platforms = platforms;
    }
    match &cli.command {
        Command::Serve(_) if image_list.is_some() => settings.preload.preload_images = image_list,
        Command::Load(_) if image_list.is_some() => settings.preload.image_file = image_list,
        _ => {}
    }
    // `load` on a terminal draws progress bars: keep routine log lines out of their way.
    let quiet = matches!(cli.command, Command::Load(_))
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    logging::init(
        cli.log_level
            .as_deref()
            .or(settings.log_level.as_deref())
            .or(quiet.then_some("warn")),
        cli.log_format,
        settings.log_file.as_deref(),
    )
    .map_err(FatalError::Startup)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ociregistry")
        // File I/O and plugin calls run here; a bounded pool keeps memory bounded (each
        // thread costs a stack and a malloc arena) when hundreds of clients read at once.
        .max_blocking_threads(BLOCKING_THREADS)
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
        Command::Load(args) => runtime.block_on(load(settings, usize::from(args.parallel))),
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

/// `ociregistry load`: preloads the image list into the cache; exit code 1 if anything failed.
async fn load(settings: Settings, parallel: usize) -> Result<ExitCode, FatalError> {
    let path = settings.preload.image_file.clone().ok_or_else(|| {
        FatalError::Startup(
            "no image list: give --image-file FILE or imageFile in the config file".into(),
        )
    })?;
    let list = preload::read_list(&path, &settings.default_ns)
        .map_err(|e| FatalError::Startup(e.to_string()))?;
    // A server may be using the same cache: leave its downloads in progress alone.
    let store = BlobStore::open_alongside(&settings.image_path).map_err(|e| {
        FatalError::Startup(format!(
            "cannot use image path {}: {e}",
            settings.image_path.display()
        ))
    })?;
    let managed = providers::start(&settings)
        .await
        .map_err(|e| FatalError::Startup(e.to_string()))?;
    let upstreams =
        Upstreams::new(&settings, managed).map_err(|e| FatalError::Startup(e.to_string()))?;
    let mut opts = preload::Options::new(&settings.preload.platforms);
    opts.images_at_once = parallel;
    tracing::info!(list = %path.display(), images = list.images.len(), invalid_lines = list.bad.len(),
        platforms = %opts.platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        "preloading");
    let app = Arc::new(App::new(settings, store, upstreams));
    let reporter = preload::report::Reporter::for_stderr(list.images.len());
    let summary = preload::run(&app, &list, &opts, &reporter).await;
    for f in &summary.failures {
        println!("FAILED {}: {}", f.what, f.reason);
    }
    println!("{}", summary.line());
    Ok(if summary.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn serve(settings: Settings) -> Result<(), FatalError> {
    server::tls::check(&settings)?;
    let store = BlobStore::open(&settings.image_path).map_err(|e| {
        FatalError::Startup(format!(
            "cannot use image path {}: {e}",
            settings.image_path.display()
        ))
    })?;
    let preload_list = match &settings.preload.preload_images {
        Some(path) => Some(
            preload::read_list(path, &settings.default_ns)
                .map_err(|e| FatalError::Startup(e.to_string()))?,
        ),
        None => None,
    };
    let managed = providers::start(&settings)
        .await
        .map_err(|e| FatalError::Startup(e.to_string()))?;
    let registry_credentials = observability::health::credentials(&settings, &managed);
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
    let (metrics_port, health_port, host) = (
        settings.metrics_port,
        settings.health_port,
        settings.host.clone(),
    );
    let app = Arc::new(App::new(settings, store, upstreams));
    if let Some(list) = preload_list {
        let opts = preload::Options::new(&app.settings.preload.platforms);
        preload::spawn_in_background(app.clone(), list, opts);
    }
    crate::inventory::background::start(&app)
        .await
        .map_err(FatalError::Startup)?;
    let observed = Arc::new(observability::Observed {
        app: app.clone(),
        registries: registry_credentials,
        serving: true.into(),
    });
    observability::start(observed.clone(), &host, metrics_port, health_port)
        .await
        .map_err(FatalError::Startup)?;
    // Readiness turns 503 as soon as a stop is asked for, before open pulls drain.
    let stop = {
        let requested = crate::inventory::stop_requested(server::stop_signal(), app.clone());
        let observed = observed.clone();
        async move {
            requested.await;
            observed.set_serving(false);
        }
    };
    let served = server::serve(listener, app.clone(), stop).await;
    observed.set_serving(false);
    app.inventory.access.flush(&app.store).await;
    served.map_err(|e| FatalError::Startup(e.to_string()))
}
