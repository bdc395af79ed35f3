//! ociregistry: a pull-only, pull-through caching OCI registry.
//!
//! A request flows through these parts:
//!
//! - [`cli`] parses the command line and starts the server; [`config`] reads Ociregistry's
//!   `config.yaml` strictly and merges it with flags ([`duration`] reads `6h`-style values).
//! - [`server`] accepts connections through one [`server::listener`] (pull port, admin API,
//!   metrics and health: the same timeouts and caps); [`server::router`] turns a path into a
//!   route and picks the upstream (`?ns=`, in-path host, `defaultNs`); [`server::handlers`]
//!   answers it.
//! - [`cache`] holds verified content by digest, tag records, and the single-flight
//!   downloads that clients read while they run.
//! - [`upstream`] talks to upstream registries with the right TLS and credentials, answering
//!   Basic and Bearer-token challenges and following redirects itself;
//!   [`upstream::policy`] decides which hosts and addresses may be contacted at all.
//! - [`providers`] loads auth provider plugins and keeps their credentials fresh.
//! - [`preload`] warms the cache from a list of images (`load`, `serve --preload-images`).
//! - [`metrics`] counts what happens on those paths; [`observability`] serves it
//!   (`--metrics`) with liveness and readiness (`--health`).
//! - [`oci`] is the shared vocabulary: names, digests, media types, the OCI error body, and
//!   what a manifest refers to.
//! - [`inventory`] tracks last pulls, lists and prunes the cache, bounds it by `maxSize`
//!   and serves the admin API.
//! - [`timefmt`] is the one clock and calendar: Unix seconds on disk, RFC 3339 for people.

#![forbid(unsafe_code)]

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
