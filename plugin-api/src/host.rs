//! The host side: finding, loading and calling provider plugins.
//!
//! ```no_run
//! use ociregistry_plugin_api::host;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let plugin = host::find("/usr/lib/ociregistry/plugins".as_ref(), "ecr")?;
//! let provider = plugin.create("profile=default,region=us-east-1")?;
//! let credential = provider.fetch()?; // blocking: call it on a blocking thread
//! # Ok(()) }
//! ```
//!
//! Libraries are loaded with `dlopen` (through abi_stable) and never unloaded.
//! Plugin log events reach the sink set with [`set_log_sink`]; without one they are
//! re-emitted as `tracing` events of this crate (target `ociregistry_plugin_api::host`, with
//! `plugin` and `target` fields).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use abi_stable::library::{LibraryError, RawLibrary, lib_header_from_raw_library};
use abi_stable::std_types::{RResult, RStr};
use tracing::level_filters::LevelFilter;

use crate::abi::{
    ABI_TAG_LEN, ABI_VERSION_SYMBOL, ABI_VERSION_SYMBOL_NUL, EXT_V11_SYMBOL, EXT_V11_SYMBOL_NUL,
    FfiCreateContext, FfiLogLevel, FfiLogSink, FfiProviderBox, FfiProviderV11Box, PluginExtV11,
    PluginExtV11Export, PluginRootRef, abi_compatible, parse_abi_tag,
};
use crate::export::{credential_from_ffi, credential_from_ffi_v11, from_ffi_error, request_to_ffi};
use crate::{CreateContext, Credential, FetchReason, FetchRequest, PluginError, ProviderOpts};

/// The plugin-api ABI version this host speaks (`MAJOR.MINOR`). It accepts plugins of the
/// same major version and an equal or lower minor version.
pub const ABI_VERSION: &str = crate::abi::ABI_VERSION;

/// Severity of a plugin log event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// `ERROR`
    Error,
    /// `WARN`
    Warn,
    /// `INFO`
    Info,
    /// `DEBUG`
    Debug,
    /// `TRACE`
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// One log event from a plugin.
#[derive(Clone, Copy, Debug)]
pub struct LogRecord<'a> {
    /// The provider name of the plugin that logged it.
    pub plugin: &'a str,
    /// Its level.
    pub level: LogLevel,
    /// Its `tracing` target inside the plugin (e.g. `aws_config::profile`).
    pub target: &'a str,
    /// The message followed by the event's other fields as ` key=value`.
    pub message: &'a str,
}

static SINK: RwLock<Option<fn(&LogRecord<'_>)>> = RwLock::new(None);

/// Sets where plugin log events go (it may be called again; the last sink wins). Plugins
/// only send events up to the most verbose level enabled in this process's `tracing` at
/// the time of the event ([`LevelFilter::current`]); filter further in the sink.
pub fn set_log_sink(sink: fn(&LogRecord<'_>)) {
    let mut guard = SINK.write().unwrap_or_else(|e| e.into_inner());
    *guard = Some(sink);
}

fn default_sink(r: &LogRecord<'_>) {
    let (plugin, target, message) = (r.plugin, r.target, r.message);
    match r.level {
        LogLevel::Error => tracing::error!(plugin, target, "{message}"),
        LogLevel::Warn => tracing::warn!(plugin, target, "{message}"),
        LogLevel::Info => tracing::info!(plugin, target, "{message}"),
        LogLevel::Debug => tracing::debug!(plugin, target, "{message}"),
        LogLevel::Trace => tracing::trace!(plugin, target, "{message}"),
    }
}

extern "C" fn host_log(plugin: RStr<'_>, level: FfiLogLevel, target: RStr<'_>, message: RStr<'_>) {
    // A panic must not unwind into the plugin (it would abort).
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let level = match level {
            FfiLogLevel::Error => LogLevel::Error,
            FfiLogLevel::Warn => LogLevel::Warn,
            FfiLogLevel::Info => LogLevel::Info,
            FfiLogLevel::Debug => LogLevel::Debug,
            FfiLogLevel::Trace => LogLevel::Trace,
        };
        let record = LogRecord {
            plugin: plugin.as_str(),
            level,
            target: target.as_str(),
            message: message.as_str(),
        };
        let sink = *SINK.read().unwrap_or_else(|e| e.into_inner());
        sink.unwrap_or(default_sink)(&record);
    }));
}

extern "C" fn current_max_level() -> u8 {
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Why a file could not be loaded as a plugin. Each message is one line naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The dynamic loader refused the file (not a shared library, wrong architecture,
    /// missing dependency, ...).
    #[error("plugin {}: cannot load library: {reason}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A shared library that does not export an ociregistry plugin.
    #[error("plugin {}: not an ociregistry plugin (no `{ABI_VERSION_SYMBOL}` symbol)", path.display())]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// A plugin built against a plugin-api whose ABI this host does not speak.
    #[error("plugin {}: built for plugin-api ABI {found}, this host speaks {expected}", path.display())]
    IncompatibleAbi {
        /// The file.
        path: PathBuf,
        /// The ABI version the plugin declares.
        found: String,
        /// [`ABI_VERSION`].
        expected: String,
    },
    /// The ABI versions agree but the types do not (abi_stable's layout check failed), or
    /// the version marker is unreadable.
    #[error("plugin {}: incompatible plugin (ABI {found}, host {expected}): {reason}", path.display())]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The ABI version the plugin declares, or `?` when unreadable.
        found: String,
        /// [`ABI_VERSION`].
        expected: String,
        /// abi_stable's explanation, shortened to one line.
        reason: String,
    },
    /// The plugin's root module could not be initialised or describes itself badly.
    #[error("plugin {}: initialisation failed: {reason}", path.display())]
    Init {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl LoadError {
    /// The file that failed to load.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::Open { path, .. }
            | LoadError::NotAPlugin { path }
            | LoadError::IncompatibleAbi { path, .. }
            | LoadError::Incompatible { path, .. }
            | LoadError::Init { path, .. } => path,
        }
    }
}

/// Why [`find`] found no usable plugin for a provider name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    /// The plugin directory could not be listed.
    #[error("cannot read plugin directory {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No plugin in the directory provides the name.
    #[error("no plugin provides \"{name}\" in {} (found: {}; failed: {})", dir.display(), list_found(found), list_failed(failures))]
    NotFound {
        /// The provider name looked for.
        name: String,
        /// The directory.
        dir: PathBuf,
        /// `(provider name, file)` of each plugin that loaded.
        found: Vec<(String, PathBuf)>,
        /// The files that failed to load.
        failures: Vec<(PathBuf, LoadError)>,
    },
    /// Several plugins in the directory provide the name.
    #[error("more than one plugin provides \"{name}\" in {}: {}", dir.display(), files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The provider name looked for.
        name: String,
        /// The directory.
        dir: PathBuf,
        /// The files providing it.
        files: Vec<PathBuf>,
    },
}

fn list_found(found: &[(String, PathBuf)]) -> String {
    if found.is_empty() {
        return "none".to_owned();
    }
    found
        .iter()
        .map(|(name, path)| {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default();
            format!("{name} [{file}]")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_failed(failures: &[(PathBuf, LoadError)]) -> String {
    if failures.is_empty() {
        return "none".to_owned();
    }
    failures
        .iter()
        .map(|(_, e)| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// The provider name used in config (`auth.token.provider`).
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The plugin-api ABI version it was built for.
    pub abi_version: String,
    /// One line.
    pub description: String,
    /// The `providerOpts` keys it accepts.
    pub options: Vec<OptionInfo>,
    /// The file it was loaded from.
    pub path: PathBuf,
}

/// One `providerOpts` key a plugin accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionInfo {
    /// The key.
    pub key: String,
    /// One line.
    pub description: String,
    /// Whether it must be given.
    pub required: bool,
}

/// A loaded plugin. Cheap to clone; the library stays loaded for the life of the process.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    root: PluginRootRef,
    /// The 1.1 entry points; None for a 1.0 plugin.
    ext_v11: Option<&'static PluginExtV11>,
    info: PluginInfo,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.inner.info)
            .finish()
    }
}

/// Shortens a possibly multi-line message to one line of bounded length.
fn one_line(text: &str, path: &Path) -> String {
    const MAX: usize = 400;
    let mut s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // dlerror() messages usually start with the path again.
    let prefix = format!("{}: ", path.display());
    if let Some(rest) = s.strip_prefix(&prefix) {
        s = rest.to_owned();
    }
    if s.chars().count() > MAX {
        s = s.chars().take(MAX).collect::<String>() + "...";
    }
    s
}

/// abi_stable's layout-check report (a multi-kilobyte dump of both type trees) as one line:
/// the first error, the plugin-api type it was found in, and what to do.
fn layout_mismatch(report: &str, path: &Path) -> String {
    let crate_major = env!("CARGO_PKG_VERSION")
        .rsplit_once('.')
        .map(|(major, _)| major)
        .unwrap_or("0.1");
    let report = report.split_whitespace().collect::<Vec<_>>().join(" ");
    let report = report.as_str();
    let Some(at) = report.find("Error:") else {
        return one_line(report, path);
    };
    let error: String = report[at + "Error:".len()..]
        .split(" Expected")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .take(12)
        .collect::<Vec<_>>()
        .join(" ");
    // The compared type: the first one after the last "Layout of expected type:" before
    // the error (abi_stable prints the expected layout, then the found one, then errors).
    let before = &report[..at];
    let from = before
        .rfind("Layout of expected type:")
        .map_or(0, |i| i + "Layout of expected type:".len());
    let ty = before[from..]
        .split("type:")
        .nth(1)
        .and_then(|rest| rest.split(" size:").next())
        .filter(|name| !name.is_empty() && !name.contains(' '));
    let what = match ty {
        Some(ty) => format!("type {ty} differs from this host's ({error})"),
        None => format!("its types differ from this host's ({error})"),
    };
    one_line(
        &format!("{what}; rebuild it against plugin-api {crate_major}.x"),
        path,
    )
}

impl Plugin {
    /// Loads the plugin in `path`, checks its ABI version and layout, and hands it the log
    /// sink. Loading the same file twice gives two handles on the same library.
    pub fn load(path: &Path) -> Result<Plugin, LoadError> {
        let path = path.to_path_buf();
        let raw = RawLibrary::load_at(&path).map_err(|e| {
            let reason = match &e {
                LibraryError::OpenError { err, .. } => err.to_string(),
                other => other.to_string(),
            };
            LoadError::Open {
                reason: one_line(&reason, &path),
                path: path.clone(),
            }
        })?;
        // Never unloaded: code and statics of the library may be referenced for the rest of
        // the process's life (abi_stable's own loaders leak the same way).
        let raw: &'static RawLibrary = Box::leak(Box::new(raw));

        // SAFETY: the symbol, when present, is the `[u8; ABI_TAG_LEN]` static emitted by
        // `export_provider!`; its name and type are fixed for every ABI version. We copy the
        // bytes out and keep no reference.
        let tag: [u8; ABI_TAG_LEN] = unsafe {
            match raw.get::<*const [u8; ABI_TAG_LEN]>(ABI_VERSION_SYMBOL_NUL) {
                Ok(sym) => std::ptr::read(*sym),
                Err(_) => return Err(LoadError::NotAPlugin { path }),
            }
        };
        let Some(found) = parse_abi_tag(&tag).map(str::to_owned) else {
            return Err(LoadError::Incompatible {
                path,
                found: "?".to_owned(),
                expected: ABI_VERSION.to_owned(),
                reason: "unreadable ABI version marker".to_owned(),
            });
        };
        if !abi_compatible(ABI_VERSION, &found) {
            return Err(LoadError::IncompatibleAbi {
                path,
                found,
                expected: ABI_VERSION.to_owned(),
            });
        }

        let ext_v11 = if abi_compatible(&found, "1.1") {
            // SAFETY: a plugin tagged 1.1 or later exports this symbol as a
            // `PluginExtV11Export` static (its name and type are fixed for the 1.x ABIs); the
            // library is leaked, so the reference stays valid. Only `layout`, a plain
            // reference to the layout the plugin was built with, is read before abi_stable's
            // checker has compared it with ours.
            let export: &'static PluginExtV11Export = unsafe {
                match raw.get::<*const PluginExtV11Export>(EXT_V11_SYMBOL_NUL) {
                    Ok(sym) => &**sym,
                    Err(_) => {
                        return Err(LoadError::Incompatible {
                            path,
                            found,
                            expected: ABI_VERSION.to_owned(),
                            reason: format!("no `{EXT_V11_SYMBOL}` symbol"),
                        });
                    }
                }
            };
            abi_stable::abi_stability::abi_checking::check_layout_compatibility(
                <PluginExtV11 as abi_stable::StableAbi>::LAYOUT,
                export.layout,
            )
            .map_err(|e| LoadError::Incompatible {
                reason: layout_mismatch(&e.to_string(), &path),
                path: path.clone(),
                found: found.clone(),
                expected: ABI_VERSION.to_owned(),
            })?;
            Some(&export.ext)
        } else {
            None
        };

        // SAFETY: `raw` is leaked above, so the 'static references inside the header stay
        // valid; the symbol's type is checked by abi_stable's header validation.
        let header =
            unsafe { lib_header_from_raw_library(raw) }.map_err(|e| LoadError::Incompatible {
                reason: layout_mismatch(&e.to_string(), &path),
                path: path.clone(),
                found: found.clone(),
                expected: ABI_VERSION.to_owned(),
            })?;
        let root = header
            .init_root_module::<PluginRootRef>()
            .map_err(|e| match e {
                LibraryError::RootModule { .. } => LoadError::Init {
                    reason: one_line(&e.to_string(), &path),
                    path: path.clone(),
                },
                other => LoadError::Incompatible {
                    reason: layout_mismatch(&other.to_string(), &path),
                    path: path.clone(),
                    found: found.clone(),
                    expected: ABI_VERSION.to_owned(),
                },
            })?;

        (root.init_logging())(FfiLogSink {
            max_level: current_max_level,
            log: host_log,
        });
        let ffi = (root.info())();
        let info = PluginInfo {
            name: ffi.name.into_string(),
            version: ffi.version.into_string(),
            abi_version: found,
            description: ffi.description.into_string(),
            options: ffi
                .options
                .into_iter()
                .map(|o| OptionInfo {
                    key: o.key.into_string(),
                    description: o.description.into_string(),
                    required: o.required,
                })
                .collect(),
            path: path.clone(),
        };
        if info.name.is_empty() || info.name.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(LoadError::Init {
                path,
                reason: format!("invalid provider name {:?}", info.name),
            });
        }
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                root,
                ext_v11,
                info,
            }),
        })
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    /// The provider name (`info().name`).
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// Checks a `providerOpts` string against the plugin's declared options without calling
    /// into the plugin (the same check [`Plugin::create`] does inside it).
    pub fn check_opts(&self, provider_opts: &str) -> Result<(), PluginError> {
        let info = &self.inner.info;
        ProviderOpts::parse_with(
            &info.name,
            provider_opts,
            info.options.iter().map(|o| (o.key.as_str(), o.required)),
        )
        .map(drop)
    }

    /// Creates a provider instance from a `providerOpts` string. Blocking: a plugin may do
    /// I/O here (the ECR plugin loads the AWS configuration).
    pub fn create(&self, provider_opts: &str) -> Result<ProviderHandle, PluginError> {
        self.create_with(provider_opts, &CreateContext::new("", ""))
    }

    /// Creates a provider instance for the registry entry in `context`. A 1.1 plugin gets
    /// the context; a 1.0 plugin's `create` is called with the options alone.
    pub fn create_with(
        &self,
        provider_opts: &str,
        context: &CreateContext,
    ) -> Result<ProviderHandle, PluginError> {
        let opts = RStr::from_str(provider_opts);
        let provider = match self.inner.ext_v11 {
            Some(ext) => {
                let context = FfiCreateContext {
                    registry: context.registry.as_str().into(),
                    url: context.url.as_str().into(),
                };
                match (ext.create_with)(opts, context) {
                    RResult::ROk(p) => Instance::V11(p),
                    RResult::RErr(e) => return Err(from_ffi_error(e)),
                }
            }
            None => match (self.inner.root.create())(opts) {
                RResult::ROk(p) => Instance::V10(p),
                RResult::RErr(e) => return Err(from_ffi_error(e)),
            },
        };
        Ok(ProviderHandle {
            inner: Arc::new(HandleInner {
                provider,
                plugin: self.clone(),
            }),
        })
    }
}

/// A provider instance inside a plugin. Cheap to clone; dropped in the plugin when the last
/// clone goes.
#[derive(Clone)]
pub struct ProviderHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    // Field order: the provider is dropped before the plugin handle.
    provider: Instance,
    plugin: Plugin,
}

/// A provider instance as its plugin's ABI made it.
enum Instance {
    V10(FfiProviderBox),
    V11(FfiProviderV11Box),
}

impl fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("provider", &self.inner.plugin.name())
            .finish_non_exhaustive()
    }
}

impl ProviderHandle {
    /// Gets a credential. Blocking, possibly for long (network calls, or a broken plugin
    /// that hangs): call it on a blocking thread with a timeout. A panic in the plugin comes
    /// back as an error of kind [`crate::PluginErrorKind::Panicked`].
    ///
    /// The same as [`ProviderHandle::fetch_with`] with no repository, reason
    /// [`FetchReason::FirstUse`] and a deadline an hour away.
    pub fn fetch(&self) -> Result<Credential, PluginError> {
        let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        self.fetch_with(&FetchRequest::new(FetchReason::FirstUse, deadline))
    }

    /// Gets a credential for `request`. A 1.1 plugin sees the request; for a 1.0 plugin
    /// its `fetch` is called. Blocking, like [`ProviderHandle::fetch`]. A credential kind
    /// this host does not know is an error.
    pub fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, PluginError> {
        match &self.inner.provider {
            Instance::V11(p) => match p.fetch_with(request_to_ffi(request)) {
                RResult::ROk(c) => credential_from_ffi_v11(c),
                RResult::RErr(e) => Err(from_ffi_error(e)),
            },
            Instance::V10(p) => match p.fetch() {
                RResult::ROk(c) => Ok(credential_from_ffi(c)),
                RResult::RErr(e) => Err(from_ffi_error(e)),
            },
        }
    }

    /// The plugin this provider belongs to.
    pub fn plugin(&self) -> &Plugin {
        &self.inner.plugin
    }
}

/// The result of [`scan_dir`].
#[derive(Debug, Default)]
pub struct Scan {
    /// The plugins that loaded, in file name order.
    pub plugins: Vec<Plugin>,
    /// The files that did not, in file name order.
    pub failures: Vec<(PathBuf, LoadError)>,
}

/// Whether `path` has a shared library file name on some platform (`.so`, `.dylib`, `.dll`).
pub fn is_library_file_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// Loads every `*.so`, `*.dylib` and `*.dll` file in `dir` (not recursively), sorted by
/// file name. Fails only when `dir` cannot be listed.
pub fn scan_dir(dir: &Path) -> std::io::Result<Scan> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // is_file follows symlinks.
        if is_library_file_name(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut scan = Scan::default();
    for path in files {
        match Plugin::load(&path) {
            Ok(p) => scan.plugins.push(p),
            Err(e) => scan.failures.push((path, e)),
        }
    }
    Ok(scan)
}

/// Finds the plugin providing `name` in `dir`. The error lists the providers that were
/// found and the files that failed to load.
pub fn find(dir: &Path, name: &str) -> Result<Plugin, FindError> {
    let scan = scan_dir(dir).map_err(|source| FindError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut matching: Vec<Plugin> = scan
        .plugins
        .iter()
        .filter(|p| p.name() == name)
        .cloned()
        .collect();
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => Err(FindError::NotFound {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            found: scan
                .plugins
                .iter()
                .map(|p| (p.name().to_owned(), p.info().path.clone()))
                .collect(),
            failures: scan.failures,
        }),
        _ => Err(FindError::Ambiguous {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            files: matching.iter().map(|p| p.info().path.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Plugin>();
        check::<ProviderHandle>();
    }

    #[test]
    fn abi_versions() {
        assert!(abi_compatible("1.0", "1.0"));
        assert!(abi_compatible("1.2", "1.0"));
        assert!(!abi_compatible("1.0", "1.1"));
        assert!(abi_compatible("1.1", "1.0"));
        assert!(abi_compatible("1.1", "1.1"));
        assert!(!abi_compatible("1.0", "2.0"));
        assert!(!abi_compatible("1.0", "x"));
        let tag = crate::abi::abi_tag("2.0");
        assert_eq!(parse_abi_tag(&tag), Some("2.0"));
        assert_eq!(parse_abi_tag(&[0u8; ABI_TAG_LEN]), None);
    }

    #[test]
    fn load_error_messages() {
        let e = LoadError::IncompatibleAbi {
            path: "/x/libfoo.so".into(),
            found: "2.0".into(),
            expected: "1.0".into(),
        };
        assert_eq!(
            e.to_string(),
            "plugin /x/libfoo.so: built for plugin-api ABI 2.0, this host speaks 1.0"
        );
        let e = LoadError::NotAPlugin {
            path: "/x/libz.so".into(),
        };
        assert_eq!(
            e.to_string(),
            "plugin /x/libz.so: not an ociregistry plugin (no `ociregistry_plugin_abi_version` symbol)"
        );
    }

    #[test]
    fn layout_mismatches_are_one_line() {
        let report = "Compared <this>: --- Type Layout --- type:PrefixRef<'a, PluginRoot> size:8 align:8 package:'abi_stable' version:'0.11.3' data: Struct with Fields: field_name:0 type:PluginRoot size:24 align:8 package:'ociregistry-plugin-api' version:'0.1.0' field_name:create type:AFunctionPointer size:8 align:8 package:'abi_stable' version:'0.11.3'\n Layout of expected type: --- Type Layout --- type:FfiProvider_TO<'lt> size:24 align:8 package:'ociregistry-plugin-api' version:'0.1.0' field_name:obj type:RObject<'lt> size:24\nError:too many fields Expected: 4 Found: 3 0 error(s)inside: <other> ...";
        let line = layout_mismatch(report, Path::new("/p/libx.so"));
        assert_eq!(
            line,
            "type FfiProvider_TO<'lt> differs from this host's (too many fields); rebuild it against plugin-api 0.1.x"
        );
        // A real report from abi_stable's checker.
        let real = abi_stable::abi_stability::abi_checking::check_layout_compatibility(
            <crate::abi::FfiCreateContext as abi_stable::StableAbi>::LAYOUT,
            <crate::abi::FfiFetchRequest as abi_stable::StableAbi>::LAYOUT,
        )
        .unwrap_err()
        .to_string();
        let line = layout_mismatch(&real, Path::new("/p/libx.so"));
        assert!(line.starts_with("type FfiCreateContext differs"), "{line}");
        assert!(line.len() < 300 && !line.contains('\n'), "{line}");
        assert!(
            line.ends_with("rebuild it against plugin-api 0.1.x"),
            "{line}\n{real}"
        );
        assert_eq!(
            layout_mismatch("something\nelse", Path::new("/p/libx.so")),
            "something else"
        );
    }

    #[test]
    fn not_a_library() {
        let dir = std::env::temp_dir().join(format!(
            "ociregistry-plugin-api-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("libjunk.so");
        std::fs::write(&file, b"not an ELF file").unwrap();
        std::fs::write(dir.join("README.txt"), b"ignored").unwrap();
        let e = Plugin::load(&file).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("plugin {}: cannot load library: ", file.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'));

        let scan = scan_dir(&dir).unwrap();
        assert!(scan.plugins.is_empty());
        assert_eq!(scan.failures.len(), 1);

        let e = find(&dir, "ecr").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("no plugin provides \"ecr\" in {} (found: none; failed: plugin {}: cannot load library:", dir.display(), file.display())), "{msg}");

        let e = find(&dir.join("missing"), "ecr").unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read plugin directory "),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_library_that_is_not_a_plugin() {
        // Any shared library on the system that is certainly not a plugin.
        let candidates = [
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
            "/lib/aarch64-linux-gnu/libm.so.6",
            "/usr/lib/libm.so.6",
        ];
        let Some(lib) = candidates.iter().map(Path::new).find(|p| p.exists()) else {
            return;
        };
        let e = Plugin::load(lib).unwrap_err();
        assert_eq!(
            e,
            LoadError::NotAPlugin {
                path: lib.to_path_buf()
            }
        );
    }
}
