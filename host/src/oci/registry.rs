//! Registry names: the name docker.io is known by and the canonical form of a registry host
//! (what requests, config entries and the cache agree on); not how a registry is reached.

/// The name docker.io images are cached and configured under.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API is reached at.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The canonical name of a registry: the https default port is dropped (`quay.io:443` is
/// `quay.io`: ad-hoc upstreams are https) and docker.io's aliases collapse to `docker.io`.
pub fn canonical_name(name: &str) -> &str {
    let name = name.strip_suffix(":443").unwrap_or(name);
    match name {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        other => other,
    }
}
