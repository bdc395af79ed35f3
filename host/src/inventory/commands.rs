//! The `list`, `prune` and `invalidate` verbs. They read and change the cache directory
//! directly, so they work whether or not a server is running on it (a running server's
//! last-pull times reach the disk within 30 seconds).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::criteria::{Criteria, CriteriaSpec, Cutoff};
use super::prune::{self, PrunePlan};
use super::scan::{self, Image, ImageType};
use crate::cli::Output;
use crate::config::Settings;
use crate::oci::reference::{self, RepoName};
use crate::store::tags;
use crate::timefmt;
use crate::upstream::canonical_name;

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
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration)]
    pub grace: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// `invalidate` arguments.
#[derive(Debug, Args)]
pub struct InvalidateArgs {
    /// The cached tag to forget: REGISTRY/REPOSITORY:TAG (e.g. docker.io/library/alpine:3.20).
    pub reference: String,
}

/// One image as `list` prints it in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    /// Full reference.
    pub reference: String,
    /// Registry ("" for untracked manifests).
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag, when known by tag.
    pub tag: Option<String>,
    /// Top manifest digest.
    pub digest: String,
    /// image, index or unknown.
    #[serde(rename = "type")]
    pub kind: ImageType,
    /// First fetched (RFC 3339).
    pub created: String,
    /// Last pulled (RFC 3339), if known.
    pub last_pulled: Option<String>,
    /// Bytes on disk.
    pub size: u64,
}

impl From<&Image> for ImageView {
    fn from(i: &Image) -> Self {
        ImageView {
            reference: i.reference(),
            registry: i.registry.clone(),
            repository: i.repository.clone(),
            tag: i.tag.clone(),
            digest: i.digest.clone(),
            kind: i.kind,
            created: timefmt::format_rfc3339(i.created),
            last_pulled: i.last_pulled.map(timefmt::format_rfc3339),
            size: i.size,
        }
    }
}

/// The images under `root` matching `pattern`.
pub fn list_images(root: &Path, pattern: Option<&str>) -> Result<Vec<ImageView>, String> {
    let criteria = Criteria::pattern(pattern)?;
    let cache = scan::scan(root).map_err(|e| e.to_string())?;
    Ok(cache
        .images
        .iter()
        .filter(|i| criteria.matches(i))
        .map(ImageView::from)
        .collect())
}

fn no_cache(root: &Path) -> Option<String> {
    (!crate::store::is_cache(root)).then(|| {
        format!(
            "no cache at {} (set --image-path or imagePath)",
            root.display()
        )
    })
}

/// The inventory lock for a verb that changes the cache, saying so if a server on the same
/// cache makes it wait.
fn inventory_lock(root: &Path) -> Result<super::lock::InventoryLock, String> {
    super::lock::InventoryLock::acquire(root, || {
        eprintln!("waiting for the inventory lock (a server on this cache is writing it)")
    })
    .map_err(|e| {
        format!(
            "cannot take the inventory lock {}: {e}",
            root.join(super::lock::LOCK_FILE).display()
        )
    })
}

/// `ociregistry list`.
pub fn list(settings: &Settings, args: &ListArgs) -> Result<ExitCode, String> {
    let root = &settings.image_path;
    if let Some(e) = no_cache(root) {
        return Err(e);
    }
    let images = list_images(root, args.pattern.as_deref())?;
    match args.output {
        Output::Json => {
            let total: u64 = images.iter().map(|i| i.size).sum();
            let v = serde_json::json!({ "images": images, "totalBytes": total });
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
        }
        Output::Table => print_images(&images),
    }
    Ok(ExitCode::SUCCESS)
}

/// `1.5 MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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
    crate::cli::print_table(&rows);
    let total: u64 = images.iter().map(|i| i.size).sum();
    println!("{} images, {}", images.len(), human_size(total));
}

/// `ociregistry prune`.
pub fn prune_cmd(settings: &Settings, args: &PruneArgs) -> Result<ExitCode, String> {
    let root = &settings.image_path;
    if let Some(e) = no_cache(root) {
        return Err(e);
    }
    let spec = CriteriaSpec {
        pattern: args.pattern.clone(),
        accessed_before: args.accessed_before,
        created_before: args.created_before,
    };
    if spec.is_empty() {
        return Err(
            "prune needs at least one of --pattern, --accessed-before, --created-before \
             (--pattern . selects every image)"
                .into(),
        );
    }
    let grace = args.grace.unwrap_or(settings.inventory.grace);
    // A server on the same cache may be writing back last-pull times: wait for it.
    let _lock = (!args.dry_run).then(|| inventory_lock(root)).transpose()?;
    let plan = prune::run_blocking(root, &spec, args.count, grace, args.dry_run)
        .map_err(|e| e.to_string())?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?
        ),
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

/// `registry/repo:tag` as the cache names it: the registry canonical, and for docker.io a
/// one-component name also under `library/`.
pub fn tag_reference(s: &str) -> Result<Vec<(String, RepoName, String)>, String> {
    let bad =
        |why: &str| format!("invalid reference {s:?}: {why} (expected REGISTRY/REPOSITORY:TAG)");
    let (registry, rest) = s.split_once('/').ok_or_else(|| bad("no registry"))?;
    let host = reference::parse_host(registry).map_err(|e| bad(&e.to_string()))?;
    let registry = canonical_name(&host).to_owned();
    if rest.contains('@') {
        return Err(bad("digests never change; only a tag can be invalidated"));
    }
    let (repo, tag) = rest.rsplit_once(':').ok_or_else(|| bad("no tag"))?;
    let repo = RepoName::parse(repo).map_err(|e| bad(&e.to_string()))?;
    reference::validate_tag(tag).map_err(|e| bad(&e.to_string()))?;
    let mut out = vec![(registry.clone(), repo.clone(), tag.to_owned())];
    let prefixed = repo.with_library_prefix();
    if registry == crate::upstream::DOCKER_HUB && prefixed != repo {
        out.push((registry, prefixed, tag.to_owned()));
    }
    Ok(out)
}

/// `ociregistry invalidate`.
pub fn invalidate(settings: &Settings, args: &InvalidateArgs) -> Result<ExitCode, String> {
    let root = &settings.image_path;
    let refs = tag_reference(&args.reference)?;
    if let Some(e) = no_cache(root) {
        return Err(e);
    }
    let _lock = inventory_lock(root)?;
    let mut removed = Vec::new();
    for (registry, repo, tag) in refs {
        match tags::remove_in(root, &registry, &repo, &tag) {
            Ok(true) => removed.push(format!("{registry}/{repo}:{tag}")),
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if removed.is_empty() {
        return Err(format!("{} is not cached", args.reference));
    }
    for r in removed {
        println!("invalidated {r}: the next pull fetches it from the upstream");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_references() {
        let r = tag_reference("docker.io/alpine:3.20").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].1.as_str(), "library/alpine");
        let r = tag_reference("127.0.0.1:5000/org/app:v1").unwrap();
        assert_eq!(
            r,
            vec![(
                "127.0.0.1:5000".into(),
                RepoName::parse("org/app").unwrap(),
                "v1".into()
            )]
        );
        for bad in [
            "alpine",
            "quay.io/app",
            "quay.io/app@sha256:00",
            "quay.io/../x:1",
            "quay.io/app:bad tag",
        ] {
            assert!(tag_reference(bad).is_err(), "{bad}");
        }
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
    }
}
