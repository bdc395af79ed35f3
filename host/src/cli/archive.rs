//! `ociregistry load --archive FILE...` and `ociregistry export`: the flags, one bar per
//! archive, what was imported or exported and a summary line, exit code 1 when anything
//! failed. What an archive is and how it is read or written is [`crate::archive`]'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::FatalError;
use super::output::human_size;
use crate::archive::export::{self, Selection};
use crate::archive::import::{self, Format, Options};
use crate::archive::names::AsName;
use crate::archive::read;
use crate::archive::report::Progress;
use crate::config::Settings;

/// `export` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "The file is an OCI image layout tar: `ociregistry load --archive FILE` on another machine (no network needed) stores the same images under the same names; `skopeo copy oci-archive:FILE:TAG`, `ctr import FILE` and `podman load` read it too.\n\nExamples:\n  ociregistry export --output cache.tar --pattern .                     # everything cached\n  ociregistry export --output base.tar alpine:3.20 quay.io/org/app:v1\n  ociregistry export --output week.tar --pattern '^docker.io/' --since 7d   # incremental"
)]
pub struct ExportArgs {
    /// The tar to write (written as FILE.tmp, renamed when complete).
    #[arg(long, short = 'o', value_name = "FILE.tar")]
    pub output: PathBuf,
    /// Images whose reference (registry/repository:tag or registry/repository@digest)
    /// matches this regular expression (`.` selects every image).
    #[arg(long, value_name = "REGEX")]
    pub pattern: Option<String>,
    /// Only images pulled (never pulled: first cached) within this long: 12h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub since: Option<Duration>,
    /// Registry for references that name none [config: defaultNs] [default: docker.io].
    #[arg(long, value_name = "REGISTRY")]
    pub default_ns: Option<String>,
    /// Images by reference (`alpine:3.20`, `quay.io/org/app:v1`, `REPO@sha256:...`).
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
}

/// `ociregistry load --archive`: imports each archive; exit code 1 if any failed.
pub async fn load_archives(
    settings: Settings,
    files: &[PathBuf],
    as_name: Option<&str>,
) -> Result<ExitCode, FatalError> {
    let as_name = as_name
        .map(|s| AsName::parse(s, &settings.default_ns))
        .transpose()?;
    if as_name.is_some() && files.len() > 1 {
        return Err(FatalError::AsManyArchives);
    }
    // A server may be using the same cache: leave its downloads in progress alone.
    let store = super::storage::open(&settings, super::storage::Opener::Alongside).await?;
    let opts = Options {
        as_name,
        default_ns: settings.default_ns.clone(),
        max_manifest: settings.max_manifest_size,
    };
    let (mut ok, mut failed, mut images, mut manifests, mut blobs, mut bytes) =
        (0, 0, 0, 0, 0, 0u64);
    for f in files {
        let label = f.display().to_string();
        let progress = Progress::for_stderr(&label, read::total_size(f)).prefix("import");
        match import::import(store.clone(), f, &opts, progress.counter()).await {
            Ok(done) => {
                progress.finish(true);
                ok += 1;
                images += done.images.len();
                manifests += done.manifests;
                blobs += done.blobs;
                bytes += done.bytes;
                for img in &done.images {
                    let built = if img.built {
                        " (manifest built here)"
                    } else {
                        ""
                    };
                    for n in &img.names {
                        println!("imported {n} {}{built}", img.digest);
                    }
                }
                if done.format == Format::DockerSave {
                    println!(
                        "note: {label} is a legacy docker save: its layers are uncompressed, so the manifests above were built here (OCI, digests printed) and are not the registry's"
                    );
                }
                if done.missing_children > 0 {
                    println!(
                        "note: {label}: {} platform manifests of its indexes are not in the archive; a server fetches them from the upstream when asked and online",
                        done.missing_children
                    );
                }
            }
            Err(e) => {
                progress.finish(false);
                failed += 1;
                println!("FAILED {e}");
            }
        }
    }
    println!(
        "archives: {ok} imported, {failed} failed; {images} images, {manifests} manifests, {blobs} blobs, {bytes} bytes ({})",
        human_size(bytes)
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ociregistry export`.
pub async fn export(settings: &Settings, args: &ExportArgs) -> Result<ExitCode, FatalError> {
    if args.pattern.is_none() && args.refs.is_empty() && args.since.is_none() {
        return Err(FatalError::NoSelection);
    }
    let sel = Selection {
        pattern: args.pattern.clone(),
        refs: args.refs.clone(),
        since: args.since,
        default_ns: args
            .default_ns
            .clone()
            .unwrap_or_else(|| settings.default_ns.clone()),
    };
    let store = super::storage::open_existing(settings).await?;
    let (cache, images) = export::select(&*store, &sel).await?;
    let label = args.output.display().to_string();
    let progress = Progress::for_stderr(&label, 0).prefix("export");
    let done = export::export(&*store, &cache, &images, &args.output, &progress).await;
    progress.finish(done.is_ok());
    let done = done?;
    for img in &done.images {
        let note = match img.not_cached {
            0 => String::new(),
            n => format!(" ({n} platforms not cached)"),
        };
        println!("exported {} {}{note}", img.reference, img.digest);
    }
    for (r, why) in &done.skipped {
        println!("skipped {r}: {why}");
    }
    let not_cached = done.not_cached();
    println!(
        "{label}: {} images, {} manifests, {} blobs, {} bytes ({}){}",
        done.images.len(),
        done.manifests,
        done.blobs,
        done.bytes,
        human_size(done.bytes),
        if not_cached > 0 {
            format!("; {not_cached} platforms not cached (not in the file)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
