//! The cached images as people and scripts see them ([`ImageView`]: what `list --output json`
//! and the admin API's `GET /admin/v1/images` answer), filtered by a pattern. It reads only;
//! printing them is the CLI's job.

use std::path::Path;

use serde::Serialize;

use super::criteria::{Criteria, CriteriaError};
use super::scan::{self, Image, ImageType};
use crate::timefmt;

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

/// Why the images could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The pattern is not a regular expression.
    #[error(transparent)]
    Pattern(#[from] CriteriaError),
    /// The cache could not be read.
    #[error("cannot read the cache: {0}")]
    Scan(#[from] crate::store::StoreError),
}

/// Whether `root` looks like a cache directory (it has manifests or tag records).
pub fn is_cache(root: &Path) -> bool {
    crate::store::is_cache(root)
}

/// The images in `store` matching `pattern`.
pub async fn list_images(
    store: &dyn crate::store::Store,
    pattern: Option<&str>,
) -> Result<Vec<ImageView>, ListError> {
    let criteria = Criteria::pattern(pattern).map_err(ListError::Pattern)?;
    let cache = scan::scan(store).await?;
    Ok(cache
        .images
        .iter()
        .filter(|i| criteria.matches(i))
        .map(ImageView::from)
        .collect())
}
