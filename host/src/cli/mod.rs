//! The command line: the global flags, the verbs (one file each: [`serve`], [`load`],
//! [`providers`], [`list`], [`prune`], [`invalidate`], [`archive`]: `load --archive` and
//! `export`), turning flags plus config file into
//! [`crate::config::Settings`], and every line printed for people or scripts ([`output`]).
//! What the verbs do is the other modules' job; a failure is one [`FatalError`] line.

pub mod archive;
pub mod invalidate;
pub mod list;
pub mod load;
pub mod output;
pub mod providers;
pub mod prune;
pub mod serve;
mod storage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, Overrides};
use crate::inventory::images::ListError;
use crate::inventory::invalidate::{RemoveError, TagReferenceError};
use crate::logging::{self, LogFormat};
use crate::preload::list::ListError as ImageListError;
use crate::providers::ProviderSetupError;
use crate::server::admin::StartError as AdminStartError;
use crate::store::lock::{InventoryLock, LOCK_FILE};
use crate::upstream::SetupError as UpstreamSetupError;
use archive::ExportArgs;
use invalidate::InvalidateArgs;
use list::ListArgs;
use load::LoadArgs;
use providers::ProvidersArgs;
use prune::PruneArgs;
use serve::ServeArgs;

/// A pull-through caching OCI registry: one endpoint for every upstream registry, images
/// cached on local disk and served even when the upstream is down.
#[derive(Debug, Parser)]
#[command(name = "ociregistry", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  ociregistry serve                          # defaults: port 8080, cache in ./ociregistry-cache\n  ociregistry --config-file config.yaml serve\n  ociregistry providers --output json\n  ociregistry --config-file config.yaml load --image-file images.txt --platform linux/arm64\n  ociregistry load --archive alpine.tar      # a docker save or OCI layout tar\n  ociregistry export --output cache.tar --pattern .\n\nPull through it:\n  skopeo copy --src-tls-verify=false docker://localhost:8080/quay.io/org/img:tag oci:img\n  curl 'http://localhost:8080/v2/library/alpine/manifests/3.20?ns=docker.io'"
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
    /// Pull the images listed in a file into the cache (warm it), or import image archives
    /// (--archive: docker save, OCI layouts), then exit; exit code 0 only when every line
    /// was valid and every image is cached. Safe beside a running server.
    Load(LoadArgs),
    /// List the cached images: repository, tag or digest, type, created, last pulled, size.
    List(ListArgs),
    /// Remove cached images by pattern or age, then the blobs nothing references any more.
    Prune(PruneArgs),
    /// Forget one cached tag so that its next pull fetches it from the upstream again.
    Invalidate(InvalidateArgs),
    /// Write cached images (every cached platform) to one OCI image layout tar, for
    /// `load --archive` on another machine.
    Export(ExportArgs),
}

/// Threads for blocking work (file reads and writes, plugin calls).
const BLOCKING_THREADS: usize = 64;

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

/// A failure that stops the program, reported as one line (`ociregistry: <message>`, exit
/// code 1).
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Logging(#[from] crate::logging::LogError),
    /// The tokio runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `load` without an image list.
    #[error(
        "no image list: give --image-file FILE or imageFile in the config file (or --archive FILE... to import image archives)"
    )]
    NoImageList,
    /// The image list could not be read.
    #[error(transparent)]
    ImageList(#[from] ImageListError),
    /// The cache directory cannot be used.
    #[error("cannot use image path {}: {source}", path.display())]
    ImagePath {
        /// `imagePath`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A provider plugin could not be loaded or set up.
    #[error(transparent)]
    Providers(#[from] ProviderSetupError),
    /// A configured upstream could not be set up.
    #[error(transparent)]
    Upstreams(#[from] UpstreamSetupError),
    /// The pull port could not be bound.
    #[error("cannot listen on {host}:{port}: {source}")]
    Listen {
        /// `host`.
        host: String,
        /// `port`.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The admin API could not start.
    #[error(transparent)]
    Admin(#[from] AdminStartError),
    /// The metrics or health listener could not start.
    #[error(transparent)]
    Observability(#[from] crate::observability::StartError),
    /// The pull port's server failed.
    #[error(transparent)]
    Serve(std::io::Error),
    /// The storage backend could not be opened (a bucket that cannot be reached, wrong keys).
    #[error("storage: {0}")]
    Storage(#[source] crate::store::StoreError),
    /// `list`, `prune` or `invalidate` on a directory that holds no cache.
    #[error("no cache at {} (set --image-path or imagePath)", .0.display())]
    NoCache(PathBuf),
    /// The images could not be listed.
    #[error(transparent)]
    List(#[from] ListError),
    /// `prune` without a criterion.
    #[error(
        "prune needs at least one of --pattern, --accessed-before, --created-before \
         (--pattern . selects every image)"
    )]
    NoCriteria,
    /// The inventory lock could not be taken.
    #[error("cannot take the inventory lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The prune failed.
    #[error(transparent)]
    Prune(#[from] crate::inventory::prune::PruneError),
    /// JSON output could not be written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// `invalidate` was given something other than a tag reference.
    #[error(transparent)]
    Reference(#[from] TagReferenceError),
    /// A tag record could not be removed.
    #[error(transparent)]
    Remove(#[from] RemoveError),
    /// `invalidate` of a tag that is not cached.
    #[error("{0} is not cached")]
    NotCached(String),
    /// An archive could not be exported.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// `export`'s selection could not be made.
    #[error(transparent)]
    Select(#[from] crate::archive::export::SelectError),
    /// A bad `--as`.
    #[error(transparent)]
    As(#[from] crate::archive::names::AsError),
    /// `--as` with several archives.
    #[error("--as names the images of one archive: import the archives one at a time")]
    AsManyArchives,
    /// `export` without a selection.
    #[error("export needs --pattern, --since or REF... (--pattern . selects every image)")]
    NoSelection,
}

/// Stops a cache verb when `root` holds no cache.
fn require_cache(root: &Path) -> Result<(), FatalError> {
    if crate::inventory::images::is_cache(root) {
        Ok(())
    } else {
        Err(FatalError::NoCache(root.to_owned()))
    }
}

/// The inventory lock for a verb that changes the cache, saying so if a server on the same
/// cache makes it wait.
fn inventory_lock(root: &Path) -> Result<InventoryLock, FatalError> {
    InventoryLock::acquire(root, || {
        eprintln!("waiting for the inventory lock (a server on this cache is writing it)")
    })
    .map_err(|source| FatalError::Lock {
        path: root.join(LOCK_FILE),
        source,
    })
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
    let quiet = matches!(cli.command, Command::Load(_) | Command::Export(_))
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    logging::init(
        cli.log_level
            .as_deref()
            .or(settings.log_level.as_deref())
            .or(quiet.then_some("warn")),
        cli.log_format,
        settings.log_file.as_deref(),
    )
    .map_err(FatalError::Logging)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ociregistry")
        // File I/O and plugin calls run here; a bounded pool keeps memory bounded (each
        // thread costs a stack and a malloc arena) when hundreds of clients read at once.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .map_err(FatalError::Runtime)?;
    match cli.command {
        Command::Serve(_) => {
            let served = runtime.block_on(serve::serve(settings));
            // What the grace period cut (connection tasks, a stuck provider call on a
            // blocking thread) must not hold the exit.
            runtime.shutdown_timeout(Duration::from_secs(1));
            served.map(|()| ExitCode::SUCCESS)
        }
        Command::Providers(args) => {
            let result = runtime.block_on(providers::run(&settings, &args));
            // A `--check` fetch that timed out still runs on a blocking thread: it must not
            // hold the exit (dropping the runtime would wait for it).
            runtime.shutdown_timeout(Duration::from_millis(100));
            result
        }
        Command::Load(args) if !args.archive.is_empty() => runtime.block_on(
            archive::load_archives(settings, &args.archive, args.as_name.as_deref()),
        ),
        Command::Load(args) => runtime.block_on(load::load(settings, usize::from(args.parallel))),
        Command::List(args) => runtime.block_on(list::list(&settings, &args)),
        Command::Prune(args) => runtime.block_on(prune::prune(&settings, &args)),
        Command::Invalidate(args) => runtime.block_on(invalidate::invalidate(&settings, &args)),
        Command::Export(args) => runtime.block_on(archive::export(&settings, &args)),
    }
}
