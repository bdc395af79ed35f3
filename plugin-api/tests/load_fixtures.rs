//! Loads the real test-fixture plugins (built from tests/fixtures) through the host API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/src/fixture_plugins.rs"]
#[allow(dead_code)]
mod fixture_plugins;

use std::path::PathBuf;
use std::sync::Mutex;

use fixture_plugins::{build_fixture_plugins, install_plugins, plugin_file};
use ociregistry_plugin_api::host::{self, FindError, LoadError, LogLevel, LogRecord, Plugin};
use ociregistry_plugin_api::{
    CreateContext, Credential, CredentialKind, FetchReason, FetchRequest, PluginErrorKind,
};

fn fixtures() -> PathBuf {
    build_fixture_plugins().expect("fixture plugins build")
}

fn load(name: &str) -> Plugin {
    Plugin::load(&plugin_file(&fixtures(), name)).expect("load fixture")
}

#[test]
fn metadata_and_fetch() {
    let p = load("fixture_counter");
    let info = p.info();
    assert_eq!(info.name, "counter");
    assert_eq!(info.abi_version, host::ABI_VERSION);
    assert_eq!(info.version, "0.1.0");
    assert!(info.options.iter().any(|o| o.key == "log" && !o.required));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let a = p.create(&format!("log={},ttl=-5", log.display())).unwrap();
    let b = p.create("prefix=Other-").unwrap();
    let c1 = a.fetch().unwrap();
    assert_eq!(
        c1.kind,
        CredentialKind::Bearer {
            token: "count-1".into()
        }
    );
    assert!(c1.expires_at.unwrap() < std::time::SystemTime::now());
    assert_eq!(a.fetch().unwrap().kind, Credential::bearer("count-2").kind);
    assert_eq!(b.fetch().unwrap(), Credential::bearer("Other-1"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "count-1\ncount-2\n");

    // Handles are Send + Sync and usable from other threads.
    let a2 = a.clone();
    let t = std::thread::spawn(move || a2.fetch().unwrap());
    assert_eq!(t.join().unwrap().kind, Credential::bearer("count-3").kind);
}

#[test]
fn a_plugin_built_against_abi_1_0_loads_and_fetches() {
    assert_eq!(host::ABI_VERSION, "1.1");
    let p = load("fixture_v10");
    assert_eq!(p.info().abi_version, "1.0");
    assert_eq!(p.name(), "v10");
    // The 1.1 calls fall back to the 1.0 entries.
    let h = p
        .create_with(
            "user=me",
            &CreateContext::new("r.example", "https://r.example"),
        )
        .unwrap();
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    let request = FetchRequest::new(FetchReason::FirstUse, deadline).for_repository("a/b");
    assert_eq!(
        h.fetch_with(&request).unwrap(),
        Credential::basic("me", "v10-1")
    );
    assert_eq!(h.fetch().unwrap(), Credential::basic("me", "v10-2"));
    let e = p.create("nope=1").unwrap_err();
    assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
}

#[test]
fn a_1_1_plugin_gets_the_create_and_fetch_context() {
    let p = load("fixture_context");
    assert_eq!(p.info().abi_version, "1.1");
    let h = p
        .create_with(
            "kind=identity",
            &CreateContext::new("r.example", "https://r.example:5000"),
        )
        .unwrap();
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
    let rejected = FetchRequest::new(
        FetchReason::Rejected {
            credential_age: std::time::Duration::from_millis(2500),
        },
        deadline,
    )
    .for_repository("team/app");
    let c = h.fetch_with(&rejected).unwrap();
    assert_eq!(
        c,
        Credential::identity_token(
            "reg=r.example;url=https://r.example:5000;repo=team/app;reason=rejected:2500;left=30"
        )
    );
    let h = p.create("kind=basic,perrepo=true").unwrap();
    let c = h
        .fetch_with(&FetchRequest::new(FetchReason::Scheduled, deadline))
        .unwrap();
    assert!(c.per_repository);
    assert_eq!(
        c.kind,
        CredentialKind::Basic {
            user: "ctx".into(),
            secret: "reg=;url=;repo=-;reason=scheduled;left=30".into()
        }
    );
}

#[test]
fn options_are_checked_in_the_plugin_and_on_the_host() {
    let p = load("fixture_counter");
    let e = p.create("log=/x,nope=1").unwrap_err();
    assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
    assert_eq!(
        e.to_string(),
        "providerOpts for provider \"counter\": unknown option \"nope\"; accepted: log, prefix, user, ttl"
    );
    assert_eq!(p.check_opts("log=/x,nope=1").unwrap_err(), e);
    p.check_opts("prefix=A").unwrap();
    let e = p.create("ttl=soon").unwrap_err();
    assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
}

#[test]
fn panics_are_caught() {
    let p = load("fixture_panic");
    let h = p.create("message=kaboom").unwrap();
    for _ in 0..2 {
        let e = h.fetch().unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::Panicked);
        assert_eq!(
            e.to_string(),
            "provider \"panic\" panicked in fetch: kaboom"
        );
    }
    let e = p.create("in=create").unwrap_err();
    assert_eq!(e.kind(), PluginErrorKind::Panicked);
    assert_eq!(
        e.to_string(),
        "provider \"panic\" panicked in create: fixture panic"
    );
}

#[test]
fn flaky_counts_per_instance() {
    let p = load("fixture_flaky");
    let a = p.create("failures=2").unwrap();
    assert_eq!(a.fetch().unwrap_err().to_string(), "flaky failure 1 of 2");
    assert_eq!(a.fetch().unwrap_err().kind(), PluginErrorKind::Failed);
    assert_eq!(a.fetch().unwrap(), Credential::bearer("flaky-ok-3"));
    let b = p.create("user=u").unwrap();
    assert!(b.fetch().is_err());
    assert_eq!(b.fetch().unwrap(), Credential::basic("u", "flaky-ok-2"));
}

#[test]
fn hang_sleeps_as_told() {
    let p = load("fixture_hang");
    let h = p.create("seconds=0.2").unwrap();
    let start = std::time::Instant::now();
    assert_eq!(h.fetch().unwrap(), Credential::bearer("hang-token"));
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));
}

#[test]
fn other_abi_is_refused_with_both_versions() {
    let file = plugin_file(&fixtures(), "fixture_otherabi");
    let e = Plugin::load(&file).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "plugin {}: built for plugin-api ABI 2.0, this host speaks {}",
            file.display(),
            host::ABI_VERSION
        )
    );
    assert!(matches!(e, LoadError::IncompatibleAbi { .. }));
}

#[test]
fn scan_and_find() {
    let built = fixtures();
    let dir = tempfile::tempdir().unwrap();
    install_plugins(
        &built,
        dir.path(),
        &["fixture_counter", "fixture_otherabi", "fixture_panic"],
    )
    .unwrap();
    std::fs::write(dir.path().join("libjunk.so"), "junk").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();

    let scan = host::scan_dir(dir.path()).unwrap();
    let names: Vec<_> = scan.plugins.iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, ["counter", "panic"]);
    let failed: Vec<_> = scan
        .failures
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(failed, ["libfixture_otherabi.so", "libjunk.so"]);

    assert_eq!(host::find(dir.path(), "panic").unwrap().name(), "panic");
    let e = host::find(dir.path(), "ecr").unwrap_err();
    assert!(matches!(e, FindError::NotFound { .. }));
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "no plugin provides \"ecr\" in {} (found: counter [libfixture_counter.so], panic [libfixture_panic.so]; failed: plugin ",
            dir.path().display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("built for plugin-api ABI 2.0, this host speaks 1.1"),
        "{msg}"
    );

    // Two files providing the same name.
    std::fs::copy(
        plugin_file(&built, "fixture_panic"),
        dir.path().join("libpanic_again.so"),
    )
    .unwrap();
    let e = host::find(dir.path(), "panic").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("more than one plugin provides \"panic\""),
        "{e}"
    );
}

static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn sink(r: &LogRecord<'_>) {
    RECORDS.lock().unwrap().push(format!(
        "{:?} {} {} {}",
        r.level, r.plugin, r.target, r.message
    ));
}

#[test]
fn plugin_logs_reach_the_sink() {
    host::set_log_sink(sink);
    // No host subscriber in this test process: LevelFilter::current() is OFF unless one is
    // installed, so install a permissive one for this process first.
    let _ = tracing::subscriber::set_global_default(AllLevels);
    let p = load("fixture_counter");
    let h = p.create("").unwrap();
    h.fetch().unwrap();
    let records = RECORDS.lock().unwrap();
    assert!(
        records.iter().any(|r| r
            == &format!(
                "{:?} counter fixture_counter counter fetch call=1",
                LogLevel::Info
            )),
        "{records:?}"
    );
}

/// A subscriber enabling everything and printing nothing.
struct AllLevels;

impl tracing::Subscriber for AllLevels {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
