//! `ociregistry load`: pulls the images of a list into the cache ([`crate::preload`]), beside
//! a running server or not, prints what failed and a summary line, and exits 1 if anything
//! failed. `load --archive` is [`super::archive`]'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::FatalError;
use crate::config::Settings;
use crate::mirror::Mirror;
use crate::preload::{self, platform::Platform};
use crate::providers;
use crate::upstream::Upstreams;

/// `load` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ociregistry load --image-file images.txt --platform linux/amd64 --platform linux/arm64\n  ociregistry load --archive alpine.tar                  # docker save alpine:3.20 > alpine.tar\n  ociregistry load --archive app.oci.tar --as quay.io/org/app:v1\n  ociregistry load --archive cache.tar.gz other/          # ociregistry export output, an OCI layout directory"
)]
pub struct LoadArgs {
    /// Import image archives instead of pulling a list: `docker save` tarballs (legacy or
    /// OCI form), OCI image layouts as a directory or a tar (`ctr export`, `skopeo copy
    /// oci-archive:`, `podman save --format oci-archive`, `ociregistry export`), gzip or not.
    /// Each image is stored under the name it carries. Needs no network.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "image_file")]
    pub archive: Vec<PathBuf>,
    /// With --archive: the name to store the archive's image under (REGISTRY/REPO:TAG), or
    /// the repository to store its images under, each keeping its own tag (REGISTRY/REPO).
    #[arg(long = "as", value_name = "REGISTRY/REPO[:TAG]", requires = "archive")]
    pub as_name: Option<String>,
    /// Image list: one reference per line (`quay.io/org/img:tag`, `alpine:3.20`,
    /// `127.0.0.1:5000/app@sha256:...`), `#` comments and blank lines ignored
    /// [config: imageFile].
    #[arg(long, value_name = "FILE")]
    pub image_file: Option<PathBuf>,
    /// Platform taken from multi-platform images, os/arch[/variant]; repeatable
    /// [config: os, arch] [default: linux/<this machine's architecture>].
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<Platform>,
    /// Registry for references that name none [config: defaultNs] [default: docker.io].
    #[arg(long, value_name = "REGISTRY")]
    pub default_ns: Option<String>,
    /// Images pulled at the same time.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parallel: u16,
}

/// `ociregistry load`: preloads the image list into the cache; exit code 1 if anything failed.
pub async fn load(settings: Settings, parallel: usize) -> Result<ExitCode, FatalError> {
    let path = settings
        .preload
        .image_file
        .clone()
        .ok_or(FatalError::NoImageList)?;
    let list = preload::read_list(&path, &settings.default_ns)?;
    // A server may be using the same cache: leave its downloads in progress alone.
    let store = super::storage::open(&settings, super::storage::Opener::Alongside).await?;
    let managed = providers::start(&settings).await?;
    let upstreams = Upstreams::new(&settings, managed)?;
    let mut opts = preload::Options::new(&settings.preload.platforms);
    opts.images_at_once = parallel;
    tracing::info!(list = %path.display(), images = list.images.len(), invalid_lines = list.bad.len(),
        platforms = %opts.platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        "preloading");
    let app = Arc::new(Mirror::new(settings, store, upstreams));
    let reporter = preload::report::Reporter::for_stderr(list.images.len());
    let summary = preload::run(&app, &list, &opts, &reporter).await;
    for f in &summary.failures {
        println!("FAILED {}: {}", f.what, f.reason);
    }
    println!("{}", summary.line());
    Ok(if summary.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
