//! `ociregistry list`: the cached images ([`crate::inventory::images`]) as a table or JSON.
//! It reads the store directly (the cache directory, or the bucket every replica shares), so
//! it works whether or not servers are running on it (a running server's last-pull times
//! reach the store within 30 seconds).

use std::process::ExitCode;

use clap::Args;

use super::FatalError;
use super::output::{Output, human_size, print_json, print_table};
use crate::config::Settings;
use crate::inventory::images::{self, ImageView};
use crate::inventory::scan::ImageType;

/// `list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only images whose reference (registry/repository:tag or registry/repository@digest)
    /// matches this regular expression (searched, not anchored: use ^...$ for a full match).
    #[arg(long, value_name = "REGEX")]
    pub pattern: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// `ociregistry list`.
pub async fn list(settings: &Settings, args: &ListArgs) -> Result<ExitCode, FatalError> {
    let store = super::storage::open_existing(settings).await?;
    let images = images::list_images(&*store, args.pattern.as_deref()).await?;
    match args.output {
        Output::Json => {
            let total: u64 = images.iter().map(|i| i.size).sum();
            print_json(&serde_json::json!({ "images": images, "totalBytes": total }))?;
        }
        Output::Table => print_images(&images),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_images(images: &[ImageView]) {
    let mut rows: Vec<Vec<String>> = vec![vec![
        "REPOSITORY".into(),
        "TAG/DIGEST".into(),
        "TYPE".into(),
        "CREATED".into(),
        "LAST PULLED".into(),
        "SIZE".into(),
    ]];
    for i in images {
        let repo = if i.registry.is_empty() {
            "(untracked)".to_owned()
        } else {
            format!("{}/{}", i.registry, i.repository)
        };
        let kind = match i.kind {
            ImageType::Image => "image",
            ImageType::Index => "index",
            ImageType::Unknown => "unknown",
        };
        rows.push(vec![
            repo,
            i.tag.clone().unwrap_or_else(|| i.digest.clone()),
            kind.into(),
            i.created.clone(),
            i.last_pulled.clone().unwrap_or_else(|| "-".into()),
            human_size(i.size),
        ]);
    }
    print_table(&rows);
    let total: u64 = images.iter().map(|i| i.size).sum();
    println!("{} images, {}", images.len(), human_size(total));
}
