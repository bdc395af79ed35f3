//! The pull-through mirror: answers "this manifest" and "this blob" from the [`crate::store`]
//! or, on a miss, from the upstream ([`crate::upstream`]), through one shared fetch per
//! manifest ([`manifests`]) and one shared download per blob ([`downloads`], driven by
//! [`blobs`]), keeping hot copies in memory ([`hot`]); [`hello`] holds the built-in
//! hello-world image. It owns the shared state of a running server ([`Mirror`]); it speaks
//! no HTTP to clients (the HTTP layer above does, and maps the mirror's errors to statuses).

pub mod blobs;
pub mod downloads;
pub mod error;
pub mod hello;
pub mod hot;
pub mod manifests;
pub mod pulls;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::config::Settings;
use crate::store::{Manifest, Store};
use crate::upstream::Upstreams;
use downloads::Downloads;
pub use error::MirrorError;
use hot::HotCache;

/// Counters of notable events, logged as they happen and exported at each metrics scrape
/// (`crate::observability`; retries are counted per registry in [`crate::metrics`]).
#[derive(Debug, Default)]
pub struct Stats {
    /// Tag revalidations attempted.
    pub revalidations: AtomicU64,
    /// Cached manifests served because the upstream could not be asked.
    pub stale_served: AtomicU64,
}

/// One shared manifest fetch: every waiter gets its answer.
pub(crate) type ManifestFlight = Arc<OnceCell<Result<Manifest, MirrorError>>>;

/// Everything a request needs: settings, the store, the upstreams, the running fetches.
#[derive(Debug)]
pub struct Mirror {
    /// Effective settings.
    pub settings: Settings,
    /// The cache.
    pub store: Arc<dyn Store>,
    /// Upstream registries.
    pub upstreams: Upstreams,
    /// Running blob downloads.
    pub downloads: Arc<Downloads>,
    /// The other replicas' peer endpoints (`cluster`), for blobs whose fetch another
    /// replica holds.
    pub peers: Option<Arc<crate::upstream::peer::PeerClient>>,
    /// Event counters.
    pub stats: Stats,
    /// In-memory copies of hot tag records and manifests.
    pub hot: HotCache,
    /// Last-pull times, the stop request of the admin API, the `maxSize` trigger.
    pub inventory: pulls::Inventory,
    pub(crate) manifest_flights: Mutex<HashMap<String, ManifestFlight>>,
}

impl Mirror {
    /// Assembles the mirror.
    pub fn new(settings: Settings, store: Arc<dyn Store>, upstreams: Upstreams) -> Self {
        let downloads = Arc::new(Downloads::new(&settings.fetch_limits));
        let peers = settings.cluster.as_ref().and_then(|c| {
            match crate::upstream::peer::PeerClient::new(c.token.clone(), settings.pull_timeout) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::error!(error = %e, "no peer client: each replica fetches blobs from the upstream on its own");
                    None
                }
            }
        });
        Mirror {
            peers,
            settings,
            store,
            upstreams,
            downloads,
            stats: Stats::default(),
            hot: HotCache::default(),
            inventory: pulls::Inventory::default(),
            manifest_flights: Mutex::new(HashMap::new()),
        }
    }
}

/// A store error on the serving path.
pub(crate) fn disk_error(e: crate::store::StoreError) -> MirrorError {
    MirrorError::Cache(e)
}
