//! `ociregistry providers`: the provider plugins found in the plugin directory (as a table
//! or JSON), or with `--check` one credential fetch per configured registry
//! ([`crate::providers::listing`]), reported without the secret.

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
}

/// `ociregistry providers`.
pub async fn run(settings: &Settings, args: &ProvidersArgs) -> Result<ExitCode, FatalError> {
    let loaded = providers::load_dir(&settings.plugin_dir)?;
    if args.check {
        let checks = listing::check(settings, &loaded).await;
        print_checks(&checks, args.output);
        return Ok(if checks.iter().all(|c| c.result.is_ok()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    print_plugins(settings, &loaded, args.output);
    Ok(ExitCode::SUCCESS)
}

fn print_plugins(settings: &Settings, loaded: &Loaded, output: Output) {
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
