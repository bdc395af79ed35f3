//! The types that actually cross the library boundary.
//!
//! Nothing here is meant for plugin authors or for the host: both use the plain Rust types
//! of this crate, and the export macro and [`crate::host`] convert at the edge. The module
//! is public only because macro-generated code in the plugin crate names it.
//!
//! # Compatibility rules
//!
//! Two things are checked when the host loads a library, in this order:
//!
//! 1. The exported symbol [`ABI_VERSION_SYMBOL`], a `[u8; ABI_TAG_LEN]` holding the plugin's
//!    `MAJOR.MINOR` ABI version as NUL-padded UTF-8. Its name, type and meaning never change,
//!    so that any host can read any plugin's version before it looks at anything else and
//!    refuse an incompatible one with a precise message. A host speaking `M.n` accepts a
//!    plugin speaking `M.m` with `m <= n`.
//! 2. abi_stable's own layout check of [`PluginRootRef`] (and everything reachable from it).
//!
//! Within one major version, new functions may be appended to [`PluginRoot`] after its
//! `last_prefix_field` and new methods to [`FfiProvider`] (bumping the minor version);
//! nothing may be removed or changed.
#![allow(missing_docs, missing_debug_implementations, non_local_definitions)]

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
};

/// The plugin-api ABI version this build speaks, `MAJOR.MINOR`.
pub const ABI_VERSION: &str = "1.0";

/// Size of the [`ABI_VERSION_SYMBOL`] static.
pub const ABI_TAG_LEN: usize = 32;

/// Name of the exported static holding the plugin's ABI version.
pub const ABI_VERSION_SYMBOL: &str = "ociregistry_plugin_abi_version";

/// [`ABI_VERSION_SYMBOL`] with the trailing NUL, as the dynamic loader wants it.
pub const ABI_VERSION_SYMBOL_NUL: &[u8] = b"ociregistry_plugin_abi_version\0";

/// abi_stable's name for the root module static (`abi_stable::library::ROOT_MODULE_LOADER_NAME`),
/// spelt out because `#[export_name]` needs a literal. A unit test checks they agree.
pub const ROOT_MODULE_LOADER_NAME: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Builds the content of the [`ABI_VERSION_SYMBOL`] static.
pub const fn abi_tag(version: &str) -> [u8; ABI_TAG_LEN] {
    let bytes = version.as_bytes();
    assert!(bytes.len() < ABI_TAG_LEN, "ABI version string too long");
    let mut tag = [0u8; ABI_TAG_LEN];
    let mut i = 0;
    while i < bytes.len() {
        tag[i] = bytes[i];
        i += 1;
    }
    tag
}

/// Reads an ABI version back out of an [`ABI_VERSION_SYMBOL`] static.
pub fn parse_abi_tag(tag: &[u8; ABI_TAG_LEN]) -> Option<&str> {
    let end = tag.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&tag[..end]).ok()?;
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
        return None;
    }
    Some(s)
}

/// Whether a host speaking `host` accepts a plugin speaking `plugin` (see the module docs).
pub fn abi_compatible(host: &str, plugin: &str) -> bool {
    fn split(v: &str) -> Option<(u32, u32)> {
        let (major, minor) = v.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }
    match (split(host), split(plugin)) {
        (Some((hm, hn)), Some((pm, pn))) => hm == pm && pn <= hn,
        _ => false,
    }
}

/// Severity of a forwarded log event.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FfiLogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// What the host hands the plugin at load: where to send log events, and a function telling
/// the most verbose level currently worth sending (0 none, 1 error ... 5 trace).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct FfiLogSink {
    pub max_level: extern "C" fn() -> u8,
    pub log:
        extern "C" fn(plugin: RStr<'_>, level: FfiLogLevel, target: RStr<'_>, message: RStr<'_>),
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiOptionInfo {
    pub key: RString,
    pub description: RString,
    pub required: bool,
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiPluginInfo {
    pub name: RString,
    pub version: RString,
    pub description: RString,
    pub options: RVec<FfiOptionInfo>,
}

#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfiErrorKind {
    InvalidOptions = 1,
    Failed = 2,
    Panicked = 3,
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiError {
    pub kind: FfiErrorKind,
    pub message: RString,
}

#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfiCredentialKind {
    /// `user` and `secret` are set.
    Basic = 1,
    /// `secret` is the token; `user` is empty.
    Bearer = 2,
}

/// A point in time as seconds and nanoseconds since the Unix epoch (seconds may be negative).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FfiTime {
    pub secs: i64,
    pub nanos: u32,
}

#[repr(C)]
#[derive(StableAbi)]
pub struct FfiCredential {
    pub kind: FfiCredentialKind,
    pub user: RString,
    pub secret: RString,
    pub expires_at: ROption<FfiTime>,
}

/// A provider instance living in the plugin.
#[sabi_trait]
pub trait FfiProvider: Send + Sync {
    #[sabi(last_prefix_field)]
    fn fetch(&self) -> RResult<FfiCredential, FfiError>;
}

/// An owned provider instance; dropping it runs the plugin's destructor in the plugin.
pub type FfiProviderBox = FfiProvider_TO<'static, RBox<()>>;

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    /// Name, version, description and accepted options.
    pub info: extern "C" fn() -> FfiPluginInfo,
    /// Installs log forwarding in the plugin (the first call wins).
    pub init_logging: extern "C" fn(sink: FfiLogSink),
    /// Creates a provider from Ociregistry's `providerOpts` string.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(provider_opts: RStr<'_>) -> RResult<FfiProviderBox, FfiError>,
}

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "ociregistry_plugin";
    const NAME: &'static str = "ociregistry plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}
