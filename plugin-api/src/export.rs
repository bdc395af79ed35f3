//! The plugin side of the boundary: what [`crate::export_provider!`] expands to calls into
//! here. Every function handed to the host catches panics, so none ever unwinds into it.

use std::any::Any;
use std::fmt::{self, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::library::{
    __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RStr, RString, RVec};
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::subscriber::Interest;
use tracing_core::{Event, Level, LevelFilter, Metadata, Subscriber};

use crate::abi::{
    FfiCreateContext, FfiCredential, FfiCredentialKind, FfiCredentialV11, FfiError, FfiErrorKind,
    FfiFetchRequest, FfiLogLevel, FfiLogSink, FfiOptionInfo, FfiPluginInfo, FfiProvider,
    FfiProvider_TO, FfiProviderBox, FfiProviderV11, FfiProviderV11_TO, FfiProviderV11Box, FfiTime,
    KIND_BASIC, KIND_BEARER, KIND_IDENTITY_TOKEN, PluginExtV11, PluginExtV11Export, PluginRoot,
    PluginRootRef, REASON_FIRST_USE, REASON_REJECTED, REASON_SCHEDULED,
};
use crate::{
    CreateContext, Credential, CredentialKind, FetchReason, FetchRequest, PluginError,
    PluginErrorKind, Provider, ProviderFactory, ProviderOpts,
};

pub use abi_stable;

/// The value of the 1.1 extension static, for `F`.
pub const fn ext_v11<F: ProviderFactory>() -> PluginExtV11Export {
    PluginExtV11Export {
        layout: <PluginExtV11 as abi_stable::StableAbi>::LAYOUT,
        ext: PluginExtV11 {
            create_with: create_with::<F>,
        },
    }
}

/// The value of the root module static, for `F`.
pub const fn lib_header<F: ProviderFactory>() -> LibHeader {
    // SAFETY: `from_constructor` requires that the constructor returns a root module of the
    // type it is instantiated with: `root_module_loader::<F>` returns a `PluginRootRef`.
    unsafe {
        LibHeader::from_constructor::<PluginRootRef>(root_module_loader::<F>, CheckTypeLayout::Yes)
    }
}

extern "C" fn root_module_loader<F: ProviderFactory>() -> RootModuleResult {
    // Catches panics itself.
    __call_root_module_loader(root_module::<F>)
}

fn root_module<F: ProviderFactory>() -> PluginRootRef {
    PluginRoot {
        info: info::<F>,
        init_logging: init_logging::<F>,
        create: create::<F>,
    }
    .leak_into_prefix()
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// Runs `f`, turning a panic into a [`PluginErrorKind::Panicked`] error.
pub fn guard<T>(
    provider: &str,
    what: &str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(&*payload);
            // Dropping the payload could panic too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Err(PluginError::with_kind(
                PluginErrorKind::Panicked,
                format!("provider \"{provider}\" panicked in {what}: {message}"),
            ))
        }
    }
}

fn to_ffi_error(e: PluginError) -> FfiError {
    let kind = match e.kind() {
        PluginErrorKind::InvalidOptions => FfiErrorKind::InvalidOptions,
        PluginErrorKind::Panicked => FfiErrorKind::Panicked,
        _ => FfiErrorKind::Failed,
    };
    FfiError {
        kind,
        message: RString::from(e.message()),
    }
}

pub(crate) fn from_ffi_error(e: FfiError) -> PluginError {
    let kind = match e.kind {
        FfiErrorKind::InvalidOptions => PluginErrorKind::InvalidOptions,
        FfiErrorKind::Panicked => PluginErrorKind::Panicked,
        FfiErrorKind::Failed => PluginErrorKind::Failed,
    };
    PluginError::with_kind(kind, e.message.into_string())
}

pub(crate) fn time_to_ffi(t: SystemTime) -> FfiTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => FfiTime {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0);
            if d.subsec_nanos() > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - d.subsec_nanos();
            }
            FfiTime { secs, nanos }
        }
    }
}

pub(crate) fn time_from_ffi(t: FfiTime) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

/// The 1.0 form, for the 1.0 `fetch` entry. An identity token cannot be expressed there;
/// no 1.0 host calls a 1.1 plugin (the ABI tag refuses it), so that only happens when a
/// 1.1 host calls `fetch` directly, and it gets an error.
pub(crate) fn credential_to_ffi(c: Credential) -> Result<FfiCredential, PluginError> {
    let (kind, user, secret) = match c.kind {
        CredentialKind::Basic { user, secret } => (FfiCredentialKind::Basic, user, secret),
        CredentialKind::Bearer { token } => (FfiCredentialKind::Bearer, String::new(), token),
        CredentialKind::IdentityToken { .. } => {
            return Err(PluginError::new(
                "an identity token needs a plugin-api 1.1 host call (fetch_with)",
            ));
        }
    };
    Ok(FfiCredential {
        kind,
        user: user.into(),
        secret: secret.expose().into(),
        expires_at: match c.expires_at {
            Some(t) => ROption::RSome(time_to_ffi(t)),
            None => ROption::RNone,
        },
    })
}

pub(crate) fn credential_to_ffi_v11(c: Credential) -> FfiCredentialV11 {
    let (kind, user, secret) = match c.kind {
        CredentialKind::Basic { user, secret } => (KIND_BASIC, user, secret),
        CredentialKind::Bearer { token } => (KIND_BEARER, String::new(), token),
        CredentialKind::IdentityToken { token } => {
            (KIND_IDENTITY_TOKEN, "<token>".to_owned(), token)
        }
    };
    FfiCredentialV11 {
        kind,
        user: user.into(),
        secret: secret.expose().into(),
        expires_at: match c.expires_at {
            Some(t) => ROption::RSome(time_to_ffi(t)),
            None => ROption::RNone,
        },
        per_repository: c.per_repository,
    }
}

pub(crate) fn credential_from_ffi_v11(c: FfiCredentialV11) -> Result<Credential, PluginError> {
    let secret = c.secret.into_string();
    let mut cred = match c.kind {
        KIND_BASIC => Credential::basic(c.user.into_string(), secret),
        KIND_BEARER => Credential::bearer(secret),
        KIND_IDENTITY_TOKEN => Credential::identity_token(secret),
        other => {
            return Err(PluginError::new(format!(
                "the plugin returned credential kind {other}, unknown to this host (plugin-api {}); upgrade ociregistry",
                crate::ABI_VERSION
            )));
        }
    };
    if let ROption::RSome(t) = c.expires_at {
        cred = cred.expiring_at(time_from_ffi(t));
    }
    cred.per_repository = c.per_repository;
    Ok(cred)
}

pub(crate) fn request_to_ffi(r: &FetchRequest) -> FfiFetchRequest {
    let (reason, age) = match r.reason {
        FetchReason::Scheduled => (REASON_SCHEDULED, 0),
        FetchReason::FirstUse => (REASON_FIRST_USE, 0),
        FetchReason::Rejected { credential_age } => (
            REASON_REJECTED,
            u64::try_from(credential_age.as_millis()).unwrap_or(u64::MAX),
        ),
    };
    FfiFetchRequest {
        repository: match &r.repository {
            Some(repo) => ROption::RSome(repo.as_str().into()),
            None => ROption::RNone,
        },
        reason,
        credential_age_ms: age,
        deadline: time_to_ffi(r.deadline),
    }
}

fn request_from_ffi(r: FfiFetchRequest) -> FetchRequest {
    let reason = match r.reason {
        REASON_FIRST_USE => FetchReason::FirstUse,
        REASON_REJECTED => FetchReason::Rejected {
            credential_age: Duration::from_millis(r.credential_age_ms),
        },
        // Unknown (later) reasons read as the regular schedule.
        _ => FetchReason::Scheduled,
    };
    let mut request = FetchRequest::new(reason, time_from_ffi(r.deadline));
    if let ROption::RSome(repo) = r.repository {
        request = request.for_repository(repo.into_string());
    }
    request
}

pub(crate) fn credential_from_ffi(c: FfiCredential) -> Credential {
    let secret = c.secret.into_string();
    let mut cred = match c.kind {
        FfiCredentialKind::Basic => Credential::basic(c.user.into_string(), secret),
        FfiCredentialKind::Bearer => Credential::bearer(secret),
    };
    if let ROption::RSome(t) = c.expires_at {
        cred = cred.expiring_at(time_from_ffi(t));
    }
    cred
}

extern "C" fn info<F: ProviderFactory>() -> FfiPluginInfo {
    FfiPluginInfo {
        name: F::NAME.into(),
        version: F::VERSION.into(),
        description: F::DESCRIPTION.into(),
        options: F::OPTIONS
            .iter()
            .map(|o| FfiOptionInfo {
                key: o.key.into(),
                description: o.description.into(),
                required: o.required,
            })
            .collect::<RVec<_>>(),
    }
}

/// Wraps the author's provider; its destructor runs inside the plugin, panic-safe.
struct Wrapped {
    name: &'static str,
    inner: Option<Box<dyn Provider>>,
}

impl FfiProvider for Wrapped {
    fn fetch(&self) -> RResult<FfiCredential, FfiError> {
        let result = guard(self.name, "fetch", || match &self.inner {
            Some(p) => p.fetch(),
            None => Err(PluginError::new("provider already dropped")),
        });
        match result.and_then(credential_to_ffi) {
            Ok(c) => ROk(c),
            Err(e) => RErr(to_ffi_error(e)),
        }
    }
}

impl FfiProviderV11 for Wrapped {
    fn fetch_with(&self, request: FfiFetchRequest) -> RResult<FfiCredentialV11, FfiError> {
        let result = guard(self.name, "fetch", || match &self.inner {
            Some(p) => p.fetch_with(&request_from_ffi(request)),
            None => Err(PluginError::new("provider already dropped")),
        });
        match result {
            Ok(c) => ROk(credential_to_ffi_v11(c)),
            Err(e) => RErr(to_ffi_error(e)),
        }
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        let inner = self.inner.take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(inner)));
    }
}

extern "C" fn create<F: ProviderFactory>(raw: RStr<'_>) -> RResult<FfiProviderBox, FfiError> {
    let result = guard(F::NAME, "create", || {
        let opts = ProviderOpts::parse(F::NAME, raw.as_str(), F::OPTIONS)?;
        F::create(&opts)
    });
    wrap_created::<F>(result)
}

extern "C" fn create_with<F: ProviderFactory>(
    raw: RStr<'_>,
    context: FfiCreateContext,
) -> RResult<FfiProviderV11Box, FfiError> {
    let result = guard(F::NAME, "create", || {
        let opts = ProviderOpts::parse(F::NAME, raw.as_str(), F::OPTIONS)?;
        let context = CreateContext::new(context.registry.into_string(), context.url.into_string());
        F::create_with(&opts, &context)
    });
    match result {
        Ok(p) => ROk(FfiProviderV11_TO::from_value(
            Wrapped {
                name: F::NAME,
                inner: Some(p),
            },
            TD_Opaque,
        )),
        Err(e) => RErr(to_ffi_error(e)),
    }
}

fn wrap_created<F: ProviderFactory>(
    result: Result<Box<dyn Provider>, PluginError>,
) -> RResult<FfiProviderBox, FfiError> {
    match result {
        Ok(p) => ROk(FfiProvider_TO::from_value(
            Wrapped {
                name: F::NAME,
                inner: Some(p),
            },
            TD_Opaque,
        )),
        Err(e) => RErr(to_ffi_error(e)),
    }
}

extern "C" fn init_logging<F: ProviderFactory>(sink: FfiLogSink) {
    let _ = catch_unwind(|| install_logging(F::NAME, F::log_enabled, sink));
}

static LOGGING: OnceLock<()> = OnceLock::new();

fn install_logging(plugin: &'static str, filter: fn(&str, Level) -> bool, sink: FfiLogSink) {
    LOGGING.get_or_init(|| {
        let forwarder = Forwarder {
            plugin,
            max_level: sink.max_level,
            filter,
            log: sink.log,
            next_span: AtomicU64::new(1),
        };
        // Only this library's copy of tracing is affected: the host has its own.
        let _ = tracing::subscriber::set_global_default(forwarder);
        // A panic message goes to the log too instead of the plugin's own stderr writer.
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(target: "panic", "panicked{location}: {}", panic_message(info.payload()));
        }));
    });
}

/// A `tracing` subscriber that formats each event on one line and hands it to the host.
/// Spans are not tracked: their fields do not reach the host. The host's level is asked at
/// each event (one cheap call), so the host may change it at run time.
struct Forwarder {
    plugin: &'static str,
    max_level: extern "C" fn() -> u8,
    filter: fn(&str, Level) -> bool,
    log: extern "C" fn(RStr<'_>, FfiLogLevel, RStr<'_>, RStr<'_>),
    next_span: AtomicU64,
}

struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" {
            let _ = write!(self.message, "{value:?}");
        } else if !name.starts_with("log.") {
            let _ = write!(self.fields, " {name}={value:?}");
        }
    }
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // Never cache: the host's level may change.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let max = match (self.max_level)() {
            0 => return false,
            1 => Level::ERROR,
            2 => Level::WARN,
            3 => Level::INFO,
            4 => Level::DEBUG,
            _ => Level::TRACE,
        };
        *metadata.level() <= max && (self.filter)(metadata.target(), *metadata.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut visitor = MessageVisitor {
            message: String::new(),
            fields: String::new(),
        };
        event.record(&mut visitor);
        visitor.message.push_str(&visitor.fields);
        let level = match *metadata.level() {
            Level::ERROR => FfiLogLevel::Error,
            Level::WARN => FfiLogLevel::Warn,
            Level::INFO => FfiLogLevel::Info,
            Level::DEBUG => FfiLogLevel::Debug,
            _ => FfiLogLevel::Trace,
        };
        (self.log)(
            RStr::from_str(self.plugin),
            level,
            RStr::from_str(metadata.target()),
            RStr::from_str(visitor.message.trim_start()),
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Exports `$factory` (a type implementing [`ProviderFactory`]) as this library's provider.
///
/// Use it once, at the top level of a `cdylib` crate:
///
/// ```ignore
/// ociregistry_plugin_api::export_provider!(Factory);
/// ```
#[macro_export]
macro_rules! export_provider {
    ($factory:ty) => {
        $crate::__export_provider_with_abi_version!($factory, $crate::abi::ABI_VERSION);
    };
}

/// Like [`export_provider!`] but declaring another ABI version. Only for testing the host's
/// refusal of incompatible plugins; a plugin declaring a version it does not speak is broken.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_provider_with_abi_version {
    ($factory:ty, $version:expr) => {
        /// This plugin's plugin-api ABI version, read by the host before anything else.
        #[unsafe(export_name = "ociregistry_plugin_abi_version")]
        pub static __OCIREGISTRY_PLUGIN_ABI_VERSION: [u8; $crate::abi::ABI_TAG_LEN] =
            $crate::abi::abi_tag($version);

        /// The plugin-api 1.1 entry points of this plugin.
        #[unsafe(export_name = "ociregistry_plugin_ext_v1_1")]
        pub static __OCIREGISTRY_PLUGIN_EXT_V1_1: $crate::abi::PluginExtV11Export =
            $crate::__private::ext_v11::<$factory>();

        /// The abi_stable root module of this plugin.
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __OCIREGISTRY_PLUGIN_ROOT_MODULE:
            $crate::__private::abi_stable::library::LibHeader =
            $crate::__private::lib_header::<$factory>();
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_name_matches_abi_stable() {
        assert_eq!(
            crate::abi::ROOT_MODULE_LOADER_NAME,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    #[test]
    fn time_round_trips() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 250_000_000),
        ] {
            assert_eq!(time_from_ffi(time_to_ffi(t)), t);
        }
    }

    #[test]
    fn credential_round_trips_and_keeps_expiry() {
        let at = UNIX_EPOCH + Duration::from_secs(42);
        let c = Credential::basic("AWS", "pw").expiring_at(at);
        assert_eq!(
            credential_from_ffi(credential_to_ffi(c.clone()).unwrap()),
            c
        );
        let b = Credential::bearer("tok");
        assert_eq!(
            credential_from_ffi(credential_to_ffi(b.clone()).unwrap()),
            b
        );
        for c in [
            Credential::basic("AWS", "pw").expiring_at(at),
            Credential::bearer("tok").for_repository_only(),
            Credential::identity_token("refresh"),
        ] {
            assert_eq!(
                credential_from_ffi_v11(credential_to_ffi_v11(c.clone())).unwrap(),
                c
            );
        }
        assert!(credential_to_ffi(Credential::identity_token("r")).is_err());
        let mut unknown = credential_to_ffi_v11(Credential::bearer("t"));
        unknown.kind = 9;
        let e = credential_from_ffi_v11(unknown).unwrap_err().to_string();
        assert!(e.contains("credential kind 9, unknown to this host"), "{e}");
    }

    #[test]
    fn requests_round_trip() {
        let deadline = UNIX_EPOCH + Duration::from_secs(99);
        for r in [
            FetchRequest::new(FetchReason::Scheduled, deadline),
            FetchRequest::new(FetchReason::FirstUse, deadline).for_repository("team/app"),
            FetchRequest::new(
                FetchReason::Rejected {
                    credential_age: Duration::from_millis(1500),
                },
                deadline,
            ),
        ] {
            assert_eq!(request_from_ffi(request_to_ffi(&r)), r);
        }
    }

    #[test]
    fn guard_catches_panics() {
        let r: Result<(), _> = guard("p", "fetch", || panic!("boom {}", 7));
        let e = r.unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::Panicked);
        assert_eq!(e.to_string(), "provider \"p\" panicked in fetch: boom 7");
        let r: Result<(), _> = guard("p", "create", || std::panic::panic_any(5u8));
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("non-string panic payload")
        );
        assert_eq!(guard("p", "fetch", || Ok(3)).unwrap(), 3);
    }
}
