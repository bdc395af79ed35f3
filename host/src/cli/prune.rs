//! `ociregistry prune`: removes cached images by pattern or age through
//! [`crate::inventory::prune`], under the inventory lock (on a bucket: the lease every
//! replica's background prune takes too), and prints the plan.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::FatalError;
use super::output::{Output, human_size, print_json};
use crate::config::Settings;
use crate::inventory::criteria::{CriteriaSpec, Cutoff};
use crate::inventory::prune::{self, PrunePlan};

/// `prune` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Every criterion given must hold. Blobs go only when no remaining image references them.\n\nExamples:\n  ociregistry prune --accessed-before 30d --dry-run\n  ociregistry prune --pattern '^docker.io/library/' --created-before 2024-01-01T00:00:00Z\n  ociregistry prune --pattern . --grace 0s      # everything, now"
)]
pub struct PruneArgs {
    /// Images whose reference matches this regular expression (`.` selects every image).
    #[arg(long, value_name = "REGEX")]
    pub pattern: Option<String>,
    /// Images last pulled (never pulled: first fetched) before this: an age such as 30d or
    /// 12h, or an RFC 3339 time.
    #[arg(long, value_name = "AGE|TIME", value_parser = Cutoff::parse)]
    pub accessed_before: Option<Cutoff>,
    /// Images first fetched before this: an age such as 30d, or an RFC 3339 time.
    #[arg(long, value_name = "AGE|TIME", value_parser = Cutoff::parse)]
    pub created_before: Option<Cutoff>,
    /// Print what would go (tags, manifests, blobs, bytes) and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove at most this many images (least recently pulled first).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Keep unreferenced blobs stored or pulled within this period, so that a pull in
    /// progress finds them; they go in a later run [config: pruneGrace] [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub grace: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// `ociregistry prune`.
pub async fn prune(settings: &Settings, args: &PruneArgs) -> Result<ExitCode, FatalError> {
    let spec = CriteriaSpec {
        pattern: args.pattern.clone(),
        accessed_before: args.accessed_before,
        created_before: args.created_before,
    };
    if spec.is_empty() {
        return Err(FatalError::NoCriteria);
    }
    let grace = args.grace.unwrap_or(settings.inventory.grace);
    let store = super::storage::open_existing(settings).await?;
    let run = prune::run(&*store, &spec, args.count, grace, args.dry_run);
    let plan = if args.dry_run {
        run.await
    } else {
        // A server on the same cache may be writing back last-pull times, or (on a bucket)
        // another replica pruning: wait for it.
        let owner = format!("ociregistry prune (pid {})", std::process::id());
        prune::with_lock(&*store, "prune", &owner, true, run).await
    }
    .map_err(FatalError::Prune)?;
    match args.output {
        Output::Json => print_json(&plan)?,
        Output::Table => print_plan(&plan),
    }
    Ok(if plan.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_plan(p: &PrunePlan) {
    let verb = if p.dry_run { "would remove" } else { "removed" };
    println!("images ({}):", p.images.len());
    for i in &p.images {
        println!("  {}  {}", i.reference, human_size(i.size));
    }
    for (what, list) in [
        ("tags", &p.tags),
        ("manifests", &p.manifests),
        ("blobs", &p.blobs),
    ] {
        println!("{what} ({}):", list.len());
        for x in list {
            println!("  {x}");
        }
    }
    if !p.kept_blobs.is_empty() {
        println!(
            "kept for now (stored or pulled within the grace period) ({}):",
            p.kept_blobs.len()
        );
        for x in &p.kept_blobs {
            println!("  {x}");
        }
    }
    for e in &p.errors {
        println!("error: {e}");
    }
    println!(
        "{}{verb} {} images, {} manifests, {} blobs, {} bytes ({})",
        if p.dry_run { "dry run: " } else { "" },
        p.images.len(),
        p.manifests.len(),
        p.blobs.len(),
        p.bytes,
        human_size(p.bytes)
    );
}
