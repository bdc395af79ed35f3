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
//! Within one major version nothing may be removed or changed; a minor version adds new
//! exported statics (see "1.1" below).
//!
//! # 1.1
//!
//! abi_stable's layout checker accepts a library whose prefix types have *more* fields than
//! the host's, never fewer: a 1.1 host could not load a 1.0 plugin if [`PluginRoot`] or
//! [`FfiProvider`] grew. So they stay exactly as in 1.0, and 1.1 adds a second exported
//! static, [`EXT_V11_SYMBOL`] ([`PluginExtV11Export`]): `create_with` (the registry entry's
//! name and URL) returning an [`FfiProviderV11`], whose `fetch_with` takes the repository,
//! reason and deadline and returns [`FfiCredentialV11`] (its kind is a plain `u8`, so later
//! kinds need no layout change). The host looks for it only in plugins tagged 1.1 or
//! later, checks its layout with abi_stable's checker, and otherwise uses the 1.0 entries.
//! A later minor version adds its own `ociregistry_plugin_ext_v1_N` static the same way.
#![allow(missing_docs, missing_debug_implementations, non_local_definitions)]

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
};

/// The plugin-api ABI version this build speaks, `MAJOR.MINOR`.
pub const ABI_VERSION: &str = "1.1";

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

/// `FfiCredentialV11::kind`: `user` and `secret` are set.
pub const KIND_BASIC: u8 = 1;
/// `FfiCredentialV11::kind`: `secret` is a ready Bearer token.
pub const KIND_BEARER: u8 = 2;
/// `FfiCredentialV11::kind`: `secret` is an identity (refresh) token, exchanged by the host
/// at the registry's token endpoint; `user` is informational (docker's `<token>`).
pub const KIND_IDENTITY_TOKEN: u8 = 3;

/// `FfiFetchRequest::reason`: the regular refresh schedule.
pub const REASON_SCHEDULED: u8 = 1;
/// `FfiFetchRequest::reason`: no credential was obtained yet for this key.
pub const REASON_FIRST_USE: u8 = 2;
/// `FfiFetchRequest::reason`: the upstream rejected the credential (`credential_age_ms` old).
pub const REASON_REJECTED: u8 = 3;

/// What the host passes to [`PluginExtV11::create_with`] (ABI 1.1).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiCreateContext {
    /// The registry entry's name (e.g. `123.dkr.ecr.eu-west-1.amazonaws.com`).
    pub registry: RString,
    /// Its upstream URL (e.g. `https://123.dkr.ecr.eu-west-1.amazonaws.com`).
    pub url: RString,
}

/// What the host passes to [`FfiProviderV11::fetch_with`] (ABI 1.1).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiFetchRequest {
    /// The repository being pulled, when a pull triggered the fetch.
    pub repository: ROption<RString>,
    /// One of the `REASON_*` constants.
    pub reason: u8,
    /// With [`REASON_REJECTED`]: the rejected credential's age in milliseconds.
    pub credential_age_ms: u64,
    /// When the host stops waiting for the answer.
    pub deadline: FfiTime,
}

/// A credential as [`FfiProviderV11::fetch_with`] returns it (ABI 1.1).
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiCredentialV11 {
    /// One of the `KIND_*` constants; the host refuses a kind it does not know.
    pub kind: u8,
    pub user: RString,
    pub secret: RString,
    pub expires_at: ROption<FfiTime>,
    /// The credential is valid for the requested repository only (kubelet `cacheKeyType:
    /// Image`): the host keeps one per repository.
    pub per_repository: bool,
}

impl From<FfiCredential> for FfiCredentialV11 {
    fn from(c: FfiCredential) -> Self {
        FfiCredentialV11 {
            kind: match c.kind {
                FfiCredentialKind::Basic => KIND_BASIC,
                FfiCredentialKind::Bearer => KIND_BEARER,
            },
            user: c.user,
            secret: c.secret,
            expires_at: c.expires_at,
            per_repository: false,
        }
    }
}

/// A provider instance living in the plugin (ABI 1.0; never changes).
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

/// A provider instance created by [`PluginExtV11::create_with`] (ABI 1.1).
#[sabi_trait]
pub trait FfiProviderV11: Send + Sync {
    #[sabi(last_prefix_field)]
    fn fetch_with(&self, request: FfiFetchRequest) -> RResult<FfiCredentialV11, FfiError>;
}

/// An owned 1.1 provider instance.
pub type FfiProviderV11Box = FfiProviderV11_TO<'static, RBox<()>>;

/// The 1.1 entry points, exported as [`EXT_V11_SYMBOL`] by plugins of ABI 1.1 and later.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginExtV11 {
    /// `create` with the registry entry's name and URL.
    pub create_with: extern "C" fn(
        provider_opts: RStr<'_>,
        context: FfiCreateContext,
    ) -> RResult<FfiProviderV11Box, FfiError>,
}

/// The exported static: the layout the plugin was built with (checked by the host with
/// abi_stable's checker before anything in `ext` is touched), and the entry points.
#[repr(C)]
pub struct PluginExtV11Export {
    pub layout: &'static abi_stable::type_layout::TypeLayout,
    pub ext: PluginExtV11,
}

/// Name of the exported [`PluginExtV11Export`] static (with the trailing NUL).
pub const EXT_V11_SYMBOL_NUL: &[u8] = b"ociregistry_plugin_ext_v1_1\0";
/// [`EXT_V11_SYMBOL_NUL`] without the NUL.
pub const EXT_V11_SYMBOL: &str = "ociregistry_plugin_ext_v1_1";

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "ociregistry_plugin";
    const NAME: &'static str = "ociregistry plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}
