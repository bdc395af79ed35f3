//! Loads one plugin file, prints what it says about itself, creates a provider and fetches
//! one credential: a quick manual check of a plugin you are writing.
//!
//! ```text
//! cargo run -p ociregistry-plugin-api --example fetch -- PLUGIN.so [PROVIDER_OPTS] [--show-secret]
//! ```
//!
//! Plugin log events are printed to stderr. The secret is printed only with `--show-secret`.

use std::process::ExitCode;
use std::time::SystemTime;

use ociregistry_plugin_api::CredentialKind;
use ociregistry_plugin_api::host::{self, LogRecord, Plugin};

fn sink(r: &LogRecord<'_>) {
    eprintln!("[{} {:?} {}] {}", r.plugin, r.level, r.target, r.message);
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let show_secret = args.iter().any(|a| a == "--show-secret");
    args.retain(|a| a != "--show-secret");
    let (Some(path), opts) = (args.first(), args.get(1).map(String::as_str).unwrap_or("")) else {
        eprintln!("usage: fetch PLUGIN.so [PROVIDER_OPTS] [--show-secret]");
        return ExitCode::from(2);
    };
    host::set_log_sink(sink);
    // The plugin sends events up to the host's tracing level; with no subscriber installed
    // that is OFF, so install one that enables DEBUG and prints nothing itself.
    let _ = tracing::subscriber::set_global_default(DebugLevel);

    let plugin = match Plugin::load(path.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let info = plugin.info();
    println!(
        "provider {} {} (ABI {}): {}",
        info.name, info.version, info.abi_version, info.description
    );
    for o in &info.options {
        let req = if o.required { " (required)" } else { "" };
        println!("  option {}{req}: {}", o.key, o.description);
    }
    let provider = match plugin.create(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("create: {e} [{:?}]", e.kind());
            return ExitCode::FAILURE;
        }
    };
    match provider.fetch() {
        Ok(c) => {
            match &c.kind {
                CredentialKind::Basic { user, secret } => println!(
                    "Basic user={user} secret={}",
                    if show_secret {
                        secret.expose()
                    } else {
                        "<redacted>"
                    }
                ),
                CredentialKind::Bearer { token } => println!(
                    "Bearer token={}",
                    if show_secret {
                        token.expose()
                    } else {
                        "<redacted>"
                    }
                ),
                CredentialKind::IdentityToken { token } => println!(
                    "IdentityToken token={}",
                    if show_secret {
                        token.expose()
                    } else {
                        "<redacted>"
                    }
                ),
                other => println!("{other:?}"),
            }
            match c.expires_at {
                Some(at) => match at.duration_since(SystemTime::now()) {
                    Ok(d) => println!("expires in {}s", d.as_secs()),
                    Err(e) => println!("expired {}s ago", e.duration().as_secs()),
                },
                None => println!("no expiry"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fetch: {e} [{:?}]", e.kind());
            ExitCode::FAILURE
        }
    }
}

struct DebugLevel;

impl tracing::Subscriber for DebugLevel {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::DEBUG
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
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
