//! Warming the cache: `ociregistry load --image-file F` and `serve --preload-images F`.
//!
//! Each image of a list ([`list`]) is pulled into the cache through the same single-flight
//! fetches that client requests use ([`crate::mirror::manifests::ensure_manifest`],
//! [`crate::mirror::blobs::ensure_blob_watching`]), so a preload and clients pulling the
//! same image at the same time share one upstream fetch per manifest and blob. For an index
//! the index itself is stored plus, for each wanted [`platform::Platform`], the matching
//! child manifest with its config and layers ([`manifest`]). A few images run at once, and
//! a few blobs of each; a failed image is reported and the others go on ([`report`]).

pub mod list;
pub use crate::oci::platform;
pub mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::mirror::Mirror;
use crate::mirror::MirrorError;
use crate::mirror::blobs::ensure_blob_watching;
use crate::mirror::manifests::ensure_manifest;
use crate::oci::manifest::{self, Blob, Contents, ManifestError};
use crate::oci::media::Accept;
use crate::oci::reference::Reference;
use list::{ImageList, ImageRef};
use platform::Platform;
use report::Reporter;

/// Images preloaded at the same time, by default.
pub const IMAGES_AT_ONCE: usize = 3;
/// Blobs of one image fetched at the same time.
pub const BLOBS_AT_ONCE: usize = 4;
/// Index levels followed (an index whose entries are indexes is rare; deeper is refused).
const MAX_DEPTH: usize = 2;

/// How to preload.
#[derive(Debug, Clone)]
pub struct Options {
    /// Platforms taken from an index (at least one).
    pub platforms: Vec<Platform>,
    /// Images at once.
    pub images_at_once: usize,
    /// Blobs of one image at once.
    pub blobs_at_once: usize,
}

impl Options {
    /// The given platforms (duplicates dropped), or this machine's when there are none.
    pub fn new(platforms: &[Platform]) -> Options {
        let mut unique: Vec<Platform> = Vec::new();
        for p in platforms {
            if !unique.contains(p) {
                unique.push(p.clone());
            }
        }
        if unique.is_empty() {
            unique.push(Platform::host());
        }
        Options {
            platforms: unique,
            images_at_once: IMAGES_AT_ONCE,
            blobs_at_once: BLOBS_AT_ONCE,
        }
    }
}

/// What one image or the whole run moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Manifests made sure of (index, children, images).
    pub manifests: usize,
    /// Blobs fetched from upstream now.
    pub blobs_fetched: usize,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// Blobs that were cached already.
    pub blobs_present: usize,
    /// Their bytes.
    pub bytes_present: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.manifests += o.manifests;
        self.blobs_fetched += o.blobs_fetched;
        self.bytes_fetched += o.bytes_fetched;
        self.blobs_present += o.blobs_present;
        self.bytes_present += o.bytes_present;
    }
}

/// A reference (or list line) that could not be preloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The line as written, with its number.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// The outcome of a preload.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The list.
    pub list: String,
    /// Valid references in it.
    pub images: usize,
    /// Of those, preloaded completely.
    pub succeeded: usize,
    /// Refused lines (first, by line) and failed images (by line).
    pub failures: Vec<Failure>,
    /// What moved.
    pub counts: Counts,
    /// How long it took.
    pub elapsed: Duration,
}

impl Summary {
    /// Every line was valid and every image is in the cache.
    pub fn all_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line: how many images, what moved, how many failed.
    pub fn line(&self) -> String {
        let c = &self.counts;
        format!(
            "preload of {}: {} of {} images cached in {:.1}s ({} manifests; {} blobs fetched, {}; {} blobs already cached, {}); {} failed",
            self.list,
            self.succeeded,
            self.images,
            self.elapsed.as_secs_f32(),
            c.manifests,
            c.blobs_fetched,
            indicatif::HumanBytes(c.bytes_fetched),
            c.blobs_present,
            indicatif::HumanBytes(c.bytes_present),
            self.failures.len(),
        )
    }

    /// Logs the summary (a warning per failure, then the `preload finished` line).
    pub fn log(&self) {
        for f in &self.failures {
            tracing::warn!(what = %f.what, reason = %f.reason, "preload failure");
        }
        tracing::info!(
            list = %self.list,
            images = self.images,
            succeeded = self.succeeded,
            failed = self.failures.len(),
            bytes_fetched = self.counts.bytes_fetched,
            "preload finished: {}",
            self.line()
        );
    }
}

/// Why one image (or one of its blobs) could not be preloaded; the summary's reason.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    /// The mirror could not provide a manifest or a blob.
    #[error(transparent)]
    Fetch(MirrorError),
    /// A manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Indexes inside indexes, too deep.
    #[error("index {index} nests indexes deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// The index's digest.
        index: String,
    },
    /// No entry of an index is for a wanted platform.
    #[error("index {index} has no manifest for {missing} (it has: {has})")]
    NoPlatform {
        /// The index's digest.
        index: String,
        /// The wanted platforms, comma-separated.
        missing: String,
        /// The index's platforms, comma-separated (or `no platforms`).
        has: String,
    },
    /// Several blobs failed; the first one's reason.
    #[error("{failed} of {total} blobs failed; first: {first}")]
    Blobs {
        /// How many failed.
        failed: usize,
        /// How many the image has.
        total: usize,
        /// The first failure.
        first: Box<PreloadError>,
    },
}

/// Preloads every image of `list`; never stops at a failure.
pub async fn run(app: &Arc<Mirror>, list: &ImageList, opts: &Options, rep: &Reporter) -> Summary {
    let started = Instant::now();
    let mut failures: Vec<Failure> = list
        .bad
        .iter()
        .map(|b| {
            rep.bad_line(&list.path, b);
            Failure {
                what: format!("{}:{} {:?}", list.path.display(), b.line, b.text),
                reason: b.reason.clone(),
            }
        })
        .collect();
    // Owned items: a stream of borrowed ones trips up the `Send` check of `tokio::spawn`.
    let results: Vec<(ImageRef, Result<Counts, PreloadError>)> =
        futures_util::stream::iter(list.images.clone())
            .map(|img| async move {
                rep.image_started(&img);
                let result = preload_image(app, &img, opts, rep).await;
                let shown = result.as_ref().map(describe).map_err(ToString::to_string);
                rep.image_finished(&img, shown.as_deref().map_err(String::as_str));
                (img, result)
            })
            .buffer_unordered(opts.images_at_once.max(1))
            .collect()
            .await;
    let mut counts = Counts::default();
    let mut succeeded = 0;
    let mut failed: Vec<(usize, Failure)> = Vec::new();
    for (img, r) in results {
        match r {
            Ok(c) => {
                succeeded += 1;
                counts.add(&c);
            }
            Err(reason) => failed.push((
                img.line,
                Failure {
                    what: format!("{} (line {})", img.written, img.line),
                    reason: reason.to_string(),
                },
            )),
        }
    }
    failed.sort_by_key(|(line, _)| *line);
    failures.extend(failed.into_iter().map(|(_, f)| f));
    rep.finish();
    Summary {
        list: list.path.display().to_string(),
        images: list.images.len(),
        succeeded,
        failures,
        counts,
        elapsed: started.elapsed(),
    }
}

fn describe(c: &Counts) -> String {
    format!(
        "{} manifests, {} blobs fetched ({}), {} already cached",
        c.manifests,
        c.blobs_fetched,
        indicatif::HumanBytes(c.bytes_fetched),
        c.blobs_present
    )
}

/// One image: its manifest(s), then its blobs; the first failure is the image's reason.
async fn preload_image(
    app: &Arc<Mirror>,
    img: &ImageRef,
    opts: &Options,
    rep: &Reporter,
) -> Result<Counts, PreloadError> {
    let accept = Accept::default();
    let mut counts = Counts::default();
    let top = ensure_manifest(app, &img.registry, &img.repo, &img.reference, &accept)
        .await
        .map_err(PreloadError::Fetch)?;
    counts.manifests += 1;
    let mut blobs: Vec<Blob> = Vec::new();
    let mut queue = vec![(top, 0usize)];
    while let Some((m, depth)) = queue.pop() {
        match manifest::parse(&m.media_type, &m.bytes)? {
            Contents::Image(found) => {
                for b in found {
                    if !blobs.iter().any(|o| o.digest == b.digest) {
                        blobs.push(b);
                    }
                }
            }
            Contents::Index(_) if depth >= MAX_DEPTH => {
                return Err(PreloadError::TooDeep {
                    index: m.digest.to_string(),
                });
            }
            Contents::Index(entries) => {
                for digest in choose(&entries, &opts.platforms, img, &m.digest.to_string())? {
                    let child = ensure_manifest(
                        app,
                        &img.registry,
                        &img.repo,
                        &Reference::Digest(digest),
                        &accept,
                    )
                    .await
                    .map_err(PreloadError::Fetch)?;
                    counts.manifests += 1;
                    queue.push((child, depth + 1));
                }
            }
        }
    }
    rep.bytes_expected(blobs.iter().map(|b| b.size).sum());
    let fetched: Vec<Result<BlobOutcome, PreloadError>> = futures_util::stream::iter(blobs.clone())
        .map(|b| async move { fetch_blob(app, img, &b, rep).await })
        .buffer_unordered(opts.blobs_at_once.max(1))
        .collect()
        .await;
    let mut errors = Vec::new();
    for r in fetched {
        match r {
            Ok(BlobOutcome::Present(n)) => {
                counts.blobs_present += 1;
                counts.bytes_present += n;
            }
            Ok(BlobOutcome::Fetched(n)) => {
                counts.blobs_fetched += 1;
                counts.bytes_fetched += n;
            }
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(counts),
        1 => Err(errors.swap_remove(0)),
        n => Err(PreloadError::Blobs {
            failed: n,
            total: blobs.len(),
            first: Box::new(errors.swap_remove(0)),
        }),
    }
}

/// The entries of an index for the wanted platforms, each once, in the order asked. Fails
/// only when none is there; a platform that is missing while others are found is logged.
fn choose(
    entries: &[manifest::Entry],
    platforms: &[Platform],
    img: &ImageRef,
    index: &str,
) -> Result<Vec<crate::oci::reference::Digest>, PreloadError> {
    let mut chosen = Vec::new();
    let mut missing = Vec::new();
    for p in platforms {
        let found = entries
            .iter()
            .find(|e| e.platform.as_ref().is_some_and(|ep| p.matches(ep)));
        match found {
            Some(e) if !chosen.contains(&e.digest) => chosen.push(e.digest.clone()),
            Some(_) => {}
            None => missing.push(p.to_string()),
        }
    }
    if chosen.is_empty() {
        let has: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
            .collect();
        return Err(PreloadError::NoPlatform {
            index: index.to_owned(),
            missing: missing.join(", "),
            has: if has.is_empty() {
                "no platforms".to_owned()
            } else {
                has.join(", ")
            },
        });
    }
    if !missing.is_empty() {
        tracing::warn!(image = %img, index, missing = %missing.join(", "), "index has no manifest for some of the wanted platforms; caching the others");
    }
    Ok(chosen)
}

enum BlobOutcome {
    /// Was cached already; its size.
    Present(u64),
    /// Fetched now; its size.
    Fetched(u64),
}

async fn fetch_blob(
    app: &Arc<Mirror>,
    img: &ImageRef,
    b: &Blob,
    rep: &Reporter,
) -> Result<BlobOutcome, PreloadError> {
    if let Ok(Some(size)) = app.store.stat_blob(&b.digest).await {
        rep.bytes_done(b.size.max(size));
        if size > b.size {
            rep.bytes_expected(size - b.size);
        }
        return Ok(BlobOutcome::Present(size));
    }
    let mut reported = 0u64;
    let mut on_progress = |written: u64| {
        if written > reported {
            rep.bytes_done(written - reported);
            reported = written;
        }
    };
    let result =
        ensure_blob_watching(app, &img.registry, &img.repo, &b.digest, &mut on_progress).await;
    match result {
        Ok(total) => {
            if total > reported {
                rep.bytes_done(total - reported);
            }
            if total > b.size {
                rep.bytes_expected(total - b.size);
            }
            Ok(BlobOutcome::Fetched(total))
        }
        Err(e) => Err(PreloadError::Fetch(e)),
    }
}

/// Preloads `list` on its own task (for `serve`, which keeps serving meanwhile) and logs
/// the summary when done.
pub fn spawn_in_background(app: Arc<Mirror>, list: ImageList, opts: Options) {
    tokio::spawn(async move {
        tracing::info!(list = %list.path.display(), images = list.images.len(),
            platforms = %opts.platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "preload started in the background");
        let summary = run(&app, &list, &opts, &Reporter::logs()).await;
        summary.log();
    });
}

/// Reads an image list for a command, naming the file on failure.
pub fn read_list(path: &Path, default_ns: &str) -> Result<ImageList, list::ListError> {
    list::read(path, default_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::reference::Digest;
    use platform::EntryPlatform;

    fn entry(c: char, platform: Option<&str>) -> manifest::Entry {
        manifest::Entry {
            digest: Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap(),
            platform: platform.map(|p| {
                let mut parts = p.split('/');
                EntryPlatform {
                    os: parts.next().unwrap().into(),
                    arch: parts.next().unwrap().into(),
                    variant: parts.next().map(Into::into),
                }
            }),
        }
    }

    fn img() -> ImageRef {
        list::parse("quay.io/a/b:c", "docker.io").images.remove(0)
    }

    #[test]
    fn choosing_platforms_from_an_index() {
        let entries = vec![
            entry('a', Some("linux/amd64")),
            entry('b', Some("linux/arm64/v8")),
            entry('c', Some("unknown/unknown")),
            entry('d', None),
        ];
        let p = |s: &str| s.parse::<Platform>().unwrap();
        let got = choose(&entries, &[p("linux/arm64")], &img(), "idx").unwrap();
        assert_eq!(got, vec![entries[1].digest.clone()]);
        let got = choose(
            &entries,
            &[
                p("linux/arm64"),
                p("linux/amd64"),
                p("linux/amd64"),
                p("linux/s390x"),
            ],
            &img(),
            "idx",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![entries[1].digest.clone(), entries[0].digest.clone()]
        );
        let e = choose(&entries, &[p("linux/s390x")], &img(), "idx")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux/s390x") && e.contains("linux/amd64, linux/arm64/v8, unknown/unknown"),
            "{e}"
        );
    }

    #[test]
    fn options_default_to_the_host() {
        assert_eq!(Options::new(&[]).platforms, vec![Platform::host()]);
        let p: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(Options::new(&[p.clone(), p.clone()]).platforms, vec![p]);
    }
}
