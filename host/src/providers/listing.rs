//! `ociregistry providers`: the plugins found in the plugin directory (as a table or JSON),
//! and with `--check`, one credential fetch per configured registry, reported without the
//! secret.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use ociregistry_plugin_api::{Credential, CredentialKind, host};
use serde_json::json;

use crate::cli::{FatalError, Output, print_table};
use crate::config::{CredentialConfig, Settings};
use crate::providers::{self, scheduler};
use crate::timefmt::format_system_time;

/// Runs the command.
pub async fn run(settings: &Settings, output: Output, check: bool) -> Result<ExitCode, FatalError> {
    let loaded = providers::load_dir(&settings.plugin_dir).map_err(FatalError::Providers)?;
    if check {
        return run_check(settings, &loaded, output).await;
    }
    let mut plugins: Vec<&host::Plugin> = loaded.by_name.values().collect();
    plugins.sort_by(|a, b| a.info().name.cmp(&b.info().name));
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
    Ok(ExitCode::SUCCESS)
}

async fn run_check(
    settings: &Settings,
    loaded: &providers::Loaded,
    output: Output,
) -> Result<ExitCode, FatalError> {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for r in &settings.registries {
        let (source, result) = match &r.credential {
            CredentialConfig::None => ("anonymous".to_owned(), Ok(None)),
            CredentialConfig::Basic { user, .. } => (format!("user {user} (config)"), Ok(None)),
            CredentialConfig::Static(_) => ("static token (config)".to_owned(), Ok(None)),
            CredentialConfig::Provider {
                provider,
                opts,
                timeout,
                ..
            } => {
                let source = format!("provider {provider}");
                match providers::create_fetcher(
                    loaded,
                    &settings.plugin_dir,
                    &r.name,
                    provider,
                    opts,
                    *timeout,
                )
                .await
                {
                    Err(e) => (source, Err(e.to_string())),
                    Ok(fetcher) => (
                        source,
                        scheduler::fetch_once(fetcher, *timeout).await.map(Some),
                    ),
                }
            }
        };
        all_ok &= result.is_ok();
        rows.push((r.name.clone(), source, result));
    }
    match output {
        Output::Json => {
            let doc: Vec<_> = rows
                .iter()
                .map(|(name, source, result)| match result {
                    Ok(c) => json!({
                        "registry": name, "source": source, "ok": true,
                        "kind": c.as_ref().map(kind),
                        "expiresAt": c.as_ref().and_then(|c| c.expires_at).map(format_system_time),
                    }),
                    Err(e) => {
                        json!({ "registry": name, "source": source, "ok": false, "error": e })
                    }
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "registries": doc })).unwrap_or_default()
            );
        }
        Output::Table => {
            if rows.is_empty() {
                println!("No registries configured.");
            }
            let mut table = vec![vec![
                "REGISTRY".to_owned(),
                "SOURCE".into(),
                "RESULT".into(),
            ]];
            for (name, source, result) in &rows {
                let text = match result {
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
                table.push(vec![name.clone(), source.clone(), text]);
            }
            print_table(&table);
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How a credential will be sent, without its secret.
fn kind(c: &Credential) -> String {
    match &c.kind {
        CredentialKind::Basic { user, .. } => format!("basic (user {user})"),
        CredentialKind::Bearer { .. } => "bearer".to_owned(),
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
