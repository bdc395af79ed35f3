//! `ociregistry providers`: the provider plugins found in the plugin directory (as a table
//! or JSON), or with `--check` one credential fetch per configured registry
//! ([`crate::providers::listing`]), reported without the secret; with `--try FILE OPTS` one
//! library loaded, created and fetched once, for plugin authors.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use ociregistry_plugin_api::{Credential, CredentialKind, host};
use serde_json::json;

use super::FatalError;
use super::output::{Output, print_table};
use crate::config::Settings;
use crate::providers::listing::{self, Check, Source};
use crate::providers::{self, Loaded};
use crate::timefmt::format_system_time;

/// `providers` flags.
#[derive(Debug, Args)]
pub struct ProvidersArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Fetch each configured registry's credential once and report the result (never the secret).
    #[arg(long)]
    pub check: bool,
    /// Also show each option's description.
    #[arg(long)]
    pub wide: bool,
    /// Load this one plugin file, create a provider with the options that follow
    /// (`key=value,...`) and fetch once; prints the result without the secret.
    #[arg(long = "try", value_name = "FILE", conflicts_with = "check")]
    pub try_file: Option<std::path::PathBuf>,
    /// With `--try`: the provider options.
    #[arg(value_name = "OPTS", requires = "try_file")]
    pub try_opts: Option<String>,
    /// With `--try`: the registry name the provider is created for.
    #[arg(long, default_value = "registry.example", requires = "try_file")]
    pub registry: String,
    /// With `--try`: the repository the fetch is for (as a pull would ask).
    #[arg(long, requires = "try_file")]
    pub repository: Option<String>,
    /// With `--try`: how long create and fetch may each take.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse, requires = "try_file")]
    pub timeout: Duration,
}

/// `ociregistry providers`.
pub async fn run(settings: &Settings, args: &ProvidersArgs) -> Result<ExitCode, FatalError> {
    if let Some(file) = &args.try_file {
        return Ok(try_one(file, args).await);
    }
    let loaded = providers::load_dir(&settings.plugin_dir)?;
    if args.check {
        let checks = listing::check(settings, &loaded).await;
        print_checks(&checks, args.output);
        return Ok(
            if checks.iter().all(|c| c.result.is_ok() && flag(c).is_none()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            },
        );
    }
    print_plugins(settings, &loaded, args.output, args.wide);
    // A file that failed to load is a problem the operator should see in scripts too.
    Ok(if loaded.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Why a fetched credential is not fine though the fetch worked: it has already expired.
fn flag(c: &Check) -> Option<String> {
    let at = c.result.as_ref().ok()?.as_ref()?.expires_at?;
    let ago = SystemTime::now().duration_since(at).ok()?;
    Some(format!(
        "the provider's credential expired {} ago ({})",
        crate::duration::format(Duration::from_secs(ago.as_secs())),
        format_system_time(at)
    ))
}

/// `providers --try FILE OPTS`: load, create, fetch once, print (never the secret).
async fn try_one(file: &std::path::Path, args: &ProvidersArgs) -> ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        println!(
            "FAILED: {what}: {}",
            crate::providers::error::one_line_message(&e.to_string())
        );
        ExitCode::FAILURE
    };
    let plugin = match host::Plugin::load(file) {
        Ok(p) => p,
        Err(e) => return fail("load", &e),
    };
    let i = plugin.info().clone();
    println!(
        "provider {} {} (plugin-api ABI {}, host {}) from {}",
        i.name,
        i.version,
        i.abi_version,
        host::ABI_VERSION,
        i.path.display()
    );
    let opts = args.try_opts.clone().unwrap_or_default();
    if let Err(e) = plugin.check_opts(&opts) {
        return fail("options", &e);
    }
    let context = ociregistry_plugin_api::CreateContext::new(
        args.registry.clone(),
        format!("https://{}", args.registry),
    );
    let timeout = args.timeout;
    let created = on_thread(timeout, move || plugin.create_with(&opts, &context)).await;
    let handle = match created {
        Some(Ok(h)) => h,
        Some(Err(e)) => return fail("create", &e),
        None => {
            return fail(
                "create",
                &format!("did not return within {}", crate::duration::format(timeout)),
            );
        }
    };
    let mut request = ociregistry_plugin_api::FetchRequest::new(
        ociregistry_plugin_api::FetchReason::FirstUse,
        SystemTime::now() + timeout,
    );
    if let Some(repo) = &args.repository {
        request = request.for_repository(repo.clone());
    }
    let fetched = on_thread(timeout, move || handle.fetch_with(&request)).await;
    let credential = match fetched {
        Some(Ok(c)) => c,
        Some(Err(e)) => return fail("fetch", &e),
        None => {
            return fail(
                "fetch",
                &format!("did not return within {}", crate::duration::format(timeout)),
            );
        }
    };
    let secret_len = match &credential.kind {
        CredentialKind::Basic { secret, .. } => secret.expose().len(),
        CredentialKind::Bearer { token } | CredentialKind::IdentityToken { token } => {
            token.expose().len()
        }
        _ => 0,
    };
    println!(
        "credential: {}, secret of {secret_len} bytes (not shown)",
        kind(&credential)
    );
    match credential.expires_at {
        Some(at) => println!("expires: {} ({})", format_system_time(at), until(at)),
        None => println!("expires: not given"),
    }
    println!(
        "scope: {}",
        if credential.per_repository {
            "this repository only"
        } else {
            "the registry"
        }
    );
    if secret_len == 0 {
        println!("FAILED: the secret is empty");
        return ExitCode::FAILURE;
    }
    if credential
        .expires_at
        .is_some_and(|at| at <= SystemTime::now())
    {
        println!("FAILED: the credential has already expired");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs `f` on a plain thread (never the runtime's blocking pool, which a hung plugin
/// call would keep from shutting down) and waits at most `timeout`.
async fn on_thread<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("provider-try".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    tokio::time::timeout(timeout, rx).await.ok()?.ok()
}

fn print_plugins(settings: &Settings, loaded: &Loaded, output: Output, wide: bool) {
    let plugins = listing::plugins(loaded);
    match output {
        Output::Json => {
            let doc = json!({
                "pluginDir": settings.plugin_dir.display().to_string(),
                "hostAbiVersion": host::ABI_VERSION,
                "providers": plugins.iter().map(|p| {
                    let i = p.info();
                    json!({
                        "name": i.name,
                        "version": i.version,
                        "abiVersion": i.abi_version,
                        "file": i.path.display().to_string(),
                        "description": i.description,
                        "options": i.options.iter().map(|o| json!({
                            "key": o.key, "description": o.description, "required": o.required,
                        })).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
                "failures": loaded.failures.iter().map(|(path, e)| json!({
                    "file": path.display().to_string(),
                    "error": e.to_string(),
                })).collect::<Vec<_>>(),
                "notUsed": loaded.shadowed.iter().map(|(unused, used)| json!({
                    "name": unused.info().name,
                    "file": unused.info().path.display().to_string(),
                    "version": unused.info().version,
                    "usedFile": used.info().path.display().to_string(),
                    "usedVersion": used.info().version,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        Output::Table => {
            println!(
                "Plugin directory: {} (host plugin-api ABI {})",
                settings.plugin_dir.display(),
                host::ABI_VERSION
            );
            let mut rows = vec![vec![
                "PROVIDER".to_owned(),
                "VERSION".into(),
                "ABI".into(),
                "OPTIONS".into(),
                "FILE".into(),
                "DESCRIPTION".into(),
            ]];
            for p in &plugins {
                let i = p.info();
                let opts: Vec<String> = i
                    .options
                    .iter()
                    .map(|o| {
                        if o.required {
                            format!("{}*", o.key)
                        } else {
                            o.key.clone()
                        }
                    })
                    .collect();
                rows.push(vec![
                    i.name.clone(),
                    i.version.clone(),
                    i.abi_version.clone(),
                    if opts.is_empty() {
                        "-".into()
                    } else {
                        opts.join(",")
                    },
                    file_name(&i.path),
                    i.description.clone(),
                ]);
            }
            if plugins.is_empty() {
                println!("No provider plugins found.");
            } else {
                print_table(&rows);
                if plugins
                    .iter()
                    .any(|p| p.info().options.iter().any(|o| o.required))
                {
                    println!("(* required option)");
                }
                if wide {
                    println!();
                    println!("Options:");
                    let mut rows = Vec::new();
                    for p in &plugins {
                        for o in &p.info().options {
                            rows.push(vec![
                                format!("  {}", p.info().name),
                                format!("{}{}", o.key, if o.required { "*" } else { "" }),
                                o.description.clone(),
                            ]);
                        }
                    }
                    print_table(&rows);
                }
            }
            if !loaded.shadowed.is_empty() {
                println!();
                println!(
                    "Not used (another file provides the same name; the highest version wins):"
                );
                for (unused, used) in &loaded.shadowed {
                    println!(
                        "  {} {} in {}: {} {} in {} is used",
                        unused.info().name,
                        unused.info().version,
                        file_name(&unused.info().path),
                        used.info().name,
                        used.info().version,
                        file_name(&used.info().path)
                    );
                }
            }
            if !loaded.failures.is_empty() {
                println!();
                println!("Files that failed to load:");
                for (_, e) in &loaded.failures {
                    println!("  {e}");
                }
            }
        }
    }
}

fn print_checks(checks: &[Check], output: Output) {
    match output {
        Output::Json => {
            let doc: Vec<_> = checks
                .iter()
                .map(|c| {
                    let (name, source) = (&c.registry, source_text(&c.source));
                    match &c.result {
                        Ok(_) if flag(c).is_some() => json!({
                            "registry": name, "source": source, "ok": false,
                            "error": flag(c),
                        }),
                        Ok(c) => json!({
                            "registry": name, "source": source, "ok": true,
                            "kind": c.as_ref().map(kind),
                            "expiresAt": c.as_ref().and_then(|c| c.expires_at).map(format_system_time),
                        }),
                        Err(e) => {
                            json!({ "registry": name, "source": source, "ok": false, "error": e.to_string() })
                        }
                    }
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "registries": doc })).unwrap_or_default()
            );
        }
        Output::Table => {
            if checks.is_empty() {
                println!("No registries configured.");
            }
            let mut table = vec![vec![
                "REGISTRY".to_owned(),
                "SOURCE".into(),
                "RESULT".into(),
            ]];
            for c in checks {
                let text = match &c.result {
                    Ok(_) if flag(c).is_some() => {
                        format!("FLAGGED: {}", flag(c).unwrap_or_default())
                    }
                    Ok(None) => "ok (nothing to fetch)".to_owned(),
                    Ok(Some(c)) => match c.expires_at {
                        Some(at) => {
                            format!(
                                "ok: {}, expires {} ({})",
                                kind(c),
                                format_system_time(at),
                                until(at)
                            )
                        }
                        None => format!("ok: {}, no expiry given", kind(c)),
                    },
                    Err(e) => format!("FAILED: {e}"),
                };
                table.push(vec![c.registry.clone(), source_text(&c.source), text]);
            }
            print_table(&table);
        }
    }
}

/// Where a credential comes from, as the `SOURCE` column says it.
fn source_text(s: &Source) -> String {
    match s {
        Source::Anonymous => "anonymous".to_owned(),
        Source::Basic { user } => format!("user {user} (config)"),
        Source::Static => "static token (config)".to_owned(),
        Source::Provider { name } => format!("provider {name}"),
    }
}

/// How a credential will be sent, without its secret.
fn kind(c: &Credential) -> String {
    match &c.kind {
        CredentialKind::Basic { user, .. } => format!("basic (user {user})"),
        CredentialKind::Bearer { .. } => "bearer".to_owned(),
        CredentialKind::IdentityToken { .. } => "identity token".to_owned(),
        other => format!("{other:?}"),
    }
}

fn until(at: SystemTime) -> String {
    match at.duration_since(SystemTime::now()) {
        Ok(d) => format!(
            "in {}",
            crate::duration::format(Duration::from_secs(d.as_secs()))
        ),
        Err(e) => format!(
            "{} ago: already past",
            crate::duration::format(Duration::from_secs(e.duration().as_secs()))
        ),
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
