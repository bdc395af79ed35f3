//! ociregistry: a pull-only, pull-through caching OCI registry.
//!
//! The layers, top to bottom; each imports only its own layer or those below it, never in
//! a circle (`tests/layers.rs` checks it):
//!
//! ```text
//! cli                                   verbs, flags, everything printed
//!  |-> server  observability  preload  inventory  archive
//!  |     HTTP: listener, routes,   metrics/health   warm the cache   scan, prune, evict,
//!  |     admin API, status codes   endpoints        from a list      access times
//!  |                                                                 (archive: import and
//!  |                                                                 export image archives)
//!  |-> mirror                           the pull-through logic, no HTTP types
//!  |-> store        upstream            the cache backend (trait, filesystem, S3) / registries
//!  |-> providers                        auth plugins and the credential scheduler
//!  `-> leaves: config oci duration timefmt metrics logging
//! ```
//!
//! A request flows through them like this:
//!
//! - [`cli`] parses the command line and builds the parts; [`config`] reads Ociregistry's
//!   `config.yaml` strictly into plain [`config::Settings`] ([`duration`] reads `6h`-style
//!   values).
//! - [`server`] accepts connections through one listener (pull port, admin API, metrics and
//!   health: the same timeouts and caps), routes a path and picks the upstream (`?ns=`,
//!   in-path host or alias, `defaultNs`), and maps every answer and error to HTTP.
//! - [`mirror`] answers "this manifest", "this blob": from the [`store`] or, on a miss,
//!   through one shared upstream fetch per manifest and one shared download per blob that
//!   clients read while it runs; with `cluster`, replicas on one bucket share that download
//!   (a fetch lease in the store, the others streaming from the owner's peer endpoint).
//!   It also holds the built-in hello-world image (`mirror::hello`, made by `build.rs`).
//! - [`store`] is the storage seam: the `Store` trait, its filesystem backend and its
//!   S3-compatible one (replicas sharing a bucket); content becomes visible under its
//!   digest only once verified. The inventory lists and removes content through it too.
//! - [`upstream`] talks to upstream registries with the right TLS and credentials, answering
//!   Basic and Bearer-token challenges and following redirects itself under a host policy;
//!   a registry's `endpoints` are tried in order, each behind a circuit breaker, and a 429
//!   holds requests back until its `Retry-After`;
//!   its `peer` client streams blobs from other replicas.
//! - [`providers`] loads auth provider plugins and keeps their credentials fresh.
//! - [`preload`] warms the cache from a list of images (`load`, `serve --preload-images`).
//! - [`archive`] imports `docker save` and OCI layout archives into the store (verified,
//!   visible only once complete) and exports cached images as an OCI layout tar
//!   (`load --archive`, `export`).
//! - [`inventory`] knows what is cached and when it was last pulled: list, prune, `maxSize`
//!   eviction, invalidation; on a shared bucket one replica at a time prunes (a lease).
//! - [`metrics`] counts what happens on those paths; [`observability`] serves it
//!   (`--metrics`) with liveness and readiness (`--health`).
//! - [`oci`] is the shared vocabulary: names, digests, media types, the OCI error body, and
//!   what a manifest refers to; [`timefmt`] reads and writes timestamps; [`logging`] sets
//!   up `tracing`.

#![forbid(unsafe_code)]
// The map above links to the crate-private modules: read it with
// `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod archive;
pub mod cli;
pub mod config;
pub(crate) mod duration;
pub(crate) mod inventory;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod observability;
pub(crate) mod oci;
pub(crate) mod preload;
pub(crate) mod providers;
pub(crate) mod server;
pub(crate) mod store;
pub(crate) mod timefmt;
pub(crate) mod upstream;
